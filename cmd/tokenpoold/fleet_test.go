package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/pool"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

const (
	fleetTarget      = 20
	fleetConcurrency = 32 // TOKENPOOL_REFILL_CONCURRENCY default: one refill batch
)

// fleetHandouts runs the handout test against a fleet of three on
// redisEnv: 5,000 handouts from 64 concurrent callers spread over the
// replicas; no duplicates, and the provider mints no more than handouts +
// pool target + one refill batch per replica.
func fleetHandouts(t *testing.T, redisEnv map[string]string) {
	const (
		handouts = 5000
		callers  = 64
		replicas = 3
	)
	sim := startSim(t, upstreamtest.Config{Latency: 2 * time.Millisecond})
	env := fleetEnv("", sim, redisEnv)
	env["TOKENPOOL_POOL_TARGET"] = fmt.Sprint(fleetTarget)
	// A fixed target (ceiling = floor): this test is about not minting
	// past the target, not about sizing it to demand.
	env["TOKENPOOL_POOL_MAX"] = fmt.Sprint(fleetTarget)
	fleet := startFleet(t, replicas, env)

	var l load
	l.run(t, urlsOf(fleet), callers, handouts, nil)
	outs := l.snapshot()
	if st := statuses(outs); st[200] != handouts {
		t.Fatalf("answers %v, want %d × 200", st, handouts)
	}
	got := checkTokens(t, sim, outs)
	for _, p := range fleet {
		p.stop(t) // mints in flight finish first
	}
	minted := sim.Counts().Minted
	if rc := redisEnv["REDIS_URL"]; rc != "" {
		if opt, err := redis.ParseURL(rc); err == nil {
			c := redis.NewClient(opt)
			t.Logf("fleet stats: %v; ready %d", c.HGetAll(context.Background(), pool.Keys("", "default").Stats()).Val(), c.ZCard(context.Background(), pool.Keys("", "default").Ready()).Val())
			c.Close()
		}
	}
	bound := handouts + fleetTarget + replicas*fleetConcurrency
	t.Logf("%d distinct handouts over %d replicas; provider minted %d (bound %d); p50 %v p99 %v",
		got, replicas, minted, bound, percentile(outs, 0.5), percentile(outs, 0.99))
	if minted > bound {
		t.Fatalf("provider minted %d, more than handouts + target + a refill batch per replica = %d", minted, bound)
	}
}

func TestFleetOnOneRedis(t *testing.T) {
	rs := redistest.New(t)
	fleetHandouts(t, map[string]string{"REDIS_URL": rs.URL()})
}

// TestFleetQuota: with TOKENPOOL_UPSTREAM_RATE=20/s the provider never sees
// more than 20 mints in any second, whatever three replicas are asked.
func TestFleetQuota(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{Latency: 2 * time.Millisecond})
	env := fleetEnv(rs.URL(), sim, map[string]string{
		"TOKENPOOL_UPSTREAM_RATE": "20/s",
		"TOKENPOOL_POOL_TARGET":   fmt.Sprint(fleetTarget),
	})
	fleet := startFleet(t, 3, env)
	stop := make(chan struct{})
	time.AfterFunc(8*time.Second, func() { close(stop) })
	var l load
	l.run(t, urlsOf(fleet), 32, 0, stop)
	outs := l.snapshot()
	got := checkTokens(t, sim, outs)
	worst, seconds := 0, 0
	for _, n := range sim.MintsPerSecond() {
		worst = max(worst, n)
		seconds++
	}
	t.Logf("answers %v; %d distinct credentials; provider saw at most %d mints in any of %d seconds",
		statuses(outs), got, worst, seconds)
	if worst > 20 {
		t.Fatalf("the provider saw %d mints in one second; the fleet's quota is 20/s", worst)
	}
	if worst < 15 {
		t.Fatalf("at most %d mints a second under load: the quota is not being used", worst)
	}
	for code := range statuses(outs) {
		if code != 200 && code != 503 {
			t.Fatalf("answer %d: over quota, a handout is a direct mint or a fast 503", code)
		}
	}
}

// replicaPrefix is how a process names its reservations: the replica id
// its "listening" line logs (at level info), and a slash.
func replicaPrefix(tb testing.TB, p *process) string {
	tb.Helper()
	var id string
	poll.Until(tb, "the listening line", 5*time.Second, func() bool {
		if l := logLines(p.stderr.String(), "listening"); len(l) == 1 {
			id, _ = l[0]["replica"].(string)
		}
		return id != ""
	})
	return id + "/"
}

