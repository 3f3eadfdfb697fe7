package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/pool"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// serverTimes returns the access-log duration of every answer with status.
func serverTimes(logs string, status int) []float64 {
	var out []float64
	for _, l := range logLines(logs, "request") {
		if s, _ := l["status"].(float64); int(s) == status {
			out = append(out, l["duration_ms"].(float64))
		}
	}
	sort.Float64s(out)
	return out
}

// TestBreakerKeepsServingThenFailsFastThenRecovers: the provider fails
// every call; handouts go on from the pool, then answer 503 with
// Retry-After at once without calling the provider; when it recovers the
// pool refills with no restart.
func TestBreakerKeepsServingThenFailsFastThenRecovers(t *testing.T) {
	const target = 5
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{Latency: 5 * time.Millisecond})
	d := startDaemon(t, rs, sim, map[string]string{
		"TOKENPOOL_POOL_TARGET":        fmt.Sprint(target),
		"TOKENPOOL_BREAKER_COOLDOWN":   "3s",
		"TOKENPOOL_REQUEST_TIMEOUT":    "3s",
		"TOKENPOOL_REFILL_CONCURRENCY": "2",
	})
	ctx := context.Background()
	poll.Until(t, "the pool to fill", 10*time.Second, func() bool {
		st, _ := d.pool.Stats(ctx, "default")
		return st.Usable >= target
	})

	sim.Update(func(c *upstreamtest.Config) { c.FailureRate = 1 })
	bearer := callerJWT(t, "alice")

	// The pool keeps serving while the provider is down.
	for i := range target {
		if r := fetch(t, d.url, bearer); r.status != 200 {
			t.Fatalf("handout %d from the pool: %d %s", i+1, r.status, r.body)
		}
	}
	// The refiller's failures open the breaker; then a miss is a fast 503.
	poll.Until(t, "the breaker to open", 10*time.Second, func() bool { return d.guards["orga"].State() == "open" })
	callsBefore := sim.Counts().MintCalls
	for i := range 20 {
		r := fetch(t, d.url, bearer)
		if r.status != 503 || r.header.Get("Retry-After") == "" {
			t.Fatalf("request %d with the breaker open: %d %v %s; want 503 with Retry-After", i+1, r.status, r.header, r.body)
		}
	}
	if calls := sim.Counts().MintCalls - callsBefore; calls > 1 {
		t.Fatalf("the provider was called %d times while the breaker was open (one half-open probe at most)", calls)
	}
	times := serverTimes(d.logsNow(), 503)
	if len(times) < 20 {
		t.Fatalf("%d 503s in the access log", len(times))
	}
	// Not a speed target (see the benchmarks); a hang would show here.
	if worst := times[len(times)-1]; worst > 1000 {
		t.Fatalf("a 503 took %.1f ms of server time: it waited on something", worst)
	}
	t.Logf("503 server time with the breaker open: median %.2f ms, worst %.2f ms over %d answers",
		times[len(times)/2], times[len(times)-1], len(times))

	// /readyz: provider out and pool empty.
	resp, err := http.Get(d.url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Fatalf("/readyz %d with the provider out and the pool empty, want 503", resp.StatusCode)
	}

	// Recovery, no restart.
	sim.Update(func(c *upstreamtest.Config) { c.FailureRate = 0 })
	// The floor at least: the requests above count as demand, so the
	// sized target may be above the floor for a while.
	var st pool.Stats
	poll.Until(t, "the pool to refill", 30*time.Second, func() bool {
		st, _ = d.pool.Stats(ctx, "default")
		return st.Usable >= target && st.Usable >= st.Target
	})
	t.Logf("refilled: %d usable, target %d", st.Usable, st.Target)
	if r := fetch(t, d.url, bearer); r.status != 200 {
		t.Fatalf("after recovery: %d %s", r.status, r.body)
	}
}

// TestRejectedKey: the provider answers 401 to every mint. One log line
// names ORGA_API_KEY, and mint attempts stay bounded.
func TestRejectedKey(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	sim.RejectKey(true)
	d := startDaemon(t, rs, sim, nil) // default target 20, refill concurrency 8, cool-down 10s
	bearer := callerJWT(t, "alice")
	statuses := map[int]int{}
	// callsAtOpen is read once calls admitted just before the breaker
	// opened have surely arrived: 500ms after it is first seen open.
	callsAtOpen := -1
	var openSeen time.Time
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		r := fetch(t, d.url, bearer)
		statuses[r.status]++
		if r.status != 502 && r.status != 503 {
			t.Fatalf("status %d with a rejected key: %s", r.status, r.body)
		}
		if openSeen.IsZero() && d.guards["orga"].State() == "open" {
			openSeen = time.Now()
		}
		if callsAtOpen < 0 && !openSeen.IsZero() && time.Since(openSeen) > 500*time.Millisecond {
			callsAtOpen = sim.Counts().MintCalls
		}
	}
	calls := sim.Counts().MintCalls
	t.Logf("answers %v; %d mint calls before the breaker opened, %d in 3s", statuses, callsAtOpen, calls)
	// Before the 5th failure opens the breaker, the 8 refill slots and this
	// test's one caller may each have a call in flight; none is retried.
	if callsAtOpen < 0 || callsAtOpen > 8+1 {
		t.Fatalf("%d mint calls before the breaker opened (want ≤ 9)", callsAtOpen)
	}
	// Then nothing for the 10s cool-down: no retry storm.
	if calls != callsAtOpen {
		t.Fatalf("%d mint calls after the breaker opened", calls-callsAtOpen)
	}
	if statuses[503] == 0 {
		t.Fatal("no fast 503 once the breaker opened")
	}
	named := 0
	for _, l := range strings.Split(d.logsNow(), "\n") {
		if strings.Contains(l, "ORGA_API_KEY") {
			named++
		}
	}
	if named != 1 {
		t.Fatalf("%d log lines name ORGA_API_KEY, want 1:\n%s", named, d.logsNow())
	}
}

