package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestChaosShortRun is the chaos run of RELIABILITY.md, short: every kind
// of fault in turn for 40 s against 3 replicas, and every credential the
// provider minted accounted for, none delivered twice.
func TestChaosShortRun(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("TOKENPOOL_TEST_REQUIRE_REDIS") == "1" {
			t.Fatal("redis-server is not on PATH")
		}
		t.Skip("redis-server is not on PATH")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "tokenpoold")
	if out, err := exec.Command("go", "build", "-o", bin, "../tokenpoold").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	code := run(ctx, []string{"-duration", "40s", "-fault-every", "1s", "-cycle", "-callers", "16",
		"-tokenpoold", bin, "-dir", dir}, &stdout, &stderr)
	t.Logf("\n%s%s", stdout.String(), stderr.String())
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, f := range faults {
		if !strings.Contains(stdout.String(), "| "+f.name+" |") {
			t.Errorf("the run never injected %q", f.name)
		}
	}
	if !strings.Contains(stdout.String(), "The promise held.") {
		t.Fatal("no verdict")
	}
}
