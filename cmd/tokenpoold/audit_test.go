package main

// One test per finding of the outside security audit (issue "Trust at the
// edges"), each replaying the attack as the audit described it.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/tokenpool/tokenpool/internal/idptest"
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

// Round two: the findings of a second audit against running daemons, and
// of a real browser (issue "Trust at the edges, round two").

// Finding 2.1: a per-caller Orga profile minted under an email whose
// token said "email_verified": "false" (a string, as Apple and some
// Cognito and Keycloak mappers send it), or said nothing about it.
func TestAuditUnverifiedEmailsAreNotMintedUnder(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	idp := idptest.Start(t)
	perCaller := `
auth:
  issuers:
    - name: apple
      issuer: %s
      jwks_url: %s
      audiences: [` + testAudience + `]
      assume_email_verified: true
profiles:
  default:
    provider: orga
    orga:
      per_caller_email: true
`
	d := startDaemon(t, rs, sim, profileEnv(t, sim, fmt.Sprintf(perCaller, idp.URL(), idp.JWKSURL())))
	poll.Until(t, "the issuer's keys", 10*time.Second, func() bool { return readyz(t, d.url) == 200 })
	hs256 := func(verified any) string {
		c := map[string]any{"sub": "mallory", "email": "victim@example.com"}
		if verified != nil {
			c["email_verified"] = verified
		}
		return claimsJWT(t, c)
	}
	viaIssuer := func(verified any) string {
		c := jwt.MapClaims{"sub": "mallory", "aud": testAudience, "email": "victim@example.com"}
		if verified != nil {
			c["email_verified"] = verified
		}
		return idp.Sign(t, "ES256", c)
	}
	for _, c := range []struct {
		name, token string
		status      int
	}{
		{`"false", a string`, hs256("false"), 403},
		{"false", hs256(false), 403},
		{"no email_verified at all", hs256(nil), 403},
		{`"FALSE"`, hs256("FALSE"), 403},
		{"0", hs256(0), 403},
		{`"yes"`, hs256("yes"), 403},
		{`"false" from an issuer that never sends the claim`, viaIssuer("false"), 403},
		{"true", hs256(true), 200},
		{`"true"`, hs256("true"), 200},
		{"no claim from an issuer that says it never sends one", viaIssuer(nil), 200},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := len(sim.Emails())
			code, body := call(t, "POST", d.url+"/v1/session-config", "", "Authorization", "Bearer "+c.token)
			if code != c.status {
				t.Fatalf("%d %v; want %d", code, body, c.status)
			}
			if minted := len(sim.Emails()) - before; (c.status == 200) != (minted == 1) {
				t.Fatalf("the provider saw %d mints under the email", minted)
			}
		})
	}
}

// Finding 2.3: the JWKS fetch followed a redirect to another host, whose
// keys then verified tokens; a JWKS URL's host (and https) held only for
// the first request.
func TestAuditJWKSRedirectsStayOnTheHost(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	attacker := idptest.Start(t)
	_, attackerPort, _ := net.SplitHostPort(strings.TrimPrefix(attacker.URL(), "http://"))
	redirect := func(to string) *httptest.Server {
		srv := httptest.NewServer(http.RedirectHandler(to, http.StatusFound))
		t.Cleanup(srv.Close)
		return srv
	}
	// 127.0.0.1 sends the daemon to localhost: another host, the
	// attacker's keys.
	away := redirect("http://localhost:" + attackerPort + idptest.JWKSPath)
	d := startDaemon(t, rs, sim, map[string]string{
		"TOKENPOOL_JWKS_URL": away.URL + "/jwks.json", "TOKENPOOL_JWT_ISSUER": away.URL, "TOKENPOOL_JWT_AUDIENCE": testAudience,
	})
	tok := attacker.Sign(t, "ES256", jwt.MapClaims{"sub": "mallory", "aud": testAudience, "iss": away.URL})
	poll.Until(t, "a fetch to load or fail", 10*time.Second, func() bool {
		return readyz(t, d.url) == 200 || len(logLines(d.logsNow(), "auth: fetching the identity provider's keys failed")) > 0
	})
	if r := fetch(t, d.url, tok); r.status != 401 {
		t.Fatalf("a token signed with the keys of the host the JWKS redirected to: %d %s; want 401", r.status, r.body)
	}
	if readyz(t, d.url) != 503 {
		t.Fatal("ready with no keys loaded")
	}
	if !strings.Contains(d.logsNow(), "redirect") {
		t.Fatalf("the log does not say a redirect was refused:\n%s", d.logsNow())
	}

	t.Run("a redirect on the same host is followed", func(t *testing.T) {
		idp := idptest.Start(t)
		mux := http.NewServeMux()
		mux.Handle("/old/jwks.json", http.RedirectHandler("/new/jwks.json", http.StatusMovedPermanently))
		mux.HandleFunc("/new/jwks.json", func(w http.ResponseWriter, r *http.Request) {
			resp, err := http.Get(idp.JWKSURL())
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			defer resp.Body.Close()
			_, _ = io.Copy(w, resp.Body)
		})
		moved := httptest.NewServer(mux)
		t.Cleanup(moved.Close)
		d := startDaemon(t, redistest.New(t), sim, map[string]string{
			"TOKENPOOL_JWKS_URL": moved.URL + "/old/jwks.json", "TOKENPOOL_JWT_ISSUER": idp.URL(), "TOKENPOOL_JWT_AUDIENCE": testAudience,
		})
		poll.Until(t, "the keys to load", 10*time.Second, func() bool { return readyz(t, d.url) == 200 })
		if r := fetch(t, d.url, idp.Sign(t, "ES256", jwt.MapClaims{"sub": "alice", "aud": testAudience})); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})
}

