package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// Result is one run, as written to result.json.
type Result struct {
	Scenario string            `json:"scenario"`
	Describe string            `json:"describe"`
	Mode     string            `json:"mode"`
	Started  time.Time         `json:"started"`
	Seconds  float64           `json:"seconds"`
	Machine  Machine           `json:"machine"`
	Config   map[string]string `json:"config"`

	Sent     int            `json:"sent"`
	Dropped  int            `json:"dropped"`
	OKPerSec float64        `json:"okPerSecond"`
	Status   map[string]int `json:"status"`
	Latency  Latency        `json:"latencyMs"`
	// SendLag is how late requests left the client against the schedule:
	// part of Latency, and the client's doing, not the server's.
	SendLag Latency `json:"sendLagMs"`
	// ByStatus is the latency of each answer status ("0": no answer).
	ByStatus map[string]Latency `json:"latencyByStatusMs"`

	// FromPool is the share of 200s served from the pool (all and after
	// the first WarmSeconds); absent when the target doesn't say.
	FromPool *PoolShare `json:"fromPool,omitempty"`
	Checks   Checks     `json:"checks"`
	// Cost is what the run's handouts cost, from the fleet's counters;
	// absent when the target doesn't say.
	Cost     *RunCost  `json:"cost,omitempty"`
	Memory   *Memory   `json:"memory,omitempty"`
	Timeline []*Second `json:"timeline"`

	// Vegeta is the run as vegeta's JSON report has it (vegeta.json, and
	// stdout with -format vegeta); nil for the memory scenario.
	Vegeta *vegeta.Metrics `json:"-"`
}

// Machine is where the run ran.
type Machine struct {
	OS, Arch string
	CPUs     int
	Go       string
}

// Latency percentiles, milliseconds, counted from the intended send time.
type Latency struct {
	P50, P90, P99, P999, Max, Mean float64
}

// PoolShare is how many answers came from the pool.
type PoolShare struct {
	All         float64 `json:"all"`
	AfterWarm   float64 `json:"afterWarm"` // 1 when nothing came after the warm-up
	WarmSeconds int     `json:"warmSeconds"`
	AfterWarmN  int     `json:"afterWarmAnswers"`
	Pool        int     `json:"pool"`
	Direct      int     `json:"direct"`
}

// RunCost is what the run's handouts cost in mints: the change of the
// fleet's counters over the run, and the admin report's windows at its end.
type RunCost struct {
	Minted          int64   `json:"minted"`    // minted into the pool
	HandedOut       int64   `json:"handedOut"` // handed out from the pool
	Direct          int64   `json:"direct"`    // minted for a request on a miss
	Mints           int64   `json:"mints"`     // minted into the pool or for a request
	Handouts        int64   `json:"handouts"`  // from the pool or minted for a request
	Wasted          int64   `json:"wasted"`
	MintsPerHandout float64 `json:"mintsPerHandout"`
	WastedShare     float64 `json:"wastedShareOfHandouts"`
	// The admin report's windows when the run ended.
	LastMinute *WindowCost `json:"lastMinute,omitempty"`
	LastHour   *WindowCost `json:"lastHour,omitempty"`
}

// Checks of every credential handed out.
type Checks struct {
	Credentials int  `json:"credentials"`
	Duplicates  int  `json:"duplicates"` // handed out twice, across every target
	ShortLived  int  `json:"shortLived"` // less than the minimum remaining life when received
	Foreign     int  `json:"foreign"`    // not minted by the (simulated) provider
	Checked     bool `json:"checked"`    // false for baselines
}

// Memory per pooled credentials (scenario memory).
type Memory struct {
	Credentials     int     `json:"credentials"`
	RedisBytes      int64   `json:"redisBytes"`
	DaemonRSSBytes  int64   `json:"daemonRssBytes"`
	RedisPer10k     float64 `json:"redisMiBPer10k"`
	DaemonRSSPer10k float64 `json:"daemonRssMiBPer10k"`
}

