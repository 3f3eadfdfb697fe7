package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// Session quotas: spent only by a credential handed out, decided in the
// take's script, exact across replicas.

// quotaConfig is a profile file with an Orga profile pooling target
// credentials under quotas (a YAML list, indented for the profile).
func quotaConfig(tb testing.TB, target int, quotas string) string {
	return writeConfig(tb, fmt.Sprintf(`
profiles:
  default:
    provider: orga
    target: %d
    max_target: %d
    quotas:
%s
`, target, target, quotas))
}

// answer is one credential request's outcome.
type answer struct {
	status int
	header http.Header
	body   string
}

// ask posts to /v1/credentials for profile as bearer; safe in goroutines.
func ask(base, bearer, profile string) (answer, error) {
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/credentials", strings.NewReader(`{"profile":"`+profile+`"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+bearer)
	resp, err := client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: string(b)}, err
}

func (a answer) code() string {
	var e struct{ Error struct{ Code string } }
	_ = json.Unmarshal([]byte(a.body), &e)
	return e.Error.Code
}

// drainedFleet starts n daemons on rs with env, waits for the shared pool
// to hold target usable credentials, and stops every refiller, so that
// the provider sees no mint from then on unless a request makes one.
func drainedFleet(tb testing.TB, rs *redistest.Server, sim *upstreamtest.Server, n, target int, env map[string]string) []*daemon {
	tb.Helper()
	var ds []*daemon
	for range n {
		ds = append(ds, startDaemon(tb, rs, sim, env))
	}
	ctx := context.Background()
	poll.Until(tb, "the pool fills", 20*time.Second, func() bool {
		st, err := ds[0].pool.Stats(ctx, "default")
		return err == nil && st.Usable >= target && st.InFlight == 0
	})
	for _, d := range ds {
		if err := d.pool.Drain(ctx); err != nil {
			tb.Fatal(err)
		}
	}
	return ds
}

func TestAQuotaOfNHandsOutExactlyNAcrossThreeReplicas(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	const n, extra = 10, 20
	fleet := drainedFleet(t, rs, sim, 3, 40, map[string]string{
		"TOKENPOOL_CONFIG": quotaConfig(t, 40, `      - sessions: 10
        per: 1000h`),
	})
	minted := len(sim.Minted())
	alice := callerJWT(t, "alice")
	answers := make([]answer, n+extra)
	errs := make([]error, n+extra)
	var wg sync.WaitGroup
	for i := range answers {
		wg.Go(func() { answers[i], errs[i] = ask(fleet[i%3].url, alice, "default") })
	}
	wg.Wait()
	handed, refused := 0, 0
	for i, a := range answers {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		policies := strings.Join(a.header.Values("RateLimit-Policy"), ", ")
		if !strings.Contains(policies, `"sessions-1000h";q=10;w=3600000`) {
			t.Fatalf("answer %d (%d) has no quota policy: %q", i, a.status, policies)
		}
		switch a.status {
		case http.StatusOK:
			handed++
		case http.StatusTooManyRequests:
			refused++
			if a.code() != "quota_exceeded" || a.header.Get("Retry-After") == "" {
				t.Fatalf("a refusal: code %q, Retry-After %q: %s", a.code(), a.header.Get("Retry-After"), a.body)
			}
			if !strings.Contains(strings.Join(a.header.Values("RateLimit"), ", "), `"sessions-1000h";r=0;`) {
				t.Fatalf("a refusal's RateLimit: %q", a.header.Values("RateLimit"))
			}
		default:
			t.Fatalf("answer %d: %d %s", i, a.status, a.body)
		}
	}
	if handed != n || refused != extra {
		t.Fatalf("%d requests at once from three replicas under a quota of %d: %d handed out, %d refused", n+extra, n, handed, refused)
	}
	if got := len(sim.Minted()); got != minted {
		t.Fatalf("the provider minted %d credentials for the burst: a refusal mints nothing", got-minted)
	}
	st, err := fleet[0].pool.Stats(context.Background(), "default")
	if err != nil || st.Usable != 40-n {
		t.Fatalf("the pool after: %+v %v, want %d usable (refusals take nothing)", st, err, 40-n)
	}
}

