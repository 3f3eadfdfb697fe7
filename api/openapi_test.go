package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/ledger"
	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/mint"
	"github.com/tokenpool/tokenpool/pool"
)

// providerFailure is a provider error with a public message, as an OpenAI
// failure in Navai's words is.
type providerFailure struct{}

func (providerFailure) Error() string { return "openai: status 401" }
func (providerFailure) PublicMessage() string {
	return "OpenAI client_secrets failed (401): Invalid API key"
}

// TestResponsesMatchOpenAPI sends requests that produce every documented
// answer of every route and validates each real answer against
// api/openapi.yaml.
func TestResponsesMatchOpenAPI(t *testing.T) {
	ctx := context.Background()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(ctx); err != nil {
		t.Fatalf("api/openapi.yaml is not a valid OpenAPI document: %v", err)
	}
	if !doc.IsOpenAPI31OrLater() {
		t.Fatalf("openapi %s, want 3.1", doc.OpenAPI)
	}
	rs := redistest.New(t)
	fp := &fakePool{limits: limiter.New(rs.Client(), rs.Prefix)}
	var (
		rtMu  sync.Mutex
		rtErr error
	)
	realtime := fakeRealtime(func() error {
		rtMu.Lock()
		defer rtMu.Unlock()
		return rtErr
	})
	perUser, _ := limiter.Parse("3/m")
	var (
		clockMu sync.Mutex
		now     = time.Now()
	)
	clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	s, err := New(Config{
		Now:  clock,
		Pool: fp, Limiter: limiter.New(rs.Client(), rs.Prefix), Realtime: realtime,
		Profiles: map[string]ProfileInfo{
			"default":   {Provider: "orga", ICE: true},
			"assistant": {Provider: "openai"},
			"staff":     {Provider: "orga", ICE: true, Access: &Access{Claims: map[string][]string{"role": {"staff"}}}},
			"voice":     {Provider: "gemini", Fallback: []string{"staff", "default"}},
			"acme":      {Provider: "acme", Quotas: []Quota{{Name: "daily", Sessions: 1, Per: 24 * time.Hour}}}, // an http profile's provider
		},
		Quotas:    []Quota{{Name: "org", Sessions: 100, Per: 24 * time.Hour, By: "org"}},
		Ledger:    fakeLedger{fp},
		JWTSecret: testSecret, PerUser: perUser, QuotaAdmin: failingQuotas{fp, limiter.New(rs.Client(), rs.Prefix)},
		Admin: fp, AdminKeys: []APIKey{{Name: "ops", SHA256: sha256.Sum256([]byte("admin-key-1"))}}, Providers: fp,
		Logger: discardLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	// A second server whose per-IP limit is one a minute, for the admin
	// routes' 429.
	tightIP, _ := limiter.Parse("1/m")
	s2, err := New(Config{
		Pool: fp, Limiter: limiter.New(rs.Client(), rs.Prefix+"tight"), JWTSecret: testSecret, PerIP: tightIP,
		QuotaAdmin: limiter.New(rs.Client(), rs.Prefix+"tight"), Ledger: fakeLedger{fp}, Admin: fp, AdminKeys: []APIKey{{Name: "ops", SHA256: sha256.Sum256([]byte("admin-key-1"))}}, Providers: fp,
		Logger: discardLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	tight := httptest.NewServer(s2.Handler())
	defer tight.Close()
	doc.Servers = openapi3.Servers{{URL: srv.URL}, {URL: tight.URL}} // the document's "/" on these hosts
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}

	// Every route the server answers is documented.
	for _, r := range s.engine.Routes() {
		path := regexp.MustCompile(`:(\w+)`).ReplaceAllString(r.Path, "{$1}") // Gin's :name is OpenAPI's {name}
		if doc.Paths.Find(path) == nil || doc.Paths.Find(path).GetOperation(r.Method) == nil {
			t.Errorf("route %s %s is not in api/openapi.yaml", r.Method, r.Path)
		}
	}

	seen := map[string]bool{} // "METHOD path status"
	n := 0
	fresh := func() string { n++; return "Bearer " + userJWT(t, fmt.Sprintf("user-%d", n)) }
	setErr := func(err error) {
		fp.mu.Lock()
		fp.err = err
		fp.mu.Unlock()
		rtMu.Lock()
		rtErr = err
		rtMu.Unlock()
	}
	base := srv.URL
	check := func(name, method, path, body, contentType, auth string, want int) {
		t.Run(name, func(t *testing.T) {
			var rd io.Reader
			if body != "" {
				rd = strings.NewReader(body)
			}
			req, _ := http.NewRequest(method, base+path, rd)
			if contentType != "" {
				req.Header.Set("Content-Type", contentType)
			}
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, want, b)
			}
			route, params, err := router.FindRoute(req)
			if err != nil {
				if want != 404 && want != 405 {
					t.Fatalf("no documented operation for %s %s: %v", method, path, err)
				}
				// Not an operation (404, 405): the body is still the Error shape.
				var v any
				if err := json.Unmarshal(b, &v); err != nil {
					t.Fatal(err)
				}
				if err := doc.Components.Schemas["Error"].Value.VisitJSON(v); err != nil {
					t.Fatalf("%d body does not match the Error schema: %v\n%s", want, err, b)
				}
				return
			}
			in := &openapi3filter.ResponseValidationInput{
				RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
				Status:                 resp.StatusCode, Header: resp.Header, Body: io.NopCloser(bytes.NewReader(b)),
				Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
			}
			if err := openapi3filter.ValidateResponse(ctx, in); err != nil {
				t.Fatalf("the answer does not match api/openapi.yaml: %v\n%s", err, b)
			}
			seen[fmt.Sprintf("%s %s %d", method, route.Path, want)] = true
		})
	}

	big := `{"profile":"` + strings.Repeat("a", maxBodyBytes) + `"}`
	staff := "Bearer " + signJWT(t, jwtClaims("sam", map[string]any{"role": "staff"}), testSigning, testSecret)
	credentialRoutes := []struct{ method, path, okBody string }{
		{"POST", "/v1/credentials", `{"profile":"default"}`},
		{"GET", "/v1/credentials", ""},
		{"POST", "/v1/session-config", `{"profile":"default"}`},
		{"GET", "/api/orga-client-secrets", ""},
		{"POST", "/navai/realtime/client-secret", `{"voice":"marin"}`},
		{"POST", "/api/realtime-token", ""},
	}
	for _, r := range credentialRoutes {
		ct := ""
		if r.okBody != "" {
			ct = "application/json"
		}
		setErr(nil)
		check(r.method+" "+r.path+" 200", r.method, r.path, r.okBody, ct, fresh(), 200)
		check(r.method+" "+r.path+" 401", r.method, r.path, "", "", "", 401)
		rl := fresh()
		for range 3 {
			check(r.method+" "+r.path+" within the limit", r.method, r.path, "", "", rl, 200)
		}
		check(r.method+" "+r.path+" 429", r.method, r.path, "", "", rl, 429)
		setErr(&mint.UnavailableError{Err: pool.ErrEmpty, RetryAfter: 3 * time.Second})
		check(r.method+" "+r.path+" 503", r.method, r.path, "", "", fresh(), 503)
		setErr(fmt.Errorf("%w: %w", pool.ErrProvider, providerFailure{}))
		check(r.method+" "+r.path+" 502", r.method, r.path, "", "", fresh(), 502)
		setErr(errNotAllowed)
		check(r.method+" "+r.path+" 403", r.method, r.path, "", "", fresh(), 403)
		setErr(nil)
		if r.method == "POST" {
			check(r.method+" "+r.path+" 400 malformed", r.method, r.path, `{"x":`, "application/json", fresh(), 400)
			check(r.method+" "+r.path+" 413", r.method, r.path, big, "application/json", fresh(), 413)
			check(r.method+" "+r.path+" 415", r.method, r.path, `{}`, "text/plain", fresh(), 415)
		}
	}
	check("an unknown profile is 400", "POST", "/v1/session-config", `{"profile":"nope"}`, "application/json", fresh(), 400)
	check("an unknown profile is 400 on GET /v1/credentials", "GET", "/v1/credentials?profile=nope", "", "", fresh(), 400)
	check("a preset's credential carries its extras", "GET", "/v1/credentials?profile=voice", "", "", fresh(), 200)
	daily := fresh()
	check("an http profile's credential", "GET", "/v1/credentials?profile=acme", "", "", daily, 200)
	check("past its daily quota is 429", "GET", "/v1/credentials?profile=acme", "", "", daily, 429)
	check("a preset's profile on session-config is 400", "POST", "/v1/session-config", `{"profile":"voice"}`, "application/json", fresh(), 400)
	fp.mu.Lock()
	fp.down = map[string]error{"voice": &mint.UnavailableError{Err: errors.New("upstream: gemini: circuit breaker open")}}
	fp.mu.Unlock()
	check("a fallback stands in", "POST", "/v1/credentials", `{"profile":"voice"}`, "application/json", fresh(), 200)
	fp.mu.Lock()
	fp.down = nil
	fp.mu.Unlock()
	check("an OpenAI profile on the Orga route is 400", "GET", "/api/orga-client-secrets?profile=assistant", "", "", fresh(), 400)
	check("a restricted profile is 403", "POST", "/v1/session-config", `{"profile":"staff"}`, "application/json", fresh(), 403)
	check("the restricted profile with the claim is 200", "POST", "/v1/session-config", `{"profile":"staff"}`, "application/json", staff, 200)
	setErr(&mint.Error{Code: mint.CodeInvalid, Message: "Missing API key. Configure openaiApiKey or send apiKey in request."})
	check("a Navai key policy refusal is 400", "POST", "/navai/realtime/client-secret", `{}`, "application/json", fresh(), 400)
	setErr(nil)
	admin := "Bearer admin-key-1"
	until := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	check("GET /v1/admin/profiles 200", "GET", "/v1/admin/profiles", "", "", admin, 200)
	check("admin routes refuse caller credentials", "GET", "/v1/admin/profiles", "", "", fresh(), 401)
	check("prewarm 200", "POST", "/v1/admin/profiles/default/prewarm", `{"ready":100,"until":"`+until+`"}`, "application/json", admin, 200)
	check("the report shows the prewarm", "GET", "/v1/admin/profiles", "", "", admin, 200)
	check("prewarm without ready is 400", "POST", "/v1/admin/profiles/default/prewarm", `{"until":"`+until+`"}`, "application/json", admin, 400)
	check("prewarm in the past is 400", "POST", "/v1/admin/profiles/default/prewarm", `{"ready":5,"until":"2001-01-01T00:00:00Z"}`, "application/json", admin, 400)
	check("prewarm of an unknown profile is 400", "POST", "/v1/admin/profiles/nope/prewarm", `{"ready":5,"until":"`+until+`"}`, "application/json", admin, 400)
	check("prewarm without an admin key is 401", "POST", "/v1/admin/profiles/default/prewarm", `{"ready":5}`, "application/json", fresh(), 401)
	check("prewarm 413", "POST", "/v1/admin/profiles/default/prewarm", big, "application/json", admin, 413)
	check("prewarm 415", "POST", "/v1/admin/profiles/default/prewarm", `{"ready":5}`, "text/plain", admin, 415)
	check("usage 200", "GET", "/v1/admin/usage?by=subject&window=24h", "", "", admin, 200)
	check("usage by tenant 200", "GET", "/v1/admin/usage?by=tenant", "", "", admin, 200)
	check("usage by something else is 400", "GET", "/v1/admin/usage?by=ip", "", "", admin, 400)
	check("usage without an admin key is 401", "GET", "/v1/admin/usage", "", "", fresh(), 401)
	check("a quota reset 200", "POST", "/v1/admin/quotas/reset", `{"subject":"user:someone"}`, "application/json", admin, 200)
	check("a reset naming nobody is 400", "POST", "/v1/admin/quotas/reset", `{}`, "application/json", admin, 400)
	check("a reset of no such quota is 404", "POST", "/v1/admin/quotas/reset", `{"tenant":"acme","quota":"nope"}`, "application/json", admin, 404)
	check("a reset without an admin key is 401", "POST", "/v1/admin/quotas/reset", `{"tenant":"acme"}`, "application/json", fresh(), 401)
	check("a reset 413", "POST", "/v1/admin/quotas/reset", big, "application/json", admin, 413)
	check("a reset 415", "POST", "/v1/admin/quotas/reset", `{"tenant":"acme"}`, "text/plain", admin, 415)
	check("ledger 200", "GET", "/v1/admin/ledger?subject=user:a&since=2026-01-01T00:00:00Z", "", "", admin, 200)
	check("ledger with a bad cursor is 400", "GET", "/v1/admin/ledger?after=nope", "", "", admin, 400)
	check("ledger without an admin key is 401", "GET", "/v1/admin/ledger", "", "", fresh(), 401)
	check("lookup 200", "POST", "/v1/admin/ledger/lookup", `{"token":"leaked"}`, "application/json", admin, 200)
	check("lookup without a token is 400", "POST", "/v1/admin/ledger/lookup", `{}`, "application/json", admin, 400)
	check("lookup without an admin key is 401", "POST", "/v1/admin/ledger/lookup", `{"token":"leaked"}`, "application/json", fresh(), 401)
	check("lookup 413", "POST", "/v1/admin/ledger/lookup", big, "application/json", admin, 413)
	check("lookup 415", "POST", "/v1/admin/ledger/lookup", `{"token":"x"}`, "text/plain", admin, 415)
	check("resume 200", "POST", "/v1/admin/providers/orga/resume", "", "", admin, 200)
	check("resume of a provider no profile uses is 404", "POST", "/v1/admin/providers/azure/resume", "", "", admin, 404)
	check("resume without an admin key is 401", "POST", "/v1/admin/providers/orga/resume", "", "", fresh(), 401)
	check("GET /metrics is not on the API's port: 404", "GET", "/metrics", "", "", "", 404)
	check("GET /healthz 200", "GET", "/healthz", "", "", "", 200)
	check("GET /readyz 200", "GET", "/readyz", "", "", "", 200)
	fp.mu.Lock()
	fp.readyErr = fmt.Errorf("redis down")
	fp.mu.Unlock()
	clockMu.Lock()
	now = now.Add(ReadyCacheTTL) // past the last check's answer
	clockMu.Unlock()
	check("GET /readyz 503", "GET", "/readyz", "", "", "", 503)
	check("the admin report with Redis away is 503", "GET", "/v1/admin/profiles", "", "", admin, 503)
	check("a prewarm with Redis away is 503", "POST", "/v1/admin/profiles/default/prewarm", `{"ready":5,"until":"`+until+`"}`, "application/json", admin, 503)
	check("a resume with Redis away is 503", "POST", "/v1/admin/providers/orga/resume", "", "", admin, 503)
	check("usage with Redis away is 503", "GET", "/v1/admin/usage", "", "", admin, 503)
	check("the ledger with Redis away is 503", "GET", "/v1/admin/ledger", "", "", admin, 503)
	check("a lookup with Redis away is 503", "POST", "/v1/admin/ledger/lookup", `{"token":"x"}`, "application/json", admin, 503)
	check("a quota reset with Redis away is 503", "POST", "/v1/admin/quotas/reset", `{"tenant":"acme"}`, "application/json", admin, 503)
	fp.mu.Lock()
	fp.readyErr = nil
	fp.mu.Unlock()
	base = tight.URL
	check("the tight server's first admin request", "GET", "/v1/admin/profiles", "", "", admin, 200)
	check("admin report over the per-IP limit is 429", "GET", "/v1/admin/profiles", "", "", admin, 429)
	check("a prewarm over the per-IP limit is 429", "POST", "/v1/admin/profiles/default/prewarm", `{"ready":5,"until":"`+until+`"}`, "application/json", admin, 429)
	check("a resume over the per-IP limit is 429", "POST", "/v1/admin/providers/orga/resume", "", "", admin, 429)
	check("usage over the per-IP limit is 429", "GET", "/v1/admin/usage", "", "", admin, 429)
	check("the ledger over the per-IP limit is 429", "GET", "/v1/admin/ledger", "", "", admin, 429)
	check("a lookup over the per-IP limit is 429", "POST", "/v1/admin/ledger/lookup", `{"token":"x"}`, "application/json", admin, 429)
	check("a quota reset over the per-IP limit is 429", "POST", "/v1/admin/quotas/reset", `{"tenant":"acme"}`, "application/json", admin, 429)
	base = srv.URL
	check("GET /openapi.yaml 200", "GET", "/openapi.yaml", "", "", "", 200)
	check("an unknown route is a 404 in the Error shape", "GET", "/nope", "", "", "", 404)
	check("a wrong method is a 405 in the Error shape", "DELETE", "/v1/session-config", "", "", "", 405)

	// Every documented answer of every operation was produced and checked.
	var missing []string
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			for status := range op.Responses.Map() {
				if k := method + " " + path + " " + status; !seen[k] {
					missing = append(missing, k)
				}
			}
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("documented answers never produced by this test:\n%s", strings.Join(missing, "\n"))
	}
}