// latencyOf reads the percentiles of a histogram of microseconds.
func latencyOf(h *hdrhistogram.Histogram) Latency {
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return Latency{
		P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)), P99: ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max()), Mean: h.Mean() / 1000,
	}
}

// machine is this machine.
func machine() Machine {
	return Machine{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(), Go: runtime.Version()}
}

// result assembles a Result from a recorder.
func (r *Recorder) result(sc Scenario, mode string, cfg map[string]string, started time.Time, warm int) *Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := &Result{
		Scenario: sc.Name, Describe: sc.Describe, Mode: mode, Started: started,
		Seconds: time.Since(started).Seconds(),
		Machine: machine(),
		Config:  cfg, Status: map[string]int{}, Dropped: r.dropCount, Timeline: r.seconds,
		Checks: Checks{Credentials: r.checked, Duplicates: r.duplicates, ShortLived: r.shortLived, Foreign: r.foreignN, Checked: r.checked > 0},
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	res.Latency, res.SendLag = latencyOf(r.all), latencyOf(r.lag)
	res.ByStatus = map[string]Latency{}
	for code, h := range r.byStatus {
		res.ByStatus[strconv.Itoa(code)] = latencyOf(h)
	}
	var pool, direct, poolWarm, directWarm int
	for _, s := range r.seconds {
		res.Sent += s.Sent
		for k, v := range s.Status {
			res.Status[k] += v
		}
		s.P50, s.P99 = ms(s.hist.ValueAtQuantile(50)), ms(s.hist.ValueAtQuantile(99))
		pool += s.Pool
		direct += s.Direct
		if s.T >= warm {
			poolWarm += s.Pool
			directWarm += s.Direct
		}
	}
	if span := sc.Duration.Seconds(); span > 0 {
		res.OKPerSec = float64(res.Status["200"]) / span
	}
	if pool+direct > 0 {
		share := func(p, d int) float64 {
			if p+d == 0 {
				return 1
			}
			return float64(p) / float64(p+d)
		}
		res.FromPool = &PoolShare{All: share(pool, direct), AfterWarm: share(poolWarm, directWarm), WarmSeconds: warm,
			AfterWarmN: poolWarm + directWarm, Pool: pool, Direct: direct}
	}
	res.Cost = r.costLocked()
	v := r.vegeta
	v.Close()
	res.Vegeta = &v
	return res
}

// costLocked is the run's cost: the change of the fleet's counters from
// the first poll to the last.
func (r *Recorder) costLocked() *RunCost {
	first, last := r.firstState, r.lastState
	if last == nil {
		return nil
	}
	c := &RunCost{
		Minted: last.Minted - first.Minted, HandedOut: last.HandedOut - first.HandedOut,
		Direct: last.Direct - first.Direct, Wasted: last.Wasted - first.Wasted,
	}
	c.Mints, c.Handouts = c.Minted+c.Direct, c.HandedOut+c.Direct
	if c.Handouts > 0 {
		c.MintsPerHandout = float64(c.Mints) / float64(c.Handouts)
		c.WastedShare = float64(c.Wasted) / float64(c.Handouts)
	}
	if w, ok := last.Cost["lastMinute"]; ok {
		c.LastMinute = &w
	}
	if w, ok := last.Cost["lastHour"]; ok {
		c.LastHour = &w
	}
	return c
}

// String is the cost as the summary and the report show it.
func (c *RunCost) String() string {
	s := fmt.Sprintf("%.3f mints per handout; %d wasted, %.1f%% of %d handouts (fleet, during the run)",
		c.MintsPerHandout, c.Wasted, 100*c.WastedShare, c.Handouts)
	for _, w := range []struct {
		name string
		c    *WindowCost
	}{{"last minute", c.LastMinute}, {"last hour", c.LastHour}} {
		switch {
		case w.c == nil:
		case w.c.Handouts == 0:
			s += fmt.Sprintf("; %s (%.0f s): no handouts, %d mints, %d wasted", w.name, w.c.SpanSeconds, w.c.Mints, w.c.Wasted)
		default:
			s += fmt.Sprintf("; %s (%.0f s): %.3f per handout, %d wasted", w.name, w.c.SpanSeconds, w.c.MintsPerHandout, w.c.Wasted)
		}
	}
	return s
}