// Finding 2.4: a token without kid was checked against every published
// key, whatever the key's own alg and use: PS256 and RS512 tokens against
// an RS256 key, an RS256 token against an encryption key.
func TestAuditATokenWithoutKidHoldsToTheKeysAlgAndUse(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	idp := idptest.Start(t)
	d := startDaemon(t, rs, sim, idpEnv(idp))
	poll.Until(t, "the keys to load", 10*time.Second, func() bool { return readyz(t, d.url) == 200 })
	claims := jwt.MapClaims{"sub": "alice", "aud": testAudience}
	for _, c := range []struct {
		name   string
		method jwt.SigningMethod
		kid    string
		status int
	}{
		{"PS256 without kid", jwt.SigningMethodPS256, idptest.NoKID, 401},
		{"RS512 without kid", jwt.SigningMethodRS512, idptest.NoKID, 401},
		{"PS256 with kid", jwt.SigningMethodPS256, "", 401},
		{"RS256 without kid", jwt.SigningMethodRS256, idptest.NoKID, 200},
		{"RS256 with kid", jwt.SigningMethodRS256, "", 200},
	} {
		t.Run(c.name+" against {alg: RS256}", func(t *testing.T) {
			if r := fetch(t, d.url, idp.SignWith(t, "RS256", c.method, c.kid, claims)); r.status != c.status {
				t.Fatalf("%d %s; want %d", r.status, r.body, c.status)
			}
		})
	}

	idp.Publish("RS256", jwkset.UseEnc, "RSA-OAEP")
	idp.Rotate(t, "ES256") // a kid nobody has: the keys are fetched again
	poll.Until(t, "the keys fetched again", 10*time.Second, func() bool {
		return fetch(t, d.url, idp.Sign(t, "ES256", claims)).status == 200
	})
	for _, kid := range []string{idptest.NoKID, ""} {
		if r := fetch(t, d.url, idp.SignWith(t, "RS256", jwt.SigningMethodRS256, kid, claims)); r.status != 401 {
			t.Fatalf("RS256 (kid %q) against {use: enc, alg: RSA-OAEP}: %d %s; want 401", kid, r.status, r.body)
		}
	}
}

// Finding 2.6: a provider's error reached the caller: an unknown model on
// the Navai route answered 502 with OpenAI's message, which named the
// account's project and organization.
func TestAuditProviderErrorsStayInTheLog(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, profileEnv(t, sim, premiumVoice))
	auth := "Bearer " + callerJWT(t, "mallory")
	code, body := call(t, "POST", d.url+"/navai/realtime/client-secret", `{"model":"gpt-nope"}`, "Authorization", auth)
	if code != 502 {
		t.Fatalf("%d %v; want 502", code, body)
	}
	msg := fmt.Sprint(body)
	for _, s := range []string{upstreamtest.SimProject, upstreamtest.SimOrganization, "gpt-nope", "does not exist"} {
		if strings.Contains(msg, s) {
			t.Fatalf("the answer carries the provider's %q: %s", s, msg)
		}
	}
	if !strings.Contains(msg, "OpenAI client_secrets failed (404)") {
		t.Fatalf("the answer lost Navai's wording and the status: %s", msg)
	}
	if !strings.Contains(d.logsNow(), upstreamtest.SimProject) {
		t.Fatalf("the provider's message is not in the log:\n%s", d.logsNow())
	}
	// Navai's own message for a missing key stays as it was.
	d2 := startDaemon(t, redistest.New(t), sim, map[string]string{"OPENAI_BASE_URL": sim.URL(), "NAVAI_ALLOW_FRONTEND_API_KEY": "true"})
	code, body = call(t, "POST", d2.url+"/navai/realtime/client-secret", `{}`, "Authorization", auth)
	if code != 400 || !strings.Contains(fmt.Sprint(body), "Missing API key. Configure openaiApiKey or send apiKey in request.") {
		t.Fatalf("a missing key: %d %v", code, body)
	}
}

