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

// TestRedisOutageUnderLoad stops Redis (SIGKILL) under load on a fleet of
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
	notReadyAfter := time.Since(killed)
	time.Sleep(5 * time.Second) // the outage, under load

	restarted := time.Now()
	rs.Start()
	var probes []outcome // the probes' credentials count as handed out too
	poll.Until(t, "every replica to hand out again", 5*time.Second, func() bool {
		for _, u := range urls {
			r := fetch(t, u, callerJWT(t, "probe"))
			if r.status != 200 {
				return false
			}
			probes = append(probes, outcome{status: 200, token: r.credential(t).EphemeralToken})
		}
		return true
	})
	recovered := time.Since(restarted)
	l.servedAfter(t, 200, restarted.Add(recovered))
	close(stop)
	<-done
	for _, p := range fleet {
		p.stop(t)
	}
	checkJSONLines(t, fleet)

	outs := l.snapshot()
	var during []outcome
	for _, o := range outs {
		if o.status != 200 && o.status != 503 {
			t.Fatalf("answer %d: under a Redis outage every answer is 200 or 503", o.status)
		}
		if o.at.After(killed) && o.at.Before(restarted) {
			during = append(during, o)
		}
	}
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
	// issued was handed out, is pooled, or was counted as waste. A take
	// that ran just as Redis died, its reply lost, is the one exception
	// (see README "Scaling out"); there are at most as many as callers.
	rs2 := rs.Client()
	ctx := context.Background()
	pooled := rs2.ZCard(ctx, pool.Keys("", "default").Ready()).Val()
	wasted, _ := rs2.HGet(ctx, pool.Keys("", "default").Stats(), "wasted").Int64()
	minted := int64(sim.Counts().Minted)
	unaccounted := minted - int64(got) - pooled - wasted
	t.Logf("provider minted %d: %d handed out, %d pooled, %d wasted, %d unaccounted", minted, got, pooled, wasted, unaccounted)
	if unaccounted < 0 || unaccounted > 16 {
		t.Fatalf("%d minted credentials unaccounted for", unaccounted)
	}
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