// write writes result.json and report.html into dir.
func (res *Result) write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "result.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	if res.Vegeta != nil {
		var buf bytes.Buffer
		if err := vegeta.NewJSONReporter(res.Vegeta).Report(&buf); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "vegeta.json"), buf.Bytes(), 0o644); err != nil {
			return err
		}
	}
	f, err := os.Create(filepath.Join(dir, "report.html"))
	if err != nil {
		return err
	}
	defer f.Close()
	return res.html(f)
}

// summary prints the run as a table.
func (res *Result) summary(w io.Writer) {
	fmt.Fprintf(w, "\n%s — %s (%s)\n", res.Scenario, res.Describe, res.Mode)
	if m := res.Memory; m != nil {
		fmt.Fprintf(w, "  %-22s %d credentials: Redis %.2f MiB, daemon RSS %.2f MiB per 10,000\n",
			"memory", m.Credentials, m.RedisPer10k, m.DaemonRSSPer10k)
		return
	}
	fmt.Fprintf(w, "  %-22s %d sent, %d dropped by the client, %.1f ok/s\n", "requests", res.Sent, res.Dropped, res.OKPerSec)
	var codes []string
	for k, v := range res.Status {
		codes = append(codes, fmt.Sprintf("%s×%d", k, v))
	}
	sort.Strings(codes)
	fmt.Fprintf(w, "  %-22s %s\n", "answers", strings.Join(codes, " "))
	l := res.Latency
	fmt.Fprintf(w, "  %-22s p50 %.2f ms  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n", "latency", l.P50, l.P90, l.P99, l.P999, l.Max)
	if len(res.ByStatus) > 1 {
		codes := make([]string, 0, len(res.ByStatus))
		for code := range res.ByStatus {
			codes = append(codes, code)
		}
		sort.Strings(codes)
		for _, code := range codes {
			l := res.ByStatus[code]
			fmt.Fprintf(w, "  %-22s p50 %.2f ms  p99 %.2f  max %.2f\n", "latency of "+code+"s", l.P50, l.P99, l.Max)
		}
	}
	fmt.Fprintf(w, "  %-22s p50 %.2f ms  p99 %.2f  (part of the latency: how late requests left the client)\n", "client send lag", res.SendLag.P50, res.SendLag.P99)
	if p := res.FromPool; p != nil {
		after := "n/a"
		if p.AfterWarmN > 0 {
			after = fmt.Sprintf("%.2f%%", p.AfterWarm*100)
		}
		fmt.Fprintf(w, "  %-22s %.2f%% overall, %s after the first %ds (%d pool, %d minted for the request)\n",
			"served from the pool", p.All*100, after, p.WarmSeconds, p.Pool, p.Direct)
	}
	if c := res.Cost; c != nil {
		fmt.Fprintf(w, "  %-22s %d minted, %d wasted, %d handed out from the pool, %d minted for requests (fleet, during the run)\n",
			"pool counters", c.Minted, c.Wasted, c.HandedOut, c.Direct)
		fmt.Fprintf(w, "  %-22s %s\n", "cost", c)
	}
	if c := res.Checks; c.Checked {
		fmt.Fprintf(w, "  %-22s %d credentials: %d duplicates, %d short-lived, %d not from the provider\n",
			"checks", c.Credentials, c.Duplicates, c.ShortLived, c.Foreign)
	}
}

// chart is one inline SVG line chart.
type chart struct {
	Title  string
	Unit   string
	Series []series
	Max    float64
	Ticks  []tick
	XTicks []tick
	W, H   int
}

type series struct {
	Name, Color, Points string
}

type tick struct {
	Pos   float64
	Label string
}

const chartW, chartH, padL, padB, padT = 760, 230, 56, 24, 22