// failingQuotas is the limiter's quota admin, failing while the fake
// pool's Redis is away.
type failingQuotas struct {
	fp *fakePool
	*limiter.Limiter
}

func (f failingQuotas) down() error {
	f.fp.mu.Lock()
	defer f.fp.mu.Unlock()
	return f.fp.readyErr
}

func (f failingQuotas) QuotaUsage(ctx context.Context, pattern string, max int) ([]limiter.Usage, bool, error) {
	if err := f.down(); err != nil {
		return nil, false, err
	}
	return f.Limiter.QuotaUsage(ctx, pattern, max)
}

func (f failingQuotas) ResetQuotas(ctx context.Context, keys []string) (int, error) {
	if err := f.down(); err != nil {
		return 0, err
	}
	return f.Limiter.ResetQuotas(ctx, keys)
}

// fakeLedger holds one record, of the token "leaked", and fails while the
// fake pool's Redis is away.
type fakeLedger struct{ fp *fakePool }

var leakedRecord = ledger.Record{ID: "1767225600000-0", Stream: "tp:{default}:issued", Time: time.UnixMilli(1767225600000).UTC(),
	RequestID: "r1", Subject: "user:a", Tenant: "acme", Profile: "default", Provider: "orga", Source: "pool",
	ExpiresAt: time.UnixMilli(1767226200000).UTC(), Fingerprint: ledger.Fingerprint([]byte("k"), "leaked")}