// Finding 2.5: a profile with an allow rule that inherits Navai's default
// model was not protected on the Navai routes: its restriction was built
// from the configured model (none), not the session it resolves to.
func TestAuditNavaiRoutesProtectAnInheritedModel(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, profileEnv(t, sim, `
default_profile: default
realtime_profile: assistant
profiles:
  default:
    provider: orga
    target: 1
  assistant:
    provider: openai
    target: 1
    openai:
      model: gpt-realtime-mini
  premium:
    provider: openai
    target: 1
    allow:
      claims:
        plan: [pro]
    openai:
      instructions: You are the premium concierge.
  studio:
    provider: openai
    target: 1
    allow:
      claims:
        plan: [pro]
    openai:
      model: gpt-realtime-mini
      voice: cedar
`))
	free := "Bearer " + claimsJWT(t, map[string]any{"sub": "mallory", "plan": "free"})
	pro := "Bearer " + claimsJWT(t, map[string]any{"sub": "carol", "plan": "pro"})
	for _, c := range []struct {
		name, body string
		status     int
	}{
		{"the premium session", `{"model":"gpt-realtime","instructions":"You are the premium concierge."}`, 403},
		{"the premium session with a language", `{"model":"gpt-realtime","instructions":"You are the premium concierge.","language":"English"}`, 403},
		{"its inherited model alone", `{"model":"gpt-realtime"}`, 403},
		{"its model in other case", `{"model":"GPT-Realtime"}`, 403},
		{"its model's dated snapshot", `{"model":"gpt-realtime-2025-08-28"}`, 403},
		{"studio's voice in other case", `{"voice":"Cedar"}`, 403},
		{"the realtime profile's own session", `{}`, 200},
		{"the realtime profile's model dated", `{"model":"gpt-realtime-mini-2025-10-06","voice":"verse"}`, 200},
	} {
		t.Run(c.name, func(t *testing.T) {
			if code, body := call(t, "POST", d.url+"/navai/realtime/client-secret", c.body, "Authorization", free); code != c.status {
				t.Fatalf("a free caller: %d %v; want %d", code, body, c.status)
			}
		})
	}
	for _, r := range sim.OpenAIRequests() {
		if bytes.Contains(r, []byte("premium concierge")) && bytes.Contains(r, []byte("English")) {
			t.Fatalf("the provider was asked for the premium session: %s", r)
		}
	}
	if code, body := call(t, "POST", d.url+"/navai/realtime/client-secret", `{"model":"gpt-realtime"}`, "Authorization", pro); code != 200 {
		t.Fatalf("a pro caller: %d %v", code, body)
	}
}