func TestTenantAndClaimQuotas(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	fleet := drainedFleet(t, rs, sim, 1, 20, map[string]string{
		"TOKENPOOL_ADMIN_KEYS": "ops:" + sha256hex("admin-key"),
		"TOKENPOOL_CONFIG": quotaConfig(t, 20, `      - sessions: 100
        per: 24h
      - sessions: 3
        per: 24h
        by: claim:org_id
      - sessions: 1
        per: 1h
        when: {plan: [free]}`),
	})
	d := fleet[0]
	alice := claimsJWT(t, map[string]any{"sub": "alice", "org_id": "acme", "plan": "pro"})
	bob := claimsJWT(t, map[string]any{"sub": "bob", "org_id": "acme", "plan": "pro"})
	carol := claimsJWT(t, map[string]any{"sub": "carol", "org_id": "globex", "plan": "pro"})
	fred := claimsJWT(t, map[string]any{"sub": "fred", "org_id": "initech", "plan": "free"})
	expect := func(who, bearer string, status int, code string) {
		t.Helper()
		a, err := ask(d.url, bearer, "default")
		if err != nil {
			t.Fatal(err)
		}
		if a.status != status || status != http.StatusOK && a.code() != code {
			t.Fatalf("%s: %d %s, want %d %s", who, a.status, a.body, status, code)
		}
	}
	// acme's three sessions are shared by alice and bob.
	expect("alice 1", alice, http.StatusOK, "")
	expect("alice 2", alice, http.StatusOK, "")
	expect("bob 1", bob, http.StatusOK, "")
	expect("bob 2", bob, http.StatusTooManyRequests, "quota_exceeded")
	expect("alice 3", alice, http.StatusTooManyRequests, "quota_exceeded")
	// Another org's caller is not under acme's.
	for i := range 3 {
		expect(fmt.Sprint("carol ", i+1), carol, http.StatusOK, "")
	}
	// Only a free caller is under the free plan's quota.
	expect("fred 1", fred, http.StatusOK, "")
	expect("fred 2", fred, http.StatusTooManyRequests, "quota_exceeded")

	// The admin sees acme and globex at their caps, and resets acme's.
	admin := []string{"X-API-Key", "admin-key"}
	status, body := call(t, http.MethodGet, d.url+"/v1/admin/usage?by=tenant&window=24h", "", admin...)
	usage, _ := json.Marshal(body)
	if status != http.StatusOK || !strings.Contains(string(usage), `"exhausted":true,"limit":3,"profile":"default","quota":"org_id-sessions-24h","remaining":0`) ||
		!strings.Contains(string(usage), `"tenant":"acme"`) {
		t.Fatalf("usage by tenant: %d %s", status, usage)
	}
	status, body = call(t, http.MethodGet, d.url+"/v1/admin/usage?by=subject", "", admin...)
	usage, _ = json.Marshal(body)
	if status != http.StatusOK || !strings.Contains(string(usage), `"sessions":3`) || !strings.Contains(string(usage), `"subject":"user:carol"`) {
		t.Fatalf("usage by subject: %d %s", status, usage)
	}
	status, body = call(t, http.MethodPost, d.url+"/v1/admin/quotas/reset", `{"tenant":"acme"}`, admin...)
	if status != http.StatusOK || body["cleared"] != float64(1) {
		t.Fatalf("reset acme: %d %v", status, body)
	}
	expect("bob after the reset", bob, http.StatusOK, "")
	status, body = call(t, http.MethodPost, d.url+"/v1/admin/quotas/reset", `{"subject":"x","tenant":"y"}`, admin...)
	if status != http.StatusBadRequest {
		t.Fatalf("a reset naming both: %d %v", status, body)
	}
}

// A request refused by a rate limit, or whose credential could not be
// minted, spends nothing of its quota.
func TestARefusedOrFailedRequestSpendsNoQuota(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	failing := startSim(t, upstreamtest.Config{FailureRate: 1})
	d := startDaemon(t, rs, sim, map[string]string{
		"TOKENPOOL_RATE_PER_USER": "2/m",
		"TOKENPOOL_ADMIN_KEYS":    "ops:" + sha256hex("admin-key"),
		"TOKENPOOL_CONFIG": writeConfig(t, `
quotas:
  - sessions: 5
    per: 24h
profiles:
  default:
    provider: orga
    target: 3
  broken:
    provider: orga
    target: 0
    orga:
      base_url: `+failing.URL()+`
`)})
	poll.Until(t, "the pool fills", 10*time.Second, func() bool {
		st, err := d.pool.Stats(context.Background(), "default")
		return err == nil && st.Usable >= 3
	})
	used := func() float64 {
		t.Helper()
		_, body := call(t, http.MethodGet, d.url+"/v1/admin/usage?by=subject", "", "X-API-Key", "admin-key")
		rows, _ := body["usage"].([]any)
		total := 0.0
		for _, r := range rows {
			total += r.(map[string]any)["sessions"].(float64)
		}
		return total
	}
	ann := callerJWT(t, "ann")
	for range 2 {
		if a, err := ask(d.url, ann, "default"); err != nil || a.status != http.StatusOK {
			t.Fatalf("within the limits: %v %+v", err, a)
		}
	}
	if a, _ := ask(d.url, ann, "default"); a.status != http.StatusTooManyRequests || a.code() != "rate_limited" {
		t.Fatalf("past the per-user rate: %d %s", a.status, a.body)
	}
	if u := used(); u != 2 {
		t.Fatalf("after 2 handouts and a rate refusal the quota counts %v", u)
	}
	// The broken profile shares the default quota; its provider fails.
	ben := callerJWT(t, "ben")
	for range 2 {
		if a, _ := ask(d.url, ben, "broken"); a.status/100 != 5 {
			t.Fatalf("a failing provider: %d %s", a.status, a.body)
		}
	}
	if u := used(); u != 2 {
		t.Fatalf("failed mints spent the quota: it counts %v, want 2", u)
	}
}

