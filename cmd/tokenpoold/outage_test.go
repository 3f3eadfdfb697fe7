package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/pool"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// TestRedisOutageUnderLoad kills Redis (SIGKILL) under load on a fleet of
// three, then restarts it (with AOF, as a production Redis would have).
func TestRedisOutageUnderLoad(t *testing.T) {
	const requestTimeout = 3 * time.Second
	rs := redistest.StartProcess(t, "--appendonly", "yes", "--appendfsync", "always")
	sim := startSim(t, upstreamtest.Config{Latency: 5 * time.Millisecond})
	fleet := startFleet(t, 3, fleetEnv(rs.URL(), sim, map[string]string{"TOKENPOOL_POOL_TARGET": "20"}))
	urls := urlsOf(fleet)

	stop := make(chan struct{})
	done := make(chan struct{})
	var l load
	go func() { l.run(t, urls, 16, 0, stop); close(done) }()
	l.servedAfter(t, 200, time.Time{}) // normal service first

	killed := time.Now()
	rs.Stop()
	notReadyAfter := allNotReady(t, urls, killed)
	time.Sleep(5 * time.Second) // the outage, under load

	restarted := time.Now()
	rs.Start()
	probes, recovered := allServing(t, urls, restarted)
	l.servedAfter(t, 200, restarted.Add(recovered))
	close(stop)
	<-done
	for _, p := range fleet {
		p.stop(t)
	}
	checkJSONLines(t, fleet)

	outs := l.snapshot()
	during := between(t, outs, killed, restarted)
	p99 := percentile(during, 0.99)
	worst := percentile(during, 1)
	got := checkTokens(t, sim, append(outs, probes...))
	t.Logf("answers %v; during the outage %v, p99 %v, worst %v; not ready after %v; serving again %v after the restart",
		statuses(outs), statuses(during), p99.Round(time.Millisecond), worst.Round(time.Millisecond),
		notReadyAfter.Round(time.Millisecond), recovered.Round(time.Millisecond))
	if len(during) < 100 {
		t.Fatalf("only %d answers during the outage: the load stalled", len(during))
	}
	if p99 >= requestTimeout {
		t.Fatalf("p99 %v during the outage, at or over the %v request deadline", p99, requestTimeout)
	}

	// Nothing minted was lost silently: every credential the provider
	// issued was handed out, is pooled, or was counted (wasted, lost). A
	// take in flight as Redis died may not have run, yet the daemon cannot
	// tell and counts it lost: at most one per caller is counted twice.
	a := accountFor(t, rs, sim, got)
	if a.unaccounted() > 0 || a.unaccounted() < -16 {
		t.Fatalf("%d minted credentials unaccounted for; want none, and at most one take in flight per caller (16) counted lost that did not run", a.unaccounted())
	}
}

// TestRedisStallLongerThanTheClaim freezes Redis (SIGSTOP: a stall, or a
// partition) for longer than a take's claim lives, under load on a fleet
// of three, then thaws it. Redis then runs every command it was sent: the
// takes whose replies nobody awaits any more (too late: they take
// nothing), and their recoveries. Every credential the provider minted
// must be accounted for exactly: handed out, pooled, wasted, or taken in
// Redis and never answered (handed_out less the pooled handouts callers
// received); and every one of those must be counted lost. (Before takes
// sent too long ago refused to run, a retry that ran after the stall took
// a second entry under an expired claim, and the first was lost
// uncounted.)
func TestRedisStallLongerThanTheClaim(t *testing.T) {
	const requestTimeout = 3 * time.Second
	rs := redistest.StartProcess(t)
	sim := startSim(t, upstreamtest.Config{Latency: 5 * time.Millisecond})
	fleet := startFleet(t, 3, fleetEnv(rs.URL(), sim, map[string]string{"TOKENPOOL_POOL_TARGET": "20"}))
	urls := urlsOf(fleet)

	stop := make(chan struct{})
	done := make(chan struct{})
	var l load
	go func() { l.run(t, urls, 16, 0, stop); close(done) }()
	l.servedAfter(t, 200, time.Time{})

	frozen := time.Now()
	rs.Freeze()
	allNotReady(t, urls, frozen)
	time.Sleep(12 * time.Second) // the claim TTL is 10 s
	thawed := time.Now()
	rs.Thaw()
	probes, recovered := allServing(t, urls, thawed)
	l.servedAfter(t, 200, thawed.Add(recovered))
	close(stop)
	<-done
	for _, p := range fleet {
		p.stop(t)
	}
	outs := l.snapshot()
	during := between(t, outs, frozen, thawed)
	if p99 := percentile(during, 0.99); p99 >= requestTimeout {
		t.Fatalf("p99 %v during the stall, at or over the %v request deadline", p99, requestTimeout)
	}
	got := checkTokens(t, sim, append(outs, probes...))
	a := accountFor(t, rs, sim, got)
	var fromPool int64
	for _, o := range append(outs, probes...) {
		if o.status == 200 && o.source == "pool" {
			fromPool++
		}
	}
	handed, _ := rs.Client().HGet(context.Background(), pool.Keys("", "default").Stats(), "handed_out").Int64()
	unanswered := handed - fromPool
	exact := a.minted - a.handedOut - a.pooled - a.wasted - unanswered
	t.Logf("answers %v (%v during the stall); taken and never answered %d, counted lost %d, unaccounted %d",
		statuses(outs), statuses(during), unanswered, a.lost, exact)
	if exact != 0 {
		t.Fatalf("%d credentials unaccounted for", exact)
	}
	if a.lost < unanswered {
		t.Fatalf("%d taken and never answered, %d counted lost: a loss went uncounted", unanswered, a.lost)
	}
}

