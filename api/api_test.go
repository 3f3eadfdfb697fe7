package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/mint"
	"github.com/tokenpool/tokenpool/pool"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef")

// fakePool hands out numbered credentials, or fails with err, behind the
// caller's limits, which it applies with a real limiter.
type fakePool struct {
	limits   *limiter.Limiter
	mu       sync.Mutex
	err      error
	readyErr error
	n        int
	got      []string         // profile of each Get
	down     map[string]error // the failure of each profile that fails

	prewarm      int
	prewarmUntil time.Time
}

func (p *fakePool) GetLimited(ctx context.Context, profile, requestID string, _ *mint.Caller, checks []limiter.Check) (pool.Handout, []limiter.Decision, error) {
	ds, err := p.limits.AllowAll(ctx, checks)
	if err != nil {
		return pool.Handout{}, nil, err
	}
	for _, d := range ds {
		if !d.Allowed {
			return pool.Handout{}, ds, limiter.ErrDenied
		}
	}
	h, err := p.get(profile)
	return h, ds, err
}

func (p *fakePool) MintOnce(ctx context.Context, profile, _ string, _ mint.Minter, _ *mint.Caller, _ string, checks []limiter.Check) (pool.Handout, []limiter.Decision, error) {
	ds, err := p.limits.AllowAll(ctx, checks)
	if err != nil {
		return pool.Handout{}, nil, err
	}
	if !limiter.Allowed(checks, ds) {
		return pool.Handout{}, ds, limiter.ErrDenied
	}
	h, err := p.get(profile)
	h.Source = pool.SourceOnDemand
	return h, ds, err
}

func (p *fakePool) Fallback(ctx context.Context, from, to, requestID string, who *mint.Caller, quotas []limiter.Check) (pool.Handout, []limiter.Decision, error) {
	h, ds, err := p.GetLimited(ctx, to, requestID, who, quotas)
	h.FallbackFor = from
	return h, ds, err
}

func (p *fakePool) get(profile string) (pool.Handout, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.got = append(p.got, profile)
	if err := p.down[profile]; err != nil {
		return pool.Handout{}, err
	}
	if p.err != nil {
		return pool.Handout{}, p.err
	}
	p.n++
	h := pool.Handout{
		ID: fmt.Sprintf("id-%d", p.n), Profile: profile, Source: pool.SourcePool,
		Credential: mint.Credential{
			Token:      fmt.Sprintf("eyJ.token-%d.sig", p.n),
			ICEServers: json.RawMessage(`[{"urls":"stun:x"}]`),
			ExpiresAt:  time.Now().Add(2 * time.Minute),
		},
	}
	if profile == "voice" { // a Gemini profile: a URL, no ICE servers
		h.ICEServers, h.Extra = nil, json.RawMessage(`{"url":"wss://generativelanguage.googleapis.com/ws/x"}`)
	}
	return h, nil
}

func (p *fakePool) Stats(context.Context, string) (pool.Stats, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.readyErr != nil {
		return pool.Stats{}, &mint.UnavailableError{Err: p.readyErr, RetryAfter: time.Second}
	}
	return pool.Stats{Ready: 5, Usable: 5, Target: 20, Minted: 7, HandedOut: 2}, nil
}

func (p *fakePool) SetPrewarm(_ context.Context, _ string, ready int, until time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.readyErr != nil {
		return &mint.UnavailableError{Err: p.readyErr, RetryAfter: time.Second}
	}
	p.prewarm, p.prewarmUntil = ready, until
	return nil
}

func (p *fakePool) Prewarm(context.Context, string) (int, time.Time, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.prewarm, p.prewarmUntil, nil
}

// Resume lifts nothing, or fails like Redis when readyErr is set.
func (p *fakePool) Resume(context.Context, string) ([]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.readyErr != nil {
		return nil, p.readyErr
	}
	return []string{"pause"}, nil
}

func (p *fakePool) Return(pool.Handout) {}

func (p *fakePool) Ready(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.readyErr
}

