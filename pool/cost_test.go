package pool

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func TestCostLog(t *testing.T) {
	t0 := time.Now()
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	var l costLog
	// Every 10 s for two minutes: 10 mints, 8 handouts, 1 wasted.
	for s := 0; s <= 120; s += 10 {
		n := int64(s)
		l.add(costSample{at: at(s), mints: n, handouts: n * 8 / 10, wasted: n / 10})
		l.add(costSample{at: at(s).Add(time.Second), mints: n + 1}) // within costSampleEvery: not kept
	}
	now := costSample{at: at(125), mints: 125, handouts: 100, wasted: 12}
	if c := l.over(now, time.Minute); c.Span != 55*time.Second || c.Mints != 125-70 || c.Handouts != 100-56 || c.Wasted != 12-7 {
		t.Fatalf("last minute: %+v, want the 55 s since the sample at 70 s", c)
	}
	if c := l.over(now, time.Hour); c.Span != 125*time.Second || c.Mints != 125 || c.Handouts != 100 {
		t.Fatalf("last hour: %+v, want all 125 s watched", c)
	}
	if got := (Cost{Mints: 125, Handouts: 100}).MintsPerHandout(); got != 1.25 {
		t.Fatalf("mints per handout %v, want 1.25", got)
	}
	if got := (Cost{Mints: 3}).MintsPerHandout(); got != 0 {
		t.Fatalf("mints per handout with no handout %v, want 0", got)
	}
	// Counters that went down (Redis lost its data) start the span afresh.
	reset := costSample{at: at(130), mints: 4, handouts: 3}
	if c := l.over(reset, time.Hour); c.Span != 0 || c.Mints != 0 {
		t.Fatalf("after a reset: %+v, want an empty span", c)
	}
	// An hour on, only what the long window needs is kept.
	for s := 130; s <= 3*3600; s += 10 {
		l.add(costSample{at: at(s), mints: int64(s)})
	}
	if n := len(l.samples); n > int(CostWindowLong/costSampleEvery)+1 {
		t.Fatalf("%d samples kept, want at most %d", n, CostWindowLong/costSampleEvery+1)
	}
}

// Stats reports what handouts cost over the last minute and hour, from
// the fleet's counters: pooled and direct mints, handouts and waste.
func TestStatsReportCostWindows(t *testing.T) {
	clock := newTestClock()
	st := newTestStore(t)
	m := &fakeMinter{ttl: time.Hour}
	p := newTestPool(t, st, m, func(c *Config) { c.Now = clock.Now })
	ctx := context.Background()
	stats := func() Stats {
		t.Helper()
		s, err := p.Stats(ctx, "default")
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for i := range 4 {
		putOne(t, st, "default", fmt.Sprintf("e%d", i), time.Now().Add(time.Hour))
	}
	stats() // the first sample: nothing yet
	clock.Advance(30 * time.Second)
	for i := range 3 {
		if _, err := p.Get(ctx, "default", fmt.Sprintf("req%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	s := stats()
	if c := s.LastMinute; c.Span != 30*time.Second || c.Mints != 0 || c.Handouts != 3 {
		t.Fatalf("last minute: %+v, want 3 handouts of pooled credentials minted before it, over 30 s", c)
	}
	clock.Advance(40 * time.Second)
	for i := 3; i < 6; i++ { // one from the pool, then two misses minted for the request
		if _, err := p.Get(ctx, "default", fmt.Sprintf("req%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	s = stats()
	if c := s.LastMinute; c.Span != 40*time.Second || c.Handouts != 3 || c.Mints != 2 {
		t.Fatalf("last minute: %+v, want the 40 s since the last sample: 3 handouts, 2 direct mints", c)
	}
	if c := s.LastHour; c.Span != 70*time.Second || c.Handouts != 6 || c.Mints != 2 || c.MintsPerHandout() != 2.0/6 {
		t.Fatalf("last hour: %+v, want all 70 s: 6 handouts, 2 mints", c)
	}
}
