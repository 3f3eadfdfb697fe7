package pool

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/mint"
)

// Issue 20, findings 5 and 8: a Redis dataset that is wiped (a restart
// without persistence, a FLUSHALL) while replicas hold what they sent
// there.

// Finding 5: replica A's put runs but its reply is lost, so A parks the
// credential; replica B takes it and hands it out; the dataset is wiped;
// A's replay must not pool the credential again (before, it did, and B
// handed the same token out a second time).
func TestAPutReplayedAfterAWipeDoesNotRepoolAHandedOutCredential(t *testing.T) {
	ctx := context.Background()
	srv := redistest.StartProcess(t)
	rdb := srv.Client()
	// A's first put runs and its reply is lost; its resends are refused
	// (A parks the credential) until let.
	var resent, replays atomic.Int64
	var let atomic.Bool
	rdb.AddHook(&lostReply{match: isPut, later: func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
		if !let.Load() {
			resent.Add(1)
			return refused(ctx, cmd, next)
		}
		err := next(ctx, cmd)
		if err == nil {
			replays.Add(1)
		}
		return err
	}})
	a := NewStore(rdb, StoreConfig{KeyPrefix: srv.Prefix})
	m := &fakeMinter{ttl: time.Hour}
	pa := newTestPool(t, a, m, func(c *Config) {
		c.Profiles = []Profile{{Name: "default", Minter: m, Target: 1, MinRemaining: time.Second}}
		c.DirectMints = -1
		c.Logger = discardLog()
	})
	b := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
	pa.Open()
	poll.Until(t, "A's put to run, its reply lost, and A to park it", 10*time.Second, func() bool { return resent.Load() > 0 })
	m.setErr(fmt.Errorf("no more mints in this test"))
	first, err := b.Take(ctx, "default", "b-1", 0)
	if err != nil {
		t.Fatalf("B takes what A pooled: %v", err)
	}
	waitRounds(t, pa, 2) // A has seen the pool empty
	if err := srv.Client().FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	let.Store(true)
	poll.Until(t, "A to replay its put", 10*time.Second, func() bool { return replays.Load() > 0 })
	for i := range 3 {
		h, err := b.Take(ctx, "default", fmt.Sprint("b-again-", i), 0)
		if err == nil && h.Token == first.Token {
			t.Fatalf("the token B handed out was pooled again after the wipe and handed out a second time")
		}
		if err == nil {
			t.Fatalf("took %q after the wipe; want nothing pooled", h.Token)
		}
	}
	// A's next reservation writes the new dataset's epoch and counts the
	// wipe: after its refill backoff, maybe.
	var s Stats
	if err := poll.Wait(ctx, 10*time.Second, func() bool { s = mustStats(t, b, "default"); return s.Wipes > 0 }); err != nil {
		t.Fatal("the wipe was never counted")
	}
	if s.Wipes != 1 || s.Dropped != 1 || s.Ready != 0 {
		t.Fatalf("after the wipe: wipes %d, dropped %d, pooled %d; want 1 wipe, the replayed put dropped (1), nothing pooled", s.Wipes, s.Dropped, s.Ready)
	}
}

// A mint whose reservation went with the wipe, put for the first time
// after it, holds nothing anywhere: it is pooled in the new dataset. Its
// resend, once the new dataset has it, is the usual idempotent put.
func TestAFirstPutAfterAWipeIsPooled(t *testing.T) {
	ctx := context.Background()
	srv := redistest.StartProcess(t)
	st := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
	res, err := st.reserve(ctx, "default", reserveArgs{target: 1, want: 1, idPrefix: "r", firstID: 1, lease: time.Minute})
	if err != nil || len(res.ids) != 1 {
		t.Fatalf("reserve: %v %+v", err, res)
	}
	if err := srv.Client().FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	a := putArgs{resID: res.ids[0], entryID: "after", retire: exp, cred: mint.Credential{Token: "t", ExpiresAt: exp}}
	pooled, _, err := st.put(ctx, "default", a, 0)
	if err != nil || !pooled {
		t.Fatalf("a first put after the wipe: pooled %v, %v; want pooled", pooled, err)
	}
	a.sentTo = st.datasets.get("default").epoch // the resend of a lost reply names the old dataset
	if pooled, _, err := st.put(ctx, "default", a, 0); err != nil || !pooled {
		t.Fatalf("its resend: pooled %v, %v; want pooled (already)", pooled, err)
	}
	if s := mustStats(t, st, "default"); s.Ready != 1 || s.Dropped != 0 {
		t.Fatalf("stats %+v; want 1 pooled, none dropped", s)
	}
}

