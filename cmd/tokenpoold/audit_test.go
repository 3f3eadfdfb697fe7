package main

// One test per finding of the outside security audit (issue "Trust at the
// edges"), each replaying the attack as the audit described it; the
// second audit's are in audit2_test.go.

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/upstream"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// premiumVoice is the README's example: an open realtime profile and a
// premium one only pro and team callers may use.
const premiumVoice = `
default_profile: default
realtime_profile: assistant
profiles:
  default:
    provider: orga
    target: 2
  assistant:
    provider: openai
    target: 2
  premium-voice:
    provider: openai
    target: 2
    allow:
      claims:
        plan: [pro, team]
    openai:
      voice: cedar
`

// Finding 1: the Navai routes bypassed a profile's allow rule. A plan=free
// caller refused premium-voice on /v1/session-config got the same voice
// minted on demand from /navai/realtime/client-secret by changing the
// instructions; and any model could be chosen the same way.
func TestAuditNavaiRoutesHoldTheAllowRule(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, profileEnv(t, sim, premiumVoice))
	free := "Bearer " + claimsJWT(t, map[string]any{"sub": "mallory", "plan": "free"})
	pro := "Bearer " + claimsJWT(t, map[string]any{"sub": "carol", "plan": "pro"})

	refused := []struct{ name, path, body string }{
		{"the profile by name", "/v1/session-config", `{"profile":"premium-voice"}`},
		{"its voice with other instructions", "/navai/realtime/client-secret", `{"voice":"cedar","instructions":"You are a pirate!"}`},
		{"its voice with another model", "/api/realtime-token", `{"voice":"cedar","model":"gpt-realtime-mini"}`},
		{"its voice with a language", "/navai/realtime/client-secret", `{"voice":"cedar","language":"French"}`},
	}
	for _, tt := range refused {
		t.Run("a free caller asking for "+tt.name+" gets 403", func(t *testing.T) {
			code, body := call(t, "POST", d.url+tt.path, tt.body, "Authorization", free)
			if code != 403 {
				t.Fatalf("%d %v; want 403", code, body)
			}
			// Refills run alongside; none asks for what the refused
			// sessions would have.
			for _, r := range sim.OpenAIRequests() {
				for _, s := range []string{"You are a pirate!", "French", "gpt-realtime-mini"} {
					if bytes.Contains(r, []byte(s)) {
						t.Fatalf("the provider was asked for a refused session: %s", r)
					}
				}
			}
		})
	}
	t.Run("a pro caller gets the premium voice on demand", func(t *testing.T) {
		if code, body := call(t, "POST", d.url+"/navai/realtime/client-secret", `{"voice":"cedar","instructions":"You are a pirate!"}`, "Authorization", pro); code != 200 {
			t.Fatalf("%d %v", code, body)
		}
	})
	t.Run("a free caller still gets other sessions on demand", func(t *testing.T) {
		if code, body := call(t, "POST", d.url+"/navai/realtime/client-secret", `{"voice":"verse","instructions":"Be brief."}`, "Authorization", free); code != 200 {
			t.Fatalf("%d %v", code, body)
		}
	})

	t.Run("operators restrict what on-demand sessions may choose", func(t *testing.T) {
		rs := redistest.New(t)
		d := startDaemon(t, rs, sim, profileEnv(t, sim, `
profiles:
  assistant:
    provider: openai
    target: 1
    openai:
      on_demand:
        models: [gpt-realtime]
        voices: [marin, verse]
`))
		for _, c := range []struct {
			body   string
			status int
		}{
			{`{"model":"gpt-realtime-mini"}`, 403},
			{`{"voice":"cedar"}`, 403},
			{`{"voice":"verse","instructions":"Be brief."}`, 200},
			{`{}`, 200},
		} {
			if code, body := call(t, "POST", d.url+"/navai/realtime/client-secret", c.body, "Authorization", free); code != c.status {
				t.Fatalf("%s: %d %v; want %d", c.body, code, body, c.status)
			}
		}
	})
	t.Run("operators allow pooled sessions only", func(t *testing.T) {
		rs := redistest.New(t)
		d := startDaemon(t, rs, sim, profileEnv(t, sim, `
profiles:
  assistant:
    provider: openai
    target: 1
    openai:
      on_demand:
        pooled_only: true
`))
		if code, body := call(t, "POST", d.url+"/navai/realtime/client-secret", `{"instructions":"Be brief."}`, "Authorization", free); code != 403 {
			t.Fatalf("a session no pool has: %d %v; want 403", code, body)
		}
		if code, body := call(t, "POST", d.url+"/navai/realtime/client-secret", `{}`, "Authorization", free); code != 200 {
			t.Fatalf("the pooled session: %d %v", code, body)
		}
	})
}