// lineChart plots values (one slice per series, one point per second).
func lineChart(title, unit string, names, colors []string, values [][]float64) chart {
	c := chart{Title: title, Unit: unit, W: chartW, H: chartH}
	n := 0
	for _, v := range values {
		n = max(n, len(v))
		for _, x := range v {
			if !math.IsNaN(x) {
				c.Max = math.Max(c.Max, x)
			}
		}
	}
	if c.Max == 0 {
		c.Max = 1
	}
	c.Max = niceCeil(c.Max)
	plotW, plotH := float64(chartW-padL-10), float64(chartH-padB-padT)
	x := func(i int) float64 { return float64(padL) + plotW*float64(i)/math.Max(float64(n-1), 1) }
	y := func(v float64) float64 { return padT + plotH*(1-v/c.Max) }
	for i, v := range values {
		var pts []string
		for j, p := range v {
			if !math.IsNaN(p) {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(j), y(p)))
			}
		}
		c.Series = append(c.Series, series{Name: names[i], Color: colors[i], Points: strings.Join(pts, " ")})
	}
	for i := 0; i <= 4; i++ {
		v := c.Max * float64(i) / 4
		c.Ticks = append(c.Ticks, tick{Pos: y(v), Label: trimFloat(v)})
	}
	for i := 0; i <= 5 && n > 1; i++ {
		j := (n - 1) * i / 5
		c.XTicks = append(c.XTicks, tick{Pos: x(j), Label: fmt.Sprintf("%ds", j)})
	}
	return c
}

func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}

func (res *Result) charts() []chart {
	n := len(res.Timeline)
	col := func(f func(*Second) float64) []float64 {
		out := make([]float64, n)
		for i, s := range res.Timeline {
			out[i] = f(s)
		}
		return out
	}
	nan := math.NaN()
	ptr := func(p *int) float64 {
		if p == nil {
			return nan
		}
		return float64(*p)
	}
	status := func(s *Second, codes ...string) float64 {
		t := 0
		for _, c := range codes {
			t += s.Status[c]
		}
		return float64(t)
	}
	other := func(s *Second) float64 {
		t := 0
		for k, v := range s.Status {
			if k != "200" && k != "429" && k != "503" {
				t += v
			}
		}
		return float64(t + s.Dropped)
	}
	cs := []chart{
		lineChart("Latency per second (from the intended send time)", "ms", []string{"p50", "p99"}, []string{"#1f77b4", "#d62728"},
			[][]float64{col(func(s *Second) float64 { return s.P50 }), col(func(s *Second) float64 { return s.P99 })}),
		lineChart("Answers per second", "per s", []string{"200", "429", "503", "other / dropped"}, []string{"#2ca02c", "#ff7f0e", "#d62728", "#7f7f7f"},
			[][]float64{col(func(s *Second) float64 { return status(s, "200") }), col(func(s *Second) float64 { return status(s, "429") }),
				col(func(s *Second) float64 { return status(s, "503") }), col(other)}),
	}
	if res.FromPool != nil {
		cs = append(cs, lineChart("Served from the pool", "%", []string{"pool share"}, []string{"#9467bd"},
			[][]float64{col(func(s *Second) float64 {
				if s.Pool+s.Direct == 0 {
					return nan
				}
				return 100 * float64(s.Pool) / float64(s.Pool+s.Direct)
			})}))
	}
	hasPool := false
	for _, s := range res.Timeline {
		hasPool = hasPool || s.Target != nil
	}
	if hasPool {
		cs = append(cs, lineChart("Pool: usable and in flight vs target (fleet-wide)", "credentials",
			[]string{"usable", "target", "in flight"}, []string{"#17becf", "#bcbd22", "#8c564b"},
			[][]float64{col(func(s *Second) float64 { return ptr(s.Usable) }), col(func(s *Second) float64 { return ptr(s.Target) }),
				col(func(s *Second) float64 { return ptr(s.InFlight) })}))
	}
	return cs
}

