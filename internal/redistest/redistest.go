// Package redistest gives tests a real Redis to talk to.
//
// New follows DESIGN.md "Tests": it uses REDIS_TEST_URL when set, else
// starts a private redis-server on a free loopback port, else falls back to
// an embedded miniredis with a printed notice. With
// TOKENPOOL_TEST_REQUIRE_REDIS=1 (CI) the fallback is a test failure.
//
// StartProcess always starts a private redis-server, for fault tests that
// must stop and restart it.
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// Server is one Redis a test talks to.
type Server struct {
	// Addr is host:port of the server.
	Addr string
	// Prefix is a key prefix unique to this test, so tests that share a
	// Redis through REDIS_TEST_URL don't see each other's keys.
	Prefix string
	// Kind says what is behind Addr: "url", "process" or "embedded".
	Kind string

	tb   testing.TB
	url  string
	args []string

	mu     sync.Mutex
	cmd    *exec.Cmd     // guarded by mu; nil when stopped or not a process
	exited chan struct{} // closed once cmd has exited (its Wait returned)
}

// New returns a Redis for tb, stopped when the test ends.
func New(tb testing.TB) *Server {
	tb.Helper()
	if u := os.Getenv("REDIS_TEST_URL"); u != "" {
		opt, err := redis.ParseURL(u)
		if err != nil {
			tb.Fatalf("redistest: REDIS_TEST_URL: %v", err)
		}
		return &Server{Addr: opt.Addr, Prefix: uniquePrefix(), Kind: "url", tb: tb, url: u}
	}
	if _, err := exec.LookPath("redis-server"); err == nil {
		return StartProcess(tb)
	}
	if os.Getenv("TOKENPOOL_TEST_REQUIRE_REDIS") == "1" {
		tb.Fatal("redistest: TOKENPOOL_TEST_REQUIRE_REDIS=1 but redis-server is not on PATH and REDIS_TEST_URL is unset")
	}
	fmt.Fprintln(os.Stderr, "redistest: NOTICE: redis-server not found; falling back to embedded miniredis")
	m := miniredis.NewMiniRedis()
	if err := m.Start(); err != nil {
		tb.Fatalf("redistest: miniredis: %v", err)
	}
	tb.Cleanup(m.Close)
	return &Server{Addr: m.Addr(), Prefix: uniquePrefix(), Kind: "embedded", tb: tb}
}

// StartProcess starts a private redis-server with extra arguments and
// returns once it answers PING. It is killed when the test ends.
func StartProcess(tb testing.TB, extraArgs ...string) *Server {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Skip("redistest: redis-server not on PATH")
	}
	dir := tb.TempDir()
	// A port free a moment ago may be taken (an outgoing connection's
	// ephemeral port) before redis-server binds it: it then exits at
	// once, and another port is tried.
	for try := 1; ; try++ {
		port := FreePort(tb)
		s := &Server{
			Addr:   net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
			Prefix: uniquePrefix(),
			Kind:   "process",
			tb:     tb,
			args: append([]string{
				"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
				"--save", "", "--appendonly", "no", "--dir", dir,
			}, extraArgs...),
		}
		err := s.start()
		if err == nil {
			tb.Cleanup(s.Stop)
			return s
		}
		if !errors.Is(err, errExited) || try == 5 {
			tb.Fatalf("redistest: %v", err)
		}
	}
}

// errExited is a redis-server that exited before it answered.
var errExited = errors.New("redis-server exited before it answered")

// URL is a redis:// URL for the server.
func (s *Server) URL() string {
	if s.url != "" {
		return s.url
	}
	return "redis://" + s.Addr
}

// Client returns a client for the server, closed when the test ends.
func (s *Server) Client() *redis.Client {
	opt, err := redis.ParseURL(s.URL())
	if err != nil {
		s.tb.Fatalf("redistest: %v", err)
	}
	c := redis.NewClient(opt)
	s.tb.Cleanup(func() { c.Close() })
	return c
}

// Start (re)starts a process server on its port and waits for PING.
func (s *Server) Start() {
	s.tb.Helper()
	if s.Kind != "process" {
		s.tb.Fatalf("redistest: cannot start a %s server", s.Kind)
	}
	if err := s.start(); err != nil {
		s.tb.Fatalf("redistest: %v", err)
	}
}

// start starts the process and waits for PING: errExited when it exited
// first (its port taken, say).
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	cmd := exec.Command("redis-server", s.args...)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("on %s: %w", s.Addr, errExited)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s did not answer: %w", s.Addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills a process server (SIGKILL, like a crash) and waits for it.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// Freeze stops a process server (SIGSTOP) without closing anything: it
// stops answering, as in a long stall or a network partition, and runs
// what it was sent once thawed.
func (s *Server) Freeze() { s.signal(syscall.SIGSTOP) }

// Thaw resumes a frozen process server (SIGCONT).
func (s *Server) Thaw() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		s.tb.Fatalf("redistest: no %s server process to signal", s.Kind)
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.tb.Fatalf("redistest: %v: %v", sig, err)
	}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("redistest: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func uniquePrefix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "t" + hex.EncodeToString(b[:])
}