type testServer struct {
	url  string
	pool *fakePool
	logs *bytes.Buffer
}

func newTestServer(tb testing.TB, mut func(*Config)) *testServer {
	tb.Helper()
	rs := redistest.New(tb)
	fp := &fakePool{limits: limiter.New(rs.Client(), rs.Prefix)}
	logs := &syncBuffer{}
	cfg := Config{
		Profiles:  map[string]ProfileInfo{"default": {Provider: "orga", ICE: true}, "other": {Provider: "orga", ICE: true}},
		Pool:      fp,
		Limiter:   limiter.New(rs.Client(), rs.Prefix),
		JWTSecret: testSecret,
		APIKeys:   []APIKey{{Name: "backend", SHA256: sha256.Sum256([]byte("server-key-1"))}},
		Logger:    slog.New(slog.NewJSONHandler(logs, nil)),
	}
	if mut != nil {
		mut(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	tb.Cleanup(srv.Close)
	return &testServer{url: srv.URL, pool: fp, logs: &logs.Buffer}
}

// syncBuffer is a bytes.Buffer safe for the server's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Buffer.Write(p)
}

func signJWT(tb testing.TB, claims jwt.Claims, method jwt.SigningMethod, key any) string {
	tb.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

var testSigning = jwt.SigningMethodHS256

// jwtClaims are a subject's claims, valid for an hour, with extra claims.
func jwtClaims(sub string, extra map[string]any) jwt.MapClaims {
	c := jwt.MapClaims{"sub": sub, "exp": time.Now().Add(time.Hour).Unix()}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

func discardLogger() *slog.Logger { return slog.New(slog.NewJSONHandler(io.Discard, nil)) }

func userJWT(tb testing.TB, sub string) string {
	return signJWT(tb, jwt.RegisteredClaims{Subject: sub, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))},
		jwt.SigningMethodHS256, testSecret)
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) json(tb testing.TB, v any) {
	tb.Helper()
	if err := json.Unmarshal(a.body, v); err != nil {
		tb.Fatalf("answer %d %q: %v", a.status, a.body, err)
	}
}

func do(tb testing.TB, method, url string, body io.Reader, headers ...string) answer {
	tb.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		tb.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i] == "" {
			continue
		}
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

// checkError checks the JSON error shape and returns its code.
func checkError(tb testing.TB, a answer, status int) string {
	tb.Helper()
	if a.status != status {
		tb.Fatalf("status %d, want %d: %s", a.status, status, a.body)
	}
	var e errorBody
	a.json(tb, &e)
	if e.Error.Code == "" || e.Error.Message == "" || e.RequestID == "" || e.RequestID != a.header.Get("X-Request-Id") {
		tb.Fatalf("error body %s lacks code, message or the request id %q", a.body, a.header.Get("X-Request-Id"))
	}
	return e.Error.Code
}

func TestSessionConfigAnswer(t *testing.T) {
	ts := newTestServer(t, nil)
	for _, tc := range []struct{ name, method, path string }{
		{"POST /v1/session-config", http.MethodPost, "/v1/session-config"},
		{"GET /api/orga-client-secrets", http.MethodGet, "/api/orga-client-secrets"},
	} {
		t.Run(tc.name+" answers the contract's body and headers", func(t *testing.T) {
			a := do(t, tc.method, ts.url+tc.path, nil, "Authorization", "Bearer "+userJWT(t, "alice"))
			if a.status != 200 {
				t.Fatalf("status %d: %s", a.status, a.body)
			}
			var got map[string]any
			a.json(t, &got)
			for _, k := range []string{"ephemeralToken", "iceServers", "expiresAt", "expiresIn", "profile", "id"} {
				if _, ok := got[k]; !ok {
					t.Errorf("answer lacks %q: %s", k, a.body)
				}
			}
			if _, err := time.Parse(time.RFC3339, got["expiresAt"].(string)); err != nil {
				t.Errorf("expiresAt: %v", err)
			}
			if in := got["expiresIn"].(float64); in < 100 || in > 120 {
				t.Errorf("expiresIn = %v, want about 120", in)
			}
			if a.header.Get("Cache-Control") != "no-store" || a.header.Get("X-Request-Id") == "" {
				t.Errorf("headers %v lack no-store or X-Request-Id", a.header)
			}
			if a.header.Get("RateLimit") == "" || a.header.Get("RateLimit-Policy") == "" {
				t.Errorf("headers %v lack RateLimit", a.header)
			}
		})
	}

	t.Run("the profile comes from the body, else the default", func(t *testing.T) {
		jwt := userJWT(t, "alice")
		do(t, http.MethodPost, ts.url+"/v1/session-config", strings.NewReader(`{"profile":"other"}`),
			"Authorization", "Bearer "+jwt, "Content-Type", "application/json")
		do(t, http.MethodPost, ts.url+"/v1/session-config", strings.NewReader(`{}`),
			"Authorization", "Bearer "+jwt, "Content-Type", "application/json")
		do(t, http.MethodGet, ts.url+"/api/orga-client-secrets?profile=other", nil, "Authorization", "Bearer "+jwt)
		got := ts.pool.got[len(ts.pool.got)-3:]
		if got[0] != "other" || got[1] != "default" || got[2] != "other" {
			t.Fatalf("profiles asked for: %v", got)
		}
	})

	t.Run("a caller-sent request id is not reused", func(t *testing.T) {
		a := do(t, http.MethodPost, ts.url+"/v1/session-config", nil,
			"Authorization", "Bearer "+userJWT(t, "alice"), "X-Request-Id", "chosen-by-caller")
		if id := a.header.Get("X-Request-Id"); id == "chosen-by-caller" || id == "" {
			t.Fatalf("X-Request-Id = %q", id)
		}
	})
}

func TestAuthentication(t *testing.T) {
	ts := newTestServer(t, func(c *Config) { c.JWTIssuer, c.JWTAudiences = "https://app.example", []string{"tokenpool"} })
	exp := jwt.NewNumericDate(time.Now().Add(time.Hour))
	good := jwt.RegisteredClaims{Subject: "alice", Issuer: "https://app.example", Audience: jwt.ClaimStrings{"tokenpool"}, ExpiresAt: exp}
	with := func(change func(*jwt.RegisteredClaims)) jwt.RegisteredClaims {
		c := good
		change(&c)
		return c
	}
	rsaLike := func() string { // alg RS256 header with an HMAC signature: the alg-confusion attack
		h := `{"alg":"RS256","typ":"JWT"}`
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, good)
		s, _ := tok.SignedString(testSecret)
		parts := strings.Split(s, ".")
		return jwtB64(h) + "." + parts[1] + "." + parts[2]
	}

	accepted := []struct{ name, header, value string }{
		{"a valid JWT", "Authorization", "Bearer " + signJWT(t, good, jwt.SigningMethodHS256, testSecret)},
		{"an API key in X-API-Key", "X-API-Key", "server-key-1"},
		{"an API key as a Bearer value", "Authorization", "Bearer server-key-1"},
	}
	for _, tc := range accepted {
		t.Run(tc.name+" is accepted", func(t *testing.T) {
			if a := do(t, http.MethodPost, ts.url+"/v1/session-config", nil, tc.header, tc.value); a.status != 200 {
				t.Fatalf("status %d: %s", a.status, a.body)
			}
		})
	}

	refused := []struct{ name, header, value string }{
		{"no credentials", "", ""},
		{"a wrong secret", "Authorization", "Bearer " + signJWT(t, good, jwt.SigningMethodHS256, []byte("another-secret-another-secret-!!"))},
		{"an expired JWT", "Authorization", "Bearer " + signJWT(t, with(func(c *jwt.RegisteredClaims) {
			c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute))
		}), jwt.SigningMethodHS256, testSecret)},
		{"a JWT without exp", "Authorization", "Bearer " + signJWT(t, with(func(c *jwt.RegisteredClaims) { c.ExpiresAt = nil }), jwt.SigningMethodHS256, testSecret)},
		{"a JWT without sub", "Authorization", "Bearer " + signJWT(t, with(func(c *jwt.RegisteredClaims) { c.Subject = "" }), jwt.SigningMethodHS256, testSecret)},
		{"a wrong issuer", "Authorization", "Bearer " + signJWT(t, with(func(c *jwt.RegisteredClaims) { c.Issuer = "evil" }), jwt.SigningMethodHS256, testSecret)},
		{"a wrong audience", "Authorization", "Bearer " + signJWT(t, with(func(c *jwt.RegisteredClaims) { c.Audience = jwt.ClaimStrings{"x"} }), jwt.SigningMethodHS256, testSecret)},
		{"alg none", "Authorization", "Bearer " + signJWT(t, good, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType)},
		{"another alg than HS256", "Authorization", "Bearer " + signJWT(t, good, jwt.SigningMethodHS512, testSecret)},
		{"an alg-confusion header", "Authorization", "Bearer " + rsaLike()},
		{"an oversized header", "Authorization", "Bearer " + strings.Repeat("a", maxCredentialLen)},
		{"a wrong API key", "X-API-Key", "server-key-2"},
		{"a Basic scheme", "Authorization", "Basic dXNlcjpwYXNz"},
	}
	for _, tc := range refused {
		t.Run(tc.name+" is refused with 401 and a challenge", func(t *testing.T) {
			before := len(ts.pool.got)
			a := do(t, http.MethodPost, ts.url+"/v1/session-config", nil, tc.header, tc.value)
			if code := checkError(t, a, 401); code != codeUnauthenticated {
				t.Fatalf("code %q", code)
			}
			if !strings.HasPrefix(a.header.Get("WWW-Authenticate"), `Bearer realm="tokenpool"`) {
				t.Fatalf("WWW-Authenticate = %q", a.header.Get("WWW-Authenticate"))
			}
			if len(ts.pool.got) != before {
				t.Fatal("an unauthenticated request reached the pool")
			}
			if tc.value != "" && bytes.Contains(a.body, []byte(strings.TrimPrefix(tc.value, "Bearer "))) {
				t.Fatal("the error body echoes the credential")
			}
		})
	}
}

