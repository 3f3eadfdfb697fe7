package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
)

// Issue 20, findings 2 and 3: lost counts the takes that ran, or may have
// run, and whose credential was not recovered; nothing else.

// Finding 2: takes refused before they ran (Redis refusing writes, the
// connection refused) hold nothing, and are not counted lost however long
// the outage lasts.
func TestATakeThatNeverRanIsNotCountedLost(t *testing.T) {
	ctx := context.Background()
	srv := redistest.StartProcess(t)
	rdb := srv.Client()
	hook := &tagRefuser{}
	rdb.AddHook(hook)
	st := NewStore(rdb, StoreConfig{KeyPrefix: srv.Prefix, ClaimTTL: 2 * time.Second})
	clock := newTestClock()
	m := &fakeMinter{ttl: time.Hour}
	p := newTestPool(t, st, m, func(c *Config) {
		c.Now = clock.Now
		c.DirectMints = -1
		c.Logger = discardLog()
	})
	p.Open()
	poll.Until(t, "the pool to fill", 10*time.Second, func() bool { return mustStats(t, st, "default").Usable == 5 })

	admin := srv.Client()
	if err := admin.ConfigSet(ctx, "min-replicas-to-write", "1").Err(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := p.Get(ctx, "default", fmt.Sprint("noreplicas-", i)); err == nil {
			t.Fatal("a take succeeded while Redis refused writes")
		}
	}
	if err := admin.ConfigSet(ctx, "min-replicas-to-write", "0").Err(); err != nil {
		t.Fatal(err)
	}
	hook.refuse("default")
	for i := range 5 {
		if _, err := p.Get(ctx, "default", fmt.Sprint("refused-", i)); err == nil {
			t.Fatal("a take succeeded while the connection was refused")
		}
	}
	clock.Advance(2500 * time.Millisecond) // past every claim the takes could have set
	hook.tag.Store(nil)
	waitRounds(t, p, 3)
	s := mustStats(t, st, "default")
	if s.Lost != 0 || s.HandedOut != 0 || s.Ready != 5 {
		t.Fatalf("after 10 takes refused before they ran: lost %d, handed out %d, pooled %d; want 0, 0, 5", s.Lost, s.HandedOut, s.Ready)
	}
}

// blackhole lets one take run and loses its reply, then holds every take
// and recovery until its end: they go dark once the take ran. A command
// whose context ends first is never sent.
type blackhole struct {
	mu    sync.Mutex
	armed bool
	end   time.Time
	for_  time.Duration
}

func (b *blackhole) arm(d time.Duration) {
	b.mu.Lock()
	b.armed, b.for_ = true, d
	b.mu.Unlock()
}

// hold holds a command until the end; lose reports that it is the take
// whose reply is lost.
func (b *blackhole) hold(ctx context.Context) (lose bool, err error) {
	b.mu.Lock()
	if b.armed {
		b.armed, b.end = false, time.Now().Add(b.for_)
		b.mu.Unlock()
		return true, nil
	}
	end := b.end
	b.mu.Unlock()
	if d := time.Until(end); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	return false, nil
}

func (b *blackhole) DialHook(next redis.DialHook) redis.DialHook { return next }
func (b *blackhole) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !takeOrRecover(cmd) {
			return next(ctx, cmd)
		}
		lose, err := b.hold(ctx)
		if err == nil {
			err = next(ctx, cmd)
		}
		if lose && err == nil {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			cmd.SetErr(err)
		}
		return err
	}
}
func (b *blackhole) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !takeOrRecover(cmds...) {
			return next(ctx, cmds)
		}
		lose, err := b.hold(ctx)
		if err == nil {
			err = next(ctx, cmds)
		}
		if lose && err == nil {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			for _, c := range cmds {
				c.SetErr(err)
			}
		}
		return err
	}
}

func takeOrRecover(cmds ...redis.Cmder) bool {
	for _, c := range cmds {
		if a := c.Args(); len(a) > 1 && (a[1] == takeScript.Hash() || a[1] == recoverScript.Hash()) {
			return true
		}
	}
	return false
}

