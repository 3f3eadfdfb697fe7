package api

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the API's Prometheus metrics. Labels are route templates,
// status codes and policy names, never a caller. A nil *Metrics records
// nothing.
type Metrics struct {
	requests *prometheus.HistogramVec // route, status
	denials  *prometheus.CounterVec   // policy
	// cached and verifiedJWTs count caller JWTs found in the verified
	// token cache and those that passed verification (with a cache).
	cached, verifiedJWTs prometheus.Counter
}

// NewMetrics registers the API's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenpool_http_request_duration_seconds",
			Help:    "Server time of HTTP requests, by route template and status.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"route", "status"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenpool_limiter_denials_total",
			Help: "Requests refused by a rate limit, by policy (ip, ipnet: an IPv6 aggregate, or user).",
		}, []string{"policy"}),
	}
	jwts := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenpool_jwt_verifications_total",
		Help: "Caller JWTs accepted, by whether the verified token cache had them: cached (the signature verified before) or verified (checked now). Refused tokens are in neither.",
	}, []string{"result"})
	m.cached, m.verifiedJWTs = jwts.WithLabelValues("cached"), jwts.WithLabelValues("verified")
	reg.MustRegister(m.requests, m.denials, jwts)
	for _, policy := range []string{"ip", "ipnet", "user"} {
		m.denials.WithLabelValues(policy)
	}
	return m
}

func (m *Metrics) request(route string, status int, took time.Duration) {
	if m != nil {
		m.requests.WithLabelValues(route, strconv.Itoa(status)).Observe(took.Seconds())
	}
}

func (m *Metrics) denied(policy string) {
	if m != nil {
		m.denials.WithLabelValues(policy).Inc()
	}
}

// verification counts a caller JWT found in the cache or verified.
func (m *Metrics) verification(cached bool) {
	switch {
	case m == nil:
	case cached:
		m.cached.Inc()
	default:
		m.verifiedJWTs.Inc()
	}
}
