package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/upstream"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// presetWire is what one preset's mint request must carry, as its
// provider's documentation has it, and the blocks of two profiles of it.
type presetWire struct {
	settings string            // the preset block's settings beyond api_key_env and base_url (YAML, one line each)
	method   string            // the request's method
	path     string            // and path
	header   [2]string         // the key's header and its value
	query    map[string]string // query parameters it must carry
	body     map[string]any    // body fields it must carry (dot paths), as JSON decodes them
	extra    []string          // fields the answer carries beside the token
}

var presetWires = map[string]presetWire{
	"gemini": {method: "POST", path: "/v1alpha/auth_tokens", header: [2]string{"x-goog-api-key", "sim-gemini-key"},
		settings: "uses: 1\n        ttl_seconds: 900", body: map[string]any{"uses": 1.0}, extra: []string{"url"}},
	"azure-openai": {method: "POST", path: "/openai/v1/realtime/client_secrets", header: [2]string{"api-key", "sim-azure-openai-key"},
		settings: "deployment: gpt-realtime-prod\n        voice: cedar",
		body: map[string]any{"session.type": "realtime", "session.model": "gpt-realtime-prod", "session.audio.output.voice": "cedar",
			"expires_after.anchor": "created_at", "expires_after.seconds": 600.0}, extra: []string{"url"}},
	"xai": {method: "POST", path: "/v1/realtime/client_secrets", header: [2]string{"Authorization", "Bearer sim-xai-key"},
		settings: "ttl_seconds: 300", body: map[string]any{"expires_after.seconds": 300.0}, extra: []string{"url"}},
	"elevenlabs-agent": {method: "GET", path: "/v1/convai/conversation/get-signed-url", header: [2]string{"xi-api-key", "sim-elevenlabs-agent-key"},
		settings: "agent_id: agent_7\n        connection: websocket", query: map[string]string{"agent_id": "agent_7", "include_conversation_id": "true"},
		extra: []string{"signedUrl"}},
	"elevenlabs": {method: "POST", path: "/v1/single-use-token/realtime_scribe", header: [2]string{"xi-api-key", "sim-elevenlabs-key"},
		settings: "token_type: realtime_scribe"},
	"assemblyai": {method: "GET", path: "/v3/token", header: [2]string{"Authorization", "sim-assemblyai-key"},
		settings: "ttl_seconds: 600\n        max_session_seconds: 900", query: map[string]string{"expires_in_seconds": "600", "max_session_duration_seconds": "900"},
		extra: []string{"url"}},
	"deepgram": {method: "POST", path: "/v1/auth/grant", header: [2]string{"Authorization", "Token sim-deepgram-key"},
		settings: "ttl_seconds: 600", body: map[string]any{"ttl_seconds": 600.0}, extra: []string{"url"}},
	"cartesia": {method: "POST", path: "/access-token", header: [2]string{"Authorization", "Bearer sim-cartesia-key"},
		settings: "grants: [tts, stt]", body: map[string]any{"grants.tts": true, "grants.stt": true, "expires_in": 600.0}},
	"speechmatics": {method: "POST", path: "/v1/api_keys", header: [2]string{"Authorization", "Bearer sim-speechmatics-key"},
		query: map[string]string{"type": "rt"}, body: map[string]any{"ttl": 600.0}, extra: []string{"url"}},
	"soniox": {method: "POST", path: "/v1/auth/temporary-api-key", header: [2]string{"Authorization", "Bearer sim-soniox-key"},
		settings: "max_session_seconds: 1200",
		body:     map[string]any{"usage_type": "transcribe_websocket", "expires_in_seconds": 600.0, "max_session_duration_seconds": 1200.0, "single_use": true}},
	"fish": {method: "POST", path: "/v1/auth/tokens", header: [2]string{"Authorization", "Bearer sim-fish-key"},
		settings: "scopes: [stt:write]\n        max_session_seconds: 600", body: map[string]any{"ttl_seconds": 300.0, "max_session_duration_seconds": 600.0}},
	"hume": {method: "POST", path: "/oauth2-cc/token", header: [2]string{"Authorization", "Basic c2ltLWh1bWUta2V5OnNpbS1odW1lLXNlY3JldA=="},
		extra: []string{"url"}},
}

