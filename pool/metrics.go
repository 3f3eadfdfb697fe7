package pool

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenpool/tokenpool/internal/recent"
)

// Metrics are the pool's Prometheus metrics, counted by this replica (sum
// them over replicas). Labels are profile names and fixed words, never a
// caller. A nil *Metrics records nothing.
type Metrics struct {
	handouts *prometheus.CounterVec // profile, source
	misses   *prometheus.CounterVec // profile
	wasted   *prometheus.CounterVec // profile
	mints    *prometheus.CounterVec // profile, kind, outcome
	lost     *prometheus.CounterVec // profile
	back     *prometheus.CounterVec // profile
	unrepl   *prometheus.CounterVec // profile
	wipes    *prometheus.CounterVec // profile
	dropped  *prometheus.CounterVec // profile
	fallback *prometheus.CounterVec // profile, to
}

// NewMetrics registers the pool's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		handouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenpool_handouts_total",
			Help: "Credentials handed out, by profile and source: pool, direct (minted on a miss) or on_demand (settings or a key no pool has).",
		}, []string{"profile", "source"}),
		misses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenpool_pool_misses_total",
			Help: "Takes that found no usable pooled credential.",
		}, []string{"profile"}),
		wasted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenpool_pool_wasted_total",
			Help: "Pooled credentials that fell below the minimum remaining life unused, evicted by this replica.",
		}, []string{"profile"}),
		mints: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenpool_mints_total",
			Help: "Mints by profile, kind (refill or request) and outcome (ok, failed, unavailable, cancelled).",
		}, []string{"profile", "kind", "outcome"}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenpool_pool_lost_total",
			Help: "Credentials this replica could not deliver nor put back: taken while Redis failed and not recovered, or parked when it stopped.",
		}, []string{"profile"}),
		back: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenpool_pool_returned_total",
			Help: "Pooled credentials taken for a caller that had gone, put back by this replica.",
		}, []string{"profile"}),
		unrepl: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenpool_pool_unreplicated_total",
			Help: "Takes handed out before a replica acknowledged them (TOKENPOOL_REDIS_WAIT_REPLICAS): WAIT timed out, or the primary had too few replicas to wait for.",
		}, []string{"profile"}),
		wipes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenpool_pool_wipes_total",
			Help: "Redis datasets of the profile (one per shard) this replica found wiped: a restart without persistence, or a flush.",
		}, []string{"profile"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenpool_pool_dropped_total",
			Help: "Credentials gone with a wiped Redis dataset, as this replica saw them: those it last saw pooled there, and those it sent there that were refused since.",
		}, []string{"profile"}),
		fallback: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenpool_fallbacks_total",
			Help: "Callers of a profile served by one of its fallback profiles (to) because its pool was empty and its provider could not mint.",
		}, []string{"profile", "to"}),
	}
	reg.MustRegister(m.handouts, m.misses, m.wasted, m.mints, m.lost, m.back, m.unrepl, m.wipes, m.dropped, m.fallback)
	return m
}

// known creates every label combination of profile at zero, so series
// exist before their first event.
func (m *Metrics) known(profile string) {
	if m == nil {
		return
	}
	for _, src := range []Source{SourcePool, SourceDirect, SourceOnDemand} {
		m.handouts.WithLabelValues(profile, string(src))
	}
	m.misses.WithLabelValues(profile)
	m.wasted.WithLabelValues(profile)
	m.lost.WithLabelValues(profile)
	m.back.WithLabelValues(profile)
	m.unrepl.WithLabelValues(profile)
	m.wipes.WithLabelValues(profile)
	m.dropped.WithLabelValues(profile)
	for _, kind := range []string{"refill", "request"} {
		for _, out := range []string{"ok", "failed", "unavailable", "cancelled"} {
			m.mints.WithLabelValues(profile, kind, out)
		}
	}
}

func (m *Metrics) handout(profile string, src Source) {
	if m != nil {
		m.handouts.WithLabelValues(profile, string(src)).Inc()
	}
}

func (m *Metrics) fellBack(profile, to string) {
	if m != nil {
		m.fallback.WithLabelValues(profile, to).Inc()
	}
}

func (m *Metrics) miss(profile string) {
	if m != nil {
		m.misses.WithLabelValues(profile).Inc()
	}
}

func (m *Metrics) waste(profile string, n int64) {
	if m != nil && n > 0 {
		m.wasted.WithLabelValues(profile).Add(float64(n))
	}
}

// wipe counts a wiped dataset and the n entries this replica last saw
// pooled there.
func (m *Metrics) wipe(profile string, n int64) {
	if m != nil {
		m.wipes.WithLabelValues(profile).Inc()
		m.dropped.WithLabelValues(profile).Add(float64(n))
	}
}

// drop counts a credential refused because its dataset was wiped.
func (m *Metrics) drop(profile string) {
	if m != nil {
		m.dropped.WithLabelValues(profile).Inc()
	}
}

func (m *Metrics) loss(profile string, n int64) {
	if m != nil && n > 0 {
		m.lost.WithLabelValues(profile).Add(float64(n))
	}
}

