package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/pool"
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

// BenchmarkCredentialsRoute compares, in one run, the pooled handouts per
// second of POST /v1/credentials with POST /v1/session-config: one
// daemon, a full pool whose refiller is stopped (so only handouts run),
// 16 callers in a closed loop, and the two routes in alternating rounds
// of 100 handouts each, so the machine's noise falls on both alike; the
// ratio is the median of the rounds' (each pair run back to back). Run
// it once per count: -benchtime 1x (the pool holds one run's handouts).
func BenchmarkCredentialsRoute(b *testing.B) {
	const (
		rounds   = 40
		perRound = 100
		callers  = 16
	)
	rs := redistest.New(b)
	sim := startSim(b, upstreamtest.Config{})
	d := fullPool(b, rs, sim, 2*rounds*perRound+100, nil)
	bearer := callerJWT(b, "bench")
	routes := []struct{ name, path, body string }{
		{"session-config", "/v1/session-config", `{"profile":"default"}`},
		{"credentials", "/v1/credentials", `{"profile":"default"}`},
	}
	took, median := alternatingRounds(b, rounds, func(i int) time.Duration {
		return closedLoop(b, d.url+routes[i].path, routes[i].body, bearer, callers, perRound)
	})
	if st, _ := d.pool.Stats(context.Background(), "default"); st.Direct != 0 {
		b.Fatalf("%d handouts missed the pool", st.Direct)
	}
	rate := func(i int) float64 { return float64(rounds*perRound) / took[i].Seconds() }
	b.ReportMetric(rate(0), "session-config-handouts/s")
	b.ReportMetric(rate(1), "credentials-handouts/s")
	b.ReportMetric(rate(1)/rate(0), "credentials/session-config")
	b.ReportMetric(median, "median-round-ratio")
	b.ReportMetric(0, "ns/op")
}

// alternatingRounds runs two sides, rounds times each, within b.Loop:
// side(0) then side(1) in even rounds, the other way in odd ones, so the
// machine's noise falls on both alike. It returns each side's total time
// and the median of the rounds' ratios of side 0's time to side 1's (side
// 1's rate over side 0's): a burst of noise moves one round, not the
// figure.
func alternatingRounds(b *testing.B, rounds int, side func(i int) time.Duration) (took [2]time.Duration, median float64) {
	var ratios []float64
	for b.Loop() {
		for r := range rounds {
			var round [2]time.Duration
			for k := range 2 {
				i := (k + r) % 2
				round[i] = side(i)
				took[i] += round[i]
			}
			ratios = append(ratios, float64(round[0])/float64(round[1]))
		}
	}
	b.StopTimer()
	sort.Float64s(ratios)
	return took, ratios[len(ratios)/2]
}

// closedLoop sends n POSTs of body to url from callers callers, each
// sending its next as its last is answered, and returns how long they took.
func closedLoop(b *testing.B, url, body, bearer string, callers, n int) time.Duration {
	var (
		next   atomic.Int64
		failed atomic.Int64
		wg     sync.WaitGroup
	)
	start := time.Now()
	for range callers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+bearer)
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if f := failed.Load(); f > 0 {
		b.Fatalf("%s: %d of %d requests failed", url, f, n)
	}
	return elapsed
}

// BenchmarkLedgerCost compares, in one run, the pooled handouts per
// second of a daemon with the issuance ledger on with one with it off:
// two daemons on one Redis sharing one full pool whose refillers are
// stopped, 16 callers in a closed loop on POST /v1/credentials, the two
// in alternating rounds of 100 handouts (as BenchmarkCredentialsRoute).
// Run it once per count: -benchtime 1x.
func BenchmarkLedgerCost(b *testing.B) {
	const (
		rounds   = 40
		perRound = 100
		callers  = 16
	)
	rs := redistest.New(b)
	sim := startSim(b, upstreamtest.Config{})
	target := strconv.Itoa(2*rounds*perRound + 100)
	on := fullPool(b, rs, sim, 2*rounds*perRound+100, map[string]string{"TOKENPOOL_LEDGER_KEY": testLedgerKey})
	off := startDaemon(b, rs, sim, map[string]string{"TOKENPOOL_POOL_TARGET": target, "TOKENPOOL_POOL_MAX": target})
	if err := off.pool.Drain(context.Background()); err != nil {
		b.Fatal(err)
	}
	bearer := callerJWT(b, "bench")
	daemons := []*daemon{off, on}
	took, median := alternatingRounds(b, rounds, func(i int) time.Duration {
		return closedLoop(b, daemons[i].url+"/v1/credentials", `{"profile":"default"}`, bearer, callers, perRound)
	})
	ctx := context.Background()
	if st, _ := on.pool.Stats(ctx, "default"); st.Direct != 0 {
		b.Fatalf("%d handouts missed the pool", st.Direct)
	}
	if n, err := rs.Client().XLen(ctx, pool.Keys("", "default").Issued()).Result(); err != nil || n != rounds*perRound {
		b.Fatalf("%d records (%v) of the ledger daemon's %d handouts", n, err, rounds*perRound)
	}
	rate := func(i int) float64 { return float64(rounds*perRound) / took[i].Seconds() }
	b.ReportMetric(rate(0), "off-handouts/s")
	b.ReportMetric(rate(1), "on-handouts/s")
	b.ReportMetric(rate(1)/rate(0), "on/off")
	b.ReportMetric(median, "median-round-ratio")
	b.ReportMetric(0, "ns/op")
}