// Finding 8: the replica that finds its dataset wiped counts the wipe and
// what it last saw pooled there as dropped, in the shared stats and in
// its metrics; the other replicas don't count it again.
func TestAWipedDatasetIsCountedOnce(t *testing.T) {
	ctx := context.Background()
	srv := redistest.StartProcess(t)
	m := &fakeMinter{ttl: time.Hour}
	var metrics []*Metrics
	var pools []*Pool
	for range 2 {
		st := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
		mt := NewMetrics(prometheus.NewRegistry())
		pools = append(pools, newTestPool(t, st, m, func(c *Config) {
			c.Metrics = mt
			c.Logger = discardLog()
		}))
		metrics = append(metrics, mt)
	}
	for _, p := range pools {
		p.Open()
	}
	st := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
	poll.Until(t, "the pool to fill", 10*time.Second, func() bool { return mustStats(t, st, "default").Usable == 5 })
	for _, p := range pools {
		waitRounds(t, p, 2) // each has seen the 5 pooled
	}
	m.setErr(fmt.Errorf("no more mints in this test"))
	if err := srv.Client().FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	for _, p := range pools {
		waitRounds(t, p, 3)
	}
	s := mustStats(t, st, "default")
	if s.Wipes != 1 || s.Dropped != 5 {
		t.Fatalf("after a wipe of 5 pooled: wipes %d, dropped %d; want 1, 5", s.Wipes, s.Dropped)
	}
	var dropped, wipes float64
	for _, mt := range metrics {
		dropped += testutil.ToFloat64(mt.dropped.WithLabelValues("default"))
		wipes += testutil.ToFloat64(mt.wipes.WithLabelValues("default"))
	}
	if dropped != 5 || wipes != 1 {
		t.Fatalf("metrics over the replicas: dropped %v, wipes %v; want 5, 1", dropped, wipes)
	}
}

// Finding 7: replicas that lack the seal key of the pooled entries (one
// with no keys, one with another key) serve their callers with their own
// mints (direct, or pooled by their refills), and leave the entries for
// the replica that can open them: nothing is discarded, and that replica
// (which can open only its own) hands 5 out from the pool.
func TestReplicasWithoutTheSealKeyLeaveEntriesForThoseWithIt(t *testing.T) {
	ctx := context.Background()
	srv := redistest.New(t)
	k1, k2 := randomKey(t), randomKey(t)
	owner := sealedStore(t, srv, k1)
	m := &fakeMinter{ttl: time.Hour}
	po := newTestPool(t, owner, m, nil)
	po.Open()
	poll.Until(t, "the pool to fill", 10*time.Second, func() bool { return mustStats(t, owner, "default").Usable == 5 })
	m.setErr(fmt.Errorf("no more refills in this test"))
	po.refill.stop(ctx)
	others := []*Store{NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix}), sealedStore(t, srv, k2)}
	for i, st := range others {
		// Their refills may pool entries of their own while the test
		// runs, which they may hand out; never one of the owner's.
		own := &namedMinter{Minter: &fakeMinter{ttl: time.Hour}, prefix: fmt.Sprint("replica-", i, "-")}
		p := newTestPool(t, st, own, func(c *Config) { c.Logger = discardLog() })
		p.Open()
		for j := range 5 {
			h, err := p.Get(ctx, "default", fmt.Sprint("other-", i, "-", j))
			if err != nil || !strings.HasPrefix(h.Token, own.prefix) {
				t.Fatalf("replica %d, request %d: %v, %q from %q; want one of its own mints", i, j, err, h.Token, h.Source)
			}
		}
		if err := p.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if s := mustStats(t, owner, "default"); s.Discarded != 0 || s.Ready < 5 {
		t.Fatalf("after 10 requests to replicas without the key: discarded %d, pooled %d; want 0, at least the owner's 5", s.Discarded, s.Ready)
	}
	for j := range 5 {
		if h, err := po.Get(ctx, "default", fmt.Sprint("owner-", j)); err != nil || h.Source != SourcePool {
			t.Fatalf("the replica with the key, request %d: %v from %q; want from the pool", j, err, h.Source)
		}
	}
}