func (m *Metrics) returned(profile string) {
	if m != nil {
		m.back.WithLabelValues(profile).Inc()
	}
}

func (m *Metrics) unreplicate(profile string) {
	if m != nil {
		m.unrepl.WithLabelValues(profile).Inc()
	}
}

func (m *Metrics) mint(profile, kind string, err error) {
	if m == nil {
		return
	}
	m.mints.WithLabelValues(profile, kind, outcome(err)).Inc()
}

// outcome classes a mint's error for the mints metric.
func outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrUnavailable):
		return "unavailable"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	}
	return "failed"
}

// ScrapeCacheTTL is how long a scrape's pool figures serve the scrapes
// after it: any scrape rate reads Redis at most once per profile and
// shard per interval.
const ScrapeCacheTTL = time.Second

// poolCollector reports each profile's shared state, read from Redis at
// most once per ScrapeCacheTTL (every replica reports the same fleet-wide
// values).
type poolCollector struct {
	p                                      *Pool
	ready, usable, target, inflight, rates *prometheus.Desc
	mintsPerHandout, wastedRecent          *prometheus.Desc
	unreachable                            *prometheus.Desc
	stats                                  *recent.Value[map[string]Stats] // by profile, those that answered
}

// Collector returns a Prometheus collector of every profile's pool: ready,
// usable, target, in flight and demand.
func (p *Pool) Collector() prometheus.Collector {
	l := []string{"profile"}
	return &poolCollector{
		p:        p,
		stats:    &recent.Value[map[string]Stats]{TTL: ScrapeCacheTTL, Now: p.now},
		ready:    prometheus.NewDesc("tokenpool_pool_ready", "Credentials pooled (fleet-wide).", l, nil),
		usable:   prometheus.NewDesc("tokenpool_pool_usable", "Pooled credentials with at least the minimum remaining life (fleet-wide).", l, nil),
		target:   prometheus.NewDesc("tokenpool_pool_target", "The pool's current target, demand-sized, floor and prewarm included (fleet-wide).", l, nil),
		inflight: prometheus.NewDesc("tokenpool_pool_in_flight", "Mints in flight, all replicas.", l, nil),
		rates:    prometheus.NewDesc("tokenpool_demand_per_second", "Handout requests per second, fleet-wide, decaying over 1s (fast) and 60s (slow).", []string{"profile", "window"}, nil),
		mintsPerHandout: prometheus.NewDesc("tokenpool_pool_mints_per_handout",
			"Mints (pooled and for requests) per handout, fleet-wide, over the last minute (1m) or hour (1h).", []string{"profile", "window"}, nil),
		wastedRecent: prometheus.NewDesc("tokenpool_pool_wasted_recent",
			"Credentials wasted, fleet-wide, over the last minute (1m) or hour (1h).", []string{"profile", "window"}, nil),
		unreachable: prometheus.NewDesc("tokenpool_pool_shards_unreachable",
			"Shards of the profile whose Redis did not answer the scrape: the other figures leave them out.", l, nil),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.ready, c.usable, c.target, c.inflight, c.rates, c.mintsPerHandout, c.wastedRecent, c.unreachable} {
		ch <- d
	}
}

// figures returns every profile's stats, read again when the last read is
// ScrapeCacheTTL old.
func (c *poolCollector) figures() map[string]Stats {
	stats, _ := c.stats.Get(context.Background(), func() (map[string]Stats, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		stats := make(map[string]Stats, len(c.p.names))
		for _, name := range c.p.names {
			if st, err := c.p.Stats(ctx, name); err == nil { // Redis away: no sample rather than a wrong one
				stats[name] = st
			}
		}
		return stats, nil
	})
	return stats
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	stats := c.figures()
	for _, name := range c.p.names {
		st, ok := stats[name]
		if !ok {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.ready, prometheus.GaugeValue, float64(st.Ready), name)
		ch <- prometheus.MustNewConstMetric(c.usable, prometheus.GaugeValue, float64(st.Usable), name)
		ch <- prometheus.MustNewConstMetric(c.target, prometheus.GaugeValue, float64(st.Target), name)
		ch <- prometheus.MustNewConstMetric(c.inflight, prometheus.GaugeValue, float64(st.InFlight), name)
		ch <- prometheus.MustNewConstMetric(c.unreachable, prometheus.GaugeValue, float64(st.Unreachable), name)
		ch <- prometheus.MustNewConstMetric(c.rates, prometheus.GaugeValue, st.Demand.Fast, name, "fast")
		ch <- prometheus.MustNewConstMetric(c.rates, prometheus.GaugeValue, st.Demand.Slow, name, "slow")
		for w, cost := range map[string]Cost{"1m": st.LastMinute, "1h": st.LastHour} {
			ch <- prometheus.MustNewConstMetric(c.mintsPerHandout, prometheus.GaugeValue, cost.MintsPerHandout(), name, w)
			ch <- prometheus.MustNewConstMetric(c.wastedRecent, prometheus.GaugeValue, float64(cost.Wasted), name, w)
		}
	}
}
