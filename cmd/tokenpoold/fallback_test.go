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
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// When a profile's pool is empty and its provider answers 500, a caller
// allowed on its fallback gets the fallback profile's credential, marked
// as one, and the fleet counts it; a caller allowed on no fallback gets
// the 503 it got before fallbacks existed.
func TestAFallbackStandsInForAFailingProvider(t *testing.T) {
	rs := redistest.New(t)
	down := startSim(t, upstreamtest.Config{FailureRate: 1})
	up := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, down, map[string]string{
		"GEMINI_KEY": upstreamtest.PresetKey("gemini"),
		"TOKENPOOL_CONFIG": writeConfig(t, `
profiles:
  default:
    provider: orga
    target: 2
    fallback: [spare]
  spare:
    provider: gemini
    target: 2
    allow:
      claims: {plan: [pro]}
    gemini:
      api_key_env: GEMINI_KEY
      base_url: `+up.URL()+`
`)})
	ctx := context.Background()
	poll.Until(t, "the fallback's pool fills", 10*time.Second, func() bool {
		st, err := d.pool.Stats(ctx, "spare")
		return err == nil && st.Usable >= 2
	})
	pro := claimsJWT(t, map[string]any{"sub": "paula", "plan": "pro"})
	status, h, body := post(t, d.url+"/v1/credentials", `{"profile":"default"}`, pro)
	var a struct{ Provider, Profile, Token string }
	if err := json.Unmarshal(body, &a); err != nil || status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	if h.Get("X-Credential-Source") != "fallback" || a.Provider != "gemini" || a.Profile != "spare" {
		t.Fatalf("source %q, answer %s; want the spare gemini profile's credential, marked fallback", h.Get("X-Credential-Source"), body)
	}
	if rec, ok := up.Lookup(a.Token); !ok || rec.Provider != "gemini" {
		t.Fatalf("token %.16s… is not one the fallback's provider minted", a.Token)
	}
	st, err := d.pool.Stats(ctx, "default")
	if err != nil || st.Fallbacks != 1 || st.Usable != 0 {
		t.Fatalf("default's stats: %+v, %v; want 1 fallback and an empty pool", st, err)
	}

	// The free caller may not use the spare profile: its answer is
	// default's own, by now the open breaker's 503.
	free := claimsJWT(t, map[string]any{"sub": "fred", "plan": "free"})
	poll.Until(t, "orga's breaker opens", 10*time.Second, func() bool { return d.guards["orga"].State() == "open" })
	status, h, body = post(t, d.url+"/v1/credentials", `{"profile":"default"}`, free)
	if status != http.StatusServiceUnavailable || h.Get("Retry-After") == "" || strings.Contains(string(body), "spare") {
		t.Fatalf("a caller not allowed on the fallback: %d (Retry-After %q): %s; want 503", status, h.Get("Retry-After"), body)
	}
	// The routes whose answers can't name the provider never fall back.
	status, _, body = post(t, d.url+"/v1/session-config", `{"profile":"default"}`, pro)
	if status != http.StatusServiceUnavailable {
		t.Fatalf("session-config: %d %s; want 503: it never falls back", status, body)
	}
}

// A fallback loop is refused at start, naming its profiles; so is a
// fallback to a profile that does not exist.
func TestAFallbackLoopIsRefusedAtStart(t *testing.T) {
	env := func(k string) string { return map[string]string{"ORGA_API_KEY": "k"}[k] }
	for _, tt := range []struct{ file, want string }{
		{"profiles:\n  a: {provider: orga, fallback: [b]}\n  b: {provider: orga, fallback: [c]}\n  c: {provider: orga, fallback: [a]}\n",
			"fallback: a loop: a → b → c → a"},
		{"profiles:\n  a: {provider: orga, fallback: [a]}\n", `profile "a": fallback: a profile can't fall back to itself`},
		{"profiles:\n  a: {provider: orga, fallback: [nope]}\n", `profile "a": fallback: no profile "nope"`},
	} {
		_, _, err := parseProfileFile([]byte("default_profile: a\n"+tt.file), &Config{OrgaBaseURL: "https://api.orga-ai.com"}, env)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Fatalf("got %v; want %q", err, tt.want)
		}
	}
}
