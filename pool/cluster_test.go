package pool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/ledger"
	"github.com/tokenpool/tokenpool/limiter"
)

// A sharded profile on a 3-master Redis Cluster: one busy profile uses
// every master, and the pool's promises hold across its shards.

func clusterClient(tb testing.TB, nodes []*redistest.Server, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *redis.ClusterClient {
	tb.Helper()
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.Addr)
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, Dialer: dial, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second})
	tb.Cleanup(func() { cc.Close() })
	return cc
}

func TestAShardedProfileSpreadsOverEveryClusterMaster(t *testing.T) {
	nodes := redistest.StartCluster(t, 3)
	m := &fakeMinter{ttl: 10 * time.Minute}
	const target, replicas, handouts = 300, 3, 50_000
	var pools []*Pool
	for range replicas {
		st := NewStore(clusterClient(t, nodes, nil), StoreConfig{})
		pools = append(pools, newTestPool(t, st, m, func(c *Config) {
			c.Profiles = []Profile{{Name: "default", Minter: m, Target: target, MaxTarget: target, MinRemaining: time.Second, Shards: 3}}
			c.Logger = discardLog()
		}))
	}
	for _, p := range pools {
		p.Open()
	}
	ctx := context.Background()
	poll.Until(t, "the pool to fill", 30*time.Second, func() bool {
		st, err := pools[0].Stats(ctx, "default")
		return err == nil && st.Usable == target
	})

	// Which master serves each shard.
	cc := clusterClient(t, nodes, nil)
	master := map[string]string{}
	tags := shardTags("default", 3)
	for _, tag := range tags {
		c, err := cc.MasterForKey(ctx, "tp:{"+tag+"}:ready")
		if err != nil {
			t.Fatal(err)
		}
		master[tag] = c.Options().Addr
	}

	var (
		mu       sync.Mutex
		tokens   = map[string]bool{}
		dups     int
		byMaster = map[string]int{}
		pooled   int
		next     atomic.Int64
		wg       sync.WaitGroup
		failures atomic.Int64
	)
	for w := range 8 * replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := pools[w%replicas]
			for {
				i := next.Add(1)
				if i > handouts {
					return
				}
				h, err := p.Get(ctx, "default", fmt.Sprintf("w%d-%d", w, i))
				if err != nil {
					failures.Add(1)
					continue
				}
				mu.Lock()
				if tokens[h.Token] {
					dups++
				}
				tokens[h.Token] = true
				if h.Source == SourcePool {
					pooled++
					byMaster[master[h.tag]]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, p := range pools {
		if err := p.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	st, err := pools[0].Stats(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d handouts (%d from the pool, %d failed): per master %v; %d minted, stats %+v", len(tokens)+dups, pooled, failures.Load(), byMaster, m.n.Load(), st)
	if dups != 0 {
		t.Fatalf("%d credentials handed out twice", dups)
	}
	if len(tokens) < handouts*9/10 {
		t.Fatalf("only %d of %d requests got a credential", len(tokens), handouts)
	}
	if len(byMaster) != 3 {
		t.Fatalf("takes landed on %d masters, want 3: %v", len(byMaster), byMaster)
	}
	even := float64(pooled) / 3
	for addr, n := range byMaster {
		if math.Abs(float64(n)-even) > 0.2*even {
			t.Fatalf("master %s served %d of %d pooled takes, beyond ±20%% of %d", addr, n, pooled, int(even))
		}
	}
	// No over-mint: every refill mint is handed out, still pooled, or
	// counted; and the fleet never held more than the target plus the
	// mints a replica can have in flight.
	refill := m.n.Load() - st.Direct
	if accounted := st.HandedOut + int64(st.Ready) + st.Wasted; refill != accounted {
		t.Fatalf("%d refill mints, %d handed out + pooled + wasted", refill, accounted)
	}
	if st.Ready > target {
		t.Fatalf("%d pooled after the run, over the target %d", st.Ready, target)
	}
	if bound := int64(pooled) + target + replicas*32; refill > bound {
		t.Fatalf("%d refill mints, over the bound handouts + target + a batch per replica = %d", refill, bound)
	}
}

// slowConn delays every write that calls a script by *delay: the round
// trips of the limits and the take on a network with latency. Other
// writes (a new connection's HELLO and CLIENT SETINFO, the client's
// CLUSTER SLOTS) are not the take's round trips and go at once.
type slowConn struct {
	net.Conn
	delay *atomic.Int64
}

func (c slowConn) Write(b []byte) (int, error) {
	if head := bytes.ToLower(b[:min(len(b), 32)]); bytes.Contains(head, []byte("\r\nevalsha\r\n")) || bytes.Contains(head, []byte("\r\neval\r\n")) {
		time.Sleep(time.Duration(c.delay.Load()))
	}
	return c.Conn.Write(b)
}

func TestOnAClusterTheLimitsAndTheTakeAreOneRoundTrip(t *testing.T) {
	nodes := redistest.StartCluster(t, 3)
	var delay atomic.Int64
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return slowConn{Conn: c, delay: &delay}, nil
	}
	cc := clusterClient(t, nodes, dial)
	st := NewStore(cc, StoreConfig{Ledger: ledger.Config{Key: testLedgerKey}}) // the take records its handout
	ctx := context.Background()
	for i := range 10 {
		putOne(t, st, "default", fmt.Sprint("e", i), time.Now().Add(time.Hour))
	}
	lim, _ := limiter.Parse("2/m")
	wide, _ := limiter.Parse("10/m")
	// The keys of the three live in three slots; the user's on another
	// master than the profile's.
	checks := []limiter.Check{{Policy: "ip", Key: "ip:192.0.2.1", Limit: wide}, {Policy: "user", Key: "user:alice", Limit: lim},
		{Policy: "day", Key: "day:alice", Quota: true, Limit: limiter.Limit{Rate: 5, Burst: 5, Period: 1000 * time.Hour}}}
	if _, _, err := st.TakeLimited(ctx, "default", "warm", 0, checks); err != nil { // loads scripts and slots
		t.Fatal(err)
	}
	// Open a few connections to every master, as a busy daemon has: held
	// at once, so each is a connection of its own, then back to the pool.
	if err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		var conns []*redis.Conn
		defer func() {
			for _, cn := range conns {
				cn.Close()
			}
		}()
		for range 4 {
			cn := c.Conn()
			conns = append(conns, cn)
			if err := cn.Ping(ctx).Err(); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Every script call from now on waits 300 ms.
	delay.Store(int64(300 * time.Millisecond))
	pr := &profile{Profile: Profile{Name: "default", ProviderName: "orga"}, tags: []string{"default"}}
	start := time.Now()
	h, ds, err := st.takeFrom(ctx, "default", "req-1", 0, checks, countDemand|countMiss, st.recordArgs(pr, issuance{requestID: "req-1"}, SourcePool))
	took := time.Since(start)
	if err != nil || len(ds) != 3 || !ds[0].Allowed || !ds[1].Allowed || ds[1].Remaining != 0 || !ds[2].Allowed || ds[2].Remaining != 3 {
		t.Fatalf("take: %+v %+v %v", h, ds, err)
	}
	t.Logf("limits and take with 300 ms per script call: %v", took)
	if took >= 600*time.Millisecond {
		t.Fatalf("limits and take took %v at 300 ms a script call: more than one round trip", took)
	}
	if recs, err := cc.XRange(ctx, st.streamOf("default"), "-", "+").Result(); err != nil || len(recs) != 1 || recs[0].Values["rid"] != "req-1" {
		t.Fatalf("the take's record: %+v %v", recs, err)
	}

	// A denied take on a Cluster leaves the pool as it was.
	delay.Store(0)
	before := clusterSnapshot(t, cc, "default")
	if _, ds, err := st.TakeLimited(ctx, "default", "req-2", 0, checks); err == nil || len(ds) != 2 || ds[1].Allowed {
		t.Fatalf("third take of 2/m: %+v %v, want denied by the user limit", ds, err)
	}
	after := clusterSnapshot(t, cc, "default")
	if fmt.Sprint(before.keys) != fmt.Sprint(after.keys) {
		t.Fatalf("a denied take changed the pool:\nbefore %v\nafter  %v", before.keys, after.keys)
	}
	if us, _, err := limiter.New(cc, "").QuotaUsage(ctx, "*", 0); err != nil || len(us) != 1 || us[0].Used != 2 {
		t.Fatalf("the quota after two handouts and a denial: %+v %v, want 2 spent", us, err)
	}
	for i, tau := range []time.Duration{demandTauFast, demandTauSlow} {
		// after's rate as of before's time
		was := after.demand[i] * math.Exp((after.at-before.at)/float64(tau.Milliseconds()))
		if d := math.Abs(before.demand[i] - was); d > 1e-9*math.Max(1, before.demand[i]) {
			t.Fatalf("a denied take changed the demand: %v, then %v", before.demand, after.demand)
		}
	}
}

// snap is a profile's entries, ledger and counters, and its demand rates
// apart: they decay, and are stored as of their last change.
type snap struct {
	keys   []any
	demand [2]float64 // d_fast, d_slow
	at     float64    // d_at, ms
}

func clusterSnapshot(tb testing.TB, rdb redis.UniversalClient, tag string) snap {
	tb.Helper()
	ctx := context.Background()
	base := "tp:{" + tag + "}:"
	ready, err1 := rdb.ZRangeWithScores(ctx, base+"ready", 0, -1).Result()
	handed, err2 := rdb.ZRangeWithScores(ctx, base+"handed", 0, -1).Result()
	bodies, err3 := rdb.HGetAll(ctx, base+"e").Result()
	stats, err4 := rdb.HGetAll(ctx, base+"stats").Result()
	for _, err := range []error{err1, err2, err3, err4} {
		if err != nil {
			tb.Fatal(err)
		}
	}
	at, _ := strconv.ParseFloat(stats["d_at"], 64)
	var demand [2]float64
	for i, f := range []string{"d_fast", "d_slow"} {
		demand[i], _ = strconv.ParseFloat(stats[f], 64)
		delete(stats, f)
	}
	delete(stats, "d_at")
	return snap{keys: []any{ready, handed, bodies, stats}, demand: demand, at: at}
}

// On a Cluster, where the limits run beside the take, a take under a
// claim already recovered (a library caller reusing a request id) that a
// limit denies is denied cleanly: the recovered claim is left as it is,
// and nothing is untaken (before, the untake read the tombstone as a
// claim and the script failed).
func TestOnAClusterADeniedTakeUnderARecoveredClaimIsDenied(t *testing.T) {
	nodes := redistest.StartCluster(t, 3)
	st := NewStore(clusterClient(t, nodes, nil), StoreConfig{})
	ctx := context.Background()
	for i := range 3 {
		putOne(t, st, "default", fmt.Sprint("e", i), time.Now().Add(time.Hour))
	}
	if _, err := st.Take(ctx, "default", "c", 0); err != nil {
		t.Fatal(err)
	}
	if r, err := st.recoverClaim(ctx, &UnrecoveredError{Profile: "default", Claim: "c"}); err != nil || r != 1 {
		t.Fatalf("recover: %d %v; want the entry pooled again", r, err)
	}
	none, _ := limiter.Parse("1/h")
	checks := []limiter.Check{{Policy: "user", Key: "user:bob", Limit: none}}
	if _, _, err := st.TakeLimited(ctx, "default", "spend", 0, checks); err != nil { // spends bob's one
		t.Fatal(err)
	}
	before := clusterSnapshot(t, clusterClient(t, nodes, nil), "default")
	_, ds, err := st.TakeLimited(ctx, "default", "c", 0, checks)
	if !errors.Is(err, limiter.ErrDenied) || len(ds) != 1 || ds[0].Allowed {
		t.Fatalf("take under the recovered claim, over the limit: %+v %v; want denied", ds, err)
	}
	after := clusterSnapshot(t, clusterClient(t, nodes, nil), "default")
	if fmt.Sprint(before.keys) != fmt.Sprint(after.keys) {
		t.Fatalf("the denied take changed the pool:\nbefore %v\nafter  %v", before.keys, after.keys)
	}
}

// refusing fails every command match accepts without sending it.
type refusing struct{ match func(args []any) bool }

func (h refusing) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h refusing) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.match(cmd.Args()) {
			return refused(ctx, cmd, next)
		}
		return next(ctx, cmd)
	}
}
func (h refusing) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func isUntake(args []any) bool {
	return scriptCall(args, untakeScript.Hash(), "recovered: nothing to undo")
}

// On a Cluster, a take its limits deny whose own call failed after it ran
// (its reply lost, its retry refused) is recovered like any failed take.
// Before, it was undone with the untake script, and when that failed too
// the entry stayed under its claim, neither pooled nor counted lost.
func TestOnAClusterADeniedTakeThatFailedIsRecovered(t *testing.T) {
	nodes := redistest.StartCluster(t, 3)
	cc := clusterClient(t, nodes, nil)
	st := NewStore(cc, StoreConfig{})
	ctx := context.Background()
	for i := range 3 {
		putOne(t, st, "default", fmt.Sprint("e", i), time.Now().Add(time.Hour))
	}
	one, _ := limiter.Parse("1/h")
	checks := []limiter.Check{{Policy: "user", Key: "user:bob", Limit: one}}
	if _, _, err := st.TakeLimited(ctx, "default", "spend", 0, checks); err != nil { // spends bob's one
		t.Fatal(err)
	}
	cc.AddHook(&lostReply{match: takeUnder("lost"), later: refused})
	cc.AddHook(refusing{match: isUntake})
	_, ds, err := st.TakeLimited(ctx, "default", "lost", 0, checks)
	if err == nil || len(ds) != 1 || ds[0].Allowed {
		t.Fatalf("a take over bob's limit: %+v %v; want denied", ds, err)
	}
	if s := mustStats(t, st, "default"); s.Ready != 2 || s.HandedOut != 1 {
		t.Fatalf("after the denied take: pooled %d, handed out %d; want 2 and 1 (the entry it took pooled again)", s.Ready, s.HandedOut)
	}
}

// On a Cluster, a request its limits deny is never served by another
// shard, even when undoing the denied take failed (the entry is then
// recovered later, by the refiller). Before, the failed undo read as a
// failing shard, and the next shard handed out a credential to a caller
// that was answered 429: taken, and never delivered.
func TestOnAClusterADeniedRequestIsNeverServedByAnotherShard(t *testing.T) {
	nodes := redistest.StartCluster(t, 3)
	cc := clusterClient(t, nodes, nil)
	m := &fakeMinter{ttl: time.Hour}
	p := newTestPool(t, NewStore(cc, StoreConfig{}), m, func(c *Config) {
		c.Profiles = []Profile{{Name: "default", Minter: m, Target: 6, MaxTarget: 6, MinRemaining: time.Second, Shards: 3}}
		c.Logger = discardLog()
	})
	p.Open()
	ctx := context.Background()
	poll.Until(t, "the pool to fill", 10*time.Second, func() bool {
		st, err := p.Stats(ctx, "default")
		return err == nil && st.Usable == 6
	})
	one, _ := limiter.Parse("1/h")
	checks := []limiter.Check{{Policy: "user", Key: "user:bob", Limit: one}}
	if h, _, err := p.GetLimited(ctx, "default", "spend", nil, checks); err != nil || h.Source != SourcePool {
		t.Fatalf("bob's one: %v from %q", err, h.Source)
	}
	cc.AddHook(refusing{match: isUntake})
	for i := range 5 {
		h, ds, err := p.GetLimited(ctx, "default", fmt.Sprint("over-", i), nil, checks)
		if h.ID != "" || err == nil || len(ds) != 1 || ds[0].Allowed {
			t.Fatalf("request %d over bob's limit: handout %q from %q, %+v, %v; want denied, nothing handed out", i, h.ID, h.Source, ds, err)
		}
	}
}

// On a Cluster, undoing a denied take that found nothing takes back a miss
// only when the take counted one: a sharded profile's takes count their
// miss once, after every shard (before, each denied one took a miss back,
// and the count went below zero).
func TestOnAClusterADeniedTakeUncountsOnlyAMissItCounted(t *testing.T) {
	nodes := redistest.StartCluster(t, 3)
	st := NewStore(clusterClient(t, nodes, nil), StoreConfig{})
	ctx := context.Background()
	one, _ := limiter.Parse("1/h")
	checks := []limiter.Check{{Policy: "user", Key: "user:bob", Limit: one}}
	if _, _, err := st.TakeLimited(ctx, "default", "spend", 0, checks); !errors.Is(err, ErrEmpty) { // spends bob's one, counts a miss
		t.Fatalf("a take from an empty pool: %v; want ErrEmpty", err)
	}
	if _, ds, err := st.TakeLimited(ctx, "default", "denied", 0, checks); err == nil || len(ds) != 1 || ds[0].Allowed { // counts a miss and takes it back
		t.Fatalf("a take over bob's limit: %+v %v; want denied", ds, err)
	}
	if _, ds, err := st.takeFrom(ctx, "default", "over", 0, checks, countDemand, nil); err == nil || len(ds) != 1 || ds[0].Allowed {
		t.Fatalf("a take of a sharded profile over bob's limit: %+v %v; want denied", ds, err)
	}
	if s := mustStats(t, st, "default"); s.Misses != 1 {
		t.Fatalf("misses %d; want 1 (the first take's)", s.Misses)
	}
}
