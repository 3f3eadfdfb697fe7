package pool

import (
	"context"
	"sync"
	"time"
)

// Cost is what a profile's handouts cost over a recent span, fleet-wide:
// every mint spends the provider's quota, and a credential minted and
// never handed out is paid for nothing.
type Cost struct {
	// Span is the span measured: the window asked for, or less while this
	// replica has watched the counters for less.
	Span     time.Duration
	Mints    int64 // minted into the pool or for a request
	Handouts int64 // handed out from the pool or minted for a request
	Wasted   int64 // went stale, or were minted with no room, unused
}

// MintsPerHandout is what one handout cost in mints; 0 when nothing was
// handed out.
func (c Cost) MintsPerHandout() float64 {
	if c.Handouts == 0 {
		return 0
	}
	return float64(c.Mints) / float64(c.Handouts)
}

// The windows Stats reports costs over.
const (
	CostWindowShort = time.Minute
	CostWindowLong  = time.Hour
)

// costSampleEvery spaces the counter samples a window's cost is the
// difference of: a window's edge is known to within this.
const costSampleEvery = 10 * time.Second

type costSample struct {
	at                      time.Time
	mints, handouts, wasted int64
}

func sampleOf(at time.Time, st Stats) costSample {
	return costSample{at: at, mints: st.Minted + st.Direct, handouts: st.HandedOut + st.Direct, wasted: st.Wasted}
}

// costLog keeps samples of one profile's fleet-wide counters, one per
// costSampleEvery over the long window (361 at most), oldest first.
type costLog struct {
	mu      sync.Mutex
	samples []costSample // guarded by mu
	tried   time.Time    // guarded by mu: sampleCosts's last read
}

// add records s unless the last sample is younger than costSampleEvery,
// and drops what the long window no longer needs.
func (l *costLog) add(s costSample) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := len(l.samples); n > 0 && s.at.Sub(l.samples[n-1].at) < costSampleEvery {
		return
	}
	l.samples = append(l.samples, s)
	drop := 0
	for drop+1 < len(l.samples) && !l.samples[drop+1].at.After(s.at.Add(-CostWindowLong)) {
		drop++
	}
	l.samples = l.samples[drop:]
}

// over is the cost from the oldest sample within window before now to now.
// A counter that went down (Redis lost its data) starts the span afresh.
func (l *costLog) over(now costSample, window time.Duration) Cost {
	l.mu.Lock()
	defer l.mu.Unlock()
	from := now
	for i := len(l.samples) - 1; i >= 0; i-- {
		s := l.samples[i]
		if s.at.Before(now.at.Add(-window)) || s.mints > now.mints || s.handouts > now.handouts || s.wasted > now.wasted {
			break
		}
		from = s
	}
	return Cost{Span: now.at.Sub(from.at), Mints: now.mints - from.mints, Handouts: now.handouts - from.handouts, Wasted: now.wasted - from.wasted}
}

// costs records the counters in st, read now, and sets its windows' costs.
func (p *Pool) costs(pr *profile, st *Stats) {
	l := &pr.cost
	s := sampleOf(p.now(), *st)
	st.LastMinute, st.LastHour = l.over(s, CostWindowShort), l.over(s, CostWindowLong)
	l.add(s)
}

// sampleCosts reads every profile's counters when costSampleEvery has
// passed since the last sample, so the windows have their samples
// whether or not anyone reads the report. The refiller loop calls it.
func (p *Pool) sampleCosts(ctx context.Context) {
	for _, name := range p.names {
		l := &p.profiles[name].cost
		now := p.now()
		l.mu.Lock()
		due := now.Sub(l.tried) >= costSampleEvery && (len(l.samples) == 0 || now.Sub(l.samples[len(l.samples)-1].at) >= costSampleEvery)
		if due {
			l.tried = now
		}
		l.mu.Unlock()
		if due {
			_, _ = p.Stats(ctx, name) // Redis away: no sample this time
		}
	}
}