func TestQuotasAreCheckedAtStart(t *testing.T) {
	env := func(k string) string { return map[string]string{"K": "key", "ORGA_API_KEY": "k"}[k] }
	orga := "profiles:\n  p:\n    provider: orga\n"
	for _, tt := range []struct{ name, file, want string }{
		{"no sessions", "quotas: [{per: 24h}]\n" + orga, "quotas[0]: sessions: want a positive count, got 0"},
		{"a window that is none", "quotas: [{sessions: 5, per: soon}]\n" + orga, `quotas[0]: per: want a window such as 1h, 24h or 7d (whole seconds, 1s to 366d), got "soon"`},
		{"a window past a year", "quotas: [{sessions: 5, per: 400d}]\n" + orga, `got "400d"`},
		{"by a claim without its name", "quotas: [{sessions: 5, per: 1h, by: org_id}]\n" + orga, `quotas[0]: by: want subject (the default: each caller) or claim:<name>`},
		{"two of one name", "quotas: [{sessions: 5, per: 1h}, {sessions: 9, per: 1h}]\n" + orga, `quotas[1]: name "sessions-1h": listed twice`},
		{"an unknown field", orga + "    quotas: [{sessions: 5, per: 1h, every: day}]\n", `profile "p": line 4: unknown field "quotas[0].every"`},
		{"a profile's bad quota", orga + "    quotas: [{sessions: -1, per: 1h}]\n", `profile "p": quotas[0]: sessions: want a positive count, got -1`},
		{"a when without values", "quotas: [{sessions: 5, per: 1h, when: {plan: []}}]\n" + orga, `quotas[0]: when: claim "plan": want a claim's name and at least one value`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := parseProfileFile([]byte(tt.file), &Config{OrgaAPIKey: "k", OrgaBaseURL: "https://api.orga-ai.com"}, env)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}

// A quota counts handouts: the daemon warns at start about a quota'd
// profile whose credential can start sessions for more than a minute
// after it is handed out (an OpenAI client secret, a Gemini token of
// several uses), and not about a single-use one.
func TestAQuotaOnAReusableCredentialIsWarnedOfAtStart(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, map[string]string{
		"OPENAI_API_KEY": upstreamtest.DefaultOpenAIKey, "OPENAI_BASE_URL": sim.URL(),
		"GEMINI_KEY": upstreamtest.PresetKey("gemini"),
		"TOKENPOOL_CONFIG": writeConfig(t, `
quotas:
  - sessions: 5
    per: 24h
profiles:
  default:
    provider: orga
  realtime:
    provider: openai
    openai: {client_secret_ttl_seconds: 600}
  once:
    provider: gemini
    gemini: {api_key_env: GEMINI_KEY, base_url: `+sim.URL()+`}
  thrice:
    provider: gemini
    gemini: {api_key_env: GEMINI_KEY, base_url: `+sim.URL()+`, uses: 3, ttl_seconds: 300}
`)})
	warned := map[string]string{}
	for _, l := range logLines(d.logsNow(), "a quota counts handouts, and this profile's credential can start sessions for longer than a minute after it is handed out: use the shortest TTL the pool can serve, or a single-use setting (docs/quotas.md)") {
		warned[fmt.Sprint(l["profile"])] = fmt.Sprint(l["for_up_to"])
	}
	want := map[string]string{"realtime": "10m0s", "thrice": "5m0s"}
	if fmt.Sprint(warned) != fmt.Sprint(want) {
		t.Fatalf("warned of %v, want %v", warned, want)
	}
}