// Finding 2: with only ORGA_API_KEY set, an OpenAI profile existed anyway
// and took a request's own apiKey, so any JWT holder could test stolen
// OpenAI keys from the operator's address.
func TestAuditRequestKeysOnlyWhenEnabled(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, map[string]string{"OPENAI_BASE_URL": sim.URL()})
	auth := "Bearer " + callerJWT(t, "mallory")
	for _, path := range []string{"/navai/realtime/client-secret", "/api/realtime-token"} {
		for _, key := range []string{upstreamtest.DefaultOpenAIKey, "sk-stolen-key-0123456789"} {
			code, _ := call(t, "POST", d.url+path, `{"apiKey":"`+key+`"}`, "Authorization", auth)
			if code != 404 {
				t.Fatalf("%s with a request key: %d; want 404 (no OpenAI profile)", path, code)
			}
		}
	}
	if n := len(sim.OpenAIRequests()); n != 0 {
		t.Fatalf("%d calls reached OpenAI", n)
	}

	t.Run("NAVAI_ALLOW_FRONTEND_API_KEY=true turns request keys on", func(t *testing.T) {
		d := startDaemon(t, redistest.New(t), sim, map[string]string{
			"OPENAI_BASE_URL": sim.URL(), "NAVAI_ALLOW_FRONTEND_API_KEY": "true",
		})
		code, body := call(t, "POST", d.url+"/navai/realtime/client-secret", `{"apiKey":"`+upstreamtest.DefaultOpenAIKey+`"}`, "Authorization", auth)
		if code != 200 {
			t.Fatalf("%d %v", code, body)
		}
	})
	t.Run("a file's OpenAI profile without a key must say so", func(t *testing.T) {
		env := map[string]string{
			"TOKENPOOL_CONFIG":     writeConfig(t, "profiles:\n  byok:\n    provider: openai\n    openai:\n      api_key_env: NO_SUCH_KEY\n"),
			"TOKENPOOL_JWT_SECRET": testJWTSecret,
		}
		var stderr bytes.Buffer
		if code := run(context.Background(), nil, envOf(env), io.Discard, &stderr); code != 2 ||
			!strings.Contains(stderr.String(), "allow_api_key_from_request") {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
	})
}