// presetProfiles is a profile file with two profiles of every preset:
// <name> keeps a pool of one from sim, <name>-direct mints from direct
// for each request, so that a fault made at direct meets no refill. env
// gets each preset's key.
func presetProfiles(t *testing.T, sim, direct *upstreamtest.Server, env map[string]string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("default_profile: gemini\nprofiles:\n")
	for _, name := range upstream.PresetNames() {
		w, ok := presetWires[name]
		if !ok {
			t.Fatalf("preset %s has no wire test", name)
		}
		p, _ := upstream.PresetByName(name)
		key := upstreamtest.PresetKey(name)
		if p.SecretEnv != "" {
			id, secret, _ := strings.Cut(key, ":")
			env[p.KeyEnv], env[p.SecretEnv] = id, secret
		} else {
			env[strings.ToUpper(strings.ReplaceAll(name, "-", "_"))+"_SIM_KEY"] = key
		}
		keyLine := ""
		if p.SecretEnv == "" {
			keyLine = "api_key_env: " + strings.ToUpper(strings.ReplaceAll(name, "-", "_")) + "_SIM_KEY\n        "
		}
		for _, suffix := range []string{"", "-direct"} {
			target, base := 1, sim.URL()
			if suffix != "" {
				target, base = 0, direct.URL()
			}
			fmt.Fprintf(&b, "  %s%s:\n    provider: %s\n    target: %d\n    %s:\n        %sbase_url: %s\n", name, suffix, name, target, name, keyLine, base)
			if w.settings != "" {
				fmt.Fprintf(&b, "        %s\n", w.settings)
			}
		}
	}
	return b.String()
}

// Every preset, through the daemon: a pooled credential on POST
// /v1/credentials, minted by a request that carries what the provider's
// documentation asks, answered with the token, its life and the extras;
// and its provider's errors answered 503 with Retry-After (honoured, and
// capped at five minutes) for a 429, 502 for a failure and a wrong key,
// with no key in any answer.
func TestEveryProviderThroughThePool(t *testing.T) {
	rs := redistest.New(t)
	sim, faulty := startSim(t, upstreamtest.Config{}), startSim(t, upstreamtest.Config{})
	env := map[string]string{}
	env["TOKENPOOL_CONFIG"] = writeConfig(t, presetProfiles(t, sim, faulty, env))
	d := startDaemon(t, rs, sim, env)
	token := callerJWT(t, "alice")
	ctx := context.Background()
	for _, name := range upstream.PresetNames() {
		t.Run(name, func(t *testing.T) {
			w := presetWires[name]
			poll.Until(t, "the pool of "+name+" fills", 10*time.Second, func() bool {
				st, err := d.pool.Stats(ctx, name)
				return err == nil && st.Usable >= 1
			})
			reqs := sim.PresetRequests(name)
			checkPresetRequest(t, w, reqs[0])

			status, h, body := post(t, d.url+"/v1/credentials", `{"profile":"`+name+`"}`, token)
			if status != http.StatusOK || h.Get("X-Credential-Source") != "pool" {
				t.Fatalf("status %d, source %q: %s", status, h.Get("X-Credential-Source"), body)
			}
			var a map[string]any
			if err := json.Unmarshal(body, &a); err != nil {
				t.Fatal(err)
			}
			tok, _ := a["token"].(string)
			if rec, ok := sim.Lookup(tok); !ok || rec.Provider != name || a["provider"] != name || a["profile"] != name {
				t.Fatalf("answer %s: not a credential %s minted", body, name)
			}
			if in, _ := a["expiresIn"].(float64); in < 60 {
				t.Fatalf("expiresIn %v", a["expiresIn"])
			}
			for _, k := range w.extra {
				if v, _ := a[k].(string); v == "" {
					t.Fatalf("no %s in %s", k, body)
				}
			}

			direct := name + "-direct"
			for _, tt := range []struct {
				fault      func()
				status     int
				retryAfter string
			}{
				{func() { faulty.ThrottleNext(7 * time.Second) }, http.StatusServiceUnavailable, "7"},
				{func() { faulty.ThrottleNext(time.Hour) }, http.StatusServiceUnavailable, "300"},
				{func() { faulty.Update(func(c *upstreamtest.Config) { c.FailureRate = 1 }) }, http.StatusBadGateway, ""},
				{func() { faulty.RejectKey(true) }, http.StatusBadGateway, ""},
			} {
				tt.fault()
				status, h, body := post(t, d.url+"/v1/credentials", `{"profile":"`+direct+`"}`, token)
				faulty.Update(func(c *upstreamtest.Config) { c.FailureRate = 0 })
				faulty.RejectKey(false)
				if _, err := (providerAdmin{shared: d.shared, guards: d.guards}).Resume(ctx, name); err != nil {
					t.Fatal(err)
				}
				if status != tt.status || h.Get("Retry-After") != tt.retryAfter && tt.retryAfter != "" {
					t.Fatalf("want %d (Retry-After %q), got %d (Retry-After %q): %s", tt.status, tt.retryAfter, status, h.Get("Retry-After"), body)
				}
				if k := upstreamtest.PresetKey(name); strings.Contains(string(body), k) {
					t.Fatalf("the answer carries the key: %s", body)
				}
			}
		})
	}
	if logs := d.logsNow(); strings.Contains(logs, "sim-gemini-key") || strings.Contains(logs, "sim-hume-secret") {
		t.Fatal("a provider key is in the log")
	}
}

