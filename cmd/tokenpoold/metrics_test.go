package main

import (
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// scrape reads /metrics into series name{labels} → value.
func scrape(tb testing.TB, url string) map[string]float64 {
	tb.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]float64{}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(labels)
			key := name + "{" + strings.Join(labels, ",") + "}"
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key+"_count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// TestMetricsMove scrapes /metrics around traffic that moves every series:
// pool hits and misses, waste, failed mints and an open breaker, limiter
// denials, and the HTTP histogram.
func TestMetricsMove(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{TTL: 6 * time.Second, Latency: 5 * time.Millisecond})
	d := startDaemon(t, rs, sim, map[string]string{
		"TOKENPOOL_MIN_REMAINING":    "2s",
		"TOKENPOOL_POOL_TARGET":      "5",
		"TOKENPOOL_RATE_PER_USER":    "40/m",
		"TOKENPOOL_BREAKER_COOLDOWN": "30s",
		"TOKENPOOL_ADMIN_KEYS":       "ops:" + sha256hex("admin-key"),
	})
	before := scrape(t, d.metricsURL)

	alice := callerJWT(t, "alice-metrics-subject")
	for range 50 { // hits and misses, then the per-user limit
		fetch(t, d.url, alice)
	}
	// Short-lived credentials go stale in the pool: waste.
	wasted := `tokenpool_pool_wasted_total{profile=default}`
	poll.Until(t, "stale credentials to be counted as waste", 15*time.Second, func() bool { return scrape(t, d.metricsURL)[wasted] > before[wasted] })
	fetch(t, d.url, callerJWT(t, "bob"))
	// A prewarm moves the target.
	admin := func(method, path, body string) {
		req, _ := http.NewRequest(method, d.url+path, strings.NewReader(body))
		req.Header.Set("X-API-Key", "admin-key")
		req.Header.Set("Content-Type", "application/json")
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
			t.Fatalf("admin %s: %v %v", path, resp, err)
		}
	}
	admin("POST", "/v1/admin/profiles/default/prewarm", `{"ready":9,"until":"`+time.Now().Add(time.Minute).UTC().Format(time.RFC3339)+`"}`)
	poll.Until(t, "the prewarm to reach the target", 10*time.Second, func() bool {
		return scrape(t, d.metricsURL)[`tokenpool_pool_target{profile=default}`] == 9
	})
	// Failed mints open the breaker.
	sim.Update(func(c *upstreamtest.Config) { c.FailureRate = 1 })
	poll.Until(t, "the breaker to open", 15*time.Second, func() bool { return d.guards["orga"].State() == "open" })
	notOK := func(m map[string]float64) float64 {
		return m[`tokenpool_mints_total{kind=refill,outcome=failed,profile=default}`] +
			m[`tokenpool_mints_total{kind=refill,outcome=unavailable,profile=default}`]
	}
	poll.Until(t, "failed refills to be counted", 10*time.Second, func() bool { return notOK(scrape(t, d.metricsURL)) > notOK(before) })
	admin("GET", "/v1/admin/profiles", "")

	after := scrape(t, d.metricsURL)
	moved := []string{
		`tokenpool_handouts_total{profile=default,source=pool}`,
		`tokenpool_handouts_total{profile=default,source=direct}`,
		`tokenpool_pool_misses_total{profile=default}`,
		`tokenpool_pool_wasted_total{profile=default}`,
		`tokenpool_mints_total{kind=refill,outcome=ok,profile=default}`,
		`tokenpool_provider_call_duration_seconds{outcome=ok,provider=orga}_count`,
		`tokenpool_provider_call_duration_seconds{outcome=error,provider=orga}_count`,
		`tokenpool_breaker_state{provider=orga}`,
		`tokenpool_limiter_denials_total{policy=user}`,
		`tokenpool_http_request_duration_seconds{route=/v1/session-config,status=200}_count`,
		`tokenpool_http_request_duration_seconds{route=/v1/session-config,status=429}_count`,
		`tokenpool_demand_per_second{profile=default,window=fast}`,
		`tokenpool_pool_target{profile=default}`,
		`tokenpool_pool_mints_per_handout{profile=default,window=1m}`,
		`tokenpool_pool_mints_per_handout{profile=default,window=1h}`,
		`tokenpool_pool_wasted_recent{profile=default,window=1m}`,
	}
	for _, k := range moved {
		if after[k] <= before[k] {
			t.Errorf("%s did not move: %v → %v", k, before[k], after[k])
		}
	}
	for _, k := range []string{`tokenpool_pool_ready{profile=default}`, `tokenpool_pool_usable{profile=default}`, `tokenpool_pool_in_flight{profile=default}`} {
		if _, ok := after[k]; !ok {
			t.Errorf("%s missing", k)
		}
	}
	if after[`tokenpool_breaker_state{provider=orga}`] != 2 {
		t.Errorf("breaker state %v, want 2 (open)", after[`tokenpool_breaker_state{provider=orga}`])
	}
	for k := range after {
		if strings.Contains(k, "alice") || strings.Contains(k, "bob") || strings.Contains(k, "eyJ") {
			t.Errorf("a caller reached a metric label: %s", k)
		}
	}
}

// TestGrafanaDashboard: the dashboard JSON parses and every query names a
// metric the daemon exports, and every exported tokenpool metric has a panel.
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("../../deploy/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, nil)
	fetch(t, d.url, callerJWT(t, "alice"))
	exported := map[string]bool{}
	for k := range scrape(t, d.metricsURL) {
		name := k[:strings.Index(k, "{")]
		if strings.HasPrefix(name, "tokenpool_") {
			exported[name] = true
		}
	}
	used := map[string]bool{}
	metricRE := regexp.MustCompile(`tokenpool_[a-z_]+`)
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			for _, m := range metricRE.FindAllString(q.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_count"), "_sum")
				if !exported[base] {
					t.Errorf("panel %q queries %s, which the daemon doesn't export", p.Title, m)
				}
				used[base] = true
			}
		}
	}
	for m := range exported {
		if !used[m] {
			t.Errorf("%s has no panel", m)
		}
	}
}
