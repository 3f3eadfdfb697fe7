package main

// One test per finding of the second outside audit, against running
// daemons, and of a real browser (issue "Trust at the edges, round two");
// the first audit's are in audit_test.go.

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
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

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
default_profile: default
profiles:
  default:
    provider: orga
    orga:
      per_caller_email: true
  boss:
    provider: orga
    target: 1
    allow:
      claims:
        email: [victim@example.com]
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
			// An allow rule on email holds to the same rule.
			if code, body := call(t, "POST", d.url+"/v1/session-config", `{"profile":"boss"}`, "Authorization", "Bearer "+c.token); code != c.status {
				t.Fatalf("the profile allowed to victim@example.com: %d %v; want %d", code, body, c.status)
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

	t.Run("a redirect on the same host is not followed either", func(t *testing.T) {
		// One host, a tenant per path (as Entra and Cognito serve them):
		// tenant A's JWKS URL redirects to tenant B's keys, here the
		// attacker's.
		mux := http.NewServeMux()
		mux.Handle("/tenant-a/jwks.json", http.RedirectHandler("/tenant-b/jwks.json", http.StatusMovedPermanently))
		mux.HandleFunc("/tenant-b/jwks.json", func(w http.ResponseWriter, r *http.Request) {
			resp, err := http.Get(attacker.JWKSURL())
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			defer resp.Body.Close()
			_, _ = io.Copy(w, resp.Body)
		})
		host := httptest.NewServer(mux)
		t.Cleanup(host.Close)
		d := startDaemon(t, redistest.New(t), sim, map[string]string{
			"TOKENPOOL_JWKS_URL": host.URL + "/tenant-a/jwks.json", "TOKENPOOL_JWT_ISSUER": host.URL + "/tenant-a", "TOKENPOOL_JWT_AUDIENCE": testAudience,
		})
		poll.Until(t, "a fetch to load or fail", 10*time.Second, func() bool {
			return readyz(t, d.url) == 200 || len(logLines(d.logsNow(), "auth: fetching the identity provider's keys failed")) > 0
		})
		tok := attacker.Sign(t, "ES256", jwt.MapClaims{"sub": "mallory", "aud": testAudience, "iss": host.URL + "/tenant-a"})
		if r := fetch(t, d.url, tok); r.status != 401 {
			t.Fatalf("a token signed with another tenant's keys: %d %s; want 401", r.status, r.body)
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

	t.Run("the app's origin and this host's own are served, with CORS headers for the app's", func(t *testing.T) {
		d := startDaemon(t, redistest.New(t), sim, map[string]string{"TOKENPOOL_CORS_ORIGINS": "https://app.example"})
		send := func(method, origin string, header ...string) *http.Response {
			req, _ := http.NewRequest(method, d.url+"/v1/session-config", nil)
			req.Header.Set("Origin", origin)
			for i := 0; i+1 < len(header); i += 2 {
				req.Header.Set(header[i], header[i+1])
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp
		}
		for _, c := range []struct {
			name, method, origin, allowOrigin string
			status                            int
			header                            []string
		}{
			{"the app's preflight", "OPTIONS", "https://app.example", "https://app.example", 204,
				[]string{"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "authorization"}},
			{"the app's request", "POST", "https://app.example", "https://app.example", 200, []string{"Authorization", auth}},
			{"a same-origin request", "POST", d.url, "", 200, []string{"Authorization", auth}},
		} {
			resp := send(c.method, c.origin, c.header...)
			if resp.StatusCode != c.status || resp.Header.Get("Access-Control-Allow-Origin") != c.allowOrigin {
				t.Fatalf("%s: %d %v", c.name, resp.StatusCode, resp.Header)
			}
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
	// The refiller settles (its first cost sample is taken), and nothing
	// has scraped yet: the first scrape reads.
	poll.Until(t, "both pools full", 10*time.Second, func() bool {
		for _, p := range []string{"default", "second"} {
			if st, err := d.pool.Stats(ctx, p); err != nil || st.Ready < 1 || st.InFlight > 0 {
				return false
			}
		}
		return true
	})
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
	t.Logf("10 scrapes: %d HGETALLs (one pass: %d); 20 readiness checks: %d PINGs", calls["hgetall"], perPass, calls["ping"])
	// The scrapes may straddle the end of a cached second, and a cost
	// sample of the refiller's (one every 10 s) may fall in: three passes
	// at most, where every scrape read them all before (10 passes).
	if calls["hgetall"] > 3*perPass {
		t.Fatalf("10 scrapes cost %d HGETALLs; want at most three passes (%d)", calls["hgetall"], 3*perPass)
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
		for _, bad := range []map[string]string{
			{"TOKENPOOL_METRICS_ADDR": "9464"},
			{"TOKENPOOL_METRICS_ADDR": ":99999"},
			{"TOKENPOOL_METRICS_ADDR": ":8080"},
			{"TOKENPOOL_METRICS_ADDR": "127.0.0.1:18090", "TOKENPOOL_ADDR": ":18090"},
		} {
			bad["ORGA_API_KEY"], bad["TOKENPOOL_JWT_SECRET"] = "k", testJWTSecret
			var stderr bytes.Buffer
			if code := run(context.Background(), nil, envOf(bad), io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "TOKENPOOL_METRICS_ADDR") {
				t.Fatalf("%v: exit %d: %s", bad, code, stderr.String())
			}
		}
	})
	t.Run("a metrics port in use stops the start, leaving the API's port free", func(t *testing.T) {
		busy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		api := "127.0.0.1:" + itoa(redistest.FreePort(t))
		env := testEnv(rs.URL(), sim, map[string]string{"TOKENPOOL_ADDR": api, "TOKENPOOL_METRICS_ADDR": busy.Addr().String()})
		var stderr syncBuffer
		exited := make(chan int, 1)
		go func() { exited <- run(context.Background(), nil, envOf(env), io.Discard, &stderr) }()
		select {
		case code := <-exited:
			if code != 1 || !strings.Contains(stderr.String(), "TOKENPOOL_METRICS_ADDR") {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("the daemon did not exit:\n%s", stderr.String())
		}
		ln, err := net.Listen("tcp", api)
		if err != nil {
			t.Fatalf("the API's port is still bound: %v", err)
		}
		ln.Close()
	})
}
