package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// go-redis's lines come out as the daemon's JSON records, each message at
// most once per redisLogEvery, the next one counting what was suppressed.
func TestRedisLoggerWritesJSONAndRateLimits(t *testing.T) {
	var buf bytes.Buffer
	l := newRedisLogger(slog.New(slog.NewJSONHandler(&buf, nil)))
	now := time.Now()
	l.now = func() time.Time { return now }
	ctx := context.Background()
	const dial = "redis: %s:%d: connection pool: failed to dial after %d attempts: %v"
	for range 50 {
		l.Printf(ctx, dial, "127.0.0.1", 6379, 5, "connection refused")
		now = now.Add(100 * time.Millisecond) // 50 failures in 5 s
	}
	l.Printf(ctx, "sentinel: new master=%q addr=%q", "mymaster", "127.0.0.1:26379") // another message: not held back
	now = now.Add(redisLogEvery)
	l.Printf(ctx, dial, "127.0.0.1", 6379, 5, "connection refused")

	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		recs = append(recs, rec)
	}
	if len(recs) != 3 {
		t.Fatalf("%d lines, want 3 (the first dial error, the sentinel line, the dial error again):\n%s", len(recs), buf.String())
	}
	first, last := recs[0], recs[2]
	if first["component"] != "redis" || first["level"] != "WARN" || first["suppressed"] != 0.0 ||
		first["msg"] != "redis: 127.0.0.1:6379: connection pool: failed to dial after 5 attempts: connection refused" {
		t.Fatalf("first line %v", first)
	}
	if last["suppressed"] != 49.0 {
		t.Fatalf("the dial error again %v, want 49 suppressed", last)
	}
}