func jwtB64(s string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(s))
}

func TestPerUserLimit(t *testing.T) {
	ts := newTestServer(t, func(c *Config) { c.PerUser, _ = limiter.Parse("5/m") })
	alice, bob := userJWT(t, "alice"), userJWT(t, "bob")
	for i := range 5 {
		if a := do(t, http.MethodPost, ts.url+"/v1/session-config", nil, "Authorization", "Bearer "+alice); a.status != 200 {
			t.Fatalf("request %d: %d %s", i+1, a.status, a.body)
		}
	}
	a := do(t, http.MethodPost, ts.url+"/v1/session-config", nil, "Authorization", "Bearer "+alice)
	if code := checkError(t, a, 429); code != codeRateLimited {
		t.Fatalf("code %q", code)
	}
	if a.header.Get("Retry-After") == "" || !strings.Contains(strings.Join(a.header.Values("RateLimit"), ", "), `"user";r=0`) ||
		a.header.Get("RateLimit-Policy") == "" {
		t.Fatalf("429 headers: %v", a.header)
	}
	if b := do(t, http.MethodPost, ts.url+"/v1/session-config", nil, "Authorization", "Bearer "+bob); b.status != 200 {
		t.Fatalf("another user: %d %s", b.status, b.body)
	}
}

func TestPerIPLimitTrustsOnlyListedProxies(t *testing.T) {
	t.Run("X-Forwarded-For from an untrusted peer is ignored", func(t *testing.T) {
		ts := newTestServer(t, func(c *Config) { c.PerIP, _ = limiter.Parse("2/m") })
		key := "server-key-1"
		for i, xff := range []string{"1.1.1.1", "2.2.2.2"} {
			if a := do(t, http.MethodPost, ts.url+"/v1/session-config", nil, "X-API-Key", key, "X-Forwarded-For", xff); a.status != 200 {
				t.Fatalf("request %d: %d", i+1, a.status)
			}
		}
		a := do(t, http.MethodPost, ts.url+"/v1/session-config", nil, "X-API-Key", key, "X-Forwarded-For", "3.3.3.3")
		checkError(t, a, 429)
		if !strings.Contains(a.header.Get("RateLimit-Policy"), `"ip"`) {
			t.Fatalf("policy %q", a.header.Get("RateLimit-Policy"))
		}
	})
	t.Run("X-Forwarded-For from a trusted proxy names the client", func(t *testing.T) {
		ts := newTestServer(t, func(c *Config) {
			c.PerIP, _ = limiter.Parse("2/m")
			c.TrustedProxies = []string{"127.0.0.1/32"}
		})
		for i, xff := range []string{"1.1.1.1", "2.2.2.2", "3.3.3.3", "1.1.1.1"} {
			if a := do(t, http.MethodPost, ts.url+"/v1/session-config", nil, "X-API-Key", "server-key-1", "X-Forwarded-For", xff); a.status != 200 {
				t.Fatalf("request %d from %s: %d", i+1, xff, a.status)
			}
		}
	})
}