var reportTmpl = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tokenpool-bench: {{.R.Scenario}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:820px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
h1{font-size:20px}h2{font-size:15px;margin:18px 0 4px}svg{background:#fafafa;border:1px solid #eee}
.legend span{margin-right:14px}.sw{display:inline-block;width:10px;height:10px;margin-right:4px}
</style></head><body>
<h1>tokenpool-bench: {{.R.Scenario}}</h1>
<p>{{.R.Describe}} — {{.R.Mode}}. Started {{.R.Started.Format "2006-01-02 15:04:05 MST"}}; {{printf "%.1f" .R.Seconds}} s on {{.R.Machine.CPUs}} CPUs ({{.R.Machine.OS}}/{{.R.Machine.Arch}}, {{.R.Machine.Go}}).</p>
<table>
<tr><th>requests</th><td>{{.R.Sent}} sent, {{.R.Dropped}} dropped by the client, {{printf "%.1f" .R.OKPerSec}} ok/s</td></tr>
<tr><th>answers</th><td>{{range $k, $v := .R.Status}}{{$k}}×{{$v}} {{end}}</td></tr>
<tr><th>latency</th><td>p50 {{printf "%.2f" .R.Latency.P50}} ms, p90 {{printf "%.2f" .R.Latency.P90}}, p99 {{printf "%.2f" .R.Latency.P99}}, p99.9 {{printf "%.2f" .R.Latency.P999}}, max {{printf "%.2f" .R.Latency.Max}}</td></tr>
{{with .R.FromPool}}<tr><th>served from the pool</th><td>{{printf "%.2f" .AllPct}}% overall, {{if .AfterWarmN}}{{printf "%.2f" .AfterPct}}%{{else}}n/a{{end}} after the first {{.WarmSeconds}} s ({{.Pool}} pool, {{.Direct}} minted for the request)</td></tr>{{end}}
{{with .R.Cost}}<tr><th>cost</th><td>{{.}}</td></tr>{{end}}
{{if .R.Checks.Checked}}<tr><th>checks</th><td>{{.R.Checks.Credentials}} credentials: {{.R.Checks.Duplicates}} duplicates, {{.R.Checks.ShortLived}} short-lived, {{.R.Checks.Foreign}} not from the provider</td></tr>{{end}}
{{with .R.Memory}}<tr><th>memory</th><td>{{.Credentials}} credentials: Redis {{printf "%.2f" .RedisPer10k}} MiB, daemon RSS {{printf "%.2f" .DaemonRSSPer10k}} MiB per 10,000</td></tr>{{end}}
</table>
{{range .Charts}}<h2>{{.Title}}</h2>
<div class="legend">{{range .Series}}<span><i class="sw" style="background:{{.Color}}"></i>{{.Name}}</span>{{end}}</div>
<svg xmlns="http://www.w3.org/2000/svg" width="{{.W}}" height="{{.H}}" viewBox="0 0 {{.W}} {{.H}}" role="img" aria-label="{{.Title}}">
{{range .Ticks}}<line x1="56" x2="750" y1="{{printf "%.1f" .Pos}}" y2="{{printf "%.1f" .Pos}}" stroke="#e5e5e5"/><text x="50" y="{{printf "%.1f" .Pos}}" font-size="10" text-anchor="end" dominant-baseline="middle">{{.Label}}</text>
{{end}}{{range .XTicks}}<text x="{{printf "%.1f" .Pos}}" y="222" font-size="10" text-anchor="middle">{{.Label}}</text>
{{end}}<text x="6" y="12" font-size="10">{{.Unit}}</text>
{{range .Series}}<polyline fill="none" stroke="{{.Color}}" stroke-width="1.5" points="{{.Points}}"/>
{{end}}</svg>
{{end}}
</body></html>
`))

func (res *Result) html(w io.Writer) error {
	var fp any // the pool share in percent, for the template; nil: none
	if p := res.FromPool; p != nil {
		fp = struct {
			*PoolShare
			AllPct, AfterPct float64
		}{p, p.All * 100, p.AfterWarm * 100}
	}
	return reportTmpl.Execute(w, struct {
		R      resultView
		Charts []chart
	}{resultView{res, fp}, res.charts()})
}

// resultView is a Result whose FromPool the report shows in percent.
type resultView struct {
	*Result
	FromPool any
}