// A take whose reply was lost, retried after the dataset was wiped and
// refilled, takes nothing from the new dataset: the first attempt's entry
// went with the wipe, and the take fails as unrecovered (counted lost by
// the refiller) instead of handing out a second entry with the first one
// lost uncounted.
func TestATakeRetriedAfterAWipeTakesNothing(t *testing.T) {
	ctx := context.Background()
	srv := redistest.StartProcess(t)
	direct := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
	putOne(t, direct, "default", "x", time.Now().Add(time.Hour))
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: 2, MinRetryBackoff: time.Millisecond, MaxRetryBackoff: time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	st := NewStore(rdb, StoreConfig{KeyPrefix: srv.Prefix})
	if _, err := st.reserve(ctx, "default", reserveArgs{target: 1}); err != nil { // st sees the dataset
		t.Fatal(err)
	}
	rdb.AddHook(&lostReply{match: takeUnder("w"), ran: func() { // before the retry is sent
		if err := srv.Client().FlushAll(ctx).Err(); err != nil {
			t.Error(err)
		}
		putOne(t, direct, "default", "y", time.Now().Add(time.Hour)) // a new dataset, refilled
	}})
	h, err := st.Take(ctx, "default", "w", 0)
	var ue *UnrecoveredError
	if !errors.As(err, &ue) {
		t.Fatalf("take = %q, %v; want it unrecovered", h.ID, err)
	}
	if s := mustStats(t, direct, "default"); s.Ready != 1 || s.HandedOut != 0 {
		t.Fatalf("the new dataset: pooled %d, handed out %d; want y still pooled", s.Ready, s.HandedOut)
	}
}

// namedMinter mints as Minter does, with prefix before every token.
type namedMinter struct {
	mint.Minter
	prefix string
}

func (m *namedMinter) Mint(ctx context.Context, r mint.Request) (mint.Credential, error) {
	c, err := m.Minter.Mint(ctx, r)
	c.Token = m.prefix + c.Token
	return c, err
}

// A replica whose reservations have not yet seen a new dataset (after a
// wipe another replica refilled) serves takes from it at once: only a
// resend names the dataset its first send went to. Before, every take
// was refused as sent to a wiped dataset until this replica's own
// reservation learned the new epoch, up to its refill backoff.
func TestAFirstTakeAfterAWipeServesFromTheNewDataset(t *testing.T) {
	ctx := context.Background()
	srv := redistest.New(t)
	st := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
	if _, err := st.reserve(ctx, "default", reserveArgs{target: 1}); err != nil { // st sees the dataset
		t.Fatal(err)
	}
	if err := srv.Client().FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	other := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
	putOne(t, other, "default", "y", time.Now().Add(time.Hour)) // a new dataset, refilled by another replica
	if h, err := st.Take(ctx, "default", "first", 0); err != nil || h.ID != "y" {
		t.Fatalf("take = %q, %v; want y from the new dataset", h.ID, err)
	}
}
