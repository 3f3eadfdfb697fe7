package main

import (
	"strings"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// TestPerUserLimitIsSharedByProcesses: two daemon processes on one Redis
// share each user's count.
func TestPerUserLimitIsSharedByProcesses(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	env := testEnv(rs.URL(), sim, map[string]string{"TOKENPOOL_RATE_PER_USER": "5/m", "TOKENPOOL_POOL_TARGET": "5"})
	a, b := startProcess(t, env), startProcess(t, env)
	alice, bob := callerJWT(t, "alice"), callerJWT(t, "bob")
	for i, p := range []*process{a, b, a, b, a} {
		if r := fetch(t, p.url, alice); r.status != 200 {
			t.Fatalf("request %d: %d %s", i+1, r.status, r.body)
		}
	}
	for _, p := range []*process{a, b} {
		r := fetch(t, p.url, alice)
		if r.status != 429 {
			t.Fatalf("6th request within the minute: %d %s; want 429", r.status, r.body)
		}
		if r.header.Get("Retry-After") == "" || r.header.Get("RateLimit-Policy") == "" ||
			!strings.Contains(strings.Join(r.header.Values("RateLimit"), ","), `"user";r=0`) {
			t.Fatalf("429 headers: %v", r.header)
		}
	}
	if r := fetch(t, b.url, bob); r.status != 200 {
		t.Fatalf("another user: %d %s", r.status, r.body)
	}
	start := time.Now()
	a.stop(t)
	b.stop(t)
	t.Logf("both daemons stopped on SIGTERM in %v", time.Since(start).Round(time.Millisecond))
}
