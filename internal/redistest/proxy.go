package redistest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a loopback TCP proxy in front of a Redis that can lose a reply:
// the command reaches Redis and runs, but the client never sees the answer
// and its connection drops, as on a network failure. go-redis then retries
// the command on a new connection. It can also delay every reply, as a slow
// network or a Redis under load does: commands run at once, their answers
// arrive late.
type Proxy struct {
	// Addr is where clients connect.
	Addr string

	ln       net.Listener
	dropNext atomic.Bool
	dropped  atomic.Int64
	delayed  atomic.Int64
	delay    atomic.Int64                      // nanoseconds each reply is held back
	match    atomic.Pointer[func([]byte) bool] // which replies; nil: all

	mu     sync.Mutex
	target string     // guarded by mu; "": down
	conns  []net.Conn // guarded by mu
	closed bool       // guarded by mu: Close has run; no connection is kept
	wg     sync.WaitGroup
}

// NewProxy starts a proxy to target, closed when the test ends.
func NewProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	p, err := StartProxy(target)
	if err != nil {
		tb.Fatalf("redistest: proxy: %v", err)
	}
	tb.Cleanup(p.Close)
	return p
}

// StartProxy starts a proxy to target on a free loopback port, for
// programs (the chaos run); Close stops it.
func StartProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// DropNextReply makes the proxy swallow the next reply any server sends
// and close that client's connection.
func (p *Proxy) DropNextReply() { p.dropNext.Store(true) }

// DelayReplies holds back every reply by d from now on; 0 ends it.
func (p *Proxy) DelayReplies(d time.Duration) { p.DelayRepliesMatching(d, nil) }

// DelayRepliesMatching holds back by d the replies (each read from a
// server, which is one reply under request-response traffic) for which
// match reports true.
func (p *Proxy) DelayRepliesMatching(d time.Duration, match func(reply []byte) bool) {
	if d == 0 { // the delay first: never every reply delayed in between
		p.delay.Store(0)
		p.match.Store(&match)
		return
	}
	p.match.Store(&match)
	p.delay.Store(int64(d))
}

// Dropped is how many replies were swallowed.
func (p *Proxy) Dropped() int64 { return p.dropped.Load() }

// Delayed is how many replies were held back.
func (p *Proxy) Delayed() int64 { return p.delayed.Load() }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		target := p.target
		p.mu.Unlock()
		if target == "" { // down
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.target != target {
			// Retargeted while it dialled: not a connection to keep.
			p.mu.Unlock()
			c.Close()
			s.Close()
			continue
		}
		if p.closed {
			// Accepted as Close ran: it would never close these, and
			// their copies would hold its Wait for ever.
			p.mu.Unlock()
			c.Close()
			s.Close()
			return
		}
		p.conns = append(p.conns, c, s)
		p.wg.Add(2) // under mu, so Close's Wait counts them
		p.mu.Unlock()
		go func() { defer p.wg.Done(); _, _ = io.Copy(s, c); s.Close() }()
		go func() { defer p.wg.Done(); p.replies(c, s) }()
	}
}

// replies forwards server replies to the client, unless one is to be lost.
func (p *Proxy) replies(client, server net.Conn) {
	defer client.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := server.Read(buf)
		if n > 0 && p.dropNext.CompareAndSwap(true, false) {
			p.dropped.Add(1)
			server.Close()
			return
		}
		if d := time.Duration(p.delay.Load()); n > 0 && d > 0 {
			if m := p.match.Load(); m == nil || *m == nil || (*m)(buf[:n]) {
				p.delayed.Add(1)
				time.Sleep(d)
			}
		}
		if n > 0 {
			if _, werr := client.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Retarget sends new connections to target and cuts every connection
// open through the proxy, as a load balancer in front of a
// Sentinel-managed primary does when its health check finds another
// primary. An empty target is down: connections are accepted and closed.
func (p *Proxy) Retarget(target string) {
	p.mu.Lock()
	p.target = target
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// Close stops the proxy and drops every connection through it.
func (p *Proxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
