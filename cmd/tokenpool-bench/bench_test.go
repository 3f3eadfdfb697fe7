package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
	"golang.org/x/net/html"
)

// buildBinaries builds this command and tokenpoold into dir.
func buildBinaries(t *testing.T, dir string) (bench, daemon string) {
	t.Helper()
	bench, daemon = filepath.Join(dir, "tokenpool-bench"), filepath.Join(dir, "tokenpoold")
	for bin, pkg := range map[string]string{bench: ".", daemon: "../tokenpoold"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	return bench, daemon
}

// TestBenchRunsEveryScenario builds the bench and the daemon and runs each
// scenario briefly against 2 local replicas, then checks the summary,
// result.json and report.html are produced and well-formed.
func TestBenchRunsEveryScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and runs replicas")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server not on PATH")
	}
	dir := t.TempDir()
	bench, daemon := buildBinaries(t, dir)
	common := []string{"-local", "2", "-tokenpoold", daemon, "-sim-latency", "20ms", "-users", "20", "-warm", "1"}
	runs := []struct {
		name string
		args []string
	}{
		{"steady", []string{"-scenario", "steady", "-rate", "40", "-duration", "3s"}},
		{"steady then idle", []string{"-scenario", "steady", "-rate", "40", "-idle-after", "1s", "-duration", "3s"}},
		{"step", []string{"-scenario", "step", "-from", "5", "-rate", "80", "-step-at", "1s", "-duration", "3s"}},
		{"spike", []string{"-scenario", "spike", "-rate", "20", "-spike-rate", "150", "-spike-at", "1s", "-spike-duration", "1s", "-duration", "3s"}},
		{"ramp", []string{"-scenario", "ramp", "-from", "5", "-to", "80", "-duration", "3s"}},
		{"max", []string{"-scenario", "max", "-concurrency", "8", "-duration", "2s"}},
		{"prewarmed step", []string{"-scenario", "step", "-from", "0", "-rate", "100", "-step-at", "0s", "-duration", "2s", "-prewarm", "300", "-prewarm-before", "2s", "-sim-quota", "200"}},
		{"memory", []string{"-scenario", "memory", "-prewarm", "300"}},
		{"bare baseline", []string{"-baseline", "bare", "-scenario", "steady", "-rate", "50", "-duration", "2s"}},
		{"redis baseline", []string{"-baseline", "redis", "-scenario", "max", "-concurrency", "4", "-duration", "2s"}},
		{"vegeta format", []string{"-format", "vegeta", "-scenario", "steady", "-rate", "40", "-duration", "2s"}},
	}
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			out := filepath.Join(dir, strings.ReplaceAll(r.name, " ", "-"))
			args := append([]string{"-out", out}, r.args...)
			if !strings.Contains(r.name, "baseline") {
				args = append(args, common...)
			}
			cmd := exec.Command(bench, args...)
			cmd.Dir = "../.."
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			stdout, err := cmd.Output()
			if err != nil {
				t.Fatalf("%v\n%s\n%s", err, stdout, stderr.Bytes())
			}
			summary := stdout
			if strings.Contains(r.name, "vegeta") {
				summary = stderr.Bytes()
			}
			if !strings.Contains(string(summary), "wrote ") {
				t.Fatalf("no summary:\n%s", summary)
			}
			var res Result
			b, err := os.ReadFile(filepath.Join(out, "result.json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &res); err != nil {
				t.Fatalf("result.json: %v", err)
			}
			switch {
			case r.name == "steady then idle" && res.Seconds < 2.9: // the idle second is waited, not skipped
				t.Fatalf("the run lasted %.2fs of its 3s", res.Seconds)
			case res.Memory != nil:
				if res.Memory.Credentials != 300 || res.Memory.RedisBytes <= 0 {
					t.Fatalf("memory %+v", res.Memory)
				}
			case res.Sent == 0 || len(res.Timeline) == 0 || res.Status["200"] == 0:
				t.Fatalf("result: %d sent, %d seconds, answers %v", res.Sent, len(res.Timeline), res.Status)
			case !strings.Contains(r.name, "baseline") && (!res.Checks.Checked || res.Checks.Duplicates+res.Checks.ShortLived+res.Checks.Foreign > 0):
				t.Fatalf("checks %+v", res.Checks)
			}
			if res.Memory == nil && !strings.Contains(r.name, "baseline") {
				// The cost comes from the fleet's counters: the handouts the
				// bench counted from the pool, at the least.
				c := res.Cost
				if c == nil || c.Handouts < int64(res.FromPool.Pool) || c.Mints == 0 || c.MintsPerHandout <= 0 ||
					c.LastMinute == nil || c.LastHour == nil || !strings.Contains(string(summary), "mints per handout") {
					t.Fatalf("cost %+v for %d from the pool; summary:\n%s", c, res.FromPool.Pool, summary)
				}
			}
			checkReport(t, filepath.Join(out, "report.html"), res.Memory == nil)
			if res.Memory == nil {
				checkVegeta(t, filepath.Join(out, "vegeta.json"), res)
			}
			if strings.Contains(r.name, "vegeta") {
				b, err := os.ReadFile(filepath.Join(out, "vegeta.json"))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(stdout, b) {
					t.Fatalf("stdout is not vegeta.json:\n%s\n%s", stdout, b)
				}
			}
		})
	}
}