// Finding 3: cookie-authenticated requests had no cross-site protection: a
// top-level navigation or a form post from another site minted and burned
// credentials and spent the user's limit.
func TestAuditCookieCallersNeedAnAllowedOrigin(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, map[string]string{
		"TOKENPOOL_JWT_COOKIE":    "app_session",
		"TOKENPOOL_CORS_ORIGINS":  "https://app.example",
		"TOKENPOOL_RATE_PER_USER": "3/m",
		"TOKENPOOL_POOL_TARGET":   "3",
	})
	ctx := context.Background()
	cookie := "app_session=" + callerJWT(t, "alice")
	refused := []struct {
		name, method, path string
		header             []string
	}{
		{"a top-level navigation from another site", "GET", "/api/orga-client-secrets",
			[]string{"Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "navigate"}},
		{"a form post from another site", "POST", "/v1/session-config",
			[]string{"Origin", "https://evil.example", "Content-Type", "application/x-www-form-urlencoded", "Sec-Fetch-Site", "cross-site"}},
		{"a request with no Origin and no Sec-Fetch-Site", "POST", "/v1/session-config", nil},
		{"an Origin of null", "POST", "/v1/session-config", []string{"Origin", "null"}},
		{"a listed origin's look-alike", "GET", "/api/orga-client-secrets", []string{"Origin", "https://app.example.evil.example"}},
	}
	for _, tt := range refused {
		t.Run(tt.name+" gets 403 and spends nothing", func(t *testing.T) {
			st, _ := d.pool.Stats(ctx, "default")
			for range 4 { // more than the user's limit
				code, body := call(t, tt.method, d.url+tt.path, "", append([]string{"Cookie", cookie}, tt.header...)...)
				if code != 403 {
					t.Fatalf("%d %v; want 403", code, body)
				}
			}
			after, _ := d.pool.Stats(ctx, "default")
			if after.HandedOut != st.HandedOut || after.Direct != st.Direct {
				t.Fatalf("handed out %d → %d, direct %d → %d", st.HandedOut, after.HandedOut, st.Direct, after.Direct)
			}
		})
	}
	// Nothing above counted against alice: her own three requests pass.
	allowed := []struct {
		name   string
		header []string
	}{
		{"her app's origin", []string{"Origin", "https://app.example", "Sec-Fetch-Site", "cross-site"}},
		{"a same-origin request", []string{"Sec-Fetch-Site", "same-origin"}},
		{"a same-site request", []string{"Sec-Fetch-Site", "same-site"}},
	}
	for _, tt := range allowed {
		t.Run(tt.name+" is served", func(t *testing.T) {
			if code, body := call(t, "GET", d.url+"/api/orga-client-secrets", "", append([]string{"Cookie", cookie}, tt.header...)...); code != 200 {
				t.Fatalf("%d %v", code, body)
			}
		})
	}
	t.Run("a Bearer header from a backend needs no origin", func(t *testing.T) {
		if code, body := call(t, "POST", d.url+"/v1/session-config", "", "Authorization", "Bearer "+callerJWT(t, "bob")); code != 200 {
			t.Fatalf("%d %v", code, body)
		}
	})
}

// Finding 4: a provider 429 with Retry-After: 315360000 paused minting on
// every replica for ten years, surviving restarts.
func TestAuditProviderRetryAfterIsCapped(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, map[string]string{
		"TOKENPOOL_POOL_TARGET": "2", "TOKENPOOL_POOL_MAX": "2",
		"TOKENPOOL_ADMIN_KEYS": "ops:" + sha256hex("admin-key"),
	})
	ctx := context.Background()
	rdb := rs.Client()
	poll.Until(t, "a full pool", 10*time.Second, func() bool {
		st, _ := d.pool.Stats(ctx, "default")
		return st.Usable == 2 && st.InFlight == 0
	})
	sim.ThrottleNext(315360000 * time.Second)
	if r := fetch(t, d.url, callerJWT(t, "alice")); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	var pause time.Duration
	poll.Until(t, "the 429 to pause the fleet", 5*time.Second, func() bool {
		pause = rdb.PTTL(ctx, upstream.PauseKey("", "orga")).Val()
		return pause > 0
	})
	if pause > 5*time.Minute {
		t.Fatalf("the fleet is paused for %v; want at most 5m", pause)
	}
	if len(logLines(d.logsNow(), "upstream: provider's Retry-After capped")) != 1 {
		t.Fatalf("no log line says the Retry-After was capped:\n%s", d.logsNow())
	}

	minted := sim.Counts().Minted
	req, _ := http.NewRequest("POST", d.url+"/v1/admin/providers/orga/resume", nil)
	req.Header.Set("X-API-Key", "admin-key")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("resume: %d", resp.StatusCode)
	}
	if n := rdb.Exists(ctx, upstream.PauseKey("", "orga"), upstream.OpenKey("", "orga")).Val(); n != 0 {
		t.Fatalf("%d fleet flags left after resume", n)
	}
	// The refiller looks again within its 5s backoff cap.
	poll.Until(t, "minting to resume", 10*time.Second, func() bool { return sim.Counts().Minted > minted })
}

