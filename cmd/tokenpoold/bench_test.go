package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// BenchmarkHandoutLatency compares, in one run, the latency a caller sees
// for a credential from the pool with minting per request (no pool), both
// through the whole daemon over HTTP, against the simulated provider at
// 100 ms per call. Each iteration is one pooled handout; the per-request
// minting baseline is measured once after the loop. Run it with a fixed
// count, e.g. -benchtime=500x, so the pool never runs dry.
func BenchmarkHandoutLatency(b *testing.B) {
	const providerLatency = 100 * time.Millisecond
	rs := redistest.New(b)
	sim := startSim(b, upstreamtest.Config{Latency: providerLatency})
	pooled := startDaemon(b, rs, sim, map[string]string{
		"TOKENPOOL_POOL_TARGET":        "1000",
		"TOKENPOOL_REFILL_CONCURRENCY": "64",
	})
	ctx := context.Background()
	poll.Until(b, "the pool to fill", 2*time.Minute, func() bool {
		st, _ := pooled.pool.Stats(ctx, "default")
		return st.Usable >= 1000
	})
	bearer := callerJWT(b, "bench")
	measure := func(url string) time.Duration {
		start := time.Now()
		r := fetchB(b, url, bearer)
		if r != http.StatusOK {
			b.Fatalf("status %d", r)
		}
		return time.Since(start)
	}

	var pool []time.Duration
	for b.Loop() {
		pool = append(pool, measure(pooled.url))
	}
	b.StopTimer()
	st, _ := pooled.pool.Stats(ctx, "default")
	if st.Direct != 0 {
		b.Fatalf("%d handouts missed the pool; run with a smaller -benchtime count", st.Direct)
	}

	direct := startDaemon(b, redistest.New(b), sim, map[string]string{"TOKENPOOL_POOL_TARGET": "0"})
	var perRequest []time.Duration
	for range 30 {
		perRequest = append(perRequest, measure(direct.url))
	}

	p := func(ds []time.Duration, q float64) time.Duration {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[min(int(q*float64(len(ds))), len(ds)-1)]
	}
	b.ReportMetric(float64(p(pool, 0.5).Microseconds()), "pool-p50-µs")
	b.ReportMetric(float64(p(pool, 0.99).Microseconds()), "pool-p99-µs")
	b.ReportMetric(float64(p(perRequest, 0.5).Microseconds()), "mint-p50-µs")
	b.ReportMetric(float64(p(perRequest, 0.99).Microseconds()), "mint-p99-µs")
	b.ReportMetric(float64(p(perRequest, 0.5))/float64(p(pool, 0.5)), "p50-ratio")
	b.ReportMetric(float64(p(perRequest, 0.99))/float64(p(pool, 0.99)), "p99-ratio")
	b.ReportMetric(0, "ns/op")
	fmt.Fprintf(testingWriter{b}, "pooled handouts %d, per-request mints %d\n", len(pool), len(perRequest))
}

// fetchB is fetch returning only the status, for the benchmark loop.
func fetchB(b *testing.B, base, bearer string) int {
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/session-config", nil)
	req.Header.Set("Authorization", "Bearer "+bearer)
	resp, err := client.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

type testingWriter struct{ b *testing.B }

func (w testingWriter) Write(p []byte) (int, error) { w.b.Log(string(p)); return len(p), nil }
