package main

import (
	"strings"
	"testing"
	"time"
)

// The samples of an earlier soak (commit cd7b480; RELIABILITY.md has a later one), minutes 0 to 29: replicas'
// RSS (MiB), goroutines, open files, Redis used_memory (MiB).
var measured = [][4]float64{
	{40.0, 121, 85, 2.96}, {60.8, 183, 178, 6.77}, {61.3, 182, 178, 8.30}, {61.7, 205, 178, 8.16},
	{61.9, 201, 178, 8.26}, {62.0, 182, 178, 8.26}, {62.1, 190, 178, 8.25}, {62.4, 212, 178, 8.27},
	{62.2, 183, 178, 8.24}, {62.3, 182, 178, 8.32}, {62.4, 184, 178, 8.21}, {62.3, 182, 178, 8.36},
	{62.1, 182, 178, 8.24}, {62.4, 183, 178, 8.26}, {62.5, 183, 178, 8.29}, {62.5, 182, 178, 8.31},
	{62.5, 182, 178, 8.33}, {62.5, 183, 178, 8.29}, {62.8, 184, 178, 8.28}, {62.6, 182, 178, 8.26},
	{62.4, 183, 178, 8.25}, {62.6, 184, 178, 8.25}, {62.6, 204, 178, 8.25}, {62.7, 182, 178, 8.30},
	{62.6, 182, 178, 8.27}, {62.2, 209, 178, 8.26}, {62.6, 183, 178, 8.25}, {62.6, 186, 178, 8.28},
	{62.7, 183, 178, 8.32}, {62.8, 182, 178, 8.32},
}

// series turns rows into samples, one a minute, with leak added per
// minute to each figure.
func series(rows [][4]float64, leak [4]float64) []sample {
	const mib = 1 << 20
	out := make([]sample, len(rows))
	for i, r := range rows {
		m := float64(i)
		out[i] = sample{
			at:         time.Duration(i) * time.Minute,
			rss:        int64((r[0] + leak[0]*m) * mib),
			goroutines: int64(r[1] + leak[1]*m),
			fds:        int64(r[2] + leak[2]*m),
			redisMem:   int64((r[3] + leak[3]*m) * mib),
		}
	}
	return out
}

func TestSoakVerdict(t *testing.T) {
	if v := judge(series(measured, [4]float64{})); !v.ok() {
		t.Fatalf("the measured soak: %+v; want no leak", v)
	}
	for _, c := range []struct {
		name string
		leak [4]float64
	}{
		{"replicas' RSS", [4]float64{0.5, 0, 0, 0}},                       // 0.5 MiB a minute
		{"goroutines", [4]float64{0, 2, 0, 0}},                            // two a minute
		{"open files", [4]float64{0, 0, 1, 0}},                            // one a minute
		{"Redis used_memory", [4]float64{0, 0, 0, 0.1}},                   // 0.1 MiB a minute
		{"goroutines", [4]float64{0, 12.0 / 5, 0, 0}},                     // a goroutine per 5,000 requests at 200/s
		{"replicas' RSS", [4]float64{200 * 60 / 1048576.0 * 25, 0, 0, 0}}, // 25 bytes per request
	} {
		v := judge(series(measured, c.leak))
		if v.ok() || len(v.leaks) != 1 || !strings.HasPrefix(v.leaks[0], c.name) {
			t.Errorf("%s leaking %v: %+v; want that leak alone reported", c.name, c.leak, v)
		}
	}
	if v := judge(series(measured[:4], [4]float64{})); v.ok() {
		t.Errorf("four minutes of samples: %+v; want too short to judge", v)
	}
}
