package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/net/html"
)

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
	bench, daemon := filepath.Join(dir, "tokenpool-bench"), filepath.Join(dir, "tokenpoold")
	for bin, pkg := range map[string]string{bench: ".", daemon: "../tokenpoold"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
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
			stdout, err := cmd.Output()
			if err != nil {
				var stderr []byte
				if ee, ok := err.(*exec.ExitError); ok {
					stderr = ee.Stderr
				}
				t.Fatalf("%v\n%s\n%s", err, stdout, stderr)
			}
			if !strings.Contains(string(stdout), "wrote ") {
				t.Fatalf("no summary:\n%s", stdout)
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
			checkReport(t, filepath.Join(out, "report.html"), res.Memory == nil)
		})
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
