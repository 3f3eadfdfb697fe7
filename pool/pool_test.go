package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/mint"
)

// fakeMinter mints numbered tokens that live ttl. It can be told to fail.
type fakeMinter struct {
	ttl   time.Duration
	delay time.Duration

	started atomic.Int64 // calls entered
	n       atomic.Int64 // calls past the delay
	fail    atomic.Pointer[error]
}

func (m *fakeMinter) Mint(ctx context.Context, _ mint.Request) (mint.Credential, error) {
	m.started.Add(1)
	if m.delay > 0 {
		select {
		case <-time.After(m.delay):
		case <-ctx.Done():
			return mint.Credential{}, ctx.Err()
		}
	}
	if e := m.fail.Load(); e != nil {
		m.n.Add(1)
		return mint.Credential{}, *e
	}
	n := m.n.Add(1)
	return mint.Credential{
		Token:      fmt.Sprintf("tok-%d", n),
		ICEServers: []byte(`[{"urls":"stun:x"}]`),
		ExpiresAt:  time.Now().Add(m.ttl),
	}, nil
}

func (m *fakeMinter) setErr(err error) {
	if err == nil {
		m.fail.Store(nil)
		return
	}
	m.fail.Store(&err)
}

func newTestStore(tb testing.TB) *Store {
	tb.Helper()
	srv := redistest.New(tb)
	return NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
}

// waitRounds waits until the refiller has run n more rounds.
func waitRounds(t *testing.T, p *Pool, n int64) {
	t.Helper()
	end := p.refill.rounds.Load() + n
	poll.Until(t, fmt.Sprintf("%d refill rounds", n), 10*time.Second, func() bool { return p.refill.rounds.Load() >= end })
}

func newTestPool(tb testing.TB, st *Store, m mint.Minter, mut func(*Config)) *Pool {
	tb.Helper()
	cfg := Config{
		Store:          st,
		Profiles:       []Profile{{Name: "default", Minter: m, Target: 5, MinRemaining: time.Second}},
		MaxClockSkew:   time.Millisecond,
		RefillInterval: 50 * time.Millisecond,
	}
	if mut != nil {
		mut(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = p.Close(context.Background()) })
	return p
}

