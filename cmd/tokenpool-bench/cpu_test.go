package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestMedianLinesTakesEachFigureApart(t *testing.T) {
	round := func(server, redis, rate, ratio float64) []CPULine {
		return []CPULine{
			{Name: "base", Requests: 1, ServerMicros: 50, RedisMicros: 5},
			{Name: "a", Requests: 10, ServerMicros: server, RedisMicros: redis, PerSecond: rate, ServerRatio: ratio, RedisRatio: -ratio},
			{Name: "base", Requests: 1, ServerMicros: 70, RedisMicros: 7},
		}
	}
	lines := medianLines([][]CPULine{round(100, 9, 1, 1.1), round(300, 1, 3, 1.3), round(200, 5, 2, 1.2)})
	if len(lines) != 2 || lines[0].Name != "base" || lines[1].Name != "a" {
		t.Fatalf("lines %+v", lines)
	}
	if b := lines[0]; b.ServerMicros != 60 || b.RedisMicros != 6 || b.Requests != 6 {
		t.Fatalf("the baseline's median %+v", b)
	}
	got := lines[1]
	if got.ServerMicros != 200 || got.RedisMicros != 5 || got.PerSecond != 2 || got.Requests != 30 || got.ServerRatio != 1.2 || got.RedisRatio != -1.2 {
		t.Fatalf("median %+v", got)
	}
}

// TestTheCPUScenarioMeasuresEveryLine runs the cpu scenario once, short:
// the baseline and six tokenpoold lines, each with CPU figures for the
// server and Redis, none minting.
func TestTheCPUScenarioMeasuresEveryLine(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and runs servers")
	}
	for _, bin := range []string{"redis-server", "wrk"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not on PATH; .ci/run installs it", bin)
			}
			t.Skipf("%s not on PATH", bin)
		}
	}
	dir := t.TempDir()
	bench, daemon := buildBinaries(t, dir)
	out := filepath.Join(dir, "cpu")
	cmd := exec.Command(bench, "-scenario", "cpu", "-tokenpoold", daemon, "-out", out, "-duration", "1s", "-rounds", "1",
		"-concurrency", "4", "-users", "10", "-sim-latency", "1ms", "-prewarm", "15000")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v\n%s\n%s", err, stdout, stderr.Bytes())
	}
	var res CPUResult
	b, err := os.ReadFile(filepath.Join(out, "cpu.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("cpu.json: %v", err)
	}
	want := []string{"handwritten"}
	for _, extra := range []string{"", ", quotas + ledger"} {
		for _, alg := range cpuAlgs {
			want = append(want, "tokenpoold, "+alg+extra)
		}
	}
	if len(res.Lines) != len(want) || len(res.Rounds) != 1 || len(res.Rounds[0]) != 2*(len(want)-1) {
		t.Fatalf("%d lines, %d rounds; want %d, 1 of a baseline before each line:\n%s", len(res.Lines), len(res.Rounds), len(want), stdout)
	}
	for i, l := range res.Lines {
		if l.Name != want[i] || l.Requests == 0 || l.Failed != 0 || l.ServerMicros <= 0 || l.RedisMicros <= 0 || l.Minted*1000 > int64(l.Requests) {
			t.Errorf("line %d: %+v; want %q with requests, CPU figures, nothing failed or minted", i, l, want[i])
		}
		if (i > 0) != (l.ServerRatio > 0 && l.RedisRatio > 0 && l.PairedServerMicros > 0 && l.PairedRedisMicros > 0) {
			t.Errorf("line %d: ratios %v and %v", i, l.ServerRatio, l.RedisRatio)
		}
		if !strings.Contains(string(stdout), l.Name) {
			t.Errorf("the summary lacks %q:\n%s", l.Name, stdout)
		}
	}
}