// TestKilledReplica: kill -9 of a replica in the middle of refills. Its
// reservations lapse within the lease, the survivors keep the pool at
// target, and nothing is handed out twice.
func TestKilledReplica(t *testing.T) {
	const target = 30
	rs := redistest.New(t)
	rdb := rs.Client()
	ctx := context.Background()
	sim := startSim(t, upstreamtest.Config{Latency: 400 * time.Millisecond}) // a mint takes 0.8s
	env := fleetEnv(rs.URL(), sim, map[string]string{
		"TOKENPOOL_POOL_TARGET":  fmt.Sprint(target),
		"TOKENPOOL_MINT_TIMEOUT": "3s",   // lease: 3s + 5s
		"TOKENPOOL_LOG_LEVEL":    "info", // the listening line names the replica
	})
	fleet := startFleet(t, 3, env)
	victim, survivors := fleet[0], fleet[1:]
	prefix := replicaPrefix(t, victim)
	held := func(p *process) int {
		n := 0
		for _, m := range rdb.ZRange(ctx, pool.Keys("", "default").Minting(), 0, -1).Val() {
			if strings.HasPrefix(m, prefix) {
				n++
			}
		}
		return n
	}
	poll.Until(t, "the victim to hold reservations", 10*time.Second, func() bool { return held(victim) > 0 })

	stop := make(chan struct{})
	var l load
	done := make(chan struct{})
	go func() { l.run(t, urlsOf(survivors), 4, 0, stop); close(done) }()

	n := held(victim)
	killed := time.Now()
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = victim.cmd.Wait()
	poll.Until(t, "the victim's reservations to lapse", 15*time.Second, func() bool { return held(victim) == 0 })
	lapsedAfter := time.Since(killed)
	lapsed, _ := rdb.HGet(ctx, pool.Keys("", "default").Stats(), "lapsed").Int()
	t.Logf("killed a replica holding %d reservations; they lapsed after %v (lease 8s); lapsed counter %d", n, lapsedAfter.Round(100*time.Millisecond), lapsed)
	if lapsedAfter > 8*time.Second+2*time.Second {
		t.Fatalf("reservations lapsed after %v, lease is 8s", lapsedAfter)
	}
	if lapsed == 0 {
		t.Fatal("lapsed reservations were not counted")
	}

	close(stop)
	<-done
	poll.Until(t, "the survivors to bring the pool to target", 20*time.Second, func() bool {
		now := time.Now().Add(32 * time.Second).UnixMilli() // min remaining 30s + skew 2s
		return rdb.ZCount(ctx, pool.Keys("", "default").Ready(), fmt.Sprintf("(%d", now), "+inf").Val() >= target
	})
	outs := l.snapshot()
	got := checkTokens(t, sim, outs)
	t.Logf("survivors answered %v during and after the kill, %d distinct credentials", statuses(outs), got)
	if got == 0 {
		t.Fatal("no handouts from the survivors")
	}
}

// TestRetryAfterPausesTheFleet: the provider answers one mint 429 with
// Retry-After: 3; no replica calls it for those 3 seconds, then minting
// resumes.
func TestRetryAfterPausesTheFleet(t *testing.T) {
	const target = 30
	rs := redistest.New(t)
	rdb := rs.Client()
	ctx := context.Background()
	sim := startSim(t, upstreamtest.Config{Latency: 20 * time.Millisecond})
	env := fleetEnv(rs.URL(), sim, map[string]string{"TOKENPOOL_POOL_TARGET": fmt.Sprint(target)})
	fleet := startFleet(t, 3, env)
	poll.Until(t, "a full pool and no mint in flight", 10*time.Second, func() bool {
		return rdb.ZCard(ctx, pool.Keys("", "default").Ready()).Val() == target && rdb.ZCard(ctx, pool.Keys("", "default").Minting()).Val() == 0
	})

	armed := time.Now()
	sim.ThrottleNext(3 * time.Second)
	for i := range 12 { // take some, so every replica refills
		if r := fetch(t, fleet[i%3].url, callerJWT(t, "alice")); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
	}
	var throttled time.Time
	poll.Until(t, "the 429", 5*time.Second, func() bool {
		for _, c := range sim.MintCallTimes() {
			if c.After(armed) {
				throttled = c
				return sim.Counts().RateLimited == 1
			}
		}
		return false
	})
	poll.Until(t, "minting to resume", 10*time.Second, func() bool {
		calls := sim.MintCallTimes()
		return calls[len(calls)-1].Sub(throttled) >= 3*time.Second
	})

	// Calls let through before the pause was published arrive within the
	// provider's latency plus a Redis round trip of the 429.
	const slack = 300 * time.Millisecond
	var inside []time.Duration
	resumed := time.Duration(-1)
	for _, c := range sim.MintCallTimes() {
		d := c.Sub(throttled)
		switch {
		case d > slack && d < 3*time.Second:
			inside = append(inside, d)
		case d >= 3*time.Second && resumed < 0:
			resumed = d
		}
	}
	t.Logf("after the 429 (Retry-After: 3), the fleet's next mint call came at +%v", resumed.Round(time.Millisecond))
	if len(inside) > 0 {
		t.Fatalf("%d mint calls during the 3s pause, at %v after the 429", len(inside), inside)
	}
	if resumed > 5*time.Second {
		t.Fatalf("minting resumed only at +%v", resumed)
	}
}