func (f fakeLedger) Read(_ context.Context, _ ledger.Cursor, _ time.Time, match func(ledger.Record) bool, _, _ int) (ledger.Page, error) {
	if err := (failingQuotas{fp: f.fp}).down(); err != nil {
		return ledger.Page{}, err
	}
	p := ledger.Page{Next: ledger.Cursor{ID: leakedRecord.ID, Stream: leakedRecord.Stream}}
	if match(leakedRecord) {
		p.Records = []ledger.Record{leakedRecord}
	}
	return p, nil
}

func (f fakeLedger) Lookup(_ context.Context, token string) ([]ledger.Record, error) {
	if err := (failingQuotas{fp: f.fp}).down(); err != nil {
		return nil, err
	}
	if token == "leaked" {
		return []ledger.Record{leakedRecord}, nil
	}
	return nil, nil
}

// fakeRealtime plans every Navai request onto the "assistant" pool, or
// fails it with what err returns.
type fakeRealtime func() error

func (f fakeRealtime) Profile() string { return "assistant" }

func (f fakeRealtime) Resolve(mint.NavaiRequest) (mint.Plan, error) {
	if err := f(); err != nil {
		return mint.Plan{}, err
	}
	return mint.Plan{Needs: []string{"assistant"}, Pooled: "assistant"}, nil
}