// checkPresetRequest checks one mint request against what the provider's
// documentation asks.
func checkPresetRequest(t *testing.T, w presetWire, r upstreamtest.PresetRequest) {
	t.Helper()
	if r.Method != w.method || r.Path != w.path {
		t.Fatalf("request %s %s; want %s %s", r.Method, r.Path, w.method, w.path)
	}
	if got := r.Header.Get(w.header[0]); got != w.header[1] {
		t.Fatalf("header %s: %q; want %q", w.header[0], got, w.header[1])
	}
	for k, v := range w.query {
		if got := r.Query.Get(k); got != v {
			t.Fatalf("query %s=%q; want %q (%s)", k, got, v, url.Values(r.Query).Encode())
		}
	}
	if len(w.body) == 0 {
		return
	}
	var doc map[string]any
	if err := json.Unmarshal(r.Body, &doc); err != nil {
		t.Fatalf("body %s: %v", r.Body, err)
	}
	for path, want := range w.body {
		var v any = doc
		for _, seg := range strings.Split(path, ".") {
			m, _ := v.(map[string]any)
			v = m[seg]
		}
		if v != want {
			t.Fatalf("body %s = %v; want %v (%s)", path, v, want, r.Body)
		}
	}
}

// post POSTs a JSON body with a caller JWT, and returns the status, the
// headers and the body.
func post(t *testing.T, url, body, bearer string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+bearer)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, buf
}