// Finding 2.8: with TOKENPOOL_CORS_ORIGINS set, a request from another
// origin was refused by the CORS layer itself: 403 with an empty body, no
// error code in the access log, and never counted by the per-IP limit
// (5 of 5 got 403 at 3/m, where our own refusals turn into 429).
func TestAuditAnUnlistedOriginIsRefusedByOurRules(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, map[string]string{
		"TOKENPOOL_CORS_ORIGINS": "https://app.example",
		"TOKENPOOL_RATE_PER_IP":  "3/m",
	})
	auth := "Bearer " + callerJWT(t, "alice")
	for i := range 5 {
		want, code := 403, "forbidden"
		if i >= 3 {
			want, code = 429, "rate_limited"
		}
		status, body := call(t, "POST", d.url+"/v1/session-config", "", "Authorization", auth, "Origin", "https://evil.example")
		if got, _ := body["error"].(map[string]any); status != want || got["code"] != code {
			t.Fatalf("request %d from an unlisted origin: %d %v; want %d %s", i+1, status, body, want, code)
		}
	}
	var codes []any
	for _, l := range logLines(d.logsNow(), "request") {
		codes = append(codes, l["error_code"])
	}
	if fmt.Sprint(codes) != "[forbidden forbidden forbidden rate_limited rate_limited]" {
		t.Fatalf("the access log's codes: %v", codes)
	}

	t.Run("the app's origin is served, with its CORS headers", func(t *testing.T) {
		d := startDaemon(t, redistest.New(t), sim, map[string]string{"TOKENPOOL_CORS_ORIGINS": "https://app.example"})
		req, _ := http.NewRequest("OPTIONS", d.url+"/v1/session-config", nil)
		req.Header.Set("Origin", "https://app.example")
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" {
			t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
		}
		req, _ = http.NewRequest("POST", d.url+"/v1/session-config", nil)
		req.Header.Set("Origin", "https://app.example")
		req.Header.Set("Authorization", auth)
		resp, err = client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" {
			t.Fatalf("request: %d %v", resp.StatusCode, resp.Header)
		}
		if code, body := call(t, "OPTIONS", d.url+"/v1/session-config", "", "Origin", "https://evil.example", "Access-Control-Request-Method", "POST"); code != 403 || body["error"] == nil {
			t.Fatalf("another origin's preflight: %d %v", code, body)
		}
	})
}

// Finding 2.7: IPv6 per-IP limits by /64 gave a /48 holder 65,536 limits.
// The prefix is a setting, and a wider prefix shares an aggregate limit.
func TestAuditIPv6AddressesShareAnAggregateLimit(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	auth := "Bearer " + callerJWT(t, "mallory")
	from := func(d *daemon, ip string) (int, string) {
		req, _ := http.NewRequest("POST", d.url+"/v1/session-config", nil)
		req.Header.Set("Authorization", auth)
		req.Header.Set("X-Forwarded-For", ip)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, strings.Join(resp.Header.Values("RateLimit-Policy"), ", ")
	}
	d := startDaemon(t, rs, sim, map[string]string{
		"TOKENPOOL_RATE_PER_IP": "2/m", "TOKENPOOL_RATE_PER_IPV6_AGGREGATE": "3/m",
		"TOKENPOOL_TRUSTED_PROXIES": "127.0.0.1", "TOKENPOOL_RATE_PER_USER": "100/m",
	})
	for i, c := range []struct {
		ip   string
		want int
	}{
		{"2001:db8:1:2::1", 200},
		{"2001:db8:1:2::2", 200},
		{"2001:db8:1:2::3", 429},  // its /64's own limit
		{"2001:db8:1:3::1", 200},  // another /64 of the same /48: the aggregate's third
		{"2001:db8:1:ff::1", 429}, // a third /64: the /48 has spent its aggregate
		{"2001:db8:2:1::1", 200},  // another /48
		{"198.51.100.7", 200},     // IPv4 has no aggregate
	} {
		code, policy := from(d, c.ip)
		if code != c.want {
			t.Fatalf("request %d from %s: %d (%s); want %d", i+1, c.ip, code, policy, c.want)
		}
		if strings.Contains(c.ip, ":") && !strings.Contains(policy, `"ipnet";q=3;w=60`) && code == 200 {
			t.Fatalf("request %d from %s: RateLimit-Policy %q lacks the aggregate", i+1, c.ip, policy)
		}
	}

	t.Run("TOKENPOOL_IPV6_PREFIX=56 limits per /56", func(t *testing.T) {
		d := startDaemon(t, redistest.New(t), sim, map[string]string{
			"TOKENPOOL_RATE_PER_IP": "2/m", "TOKENPOOL_IPV6_PREFIX": "56",
			"TOKENPOOL_TRUSTED_PROXIES": "127.0.0.1", "TOKENPOOL_RATE_PER_USER": "100/m",
		})
		for i, ip := range []string{"2001:db8:1:2::1", "2001:db8:1:3::1", "2001:db8:1:4::1"} {
			want := 200
			if i == 2 {
				want = 429
			}
			if code, policy := from(d, ip); code != want {
				t.Fatalf("request %d from %s: %d (%s); want %d", i+1, ip, code, policy, want)
			}
		}
	})
	t.Run("bad settings stop the daemon naming them", func(t *testing.T) {
		for _, env := range []map[string]string{
			{"TOKENPOOL_IPV6_PREFIX": "129"},
			{"TOKENPOOL_IPV6_PREFIX": "48", "TOKENPOOL_IPV6_AGGREGATE_PREFIX": "56"},
			{"TOKENPOOL_RATE_PER_IPV6_AGGREGATE": "lots"},
		} {
			env["ORGA_API_KEY"], env["TOKENPOOL_JWT_SECRET"] = "k", testJWTSecret
			var stderr bytes.Buffer
			if code := run(context.Background(), nil, envOf(env), io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "IPV6") {
				t.Fatalf("%v: exit %d: %s", env, code, stderr.String())
			}
		}
	})
}

