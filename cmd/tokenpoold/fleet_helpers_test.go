package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// fleetEnv is the environment of a replica on redisURL minting from sim,
// logging warnings only, with extra on top (see testEnv).
func fleetEnv(redisURL string, sim *upstreamtest.Server, extra map[string]string) map[string]string {
	quiet := map[string]string{"TOKENPOOL_LOG_LEVEL": "warn"}
	for k, v := range extra {
		quiet[k] = v
	}
	return testEnv(redisURL, sim, quiet)
}

func startFleet(tb testing.TB, n int, env map[string]string) []*process {
	tb.Helper()
	var ps []*process
	for range n {
		ps = append(ps, startProcess(tb, env))
	}
	return ps
}

// outcome is one answer seen by the load driver.
type outcome struct {
	status  int
	token   string
	source  string // X-Credential-Source
	latency time.Duration
	at      time.Time
}

// load drives handouts from callers concurrent callers spread over urls,
// until total handouts or until stop is closed (total 0). With a total,
// each handout is a 200: a caller that gets a 503 with Retry-After waits
// as told and asks again, as a client does (every answer is recorded).
type load struct {
	mu       sync.Mutex
	outcomes []outcome
}

func (l *load) run(tb testing.TB, urls []string, callers, total int, stop <-chan struct{}) {
	tb.Helper()
	var (
		wg   sync.WaitGroup
		next = make(chan struct{}) // unbuffered: stop means stop
	)
	go func() {
		defer close(next)
		for i := 0; total == 0 || i < total; i++ {
			select {
			case next <- struct{}{}:
			case <-stop:
				return
			}
		}
	}()
	bearers := callerJWTs(tb, callers)
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bearer := bearers[c]
			url := urls[c%len(urls)]
			for range next {
				if total == 0 {
					l.record(fetch(tb, url, bearer))
				} else {
					fetchServed(tb, url, bearer, l.record)
				}
			}
		}()
	}
	wg.Wait()
}

// record keeps one answer.
func (l *load) record(r reply) {
	o := outcome{status: r.status, at: r.sent, latency: r.received.Sub(r.sent), source: r.header.Get("X-Credential-Source")}
	var c credential
	if json.Unmarshal(r.body, &c) == nil {
		o.token = c.EphemeralToken
	}
	l.mu.Lock()
	l.outcomes = append(l.outcomes, o)
	l.mu.Unlock()
}

// servedAfter waits until the load has had n handouts (200s) sent after
// since.
func (l *load) servedAfter(t *testing.T, n int, since time.Time) {
	t.Helper()
	poll.Until(t, fmt.Sprintf("%d handouts", n), 20*time.Second, func() bool {
		got := 0
		for _, o := range l.snapshot() {
			if o.status == http.StatusOK && o.at.After(since) {
				got++
			}
		}
		return got >= n
	})
}

func (l *load) snapshot() []outcome {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]outcome(nil), l.outcomes...)
}

// checkTokens fails on a duplicate or foreign token among the 200s and
// returns how many there were.
func checkTokens(tb testing.TB, sim *upstreamtest.Server, outs []outcome) int {
	tb.Helper()
	seen := map[string]bool{}
	for _, o := range outs {
		if o.status != 200 {
			continue
		}
		if seen[o.token] {
			tb.Fatalf("token handed out twice")
		}
		seen[o.token] = true
		if _, ok := sim.Lookup(o.token); !ok {
			tb.Fatalf("a token the provider did not mint")
		}
	}
	return len(seen)
}

func statuses(outs []outcome) map[int]int {
	m := map[int]int{}
	for _, o := range outs {
		m[o.status]++
	}
	return m
}

func percentile(outs []outcome, q float64) time.Duration {
	if len(outs) == 0 {
		return 0
	}
	ls := make([]time.Duration, len(outs))
	for i, o := range outs {
		ls[i] = o.latency
	}
	sort.Slice(ls, func(i, j int) bool { return ls[i] < ls[j] })
	return ls[min(int(q*float64(len(ls))), len(ls)-1)]
}

func urlsOf(ps []*process) []string {
	var us []string
	for _, p := range ps {
		us = append(us, p.url)
	}
	return us
}

// logTime returns the time of the first log line of p whose msg contains
// msg.
func (p *process) logTime(msg string) (time.Time, bool) {
	for _, l := range strings.Split(p.stderr.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil {
			continue
		}
		if s, _ := m["msg"].(string); strings.Contains(s, msg) {
			t, err := time.Parse(time.RFC3339Nano, m["time"].(string))
			return t, err == nil
		}
	}
	return time.Time{}, false
}