// TestLogsCarryNoSecrets runs the daemon through successes and every kind
// of failure with debug logging on, then searches every log line and
// error body for every secret that passed through it.
func TestLogsCarryNoSecrets(t *testing.T) {
	const providerKey = "sk_orga_ai_canaryCANARYcanary0123456789"
	const apiKey = "server-key-canary-0123456789"
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{APIKey: providerKey, Latency: 2 * time.Millisecond})
	d := startDaemon(t, rs, sim, map[string]string{
		"ORGA_API_KEY":            providerKey,
		"TOKENPOOL_LOG_LEVEL":     "debug",
		"TOKENPOOL_RATE_PER_USER": "20/m",
		"TOKENPOOL_POOL_TARGET":   "5",
		"TOKENPOOL_API_KEYS":      "backend:" + sha256hex(apiKey),
		// Short, so a half-open probe meets the rejected key soon.
		"TOKENPOOL_BREAKER_COOLDOWN": "300ms",
		"TOKENPOOL_LEDGER_KEY":       testLedgerKey,
		"TOKENPOOL_ADMIN_KEYS":       "ops:" + sha256hex("admin-key"),
	})
	secrets := []string{providerKey, apiKey, testJWTSecret, testLedgerKey, "admin-key"}
	var bodies []string
	handed := "" // the first token handed out
	call := func(method, path string, header ...string) {
		req, _ := http.NewRequest(method, d.url+path, nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var c credential
		_ = json.NewDecoder(resp.Body).Decode(&c)
		resp.Body.Close()
		if resp.StatusCode == 200 {
			secrets = append(secrets, c.EphemeralToken)
			if handed == "" {
				handed = c.EphemeralToken
			}
			return
		}
		b, _ := json.Marshal(c)
		bodies = append(bodies, string(b))
	}
	jwts := []string{callerJWT(t, "alice"), callerJWT(t, "bob")}
	secrets = append(secrets, jwts...)

	for range 25 { // successes, then the per-user limit
		call(http.MethodPost, "/v1/session-config", "Authorization", "Bearer "+jwts[0])
	}
	call(http.MethodGet, "/api/orga-client-secrets", "Authorization", "Bearer "+jwts[1])
	call(http.MethodPost, "/v1/session-config", "X-API-Key", apiKey)
	call(http.MethodPost, "/v1/session-config", "Authorization", "Bearer "+apiKey)
	bad := jwts[1][:len(jwts[1])-4] + "AAAA"
	secrets = append(secrets, bad, "wrong-"+apiKey)
	call(http.MethodPost, "/v1/session-config", "Authorization", "Bearer "+bad)
	call(http.MethodPost, "/v1/session-config", "X-API-Key", "wrong-"+apiKey)

	sim.Update(func(c *upstreamtest.Config) { c.FailureRate = 1 })
	for range 15 {
		call(http.MethodPost, "/v1/session-config", "Authorization", "Bearer "+jwts[1])
	}
	sim.Update(func(c *upstreamtest.Config) { c.FailureRate = 0 })
	sim.RejectKey(true)
	poll.Until(t, "a refill to meet the rejected key", 15*time.Second, func() bool {
		return strings.Contains(d.logsNow(), "rejected the API key")
	})
	call(http.MethodPost, "/v1/session-config", "X-API-Key", apiKey)
	call(http.MethodGet, "/readyz")
	// An admin looks a token handed out up in the ledger.
	if found := lookup(t, d, handed); len(found) != 1 {
		t.Fatalf("the lookup of a token handed out found %d records", len(found))
	}

	for _, m := range sim.Minted() {
		secrets = append(secrets, m.Token, m.TURNCredential, m.TURNUsername)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	logs := d.logsNow()
	if n := len(strings.Split(logs, "\n")); n < 40 {
		t.Fatalf("only %d log lines: the run did not exercise enough", n)
	}
	if !strings.Contains(logs, "rejected the API key") || !strings.Contains(logs, `"status":429`) ||
		!strings.Contains(logs, `"status":401`) || !strings.Contains(logs, "circuit breaker opened") {
		t.Fatalf("the run missed a failure path:\n%s", logs)
	}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		if strings.Contains(logs, s) {
			t.Errorf("a secret (%.12s…) is in the logs", s)
		}
		for _, b := range bodies {
			if strings.Contains(b, s) {
				t.Errorf("a secret (%.12s…) is in an error body", s)
			}
		}
	}
	t.Logf("searched %d log bytes and %d error bodies for %d secrets", len(logs), len(bodies), len(secrets))
}
