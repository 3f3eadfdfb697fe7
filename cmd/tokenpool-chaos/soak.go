package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// sample is one minute's look at the fleet during the soak.
type sample struct {
	at         time.Duration
	handouts   int64
	rss        int64 // bytes, all replicas
	goroutines int64 // all replicas
	fds        int64 // all replicas
	redisMem   int64 // used_memory, bytes
}

// soak drives a steady rate through two replicas with no faults and
// samples memory, goroutines, open files and Redis's memory.
func soak(ctx context.Context, o options, stdout io.Writer) (bool, error) {
	w, err := startWorld(ctx, worldConfig{
		Replicas: 2, Tokenpoold: o.tokenpoold, Dir: o.dir, AOFDir: aofDir(o.dir),
		SimLatency: 20 * time.Millisecond, Env: daemonEnv,
	})
	if err != nil {
		return false, err
	}
	defer w.close()
	runCtx, stop := context.WithTimeout(ctx, o.soak)
	defer stop()
	got := newReceived()
	done := make(chan struct{})
	go func() { (&callers{w: w, got: got, n: o.callers, rate: o.rate}).run(runCtx); close(done) }()

	started := time.Now()
	var samples []sample
	take := func() error {
		s := sample{at: time.Since(started), handouts: got.handouts.Load()}
		for _, r := range w.replicas {
			rss, fds, err := procStat(w.pid(r))
			if err != nil {
				return err
			}
			g, err := scrapeGauge(r.url+"/metrics", "go_goroutines")
			if err != nil {
				return err
			}
			s.rss, s.fds, s.goroutines = s.rss+rss, s.fds+int64(fds), s.goroutines+g
		}
		c := w.redisClient()
		defer c.Close()
		info, err := c.Info(ctx, "memory").Result()
		if err != nil {
			return err
		}
		s.redisMem = infoInt(info, "used_memory")
		samples = append(samples, s)
		return nil
	}
	if err := take(); err != nil {
		return false, err
	}
	t := time.NewTicker(o.sample)
	defer t.Stop()
	for runCtx.Err() == nil {
		select {
		case <-t.C:
			if err := take(); err != nil {
				return false, err
			}
		case <-runCtx.Done():
		}
	}
	<-done
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	dups := int64(0)
	for _, n := range got.tokens {
		dups += int64(n - 1)
	}
	printSoak(stdout, o, samples, got, dups)
	return dups == 0, nil
}

func printSoak(out io.Writer, o options, samples []sample, got *received, dups int64) {
	fmt.Fprintf(out, "## Soak\n\n%s at %.0f handouts/s asked, 2 replicas, %d callers: %d handouts, %d delivered twice, other answers %v.\n\n",
		o.soak, o.rate, o.callers, got.handouts.Load(), dups, got.statuses)
	fmt.Fprintf(out, "| minute | handouts | replicas' RSS (MiB) | goroutines | open files | Redis used_memory (MiB) |\n|---|---|---|---|---|---|\n")
	const mib = 1 << 20
	for _, s := range samples {
		fmt.Fprintf(out, "| %.0f | %d | %.1f | %d | %d | %.2f |\n", s.at.Minutes(), s.handouts,
			float64(s.rss)/mib, s.goroutines, s.fds, float64(s.redisMem)/mib)
	}
	// The first minute is warm-up (the pool fills, caches grow): slopes are
	// fitted from the second sample on.
	from := samples
	if len(from) > 2 {
		from = from[1:]
	}
	fit := func(f func(sample) float64) float64 {
		xs, ys := make([]float64, len(from)), make([]float64, len(from))
		for i, s := range from {
			xs[i], ys[i] = s.at.Minutes(), f(s)
		}
		return slope(xs, ys)
	}
	fmt.Fprintf(out, "\nSlopes per minute (least squares, from minute %.0f): RSS %+.3f MiB, goroutines %+.2f, open files %+.2f, Redis memory %+.4f MiB.\n",
		from[0].at.Minutes(),
		fit(func(s sample) float64 { return float64(s.rss) / mib }),
		fit(func(s sample) float64 { return float64(s.goroutines) }),
		fit(func(s sample) float64 { return float64(s.fds) }),
		fit(func(s sample) float64 { return float64(s.redisMem) / mib }))
}

// slope is the least-squares slope of ys over xs.
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	if n < 2 {
		return 0
	}
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx, sy, sxx, sxy = sx+xs[i], sy+ys[i], sxx+xs[i]*xs[i], sxy+xs[i]*ys[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}

// scrapeGauge reads one unlabelled sample from a Prometheus endpoint.
func scrapeGauge(url, name string) (int64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int64(f), err
		}
	}
	return 0, fmt.Errorf("%s: no %s", url, name)
}

func infoInt(info, field string) int64 {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}