// commandCalls reads how often Redis ran each command since its last
// CONFIG RESETSTAT, from INFO commandstats.
func commandCalls(tb testing.TB, rs *redistest.Server) map[string]int {
	tb.Helper()
	info, err := rs.Client().Info(context.Background(), "commandstats").Result()
	if err != nil {
		tb.Fatal(err)
	}
	calls := map[string]int{}
	for _, l := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(l), ":calls=")
		if !ok {
			continue
		}
		n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
		calls[strings.TrimPrefix(name, "cmdstat_")] = n
	}
	return calls
}

// Finding 2.2: /metrics was anonymous, unlimited and on the public port,
// and every scrape read each profile's every shard from Redis (4 profiles
// × 64 shards, 10 scrapes: 10,253 commands); /readyz sent a PING each.
func TestAuditMetricsAreOffThePublicPortAndCheap(t *testing.T) {
	rs := redistest.StartProcess(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, map[string]string{"TOKENPOOL_CONFIG": writeConfig(t, `
profiles:
  default:
    provider: orga
    target: 1
    shards: 16
  second:
    provider: orga
    target: 1
    shards: 16
`)})
	for _, path := range []string{"/metrics", "/debug/pprof/"} {
		if code, body := call(t, "GET", d.url+path, ""); code != 404 || body["error"] == nil {
			t.Fatalf("%s on the API's port: %d %v; want the JSON 404", path, code, body)
		}
	}
	scrapes := d.metricsURL
	if host, _, _ := net.SplitHostPort(d.MetricsAddr()); host != "127.0.0.1" {
		t.Fatalf("metrics listen on %s", d.MetricsAddr())
	}
	rdb := rs.Client()
	ctx := context.Background()
	const perPass = 2 * 16 // one HGETALL per profile per shard
	poll.Until(t, "a scrape", 10*time.Second, func() bool { return len(scrape(t, scrapes)) > 0 })
	time.Sleep(1100 * time.Millisecond) // past any cache of that scrape
	rdb.ConfigResetStat(ctx)
	for range 10 {
		if len(scrape(t, scrapes)) == 0 {
			t.Fatal("an empty scrape")
		}
	}
	for range 20 {
		if readyz(t, d.url) != 200 {
			t.Fatal("not ready")
		}
	}
	calls := commandCalls(t, rs)
	// A cost sample of the refiller's may fall in: one more pass.
	if calls["hgetall"] > 2*perPass {
		t.Fatalf("10 scrapes cost %d HGETALLs; want at most two passes (%d)", calls["hgetall"], 2*perPass)
	}
	if calls["ping"] > 2 {
		t.Fatalf("20 readiness checks sent %d PINGs; want at most 2", calls["ping"])
	}

	t.Run("the default listens on this host only, and off serves none", func(t *testing.T) {
		cfg, err := LoadConfig(envOf(map[string]string{"ORGA_API_KEY": "k", "TOKENPOOL_JWT_SECRET": testJWTSecret}), false)
		if err != nil || cfg.MetricsAddr != "127.0.0.1:9464" {
			t.Fatalf("default %q, %v", cfg.MetricsAddr, err)
		}
		d := startDaemon(t, redistest.New(t), sim, map[string]string{"TOKENPOOL_METRICS_ADDR": "off"})
		if d.MetricsAddr() != "" {
			t.Fatalf("metrics on %s with off", d.MetricsAddr())
		}
		var stderr bytes.Buffer
		env := map[string]string{"ORGA_API_KEY": "k", "TOKENPOOL_JWT_SECRET": testJWTSecret, "TOKENPOOL_METRICS_ADDR": "9464"}
		if code := run(context.Background(), nil, envOf(env), io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "TOKENPOOL_METRICS_ADDR") {
			t.Fatalf("a bad address: exit %d: %s", code, stderr.String())
		}
	})
}