// Finding 5: the per-IP limit was dodged over IPv6 (each /128 a new
// client) and, behind a trusted proxy, by a client-set X-Real-IP when the
// rightmost X-Forwarded-For entry did not parse.
func TestAuditPerIPLimitKeysIPv6By64AndIgnoresXRealIP(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	env := map[string]string{"TOKENPOOL_RATE_PER_IP": "2/m", "TOKENPOOL_TRUSTED_PROXIES": "127.0.0.1"}
	auth := "Bearer " + callerJWT(t, "mallory")
	t.Run("IPv6 clients are limited per /64", func(t *testing.T) {
		d := startDaemon(t, redistest.New(t), sim, env)
		for i, ip := range []string{"2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff:ffff:ffff:3", "2001:db8:1:3::1"} {
			want := 200
			if i == 2 {
				want = 429
			}
			if code, body := call(t, "POST", d.url+"/v1/session-config", "", "Authorization", auth, "X-Forwarded-For", ip); code != want {
				t.Fatalf("request %d from %s: %d %v; want %d", i+1, ip, code, body, want)
			}
		}
	})
	t.Run("X-Real-IP is not believed", func(t *testing.T) {
		d := startDaemon(t, rs, sim, env)
		for i, ip := range []string{"198.51.100.1", "198.51.100.2", "198.51.100.3"} {
			want := 200
			if i == 2 {
				want = 429
			}
			code, body := call(t, "POST", d.url+"/v1/session-config", "", "Authorization", auth,
				"X-Forwarded-For", "not-an-address", "X-Real-IP", ip)
			if code != want {
				t.Fatalf("request %d claiming %s: %d %v; want %d", i+1, ip, code, body, want)
			}
		}
	})
}

// Finding 6: an admin prewarm could ask for 100,000 credentials for 7
// days, past TOKENPOOL_POOL_MAX; and ending a prewarm (ready 0) was
// refused when until was over 7 days ahead.
func TestAuditPrewarmIsBounded(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, map[string]string{
		"TOKENPOOL_POOL_TARGET": "1", "TOKENPOOL_POOL_MAX": "50",
		"TOKENPOOL_ADMIN_KEYS": "ops:" + sha256hex("admin-key"),
	})
	at := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339) }
	for _, c := range []struct {
		name, body string
		status     int
	}{
		{"100,000 for 7 days", `{"ready":100000,"until":"` + at(7*24*time.Hour-time.Minute) + `"}`, 400},
		{"past the profile's ceiling", `{"ready":51,"until":"` + at(time.Hour) + `"}`, 400},
		{"longer than a day", `{"ready":10,"until":"` + at(25*time.Hour) + `"}`, 400},
		{"within both", `{"ready":50,"until":"` + at(time.Hour) + `"}`, 200},
		{"an end with until far ahead", `{"ready":0,"until":"` + at(30*24*time.Hour) + `"}`, 200},
		{"an end without until", `{"ready":0}`, 200},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, body := call(t, "POST", d.url+"/v1/admin/profiles/default/prewarm", c.body, "X-API-Key", "admin-key")
			if code != c.status {
				t.Fatalf("%d %v; want %d", code, body, c.status)
			}
		})
	}
	if ready, _, _ := d.pool.Prewarm(context.Background(), "default"); ready != 0 {
		t.Fatalf("a prewarm of %d is left after ending it", ready)
	}
}

