package pool

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/mint"
)

// The tests in this file replay the findings of the pool review (issue
// "Nothing lost, nothing doubled"), one each: every one failed on the code
// before the fix.

// testClock is a clock a test moves by hand; scripts read it as "now".
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock { return &testClock{t: time.Now()} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Finding 1: a take that runs in Redis but whose reply misses the request's
// deadline must not lose its entry.
func TestPromiseATakePastItsDeadlineLosesNothing(t *testing.T) {
	srv := redistest.New(t)
	direct := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
	for _, id := range []string{"a", "b", "c"} {
		putOne(t, direct, "p", id, time.Now().Add(time.Hour))
	}
	proxy := redistest.NewProxy(t, srv.Addr)
	rdb := redis.NewClient(&redis.Options{Addr: proxy.Addr, ContextTimeoutEnabled: true, MaxRetries: -1})
	defer rdb.Close()
	slow := NewStore(rdb, StoreConfig{KeyPrefix: srv.Prefix})
	if err := takeScript.Load(context.Background(), rdb).Err(); err != nil {
		t.Fatal(err)
	}

	proxy.DelayReplies(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	_, err := slow.Take(ctx, "p", "req-1", time.Second)
	cancel()
	if err == nil || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("take past its deadline: %v, want a 503-class error", err)
	}
	s := mustStats(t, direct, "p")
	if s.Ready != 3 || s.HandedOut != 0 || s.Returned != 1 {
		t.Fatalf("after a take whose reply came too late: %+v; want 3 ready, 0 handed out, 1 returned", s)
	}

	// A take under that claim that reaches Redis only now hands out nothing.
	proxy.DelayReplies(0)
	if _, err := direct.Take(context.Background(), "p", "req-1", time.Second); !errors.Is(err, ErrEmpty) {
		t.Fatalf("a late take under an abandoned claim: %v, want ErrEmpty", err)
	}
	if s := mustStats(t, direct, "p"); s.Ready != 3 {
		t.Fatalf("a late take under an abandoned claim popped an entry: %+v", s)
	}
}

// Finding 1: a caller who has gone by the time its take returns gets its
// entry put back.
func TestPromiseReturnPutsAnUndeliveredHandoutBack(t *testing.T) {
	st := newTestStore(t)
	p := newTestPool(t, st, &fakeMinter{ttl: time.Hour}, nil) // not opened: no refill
	putOne(t, st, "default", "a", time.Now().Add(time.Hour))
	h, err := st.Take(context.Background(), "default", "req-1", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	p.Return(h)
	if s := mustStats(t, st, "default"); s.Ready != 1 || s.HandedOut != 0 || s.Returned != 1 {
		t.Fatalf("after Return: %+v; want the entry pooled again", s)
	}
	again, err := p.Get(context.Background(), "default", "req-2")
	if err != nil || again.ID != "a" || again.Token != "tok-a" {
		t.Fatalf("the returned entry: %+v, %v", again.ID, err)
	}

	// A credential minted on a miss for a caller who has gone is pooled.
	direct, err := p.Get(context.Background(), "default", "req-3")
	if err != nil || direct.Source != SourceDirect {
		t.Fatalf("a miss: %+v, %v; want a direct mint", direct, err)
	}
	p.Return(direct)
	if s := mustStats(t, st, "default"); s.Ready != 1 || s.Minted != 2 {
		t.Fatalf("after returning a direct mint: %+v; want it pooled", s)
	}
	if h, err := p.Get(context.Background(), "default", "req-4"); err != nil || h.ID != direct.ID || h.Source != SourcePool {
		t.Fatalf("the returned direct mint: %+v, %v", h.ID, err)
	}
}

// failCounter makes one client's HINCRBY of a named counter fail, as a
// broken connection would, while everything else goes through.
type failCounter struct{ field string }

func (f failCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (f failCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (f failCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if a := cmd.Args(); cmd.Name() == "hincrby" && len(a) > 2 && a[2] == f.field {
			cmd.SetErr(errors.New("connection reset by peer"))
			return cmd.Err()
		}
		return next(ctx, cmd)
	}
}

// Finding 1: with WaitReplicas, failing to count an unreplicated take must
// not fail the take that holds the entry.
func TestPromiseAnUnreplicatedCounterFailureKeepsTheTake(t *testing.T) {
	sen := redistest.StartSentinel(t)
	rdb := sen.Primary.Client()
	rdb.AddHook(failCounter{field: "unreplicated"})
	st := NewStore(rdb, StoreConfig{KeyPrefix: sen.Primary.Prefix, WaitReplicas: 2, WaitTimeout: 20 * time.Millisecond})
	putOne(t, st, "p", "a", time.Now().Add(time.Hour))
	h, err := st.Take(context.Background(), "p", "req-1", 0)
	if err != nil || h.ID != "a" {
		t.Fatalf("take with a failing counter: %+v, %v; want entry a", h.ID, err)
	}
}

// Finding 2: a replica that lacks the newest seal key leaves entries sealed
// with it for a replica that has it, instead of burning them.
func TestPromiseEntriesSealedWithAnUnknownKeyAreLeftForOthers(t *testing.T) {
	ctx := context.Background()
	k1, k2 := randomKey(t), randomKey(t)
	srv := redistest.New(t)
	rotated := sealedStore(t, srv, k2, k1)
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		putOne(t, rotated, "p", id, time.Now().Add(time.Hour))
	}
	old := sealedStore(t, srv, k1)
	if _, err := old.Take(ctx, "p", "req-1", 0); !errors.Is(err, ErrEmpty) {
		t.Fatalf("take by a replica without the sealing key: %v, want ErrEmpty", err)
	}
	if s := mustStats(t, rotated, "p"); s.Discarded != 0 || s.Ready != 5 || s.HandedOut != 0 {
		t.Fatalf("after a take by a [K1] replica: %+v; want 5 still pooled, 0 discarded", s)
	}
	h, err := rotated.Take(ctx, "p", "req-2", 0)
	if err != nil || h.Token != "tok-"+h.ID {
		t.Fatalf("take by a [K2,K1] replica: %+v, %v", h.ID, err)
	}
	// A plain replica (no keys) leaves sealed entries too, and a sealed one
	// leaves plain entries.
	plain := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
	if _, err := plain.Take(ctx, "p", "req-3", 0); !errors.Is(err, ErrEmpty) {
		t.Fatalf("take by an unsealed replica: %v, want ErrEmpty", err)
	}
	putOne(t, plain, "q", "plain", time.Now().Add(time.Hour))
	if _, err := rotated.Take(ctx, "q", "req-4", 0); !errors.Is(err, ErrEmpty) {
		t.Fatalf("sealed replica took a plain entry: %v", err)
	}
	if s := mustStats(t, rotated, "p"); s.Discarded != 0 || s.Ready != 4 {
		t.Fatalf("stats %+v; want 4 still pooled, 0 discarded", s)
	}
}

// Finding 3: a mint that lands after its reservation lapsed, once others
// have minted in its place, is not pooled over the target.
func TestPromiseALateMintDoesNotOverfillThePool(t *testing.T) {
	ctx := context.Background()
	st := newTestStore(t)
	clock := newTestClock()
	st.clock = clock.Now
	args := func(prefix string) reserveArgs {
		return reserveArgs{target: 4, want: 4, idPrefix: prefix, firstID: 1, lease: time.Second}
	}
	a, err := st.reserve(ctx, "p", args("A/"))
	if err != nil || len(a.ids) != 4 {
		t.Fatalf("replica A reserves: %v %+v", err, a)
	}
	clock.Advance(2 * time.Second) // A's leases lapse: A looks dead
	b, err := st.reserve(ctx, "p", args("B/"))
	if err != nil || len(b.ids) != 4 {
		t.Fatalf("replica B reserves after A's leases lapsed: %v %+v", err, b)
	}
	exp := clock.Now().Add(time.Hour)
	for i, id := range b.ids {
		if _, _, err := st.put(ctx, "p", putArgs{resID: id, entryID: "b" + string(rune('0'+i)), retire: exp, cred: mint.Credential{Token: "t", ExpiresAt: exp}}, 0); err != nil {
			t.Fatal(err)
		}
	}
	for i, id := range a.ids { // A was only slow: its mints land now
		if _, _, err := st.put(ctx, "p", putArgs{resID: id, entryID: "a" + string(rune('0'+i)), retire: exp, cred: mint.Credential{Token: "t", ExpiresAt: exp}}, 0); err != nil {
			t.Fatal(err)
		}
	}
	s := mustStats(t, st, "p")
	if s.Ready+s.InFlight > 4 {
		t.Fatalf("usable %d + in flight %d > target 4 after late mints", s.Ready, s.InFlight)
	}
	if s.Minted != 8 || s.Surplus != 4 || s.Wasted != 4 || s.Lapsed != 4 {
		t.Fatalf("stats %+v; want 8 minted, 4 surplus counted as waste, 4 lapsed", s)
	}
}

// Finding 4: a replayed claim is held to the freshness check: a replay 4 s
// later does not return an entry that now has too little life left.
func TestPromiseAReplayedClaimIsStillFresh(t *testing.T) {
	ctx := context.Background()
	st := newTestStore(t)
	clock := newTestClock()
	st.clock = clock.Now
	putOne(t, st, "p", "short", clock.Now().Add(33*time.Second))
	putOne(t, st, "p", "long", clock.Now().Add(time.Hour))
	h, err := st.Take(ctx, "p", "req-1", 32*time.Second)
	if err != nil || h.ID != "short" {
		t.Fatalf("first take: %+v, %v; want short", h.ID, err)
	}
	clock.Advance(4 * time.Second) // 29 s left against 32 s required
	again, err := st.Take(ctx, "p", "req-1", 32*time.Second)
	if err != nil || again.ID != "long" {
		t.Fatalf("replayed take 4 s later: %+v, %v; want a fresh entry (long)", again.ID, err)
	}
	if s := mustStats(t, st, "p"); s.HandedOut != 1 || s.Wasted != 1 {
		t.Fatalf("stats %+v; want 1 handed out, the stale replay counted as waste", s)
	}
}

// Finding 6: a credential whose expiry is implausibly far ahead (an
// expires_at in milliseconds read as seconds) is refused, not pooled.
func TestPromiseAnExpiryCenturiesAheadIsRefused(t *testing.T) {
	st := newTestStore(t)
	m := &fakeMinter{ttl: 200 * 365 * 24 * time.Hour}
	p := newTestPool(t, st, m, nil)
	p.Open()
	poll.Until(t, "a few refill mints", 5*time.Second, func() bool { return m.n.Load() >= 2 })
	if s := mustStats(t, st, "default"); s.Ready != 0 || s.Minted != 0 {
		t.Fatalf("an entry that lives 200 years was pooled: %+v", s)
	}
	if _, err := p.Get(context.Background(), "default", "req-1"); !errors.Is(err, ErrProvider) {
		t.Fatalf("direct mint of such a credential: %v, want ErrProvider", err)
	}
}

// Finding 7: credentials still parked when the pool closes (Redis down)
// are counted as lost, in the log and in metrics, not dropped silently.
func TestPromiseParkedCredentialsAtShutdownAreCounted(t *testing.T) {
	srv := redistest.StartProcess(t)
	st := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
	m := &fakeMinter{ttl: time.Hour, delay: 300 * time.Millisecond}
	var logs syncBuffer
	metrics := NewMetrics(prometheus.NewRegistry())
	p := newTestPool(t, st, m, func(c *Config) {
		c.Profiles[0].Target = 3
		c.RefillConcurrency = 2
		c.Metrics = metrics
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	p.Open()
	poll.Until(t, "two mints in flight after the probe", 5*time.Second, func() bool { return m.started.Load() == 3 })
	srv.Stop()
	poll.Until(t, "both credentials to be parked", 10*time.Second, func() bool {
		p.refill.mu.Lock()
		defer p.refill.mu.Unlock()
		return len(p.refill.state["default"].parked) == 2
	})
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(metrics.lost.WithLabelValues("default")); got != 2 {
		t.Fatalf("tokenpool_pool_lost_total = %v, want 2", got)
	}
	if !strings.Contains(logs.String(), `"lost":2`) {
		t.Fatalf("no log line counts the 2 lost credentials:\n%s", logs.String())
	}
}

// Finding 8: the handout ledger expires with its last entry and is bounded.
func TestPromiseTheLedgerIsBounded(t *testing.T) {
	ctx := context.Background()
	srv := redistest.New(t)
	st := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix, LedgerMax: 3})
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		putOne(t, st, "p", id, time.Now().Add(time.Hour))
	}
	for _, req := range []string{"1", "2", "3", "4", "5"} {
		if _, err := st.Take(ctx, "p", "req-"+req, 0); err != nil {
			t.Fatal(err)
		}
	}
	rdb := srv.Client()
	k := st.keys("p").handed()
	latest := rdb.ZRangeWithScores(ctx, k, -1, -1).Val()[0].Score
	if ttl, left := rdb.PTTL(ctx, k).Val(), time.Until(time.UnixMilli(int64(latest))); ttl < left || ttl > left+time.Minute+time.Second {
		t.Fatalf("ledger TTL = %v, want up to a minute past the latest retire time, %v away", ttl, left)
	}
	if n := rdb.ZCard(ctx, k).Val(); n != 3 {
		t.Fatalf("ledger holds %d ids, want LedgerMax 3", n)
	}
	if s := mustStats(t, st, "p"); s.LedgerTrimmed != 2 || s.HandedOut != 5 {
		t.Fatalf("stats %+v; want 2 trimmed, 5 handed out", s)
	}
}

// A large ledger's size is checked by about one take in k (k = bound /
// 1024, at most 64): it passes its bound by a few ids at most, and every
// id handed out is in it or counted trimmed.
func TestALargeLedgerStaysNearItsBound(t *testing.T) {
	ctx := context.Background()
	srv := redistest.New(t)
	rdb := srv.Client()
	const bound, takes = 4096, 4600 // k = 4
	st := NewStore(rdb, StoreConfig{KeyPrefix: srv.Prefix, LedgerMax: bound})
	k := st.keys("p")
	body, err := encodeEntry(mint.Credential{Token: "t", ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range takes {
			id := "e" + strconv.Itoa(i)
			p.ZAdd(ctx, k.ready(), redis.Z{Score: float64(time.Now().Add(time.Hour).UnixMilli()), Member: id})
			p.HSet(ctx, k.entries(), id, body)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	most := int64(0)
	for i := range takes {
		if _, err := st.Take(ctx, "p", "req-"+strconv.Itoa(i), 0); err != nil {
			t.Fatal(err)
		}
		most = max(most, rdb.ZCard(ctx, k.handed()).Val())
	}
	n, s := rdb.ZCard(ctx, k.handed()).Val(), mustStats(t, st, "p")
	t.Logf("bound %d, %d takes: %d ids at the end, %d at most, %d trimmed", bound, takes, n, most, s.LedgerTrimmed)
	if most > bound+64 || n+s.LedgerTrimmed != takes || s.LedgerTrimmed < takes-bound-64 {
		t.Fatalf("%d ids at the end, %d at most, %d trimmed; want at most %d, every take kept or trimmed", n, most, s.LedgerTrimmed, bound+64)
	}
}

// Finding 10: counters say what happened once each.
func TestPromiseCountersCountOnce(t *testing.T) {
	ctx := context.Background()

	t.Run("a discarded entry is not also counted as handed out", func(t *testing.T) {
		srv := redistest.New(t)
		st := sealedStore(t, srv, randomKey(t))
		putOne(t, st, "p", "a", time.Now().Add(time.Minute))
		putOne(t, st, "p", "b", time.Now().Add(time.Hour))
		rdb := srv.Client()
		body := []byte(rdb.HGet(ctx, st.keys("p").entries(), "a").Val())
		body[len(body)-1] ^= 1
		rdb.HSet(ctx, st.keys("p").entries(), "a", body)
		if h, err := st.Take(ctx, "p", "req-1", 0); err != nil || h.ID != "b" {
			t.Fatalf("take = %+v, %v; want b", h.ID, err)
		}
		if s := mustStats(t, st, "p"); s.HandedOut != 1 || s.Discarded != 1 {
			t.Fatalf("stats %+v; want 1 handed out, 1 discarded", s)
		}
	})

	t.Run("releasing a reservation that already lapsed counts it once", func(t *testing.T) {
		st := newTestStore(t)
		clock := newTestClock()
		st.clock = clock.Now
		res, err := st.reserve(ctx, "p", reserveArgs{target: 1, want: 1, idPrefix: "A/", firstID: 1, lease: time.Second})
		if err != nil || len(res.ids) != 1 {
			t.Fatal(err)
		}
		clock.Advance(2 * time.Second)
		if _, err := st.reserve(ctx, "p", reserveArgs{target: 0, want: 0, idPrefix: "B/", firstID: 1, lease: time.Second}); err != nil {
			t.Fatal(err)
		}
		if err := st.release(ctx, "p", "mint_failed", res.ids...); err != nil {
			t.Fatal(err)
		}
		if s := mustStats(t, st, "p"); s.Lapsed != 1 || s.MintFailed != 0 {
			t.Fatalf("stats %+v; want 1 lapsed, 0 mint failed", s)
		}
	})

	t.Run("an id pooled without a body is reported as orphaned", func(t *testing.T) {
		srv := redistest.New(t)
		st := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
		putOne(t, st, "p", "a", time.Now().Add(time.Hour))
		srv.Client().HDel(ctx, st.keys("p").entries(), "a")
		if _, err := st.Take(ctx, "p", "req-1", 0); !errors.Is(err, ErrEmpty) {
			t.Fatalf("take: %v, want ErrEmpty", err)
		}
		if s := mustStats(t, st, "p"); s.Orphaned != 1 || s.Ready != 0 {
			t.Fatalf("stats %+v; want 1 orphaned", s)
		}
	})
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