// Finding 3: a take whose reply was lost, with Redis out of reach until
// its claim expired, is counted lost, even when a recovery sent before
// the claim expired reaches Redis only after.
func TestATakeRecoveredTooLateIsCountedLost(t *testing.T) {
	ctx := context.Background()
	srv := redistest.New(t)
	direct := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
	for _, id := range []string{"warm", "lost"} {
		putOne(t, direct, "default", id, time.Now().Add(time.Hour))
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, ReadTimeout: time.Second})
	t.Cleanup(func() { rdb.Close() })
	hole := &blackhole{}
	rdb.AddHook(hole)
	st := NewStore(rdb, StoreConfig{KeyPrefix: srv.Prefix, ClaimTTL: 2500 * time.Millisecond})
	m := &fakeMinter{ttl: time.Hour}
	m.setErr(fmt.Errorf("no mints in this test"))
	p := newTestPool(t, st, m, func(c *Config) {
		c.Profiles = []Profile{{Name: "default", Minter: m, Target: 2, MinRemaining: time.Second}}
		c.DirectMints = -1
		c.Logger = discardLog()
	})
	if _, err := p.Get(ctx, "default", "warm"); err != nil { // loads the script
		t.Fatal(err)
	}
	// Dark for longer than the claim lives: the first recovery (1 s) fails
	// and the refiller's, sent at about 1 s (before the horizon, 1.5 s), reaches Redis
	// at 2.8 s, after the claim expired, and finds nothing.
	hole.arm(2800 * time.Millisecond)
	rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := p.Get(rctx, "default", "lost")
	cancel()
	if err == nil {
		t.Fatal("the take with a lost reply succeeded")
	}
	p.Open() // the refiller recovers what the take left
	poll.Until(t, "the entry to be counted lost", 10*time.Second, func() bool {
		return mustStats(t, direct, "default").Lost == 1
	})
	s := mustStats(t, direct, "default")
	if s.HandedOut != 2 || s.Returned != 0 || s.Ready != 0 {
		t.Fatalf("stats %+v; want 2 handed out (one delivered, one lost), none returned or pooled", s)
	}
}

// A take whose reply was lost is recovered, but the recovery's reply is
// lost too, and Redis is out of reach until the claim expired: the
// recovery sent again learns from its tombstone that the entry was pooled
// again, and nothing is counted lost (before, it found the claim gone and
// counted the entry lost, although it was back in the pool).
func TestARecoverySentAgainLearnsWhatTheFirstDid(t *testing.T) {
	ctx := context.Background()
	srv := redistest.New(t)
	direct := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
	for _, id := range []string{"warm", "taken"} {
		putOne(t, direct, "default", id, time.Now().Add(time.Hour))
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	// The take's reply is lost, and the first recovery's; later
	// recoveries are refused until open.
	var open atomic.Bool
	rdb.AddHook(&lostReply{match: takeUnder("taken")})
	rdb.AddHook(&lostReply{match: isRecover, later: func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
		if open.Load() {
			return next(ctx, cmd)
		}
		return refused(ctx, cmd, next)
	}})
	st := NewStore(rdb, StoreConfig{KeyPrefix: srv.Prefix, ClaimTTL: 2 * time.Second})
	m := &fakeMinter{ttl: time.Hour}
	m.setErr(fmt.Errorf("no mints in this test"))
	p := newTestPool(t, st, m, func(c *Config) {
		c.Profiles = []Profile{{Name: "default", Minter: m, Target: 2, MinRemaining: time.Second}}
		c.DirectMints = -1
		c.Logger = discardLog()
	})
	if _, err := p.Get(ctx, "default", "warm"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Get(ctx, "default", "taken"); err == nil {
		t.Fatal("the take whose reply was lost succeeded")
	}
	p.Open()
	time.Sleep(2500 * time.Millisecond) // past the claim, and the horizon
	open.Store(true)
	poll.Until(t, "the refiller to recover the take", 10*time.Second, func() bool {
		p.refill.mu.Lock()
		defer p.refill.mu.Unlock()
		return len(p.refill.state["default"].pending) == 0
	})
	s := mustStats(t, direct, "default")
	if s.Lost != 0 || s.Returned != 1 || s.Ready != 1 {
		t.Fatalf("lost %d, returned %d, pooled %d; want 0, 1, 1: the entry is back in the pool", s.Lost, s.Returned, s.Ready)
	}
}

// A take whose reply was lost and whose retry reaches Redis only after
// the first attempt's claim expired takes nothing more: the retry is too
// late for anyone, and the first attempt's entry is recovered or counted
// (the take fails as unrecovered). Before, the retry took a second entry
// under the expired claim and the first was lost, uncounted.
func TestARetryAfterItsClaimExpiredTakesNothing(t *testing.T) {
	ctx := context.Background()
	srv := redistest.New(t)
	direct := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
	for _, id := range []string{"warm", "a", "b"} {
		putOne(t, direct, "default", id, time.Now().Add(time.Hour))
	}
	if _, err := direct.Take(ctx, "default", "warm", 0); err != nil { // loads the script
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: 2, MinRetryBackoff: time.Millisecond, MaxRetryBackoff: time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	// The first attempt runs and its reply is lost; the retry is held
	// until the first attempt's claim (2 s) has expired.
	rdb.AddHook(&lostReply{match: takeUnder("late"), later: func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
		time.Sleep(2500 * time.Millisecond)
		return next(ctx, cmd)
	}})
	st := NewStore(rdb, StoreConfig{KeyPrefix: srv.Prefix, ClaimTTL: 2 * time.Second})
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	h, err := st.Take(tctx, "default", "late", 0)
	var ue *UnrecoveredError
	if !errors.As(err, &ue) {
		t.Fatalf("take = %q, %v; want it unrecovered (the first attempt's entry is gone with its claim)", h.ID, err)
	}
	if s := mustStats(t, direct, "default"); s.Ready != 1 || s.HandedOut != 2 {
		t.Fatalf("pooled %d, handed out %d; want 1 left, 2 taken (warm, and the first attempt's)", s.Ready, s.HandedOut)
	}
}