// checkVegeta decodes vegeta.json strictly into vegeta's own Metrics and
// checks it counts what result.json does.
func checkVegeta(t *testing.T, path string, res Result) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	var m vegeta.Metrics
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("vegeta.json into vegeta.Metrics: %v", err)
	}
	if dec.More() {
		t.Fatal("vegeta.json holds more than one report")
	}
	ok := res.Status["200"]
	switch {
	case m.Requests != uint64(res.Sent):
		t.Fatalf("vegeta: %d requests, result.json: %d sent", m.Requests, res.Sent)
	case m.StatusCodes["200"] != ok:
		t.Fatalf("vegeta: %d 200s, result.json: %d", m.StatusCodes["200"], ok)
	case m.Success != float64(ok)/float64(res.Sent):
		t.Fatalf("vegeta: success %v, want %d of %d", m.Success, ok, res.Sent)
	case m.Latencies.P50 <= 0 || m.Latencies.P50 > m.Latencies.P99 || m.Latencies.P99 > m.Latencies.Max:
		t.Fatalf("vegeta latencies: %+v", m.Latencies)
	case m.BytesIn.Total == 0 || m.Rate <= 0 || m.Duration <= 0:
		t.Fatalf("vegeta: bytes in %d, rate %v, duration %v", m.BytesIn.Total, m.Rate, m.Duration)
	}
	// vegeta's percentiles are estimates (a t-digest); ours are exact to
	// 3 digits (HDR): the medians agree within a few percent.
	if ours, theirs := res.Latency.P50, float64(m.Latencies.P50)/float64(time.Millisecond); theirs < ours*0.8 || theirs > ours*1.25 {
		t.Fatalf("vegeta p50 %.3f ms, ours %.3f ms", theirs, ours)
	}
}

// checkReport parses report.html and checks it is self-contained: charts
// as inline SVG, no script, nothing fetched from the network.
func checkReport(t *testing.T, path string, wantCharts bool) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := html.Parse(f)
	if err != nil {
		t.Fatalf("report.html: %v", err)
	}
	var svgs, polylines int
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			switch n.Data {
			case "script", "link", "img", "iframe":
				t.Errorf("report.html has a <%s>", n.Data)
			case "svg":
				svgs++
			case "polyline":
				for _, a := range n.Attr {
					if a.Key == "points" && a.Val != "" {
						polylines++
					}
				}
			}
			for _, a := range n.Attr {
				if (a.Key == "src" || a.Key == "href") && a.Val != "" {
					t.Errorf("report.html fetches %s", a.Val)
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	if wantCharts && (svgs < 2 || polylines < 2) {
		t.Fatalf("report.html has %d charts with %d plotted series", svgs, polylines)
	}
}