// TestOpenBreakerStopsTheFleet: the breaker opening on one replica stops
// the others' mints within a second, for the cool-down.
func TestOpenBreakerStopsTheFleet(t *testing.T) {
	rs := redistest.New(t)
	healthy := startSim(t, upstreamtest.Config{Latency: 100 * time.Millisecond})
	env := fleetEnv(rs.URL(), healthy, map[string]string{
		"TOKENPOOL_POOL_TARGET":      "40",
		"TOKENPOOL_BREAKER_COOLDOWN": "5s",
	})
	others := startFleet(t, 2, env)
	// Keep the others minting: drain their pool steadily.
	stop, done := make(chan struct{}), make(chan struct{})
	defer func() { close(stop); <-done }() // before the cleanups stop the fleet
	var l load
	go func() { l.run(t, urlsOf(others), 2, 0, stop); close(done) }()
	poll.Until(t, "steady minting", 10*time.Second, func() bool { return healthy.Counts().Minted > 40 })

	// The third replica's provider is down.
	dead := startSim(t, upstreamtest.Config{FailureRate: 1})
	envA := fleetEnv(rs.URL(), dead, map[string]string{"TOKENPOOL_POOL_TARGET": "40", "TOKENPOOL_BREAKER_COOLDOWN": "5s"})
	envA["TOKENPOOL_LOG_LEVEL"] = "info"
	a := startProcess(t, envA)
	var opened time.Time
	poll.Until(t, "its breaker to open", 10*time.Second, func() bool {
		var ok bool
		opened, ok = a.logTime("circuit breaker opened")
		return ok
	})
	time.Sleep(4 * time.Second) // inside the 5s cool-down
	var late []time.Duration
	for _, c := range healthy.MintCallTimes() {
		if d := c.Sub(opened); d > time.Second && d < 4*time.Second {
			late = append(late, d)
		}
	}
	if len(late) > 0 {
		t.Fatalf("the other replicas called the provider %d times between 1s and 4s after the breaker opened elsewhere (first at +%v)", len(late), late[0])
	}
	var lastBefore time.Duration = -1
	for _, c := range healthy.MintCallTimes() {
		if d := c.Sub(opened); d <= time.Second && d > lastBefore {
			lastBefore = d
		}
	}
	t.Logf("last mint by the other replicas at %+v relative to the breaker opening", lastBefore.Round(time.Millisecond))
}

// TestSealedFleetRotatesKeys: raw Redis values hold no token text, and a
// daemon started with the keys rotated (new first, old second) serves the
// pool sealed with the old key.
func TestSealedFleetRotatesKeys(t *testing.T) {
	const target = 10
	rs := redistest.New(t)
	rdb := rs.Client()
	ctx := context.Background()
	sim := startSim(t, upstreamtest.Config{})
	oldKey, newKey := key32(1), key32(2)
	env := fleetEnv(rs.URL(), sim, map[string]string{
		"TOKENPOOL_POOL_TARGET": fmt.Sprint(target),
		"TOKENPOOL_SEAL_KEYS":   oldKey,
	})
	a := startProcess(t, env)
	if r := fetch(t, a.url, callerJWT(t, "alice")); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	poll.Until(t, "the pool to fill", 10*time.Second, func() bool { return rdb.ZCard(ctx, pool.Keys("", "default").Ready()).Val() == target })
	a.stop(t)

	var raw strings.Builder
	for _, k := range rdb.Keys(ctx, limiter.DefaultKeyPrefix+":*").Val() {
		switch rdb.Type(ctx, k).Val() {
		case "hash":
			for f, v := range rdb.HGetAll(ctx, k).Val() {
				raw.WriteString(f + v)
			}
		case "string":
			raw.WriteString(rdb.Get(ctx, k).Val())
		}
	}
	for _, m := range sim.Minted() {
		if strings.Contains(raw.String(), m.Token) || strings.Contains(raw.String(), m.TURNCredential) {
			t.Fatal("a token or TURN credential is readable in Redis")
		}
	}

	// Rotated keys, and a provider that can't mint: only the old pool can serve.
	sim.Update(func(c *upstreamtest.Config) { c.FailureRate = 1 })
	env["TOKENPOOL_SEAL_KEYS"] = newKey + "," + oldKey
	b := startProcess(t, env)
	before := map[string]bool{}
	for _, m := range sim.Minted() {
		before[m.Token] = true
	}
	for i := range target {
		r := fetch(t, b.url, callerJWT(t, "bob"))
		c := r.credential(t)
		if !before[c.EphemeralToken] {
			t.Fatalf("handout %d is not from the pool sealed with the old key", i+1)
		}
	}
	if d, _ := rdb.HGet(ctx, pool.Keys("", "default").Stats(), "discarded").Int(); d != 0 {
		t.Fatalf("%d entries discarded after the rotation", d)
	}
}

func key32(b byte) string {
	k := make([]byte, 32)
	for i := range k {
		k[i] = b
	}
	return base64.StdEncoding.EncodeToString(k)
}