func mustStats(tb testing.TB, st *Store, profile string) Stats {
	tb.Helper()
	s, err := st.Stats(context.Background(), profile, 0)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// putOne reserves and pools one credential expiring at exp, retiring at exp.
func putOne(tb testing.TB, st *Store, profile, id string, exp time.Time) {
	tb.Helper()
	ctx := context.Background()
	res, err := st.reserve(ctx, profile, reserveArgs{target: 1 << 20, want: 1, idPrefix: "r-" + id + "-", firstID: 1, lease: time.Minute})
	if err != nil || len(res.ids) != 1 {
		tb.Fatalf("reserve: %v %+v", err, res)
	}
	if _, _, err := st.put(ctx, profile, putArgs{resID: res.ids[0], entryID: id, retire: exp, cred: mint.Credential{Token: "tok-" + id, ExpiresAt: exp}}, 0); err != nil {
		tb.Fatal(err)
	}
}

func TestStore(t *testing.T) {
	ctx := context.Background()

	t.Run("a take from an empty pool is a counted miss", func(t *testing.T) {
		st := newTestStore(t)
		if _, err := st.Take(ctx, "p", "req-1", time.Second); !errors.Is(err, ErrEmpty) {
			t.Fatalf("got %v, want ErrEmpty", err)
		}
		if s := mustStats(t, st, "p"); s.Misses != 1 {
			t.Fatalf("misses = %d, want 1", s.Misses)
		}
	})

	t.Run("a pooled entry is handed out once, soonest-retiring first", func(t *testing.T) {
		st := newTestStore(t)
		now := time.Now()
		putOne(t, st, "p", "late", now.Add(time.Hour))
		putOne(t, st, "p", "early", now.Add(time.Minute))
		h1, err := st.Take(ctx, "p", "req-1", time.Second)
		if err != nil || h1.ID != "early" || h1.Token != "tok-early" {
			t.Fatalf("first take = %+v, %v; want early", h1.ID, err)
		}
		h2, err := st.Take(ctx, "p", "req-2", time.Second)
		if err != nil || h2.ID != "late" {
			t.Fatalf("second take = %+v, %v; want late", h2.ID, err)
		}
		if _, err := st.Take(ctx, "p", "req-3", time.Second); !errors.Is(err, ErrEmpty) {
			t.Fatalf("third take: %v, want ErrEmpty", err)
		}
		if s := mustStats(t, st, "p"); s.HandedOut != 2 || s.Minted != 2 || s.Ready != 0 {
			t.Fatalf("stats = %+v", s)
		}
	})

	t.Run("a retried take with the same request id returns the same entry", func(t *testing.T) {
		st := newTestStore(t)
		putOne(t, st, "p", "a", time.Now().Add(time.Hour))
		putOne(t, st, "p", "b", time.Now().Add(time.Hour))
		h1, err := st.Take(ctx, "p", "req-1", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		h2, err := st.Take(ctx, "p", "req-1", time.Second)
		if err != nil || h2.ID != h1.ID || h2.Token != h1.Token {
			t.Fatalf("retry = %v %v, want %v", h2.ID, err, h1.ID)
		}
		if s := mustStats(t, st, "p"); s.HandedOut != 1 || s.Ready != 1 {
			t.Fatalf("a retry must not pop a second entry: %+v", s)
		}
	})

	t.Run("entries with less than the minimum life are evicted as waste, never handed out", func(t *testing.T) {
		st := newTestStore(t)
		now := time.Now()
		putOne(t, st, "p", "short", now.Add(5*time.Second))
		putOne(t, st, "p", "long", now.Add(time.Hour))
		h, err := st.Take(ctx, "p", "req-1", 30*time.Second)
		if err != nil || h.ID != "long" {
			t.Fatalf("take = %v %v, want long", h.ID, err)
		}
		if s := mustStats(t, st, "p"); s.Wasted != 1 || s.Ready != 0 {
			t.Fatalf("stats = %+v, want 1 wasted, none ready", s)
		}
	})

	t.Run("a put of an already unusable credential is counted as waste", func(t *testing.T) {
		st := newTestStore(t)
		res, _ := st.reserve(ctx, "p", reserveArgs{target: 1, want: 1, idPrefix: "r", firstID: 1, lease: time.Minute})
		exp := time.Now().Add(2 * time.Second)
		pooled, _, err := st.put(ctx, "p", putArgs{resID: res.ids[0], entryID: "e1", retire: exp, cred: mint.Credential{Token: "t", ExpiresAt: exp}}, 10*time.Second)
		if err != nil || pooled {
			t.Fatalf("put = %v, %v; want not pooled", pooled, err)
		}
		if s := mustStats(t, st, "p"); s.Wasted != 1 || s.Minted != 1 || s.InFlight != 0 {
			t.Fatalf("stats = %+v", s)
		}
	})

	t.Run("a retried put after the entry was handed out does not bring it back", func(t *testing.T) {
		st := newTestStore(t)
		exp := time.Now().Add(time.Hour)
		res, _ := st.reserve(ctx, "p", reserveArgs{target: 1, want: 1, idPrefix: "r", firstID: 1, lease: time.Minute})
		c := mint.Credential{Token: "t", ExpiresAt: exp}
		if _, _, err := st.put(ctx, "p", putArgs{resID: res.ids[0], entryID: "e1", retire: exp, cred: c}, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Take(ctx, "p", "req-1", 0); err != nil {
			t.Fatal(err)
		}
		if pooled, _, err := st.put(ctx, "p", putArgs{resID: res.ids[0], entryID: "e1", retire: exp, cred: c}, 0); err != nil || pooled {
			t.Fatalf("retried put = %v, %v; want not pooled", pooled, err)
		}
		if _, err := st.Take(ctx, "p", "req-2", 0); !errors.Is(err, ErrEmpty) {
			t.Fatalf("take after retried put: %v, want ErrEmpty", err)
		}
		if s := mustStats(t, st, "p"); s.Minted != 1 {
			t.Fatalf("minted = %d, want 1", s.Minted)
		}
	})

	t.Run("reservations never take usable plus in-flight past the target", func(t *testing.T) {
		st := newTestStore(t)
		putOne(t, st, "p", "a", time.Now().Add(time.Hour))
		a := reserveArgs{target: 5, want: 3, idPrefix: "r", firstID: 1, lease: time.Minute}
		res, err := st.reserve(ctx, "p", a)
		if err != nil || len(res.ids) != 3 || res.usable != 1 {
			t.Fatalf("first = %+v %v; want 3 granted, 1 usable", res, err)
		}
		a.firstID = 4
		res, err = st.reserve(ctx, "p", a)
		if err != nil || len(res.ids) != 1 || res.inFlight != 3 {
			t.Fatalf("second = %+v %v; want 1 granted, 3 in flight", res, err)
		}
	})

	t.Run("entries that will be unusable within the lead don't count toward the target", func(t *testing.T) {
		st := newTestStore(t)
		putOne(t, st, "p", "soon", time.Now().Add(3*time.Second))
		putOne(t, st, "p", "later", time.Now().Add(time.Hour))
		res, err := st.reserve(ctx, "p", reserveArgs{target: 2, want: 2, idPrefix: "r", firstID: 1, lease: time.Minute, lead: 5 * time.Second})
		if err != nil || res.usable != 1 || len(res.ids) != 1 {
			t.Fatalf("reserve = %+v %v; want 1 usable, 1 granted", res, err)
		}
	})

	t.Run("a lapsed lease frees its slot and is counted", func(t *testing.T) {
		st := newTestStore(t)
		if _, err := st.reserve(ctx, "p", reserveArgs{target: 1, want: 1, idPrefix: "r", firstID: 1, lease: 30 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		poll.Until(t, "the lease to lapse", 5*time.Second, func() bool {
			res, err := st.reserve(ctx, "p", reserveArgs{target: 1, want: 1, idPrefix: "r", firstID: 2, lease: time.Minute})
			return err == nil && len(res.ids) == 1
		})
		if s := mustStats(t, st, "p"); s.Lapsed != 1 || s.InFlight != 1 {
			t.Fatalf("stats = %+v", s)
		}
	})
}

func TestTakeIsAtMostOnceUnderConcurrency(t *testing.T) {
	st := newTestStore(t)
	const entries = 400
	for i := range entries {
		putOne(t, st, "p", fmt.Sprintf("e%d", i), time.Now().Add(time.Hour))
	}
	var (
		mu   sync.Mutex
		seen = map[string]int{}
		wg   sync.WaitGroup
	)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				h, err := st.Take(context.Background(), "p", fmt.Sprintf("w%d-%d", w, i), 0)
				if errors.Is(err, ErrEmpty) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				seen[h.ID]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != entries {
		t.Fatalf("handed out %d distinct entries, want %d", len(seen), entries)
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("entry %s handed out %d times", id, n)
		}
	}
}

func TestPool(t *testing.T) {
	ctx := context.Background()

	t.Run("the refiller fills every profile to its target and no further", func(t *testing.T) {
		st := newTestStore(t)
		m := &fakeMinter{ttl: time.Hour}
		p := newTestPool(t, st, m, nil)
		p.Open()
		poll.Until(t, "5 ready", 10*time.Second, func() bool { return mustStats(t, st, "default").Ready == 5 })
		waitRounds(t, p, 4) // refill rounds that must not mint more
		if s := mustStats(t, st, "default"); s.Ready != 5 || s.Minted != 5 || m.n.Load() != 5 {
			t.Fatalf("stats = %+v, mints = %d; want exactly 5", s, m.n.Load())
		}
	})

	t.Run("a take is replaced", func(t *testing.T) {
		st := newTestStore(t)
		p := newTestPool(t, st, &fakeMinter{ttl: time.Hour}, nil)
		p.Open()
		poll.Until(t, "5 ready", 10*time.Second, func() bool { return mustStats(t, st, "default").Ready == 5 })
		h, err := p.Get(ctx, "default", "req-1")
		if err != nil || h.Source != SourcePool {
			t.Fatalf("get = %+v, %v", h, err)
		}
		poll.Until(t, "the pool back at 5", 10*time.Second, func() bool { return mustStats(t, st, "default").Ready == 5 })
	})

	t.Run("a miss is minted directly and never pooled", func(t *testing.T) {
		st := newTestStore(t)
		m := &fakeMinter{ttl: time.Hour}
		p := newTestPool(t, st, m, nil) // not opened: nothing refills
		h, err := p.Get(ctx, "default", "req-1")
		if err != nil || h.Source != SourceDirect || h.Token == "" {
			t.Fatalf("get = %+v, %v", h, err)
		}
		if s := mustStats(t, st, "default"); s.Direct != 1 || s.Misses != 1 || s.Ready != 0 {
			t.Fatalf("stats = %+v", s)
		}
	})

	t.Run("a miss with direct mints disabled is unavailable at once", func(t *testing.T) {
		st := newTestStore(t)
		m := &fakeMinter{ttl: time.Hour}
		p := newTestPool(t, st, m, func(c *Config) { c.DirectMints = -1 })
		_, err := p.Get(ctx, "default", "req-1")
		if !errors.Is(err, ErrUnavailable) || m.n.Load() != 0 {
			t.Fatalf("get: %v (mints %d), want ErrUnavailable and no mint", err, m.n.Load())
		}
	})

	t.Run("misses past the busy mint slots are unavailable after the request wait, not at their deadline", func(t *testing.T) {
		st := newTestStore(t)
		m := &fakeMinter{ttl: time.Hour, delay: 3 * time.Second}
		p := newTestPool(t, st, m, func(c *Config) { c.DirectMints = 1 })
		go func() { _, _ = p.Get(ctx, "default", "holds-the-slot") }()
		poll.Until(t, "the slot to be taken", 2*time.Second, func() bool { return m.started.Load() == 1 })
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		start := time.Now()
		_, err := p.Get(rctx, "default", "waits")
		took := time.Since(start)
		var ue *mint.UnavailableError
		if !errors.As(err, &ue) || ue.RetryAfter <= 0 || m.started.Load() != 1 {
			t.Fatalf("get: %v (mints started %d), want ErrUnavailable with Retry-After and no second mint", err, m.started.Load())
		}
		// Not a speed target: it waits RequestWait (250ms); a queue would
		// hold it until the slot frees (3s) or its deadline (10s).
		if took < RequestWait || took > 2*time.Second {
			t.Fatalf("answered after %v, want about RequestWait (%v)", took, RequestWait)
		}
	})

	t.Run("a provider failure on a miss is a provider error", func(t *testing.T) {
		st := newTestStore(t)
		m := &fakeMinter{ttl: time.Hour}
		m.setErr(errors.New("boom"))
		p := newTestPool(t, st, m, nil)
		if _, err := p.Get(ctx, "default", "req-1"); !errors.Is(err, ErrProvider) {
			t.Fatalf("get: %v, want ErrProvider", err)
		}
	})

	t.Run("a credential shorter-lived than the minimum is refused", func(t *testing.T) {
		st := newTestStore(t)
		p := newTestPool(t, st, &fakeMinter{ttl: 500 * time.Millisecond}, nil)
		if _, err := p.Get(ctx, "default", "req-1"); !errors.Is(err, ErrProvider) {
			t.Fatalf("get: %v, want ErrProvider", err)
		}
	})

	t.Run("an unknown profile is refused", func(t *testing.T) {
		p := newTestPool(t, newTestStore(t), &fakeMinter{ttl: time.Hour}, nil)
		if _, err := p.Get(ctx, "nope", "req-1"); !errors.Is(err, ErrUnknownProfile) {
			t.Fatalf("get: %v, want ErrUnknownProfile", err)
		}
	})

	t.Run("failed mints release their reservations and back off", func(t *testing.T) {
		st := newTestStore(t)
		m := &fakeMinter{ttl: time.Hour}
		m.setErr(errors.New("provider down"))
		clock := newTestClock() // stands still unless moved: the backoff never ends by itself
		p := newTestPool(t, st, m, func(c *Config) { c.RefillConcurrency = 2; c.Now = clock.Now })
		p.Open()
		// Until a mint succeeds the refiller mints one at a time, so the
		// first failure, counted as its reservation is released, is the only
		// mint so far.
		poll.Until(t, "a failure", 5*time.Second, func() bool { return mustStats(t, st, "default").MintFailed >= 1 })
		failed := m.n.Load()
		if s := mustStats(t, st, "default"); s.InFlight != 0 {
			t.Fatalf("in flight = %d while backing off; want the reservations released", s.InFlight)
		}
		// Backing off, rounds lease nothing: not one mint per round per slot.
		waitRounds(t, p, 10)
		if n := m.n.Load(); n != failed {
			t.Fatalf("%d mint attempts in 10 refill rounds of backoff after %d failures", n-failed, failed)
		}
		// Once the backoff's time has passed, the next round tries again.
		clock.Advance(maxBackoff)
		poll.Until(t, "a retry", 5*time.Second, func() bool { return m.n.Load() > failed })
		// The retry's failure may be handled after the provider is back
		// and the clock has moved, backing off from the moved clock: the
		// clock moves on at every look, so no backoff outlasts the wait.
		m.setErr(nil)
		poll.Until(t, "recovery", 10*time.Second, func() bool {
			clock.Advance(maxBackoff)
			return mustStats(t, st, "default").Ready == 5
		})
	})

	t.Run("close lets mints in flight finish into the pool", func(t *testing.T) {
		st := newTestStore(t)
		m := &fakeMinter{ttl: time.Hour, delay: 300 * time.Millisecond}
		p := newTestPool(t, st, m, nil)
		p.Open()
		poll.Until(t, "mints in flight", 5*time.Second, func() bool { return m.started.Load() > 0 })
		if err := p.Close(ctx); err != nil {
			t.Fatal(err)
		}
		s := mustStats(t, st, "default")
		if s.InFlight != 0 || s.Ready == 0 || int64(s.Ready) != m.n.Load() {
			t.Fatalf("after close: %+v, mints %d; want none in flight, every mint pooled", s, m.n.Load())
		}
		if _, err := p.Get(ctx, "default", "req-1"); !errors.Is(err, ErrClosed) {
			t.Fatalf("get after close: %v, want ErrClosed", err)
		}
	})

	t.Run("close with an expired deadline cancels mints and releases their reservations", func(t *testing.T) {
		st := newTestStore(t)
		m := &fakeMinter{ttl: time.Hour, delay: time.Hour}
		p := newTestPool(t, st, m, nil)
		p.Open()
		poll.Until(t, "mints in flight", 5*time.Second, func() bool { return m.started.Load() > 0 })
		cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		if err := p.Close(cctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("close: %v", err)
		}
		if s := mustStats(t, st, "default"); s.InFlight != 0 {
			t.Fatalf("in flight after close = %d, want 0", s.InFlight)
		}
	})
}

func discardLog() *slog.Logger { return slog.New(slog.NewJSONHandler(io.Discard, nil)) }
