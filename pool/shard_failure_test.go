package pool

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
)

// Issue 20, finding 1: one shard that Redis can't serve (a dead Cluster
// master, here a hook that refuses one hash tag on a single Redis) must not
// take a sharded profile down: takes go to the other shards, or mint
// directly, and the other shards keep refilling.

// tagRefuser fails every command that names one hash tag as a refused
// connection would, before anything reaches Redis.
type tagRefuser struct {
	tag     atomic.Pointer[string]
	refused atomic.Int64
}

func (h *tagRefuser) refuse(tag string) { h.tag.Store(&tag) }

func (h *tagRefuser) names(cmds ...redis.Cmder) bool {
	t := h.tag.Load()
	if t == nil {
		return false
	}
	for _, c := range cmds {
		for _, a := range c.Args() {
			if s, ok := a.(string); ok && strings.Contains(s, "{"+*t+"}") {
				return true
			}
		}
	}
	return false
}

var errRefused = &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}

func (h *tagRefuser) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *tagRefuser) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.names(cmd) {
			h.refused.Add(1)
			cmd.SetErr(errRefused)
			return errRefused
		}
		return next(ctx, cmd)
	}
}
func (h *tagRefuser) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.names(cmds...) {
			h.refused.Add(1)
			for _, c := range cmds {
				c.SetErr(errRefused)
			}
			return errRefused
		}
		return next(ctx, cmds)
	}
}

// steadyLoad sends rate requests a second for d, each to get, and counts
// what they got.
type loadResult struct {
	sent, ok, fromPool int
	errs               map[string]int
}

func steadyLoad(t *testing.T, p *Pool, rate int, d time.Duration) loadResult {
	t.Helper()
	var (
		mu  sync.Mutex
		res = loadResult{errs: map[string]int{}}
		wg  sync.WaitGroup
	)
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	end := time.Now().Add(d)
	for i := 0; time.Now().Before(end); i++ {
		<-tick.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			h, err := p.Get(ctx, "default", fmt.Sprintf("load-%d", i))
			mu.Lock()
			defer mu.Unlock()
			res.sent++
			switch {
			case err == nil:
				res.ok++
				if h.Source == SourcePool {
					res.fromPool++
				}
			default:
				res.errs[err.Error()]++
			}
		}()
	}
	wg.Wait()
	return res
}

// filledShardedPool opens a pool of 3 shards holding 30 on st, and waits
// until it is full.
func filledShardedPool(t *testing.T, st *Store) *Pool {
	t.Helper()
	m := &fakeMinter{ttl: time.Hour, delay: 10 * time.Millisecond}
	const target = 30
	p := newTestPool(t, st, m, func(c *Config) {
		c.Profiles = []Profile{{Name: "default", Minter: m, Target: target, MaxTarget: target, MinRemaining: time.Second, Shards: 3}}
		c.Logger = discardLog()
	})
	p.Open()
	poll.Until(t, "the pool to fill", 20*time.Second, func() bool {
		s, err := p.Stats(context.Background(), "default")
		return err == nil && s.Usable == target
	})
	return p
}

// check holds a load on a pool with one failing shard to what the other
// shards serve: at least 99% of requests get a credential, 80% from the
// pool, and the healthy shards refilled (they hold 20 when the load
// starts) by at least half the requests.
func (res loadResult) check(t *testing.T, refills int64) {
	t.Helper()
	t.Logf("sent %d, ok %d, from the pool %d, errors %v; the healthy shards minted %d during the load",
		res.sent, res.ok, res.fromPool, res.errs, refills)
	if res.ok*100 < res.sent*99 {
		t.Errorf("%d of %d requests got a credential, want at least 99%%", res.ok, res.sent)
	}
	if refills < int64(res.sent)/2 {
		t.Errorf("the healthy shards minted %d while %d requests came: they were not refilled", refills, res.sent)
	}
	if res.fromPool*10 < res.sent*8 {
		t.Errorf("%d of %d handouts came from the pool, want at least 80%%", res.fromPool, res.sent)
	}
}

func TestOneRefusedShardLeavesTheOthersServing(t *testing.T) {
	srv := redistest.New(t)
	rdb := srv.Client()
	hook := &tagRefuser{}
	rdb.AddHook(hook)
	st := NewStore(rdb, StoreConfig{KeyPrefix: srv.Prefix})
	p := filledShardedPool(t, st)
	ctx := context.Background()
	tags := shardTags("default", 3)
	healthyMinted := func() int64 {
		var n int64
		for _, tag := range tags[1:] {
			n += mustStats(t, st, tag).Minted
		}
		return n
	}
	before := healthyMinted()
	hook.refuse(tags[0])

	res := steadyLoad(t, p, 50, 3*time.Second)
	after := healthyMinted()
	t.Logf("%d commands refused", hook.refused.Load())
	res.check(t, after-before)
	// The shard answers again: it is refilled and served.
	hook.tag.Store(nil)
	poll.Until(t, "the refused shard to refill", 15*time.Second, func() bool {
		return mustStats(t, st, tags[0]).Usable > 0
	})
	if _, err := p.Stats(ctx, "default"); err != nil {
		t.Fatal(err)
	}
}

func TestADeadClusterMasterLeavesTheOtherShardsServing(t *testing.T) {
	nodes := redistest.StartCluster(t, 3, "--cluster-require-full-coverage", "no")
	st := NewStore(clusterClient(t, nodes, nil), StoreConfig{})
	p := filledShardedPool(t, st)
	ctx := context.Background()
	// Kill the master of the first shard.
	tags := shardTags("default", 3)
	cc := clusterClient(t, nodes, nil)
	owner, err := cc.MasterForKey(ctx, Keys("", tags[0]).Ready())
	if err != nil {
		t.Fatal(err)
	}
	var healthy []string
	for _, tag := range tags {
		c, err := cc.MasterForKey(ctx, Keys("", tag).Ready())
		if err != nil {
			t.Fatal(err)
		}
		if c.Options().Addr != owner.Options().Addr {
			healthy = append(healthy, tag)
		}
	}
	minted := func() int64 {
		var n int64
		for _, tag := range healthy {
			n += mustStats(t, st, tag).Minted
		}
		return n
	}
	before := minted()
	for _, n := range nodes {
		if n.Addr == owner.Options().Addr {
			n.Stop()
		}
	}

	res := steadyLoad(t, p, 40, 6*time.Second)
	after := minted()
	t.Logf("master %s killed (shards %v stay)", owner.Options().Addr, healthy)
	res.check(t, after-before)
	s, err := p.Stats(ctx, "default")
	if err != nil || s.Unreachable != 1 {
		t.Errorf("stats with one master dead: %+v, %v; want 1 unreachable shard", s, err)
	}
}