// Finding 7: TOKENPOOL_DEBUG_ADDR=:18490 served pprof on every interface.
func TestAuditPprofOnlyOnLoopback(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, map[string]string{"TOKENPOOL_DEBUG_ADDR": ":0"})
	host, _, err := net.SplitHostPort(d.DebugAddr())
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		t.Fatalf("pprof listens on %q; want loopback", d.DebugAddr())
	}
	for _, addr := range []string{"0.0.0.0:0", "[::]:0", "192.0.2.1:6060"} {
		env := map[string]string{"ORGA_API_KEY": "k", "TOKENPOOL_JWT_SECRET": testJWTSecret, "TOKENPOOL_DEBUG_ADDR": addr}
		var stderr bytes.Buffer
		if code := run(context.Background(), nil, envOf(env), io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "TOKENPOOL_DEBUG_ADDR") {
			t.Fatalf("%s: exit %d: %s", addr, code, stderr.String())
		}
	}
	t.Run("TOKENPOOL_DEBUG_PUBLIC=true opts in to another interface", func(t *testing.T) {
		d := startDaemon(t, redistest.New(t), sim, map[string]string{"TOKENPOOL_DEBUG_ADDR": "0.0.0.0:0", "TOKENPOOL_DEBUG_PUBLIC": "true"})
		host, _, _ := net.SplitHostPort(d.DebugAddr())
		if ip := net.ParseIP(host); ip == nil || ip.IsLoopback() {
			t.Fatalf("pprof listens on %q", d.DebugAddr())
		}
	})
}

// Finding 8: a caller's email (per-caller Orga profiles) reached warning
// logs inside the provider URL of a Go HTTP error.
func TestAuditNoEmailInLogs(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	closed := "http://127.0.0.1:" + itoa(redistest.FreePort(t)) // nothing listens
	d := startDaemon(t, rs, sim, profileEnv(t, sim, `
profiles:
  default:
    provider: orga
    orga:
      per_caller_email: true
      base_url: `+closed+`
`))
	tok := claimsJWT(t, map[string]any{"sub": "dave", "email": "dave.doe+tp@example.com", "email_verified": true})
	code, body := call(t, "POST", d.url+"/v1/session-config", "", "Authorization", "Bearer "+tok)
	if code < 500 {
		t.Fatalf("%d %v; want a provider failure", code, body)
	}
	logs := d.logsNow()
	if !strings.Contains(logs, `"request failed"`) {
		t.Fatalf("the failure was not logged:\n%s", logs)
	}
	for _, s := range []string{"dave.doe", "example.com", "dave.doe%2Btp%40example.com"} {
		if strings.Contains(logs, s) {
			t.Fatalf("the logs carry %q:\n%s", s, logs)
		}
	}
}

// Finding 9: a JWT with iat a year in the future was accepted.
func TestAuditFutureIatRefused(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, nil)
	now := time.Now()
	for _, c := range []struct {
		name   string
		iat    time.Time
		status int
	}{
		{"a year ahead", now.AddDate(1, 0, 0), 401},
		{"a minute ahead", now.Add(time.Minute), 401},
		{"within the leeway", now.Add(2 * time.Second), 200},
		{"in the past", now.Add(-time.Minute), 200},
	} {
		t.Run(c.name, func(t *testing.T) {
			tok := claimsJWT(t, map[string]any{"sub": "alice", "iat": c.iat.Unix(), "exp": c.iat.AddDate(0, 0, 1).Unix()})
			if r := fetch(t, d.url, tok); r.status != c.status {
				t.Fatalf("%d %s; want %d", r.status, r.body, c.status)
			}
		})
	}
}

// Finding 10: on-demand Navai answers said X-Credential-Source: direct;
// the README says on_demand.
func TestAuditOnDemandAnswersSayOnDemand(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, profileEnv(t, sim, twoProfiles))
	req, _ := http.NewRequest("POST", d.url+"/navai/realtime/client-secret", strings.NewReader(`{"voice":"verse"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+callerJWT(t, "alice"))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Credential-Source") != "on_demand" {
		t.Fatalf("%d, X-Credential-Source %q; want 200 on_demand", resp.StatusCode, resp.Header.Get("X-Credential-Source"))
	}
	if !strings.Contains(d.logsNow(), `"source":"on_demand"`) {
		t.Fatal("the access log does not say on_demand")
	}
}