// accounting is where the credentials the provider minted went, once the
// fleet has stopped.
type accounting struct {
	minted, handedOut, pooled, wasted, lost int64
}

func (a accounting) unaccounted() int64 { return a.minted - a.handedOut - a.pooled - a.wasted - a.lost }

func accountFor(t *testing.T, rs *redistest.Server, sim *upstreamtest.Server, handedOut int) accounting {
	t.Helper()
	ctx := context.Background()
	c := rs.Client()
	a := accounting{handedOut: int64(handedOut)}
	a.pooled = c.ZCard(ctx, pool.Keys("", "default").Ready()).Val()
	a.wasted, _ = c.HGet(ctx, pool.Keys("", "default").Stats(), "wasted").Int64()
	a.lost, _ = c.HGet(ctx, pool.Keys("", "default").Stats(), "lost").Int64()
	for _, m := range sim.Minted() {
		if m.ICEFetched {
			a.minted++
		}
	}
	t.Logf("provider minted %d: %d handed out, %d pooled, %d wasted, %d lost, %d unaccounted",
		a.minted, a.handedOut, a.pooled, a.wasted, a.lost, a.unaccounted())
	return a
}

// allNotReady waits until every replica reports not ready, and returns how
// long after since.
func allNotReady(t *testing.T, urls []string, since time.Time) time.Duration {
	t.Helper()
	poll.Until(t, "every replica to report not ready", 5*time.Second, func() bool {
		for _, u := range urls {
			if resp, err := http.Get(u + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode != 503 {
					return false
				}
			}
		}
		return true
	})
	return time.Since(since)
}

// allServing waits until every replica hands out again, and returns the
// probes' answers (their credentials count as handed out) and how long
// after since.
func allServing(t *testing.T, urls []string, since time.Time) ([]outcome, time.Duration) {
	t.Helper()
	var probes []outcome
	poll.Until(t, "every replica to hand out again", 5*time.Second, func() bool {
		for _, u := range urls {
			r := fetch(t, u, callerJWT(t, "probe"))
			if r.status != 200 {
				return false
			}
			probes = append(probes, outcome{status: 200, token: r.credential(t).EphemeralToken, source: r.header.Get("X-Credential-Source")})
		}
		return true
	})
	return probes, time.Since(since)
}

// between is the answers to requests sent from start to end; every answer
// must be 200 or 503.
func between(t *testing.T, outs []outcome, start, end time.Time) []outcome {
	t.Helper()
	var during []outcome
	for _, o := range outs {
		if o.status != 200 && o.status != 503 {
			t.Fatalf("answer %d: under a Redis outage every answer is 200 or 503", o.status)
		}
		if o.at.After(start) && o.at.Before(end) {
			during = append(during, o)
		}
	}
	return during
}

// checkJSONLines checks that every line each process wrote to stderr is
// a JSON object, go-redis's own lines included (routed into the daemon's
// logger), and that go-redis's repeated connection errors were
// rate-limited: a handful per replica, not one per failed dial.
func checkJSONLines(t *testing.T, ps []*process) {
	t.Helper()
	for i, p := range ps {
		var lines, fromRedis int
		for _, line := range strings.Split(strings.TrimRight(p.stderr.String(), "\n"), "\n") {
			lines++
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Errorf("replica %d wrote a line that is not JSON (%v): %q", i, err, line)
				continue
			}
			if rec["component"] == "redis" {
				fromRedis++
			}
		}
		t.Logf("replica %d: %d lines on stderr, all JSON; %d from go-redis", i, lines, fromRedis)
		if fromRedis > 10 {
			t.Errorf("replica %d: %d lines from go-redis in one outage: not rate-limited", i, fromRedis)
		}
	}
}