func TestErrorMapping(t *testing.T) {
	ts := newTestServer(t, nil)
	auth := []string{"Authorization", "Bearer " + userJWT(t, "alice")}
	tests := []struct {
		name       string
		err        error
		status     int
		code       string
		retryAfter string
	}{
		{"an empty pool with the provider out is 503 with Retry-After", &mint.UnavailableError{Err: pool.ErrEmpty, RetryAfter: 7 * time.Second}, 503, codeUnavailable, "7"},
		{"a provider failure is 502", fmt.Errorf("%w: orga: mint: status 500", pool.ErrProvider), 502, codeProvider, ""},
		{"an unknown profile is 400", fmt.Errorf("%w %q", pool.ErrUnknownProfile, "x"), 400, codeBadRequest, ""},
		{"a deadline is 503", context.DeadlineExceeded, 503, codeUnavailable, "1"},
		{"anything else is 500 with no cause shown", errors.New("sk_orga_ai_leaked detail"), 500, codeInternal, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts.pool.mu.Lock()
			ts.pool.err = tt.err
			ts.pool.mu.Unlock()
			a := do(t, http.MethodPost, ts.url+"/v1/session-config", nil, auth...)
			if code := checkError(t, a, tt.status); code != tt.code {
				t.Fatalf("code %q, want %q", code, tt.code)
			}
			if got := a.header.Get("Retry-After"); got != tt.retryAfter {
				t.Fatalf("Retry-After %q, want %q", got, tt.retryAfter)
			}
			if bytes.Contains(a.body, []byte("leaked")) || bytes.Contains(a.body, []byte("status 500")) {
				t.Fatalf("the cause reached the body: %s", a.body)
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	ts := newTestServer(t, nil)
	auth := "Bearer " + userJWT(t, "alice")
	tests := []struct {
		name, body, contentType string
		status                  int
	}{
		{"malformed JSON", `{"profile":`, "application/json", 400},
		{"an unknown field", `{"profile":"default","x":1}`, "application/json", 400},
		{"two objects", `{} {}`, "application/json", 400},
		{"a wrong content type", `{"profile":"default"}`, "text/plain", 415},
		{"an oversized body", `{"profile":"` + strings.Repeat("a", maxBodyBytes) + `"}`, "application/json", 413},
		{"an unknown profile", `{"profile":"nope"}`, "application/json", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is refused", func(t *testing.T) {
			a := do(t, http.MethodPost, ts.url+"/v1/session-config", strings.NewReader(tt.body),
				"Authorization", auth, "Content-Type", tt.contentType)
			checkError(t, a, tt.status)
		})
	}
	t.Run("an unknown route is a JSON 404", func(t *testing.T) {
		checkError(t, do(t, http.MethodGet, ts.url+"/nope", nil), 404)
	})
	t.Run("a wrong method is a JSON 405", func(t *testing.T) {
		checkError(t, do(t, http.MethodDelete, ts.url+"/v1/session-config", nil), 405)
	})
}

// TestHealth: /readyz answers from a check at most ReadyCacheTTL old, so
// no rate of readiness probes costs Redis more than one check per
// interval (audit round two, finding 2).
func TestHealth(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	ts := newTestServer(t, func(c *Config) { c.Now = clock })
	if a := do(t, http.MethodGet, ts.url+"/healthz", nil); a.status != 200 {
		t.Fatalf("healthz %d", a.status)
	}
	if a := do(t, http.MethodGet, ts.url+"/readyz", nil); a.status != 200 {
		t.Fatalf("readyz %d", a.status)
	}
	ts.pool.mu.Lock()
	ts.pool.readyErr = errors.New("redis down")
	ts.pool.mu.Unlock()
	if a := do(t, http.MethodGet, ts.url+"/readyz", nil); a.status != 200 {
		t.Fatalf("readyz within the cache's interval: %d, want the cached 200", a.status)
	}
	advance(ReadyCacheTTL)
	checkError(t, do(t, http.MethodGet, ts.url+"/readyz", nil), 503)
}

func TestCORS(t *testing.T) {
	ts := newTestServer(t, func(c *Config) { c.CORSOrigins = []string{"https://app.example"} })
	a := do(t, http.MethodOptions, ts.url+"/v1/session-config", nil,
		"Origin", "https://app.example", "Access-Control-Request-Method", "POST",
		"Access-Control-Request-Headers", "authorization")
	if a.status/100 != 2 || a.header.Get("Access-Control-Allow-Origin") != "https://app.example" {
		t.Fatalf("preflight %d %v", a.status, a.header)
	}
	a = do(t, http.MethodOptions, ts.url+"/v1/session-config", nil,
		"Origin", "https://evil.example", "Access-Control-Request-Method", "POST")
	if a.header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("an unlisted origin was allowed: %v", a.header)
	}
}

func TestAPIKeysParse(t *testing.T) {
	sum := sha256.Sum256([]byte("k"))
	keys, err := ParseAPIKeys("a:" + hex.EncodeToString(sum[:]) + ", b:" + hex.EncodeToString(sum[:]))
	if err != nil || len(keys) != 2 || keys[1].Name != "b" || keys[0].SHA256 != sum {
		t.Fatalf("got %+v, %v", keys, err)
	}
	for _, bad := range []string{"a", "a:zz", ":" + hex.EncodeToString(sum[:]), "a:abcd", "a:" + hex.EncodeToString(sum[:]) + ",a:" + hex.EncodeToString(sum[:])} {
		if _, err := ParseAPIKeys(bad); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

// A JWKS fetch follows no redirect, on its host or off it, and its error
// does not carry where the redirect pointed (audit round two, finding 3:
// https://idp answered 302 to http://attacker, whose keys then verified
// tokens).
func TestJWKSRedirectsAreNotFollowed(t *testing.T) {
	for _, to := range []string{"/tenant-b/jwks.json?sig=s3cr3t", "http://attacker.example/jwks.json?sig=s3cr3t"} {
		idp := httptest.NewServer(http.RedirectHandler(to, http.StatusFound))
		k, err := newKeySet(Issuer{URL: idp.URL, JWKSURL: idp.URL + "/jwks.json", Audiences: []string{"app"}}, Config{}, discardLogger())
		if err != nil {
			t.Fatal(err)
		}
		err = k.fetch(context.Background(), time.Second)
		idp.Close()
		if !errors.Is(err, errJWKSRedirect) || strings.Contains(err.Error(), "s3cr3t") {
			t.Fatalf("a redirect to %s: %v", to, err)
		}
		if k.loaded.Load() {
			t.Fatalf("keys loaded through a redirect to %s", to)
		}
	}
}
