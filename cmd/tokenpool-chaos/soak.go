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
			g, err := scrapeGauge(r.metricsURL+"/metrics", "go_goroutines")
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
	v := judge(samples)
	printSoak(stdout, o, samples, got, dups, v)
	return dups == 0 && v.ok(), nil
}

// warmUp is how long the fleet takes to settle: the pool fills, and the
// handout ledger grows for as long as a credential lives (the
// simulator's 120 s tokens). Slopes are fitted from the first sample
// after it.
const warmUp = 3 * time.Minute

// leakBounds are the slopes per minute (all replicas together) above which
// the soak reports a leak and fails: a tenth of what one leaked object per
// request would add at the soak's 200 handouts per second (a 1 KiB buffer
// per request is 11.7 MiB a minute, a goroutine per thousand requests 12),
// and above the noise of the runs in RELIABILITY.md (RSS ±0.04 MiB,
// goroutines ±0.3, Redis ±0.012 MiB a minute).
var leakBounds = slopes{rss: 0.2, goroutines: 1, fds: 0.2, redis: 0.05}

// slopes are least-squares slopes per minute: RSS and Redis memory in
// MiB, goroutines and open files in units.
type slopes struct{ rss, goroutines, fds, redis float64 }

// verdict is the soak's judgement of its samples.
type verdict struct {
	from   time.Duration // the first sample fitted
	n      int           // samples fitted
	slopes slopes
	leaks  []string // the figures whose slope is over its bound
}

// minFitted is the fewest samples after the warm-up a verdict needs.
const minFitted = 3

func (v verdict) ok() bool { return v.n >= minFitted && len(v.leaks) == 0 }

// judge fits the slopes of the samples after the warm-up and compares
// them with leakBounds.
func judge(samples []sample) verdict {
	var from []sample
	for _, s := range samples {
		if s.at >= warmUp-time.Second {
			from = append(from, s)
		}
	}
	v := verdict{n: len(from)}
	if len(from) == 0 {
		return v
	}
	v.from = from[0].at
	fit := func(f func(sample) float64) float64 {
		xs, ys := make([]float64, len(from)), make([]float64, len(from))
		for i, s := range from {
			xs[i], ys[i] = s.at.Minutes(), f(s)
		}
		return slope(xs, ys)
	}
	const mib = 1 << 20
	v.slopes = slopes{
		rss:        fit(func(s sample) float64 { return float64(s.rss) / mib }),
		goroutines: fit(func(s sample) float64 { return float64(s.goroutines) }),
		fds:        fit(func(s sample) float64 { return float64(s.fds) }),
		redis:      fit(func(s sample) float64 { return float64(s.redisMem) / mib }),
	}
	for _, c := range []struct {
		name       string
		got, bound float64
	}{
		{"replicas' RSS", v.slopes.rss, leakBounds.rss},
		{"goroutines", v.slopes.goroutines, leakBounds.goroutines},
		{"open files", v.slopes.fds, leakBounds.fds},
		{"Redis used_memory", v.slopes.redis, leakBounds.redis},
	} {
		if c.got > c.bound {
			v.leaks = append(v.leaks, fmt.Sprintf("%s grows %+.3f a minute (bound %.3f)", c.name, c.got, c.bound))
		}
	}
	return v
}

func printSoak(out io.Writer, o options, samples []sample, got *received, dups int64, v verdict) {
	fmt.Fprintf(out, "## Soak\n\n%s at %.0f handouts/s asked, 2 replicas, %d callers: %d handouts, %d delivered twice, other answers %v.\n\n",
		o.soak, o.rate, o.callers, got.handouts.Load(), dups, got.statuses)
	fmt.Fprintf(out, "| minute | handouts | replicas' RSS (MiB) | goroutines | open files | Redis used_memory (MiB) |\n|---|---|---|---|---|---|\n")
	const mib = 1 << 20
	for _, s := range samples {
		fmt.Fprintf(out, "| %.0f | %d | %.1f | %d | %d | %.2f |\n", s.at.Minutes(), s.handouts,
			float64(s.rss)/mib, s.goroutines, s.fds, float64(s.redisMem)/mib)
	}
	b := leakBounds
	fmt.Fprintf(out, "\nSlopes per minute (least squares over %d samples from minute %.0f, after the %s warm-up), with the bound over which the soak fails: "+
		"RSS %+.3f MiB (%.2f), goroutines %+.2f (%.0f), open files %+.2f (%.1f), Redis memory %+.4f MiB (%.2f).\n",
		v.n, v.from.Minutes(), warmUp, v.slopes.rss, b.rss, v.slopes.goroutines, b.goroutines, v.slopes.fds, b.fds, v.slopes.redis, b.redis)
	switch {
	case v.n < minFitted:
		fmt.Fprintf(out, "\nToo short to judge: %d samples after the warm-up, %d needed. The soak did NOT pass.\n", v.n, minFitted)
	case len(v.leaks) > 0 || dups > 0:
		fmt.Fprintf(out, "\nThe soak did NOT pass: %d delivered twice; %s.\n", dups, strings.Join(v.leaks, "; "))
	default:
		fmt.Fprintf(out, "\nNo leak: every slope within its bound, nothing delivered twice. The soak passed.\n")
	}
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