// An http profile reaches an endpoint none of the presets describe: its
// method, URL, key header and body from the file, the token, the expiry
// and an extra read from nested fields of the answer.
func TestAnHTTPProfileReachesAnyJSONEndpoint(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, map[string]string{
		"ACME_KEY": upstreamtest.PresetKey("acme"),
		"TOKENPOOL_CONFIG": writeConfig(t, `
profiles:
  default:
    provider: http
    target: 1
    http:
      name: acme
      api_key_env: ACME_KEY
      method: POST
      url: `+sim.URL()+`/acme/v2/session-tokens
      key_header: X-Acme-Key
      body: {kind: realtime, ttl: 300}
      token: data.session.credentials.0.token
      expires_at: data.session.credentials.0.expires
      extras: {url: data.endpoint}
`)})
	poll.Until(t, "the pool fills", 10*time.Second, func() bool {
		st, err := d.pool.Stats(context.Background(), "default")
		return err == nil && st.Usable >= 1
	})
	status, h, body := post(t, d.url+"/v1/credentials", `{"profile":"default"}`, callerJWT(t, "alice"))
	var a struct {
		Provider, Token, URL, ExpiresAt string
	}
	if err := json.Unmarshal(body, &a); status != http.StatusOK || err != nil || h.Get("X-Credential-Source") != "pool" {
		t.Fatalf("status %d: %s", status, body)
	}
	rec, ok := sim.Lookup(a.Token)
	if !ok || rec.Provider != "acme" || a.Provider != "acme" || !strings.HasSuffix(a.URL, "/acme/v2/stream") {
		t.Fatalf("answer %s: not the endpoint's credential", body)
	}
	if a.ExpiresAt != rec.ExpiresAt.UTC().Format(time.RFC3339) {
		t.Fatalf("expiresAt %s; the endpoint said %s", a.ExpiresAt, rec.ExpiresAt)
	}
	if r := sim.PresetRequests("acme")[0]; r.Header.Get("X-Acme-Key") != upstreamtest.PresetKey("acme") || !strings.Contains(string(r.Body), `"kind":"realtime"`) {
		t.Fatalf("request %+v", r)
	}
}

// A profile's provider settings are checked at start, each refusal
// naming the profile and the setting.
func TestProviderSettingsAreCheckedAtStart(t *testing.T) {
	env := func(k string) string { return map[string]string{"K": "key"}[k] }
	for _, tt := range []struct {
		name, block, want string
	}{
		{"a session cap a provider can't set", "provider: deepgram\n    deepgram: {api_key_env: K, max_session_seconds: 600}",
			`profile "p": deepgram.max_session_seconds: deepgram can't cap a session's length when it mints`},
		{"a session cap out of bounds", "provider: assemblyai\n    assemblyai: {api_key_env: K, max_session_seconds: 20}",
			`profile "p": assemblyai.max_session_seconds: want 60 to 10800, got 20`},
		{"a life too short to hand out", "provider: deepgram\n    deepgram: {api_key_env: K, ttl_seconds: 30}",
			`profile "p": deepgram.ttl_seconds: a token that lives 30s is never handed out`},
		{"a base URL with a query", "provider: xai\n    xai: {api_key_env: K, base_url: \"https://x.example/?k=1\"}",
			`profile "p": xai.base_url: want a URL without a query, fragment or user`},
		{"an unknown setting", "provider: xai\n    xai: {api_key_env: K, model: grok}", `profile "p": xai.model: unknown setting for xai`},
		{"a required setting left out", "provider: azure-openai\n    azure-openai: {api_key_env: K, base_url: https://x.openai.azure.com}",
			`profile "p": azure-openai.deployment: required for azure-openai`},
		{"azure without its resource", "provider: azure-openai\n    azure-openai: {api_key_env: K, deployment: d}",
			`profile "p": azure-openai.base_url: required for azure-openai`},
		{"a key not set", "provider: gemini\n    gemini: {api_key_env: NOPE}", `profile "p": gemini.api_key_env: NOPE is not set`},
		{"a block of another provider", "provider: gemini\n    xai: {api_key_env: K}", `profile "p": unknown field "xai"`},
		{"an unknown provider", "provider: acme", `profile "p": provider: want orga, openai, http or one of assemblyai,`},
		{"an http endpoint without an expiry", "provider: http\n    http: {api_key_env: K, url: https://x.example/t, token: t}",
			`profile "p": http: expiry: say where the answer holds it`},
		{"a header that is none", "provider: http\n    http: {api_key_env: K, url: https://x.example/t, token: t, ttl_seconds: 60, key_header: \"X Key\"}",
			`profile "p": http: key header: want a header name, got "X Key"`},
		{"an extra named as a field", "provider: http\n    http: {api_key_env: K, url: https://x.example/t, token: t, ttl_seconds: 60, extras: {id: x}}",
			`profile "p": http: extra "id": a field every answer has`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := parseProfileFile([]byte("profiles:\n  p:\n    "+tt.block+"\n"), &Config{}, env)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v; want %q", err, tt.want)
			}
		})
	}
}
