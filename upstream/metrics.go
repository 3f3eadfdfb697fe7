package upstream

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// Metrics are the provider calls' Prometheus metrics. Labels are provider
// names and fixed words. A nil *Metrics records nothing.
type Metrics struct {
	latency *prometheus.HistogramVec // provider, outcome
	breaker *prometheus.GaugeVec     // provider
}

// NewMetrics registers the upstream metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenpool_provider_call_duration_seconds",
			Help:    "Duration of one mint attempt at the provider (for Orga both calls), by outcome: ok, error, timeout, rate_limited, bad_key.",
			Buckets: []float64{.025, .05, .1, .15, .2, .3, .5, .75, 1, 2, 5},
		}, []string{"provider", "outcome"}),
		breaker: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenpool_breaker_state",
			Help: "The provider's circuit breaker on this replica: 0 closed, 1 half-open, 2 open.",
		}, []string{"provider"}),
	}
	reg.MustRegister(m.latency, m.breaker)
	return m
}

func (m *Metrics) call(provider string, took time.Duration, err error) {
	if m == nil {
		return
	}
	var se *StatusError
	out := "ok"
	switch {
	case err == nil:
	case errors.Is(err, ErrBadKey):
		out = "bad_key"
	case errors.As(err, &se) && se.Code == http.StatusTooManyRequests:
		out = "rate_limited"
	case errors.Is(err, context.DeadlineExceeded):
		out = "timeout"
	default:
		out = "error"
	}
	m.latency.WithLabelValues(provider, out).Observe(took.Seconds())
}

// known creates provider's series at zero, so they exist before the first
// call.
func (m *Metrics) known(provider string) {
	if m == nil {
		return
	}
	for _, out := range []string{"ok", "error", "timeout", "rate_limited", "bad_key"} {
		m.latency.WithLabelValues(provider, out)
	}
}

func (m *Metrics) state(provider string, s gobreaker.State) {
	if m == nil {
		return
	}
	v := map[gobreaker.State]float64{gobreaker.StateClosed: 0, gobreaker.StateHalfOpen: 1, gobreaker.StateOpen: 2}[s]
	m.breaker.WithLabelValues(provider).Set(v)
}
