// Package api is tokenpool's HTTP interface: the Gin router, the
// credential handlers, and the middleware in front of them (request id,
// logging, caller auth). The caller's limits (per-IP, then per-user) are
// applied by the handler in the same Redis round trip as its take; a
// request refused by them on this replica is refused again from memory
// until its retry time. It is the only package that imports Gin, and it
// reaches Redis only through pool and limiter.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/gin-contrib/cors"
	"github.com/gin-gonic/gin"
	"go.opentelemetry.io/contrib/instrumentation/github.com/gin-gonic/gin/otelgin"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenpool/tokenpool/internal/recent"
	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/mint"
	"github.com/tokenpool/tokenpool/pool"
)

// Pool is what the API needs of the pool.
type Pool interface {
	// GetLimited hands out one credential behind the caller's limits,
	// applied in the same round trip (see pool.Pool.GetLimited).
	GetLimited(ctx context.Context, profile, requestID string, who *mint.Caller, checks []limiter.Check) (pool.Handout, []limiter.Decision, error)
	// MintOnce mints one credential with m for one request of who under
	// the profile, never pooled (a Navai session no pool has).
	MintOnce(ctx context.Context, profile, requestID string, m mint.Minter, who *mint.Caller, label string, checks []limiter.Check) (pool.Handout, []limiter.Decision, error)
	// Fallback hands a caller of profile from one credential of profile to
	// instead, behind quotas alone (see pool.Pool.Fallback).
	Fallback(ctx context.Context, from, to, requestID string, who *mint.Caller, quotas []limiter.Check) (pool.Handout, []limiter.Decision, error)
	// Return puts back a handout whose caller has gone before receiving it.
	Return(h pool.Handout)
	Ready(ctx context.Context) error
}

// Limiter is what the API needs of the limiter.
type Limiter interface {
	// AllowAll counts one event against each check, in order, up to the
	// first that denies (see limiter.Limiter.AllowAll).
	AllowAll(ctx context.Context, checks []limiter.Check) ([]limiter.Decision, error)
}

// The defaults of a Config, for what reads configuration too
// (TOKENPOOL_RATE_PER_USER and the rest default to them).
var (
	DefaultPerUser = limiter.Limit{Rate: 30, Burst: 30, Period: time.Minute}   // 30/m
	DefaultPerIP   = limiter.Limit{Rate: 300, Burst: 300, Period: time.Minute} // 300/m
)

// The IPv6 prefixes' defaults: a client is its /64, an aggregate a /48.
const (
	DefaultIPv6Prefix    = 64
	DefaultIPv6NetPrefix = 48
)

// DefaultRequestTimeout is Config.RequestTimeout's default.
const DefaultRequestTimeout = 3 * time.Second

// Config configures a Server. Zero values mean the documented default.
type Config struct {
	Pool    Pool    // required
	Limiter Limiter // required

	// Profiles are the profiles callers may name, with their provider and
	// access rule. default: one Orga profile named DefaultProfile, open to
	// every authenticated caller
	Profiles map[string]ProfileInfo
	// DefaultProfile serves requests that name none. default: "default"
	DefaultProfile string
	// Realtime serves the Navai routes (POST /navai/realtime/client-secret,
	// POST /api/realtime-token). default: none, the routes are off
	Realtime Realtime

	// JWTSecret is the HS256 key of caller JWTs. HS256 JWTs are refused
	// when empty.
	JWTSecret []byte
	// JWTIssuer and JWTAudiences, when set, are required of HS256 JWTs: iss
	// equal to JWTIssuer, aud holding one of JWTAudiences.
	JWTIssuer    string
	JWTAudiences []string
	// JWTAssumeEmailVerified counts an HS256 token's email as verified
	// without an email_verified claim (see Issuer.AssumeEmailVerified).
	// default: false
	JWTAssumeEmailVerified bool
	// Issuers are identity providers whose JWTs are verified against the
	// keys they publish. default: none
	Issuers []Issuer
	// JWTCookie names a cookie that may carry the caller JWT. default: none
	JWTCookie string
	// JWTCacheSize is how many verified caller JWTs are kept, so that a
	// token sent again is not verified again (see tokenCache). 0: none
	JWTCacheSize int
	// APIKeys are the static keys of server callers.
	APIKeys []APIKey

	// PerUser limits credential requests per authenticated subject, PerIP
	// per client address. default: DefaultPerUser and DefaultPerIP
	PerUser, PerIP limiter.Limit
	// IPv6Prefix is the prefix an IPv6 client's PerIP limit keys on: one
	// subscriber is handed a whole /64 (or /56, /48). default: 64
	IPv6Prefix int
	// PerIPv6Net limits, together, every IPv6 client within one
	// IPv6NetPrefix (default 48), beside each one's PerIP, so a holder of
	// a wide prefix is not as many clients as it has /64s. default: none
	PerIPv6Net    limiter.Limit
	IPv6NetPrefix int
	// TrustedProxies are the CIDRs or addresses whose X-Forwarded-For is
	// believed when deriving the client address. default: none
	TrustedProxies []string
	// DenyCache bounds the refusals this replica remembers, so that a
	// client address or user refused until T is refused again until T
	// without asking Redis. default: 100,000; negative: none (every
	// request asks Redis)
	DenyCache int
	// CORSOrigins are the browser origins allowed to call. default: none
	CORSOrigins []string
	// RequestTimeout bounds each credential request, a direct mint on a
	// miss included. default: 3s
	RequestTimeout time.Duration
	// Quotas are the daemon's default session quotas, shared by every
	// profile without its own (ProfileInfo.Quotas). default: none
	Quotas []Quota
	// TenantClaim is the claim whose value the issuance ledger records as
	// a caller's tenant. default: the claim of the first tenant quota
	// (by: claim:<name>), if any
	TenantClaim string
	// Ledger serves GET /v1/admin/ledger and POST /v1/admin/ledger/lookup
	// to admins. default: none, the routes are off (the ledger is off)
	Ledger Ledger
	// QuotaAdmin serves GET /v1/admin/usage and POST
	// /v1/admin/quotas/reset to admins. default: none, the routes are off
	QuotaAdmin QuotaAdmin

	// Admin serves the admin routes (GET /v1/admin/profiles, POST
	// /v1/admin/profiles/{name}/prewarm) to holders of AdminKeys, separate
	// from caller keys. default: none, the routes are off
	Admin     Admin
	AdminKeys []APIKey
	// Providers serves POST /v1/admin/providers/{provider}/resume to
	// admins. default: none, the route is off
	Providers Providers
	// Breaker reports a profile's provider breaker state, for the admin
	// report. default: "closed"
	Breaker func(profile string) string
	// TracerProvider, when set, receives a span per request (its W3C
	// trace context, when the caller sends one, is the parent), and the
	// access log names the trace. default: none
	TracerProvider trace.TracerProvider

	// Metrics records the API's metrics. They are served on a listener
	// of their own, never by this API. default: none
	Metrics *Metrics

	// Logger receives the access log. default: slog.Default()
	Logger *slog.Logger
	// Now is the clock. default: time.Now
	Now func() time.Time
}

// Server is the HTTP API. It is safe for concurrent use.
type Server struct {
	cfg     Config
	pool    Pool
	limiter Limiter
	auth    *authenticator
	admins  *authenticator
	log     *slog.Logger
	metrics *Metrics
	denials *limiter.DenyCache      // nil: off
	ready   *recent.Value[struct{}] // the last readiness check

	profileNames []string // sorted
	now          func() time.Time
	engine       *gin.Engine
}

var releaseMode sync.Once

// New checks cfg and builds the router.
func New(cfg Config) (*Server, error) {
	if cfg.Pool == nil || cfg.Limiter == nil {
		return nil, errors.New("api: config: Pool and Limiter are required")
	}
	if len(cfg.JWTSecret) == 0 && len(cfg.APIKeys) == 0 && len(cfg.Issuers) == 0 {
		return nil, errors.New("api: config: no caller can authenticate: set a JWT secret, an issuer or API keys")
	}
	if cfg.DefaultProfile == "" {
		cfg.DefaultProfile = "default"
	}
	if len(cfg.Profiles) == 0 {
		cfg.Profiles = map[string]ProfileInfo{cfg.DefaultProfile: {Provider: "orga", ICE: true}}
	}
	if _, ok := cfg.Profiles[cfg.DefaultProfile]; !ok {
		return nil, fmt.Errorf("api: config: default profile %q is not among the profiles", cfg.DefaultProfile)
	}
	if cfg.PerUser.Rate == 0 {
		cfg.PerUser = DefaultPerUser
	}
	if cfg.PerIP.Rate == 0 {
		cfg.PerIP = DefaultPerIP
	}
	if cfg.IPv6Prefix == 0 {
		cfg.IPv6Prefix = DefaultIPv6Prefix
	}
	if cfg.IPv6NetPrefix == 0 {
		cfg.IPv6NetPrefix = DefaultIPv6NetPrefix
	}
	if cfg.IPv6Prefix < 1 || cfg.IPv6Prefix > 128 || cfg.IPv6NetPrefix < 1 || cfg.IPv6NetPrefix > cfg.IPv6Prefix {
		return nil, fmt.Errorf("api: config: IPv6 prefixes /%d and /%d: want 1 ≤ the aggregate's ≤ the client's ≤ 128", cfg.IPv6Prefix, cfg.IPv6NetPrefix)
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if err := scopeQuotas(&cfg); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	auth, err := newAuthenticator(cfg, cfg.Logger)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, pool: cfg.Pool, limiter: cfg.Limiter, auth: auth,
		admins: &authenticator{keys: cfg.AdminKeys}, log: cfg.Logger, now: cfg.Now, metrics: cfg.Metrics,
		ready: &recent.Value[struct{}]{TTL: ReadyCacheTTL, Now: cfg.Now},
	}
	if cfg.DenyCache >= 0 {
		s.denials = limiter.NewDenyCache(cfg.DenyCache, cfg.Now)
	}
	for name := range cfg.Profiles {
		s.profileNames = append(s.profileNames, name)
	}
	sort.Strings(s.profileNames)
	if err := s.routes(); err != nil {
		return nil, err
	}
	return s, nil
}

// Open starts fetching the identity providers' keys; until each issuer's
// have loaded, /readyz answers 503. Call Close to stop.
func (s *Server) Open() { s.auth.issuers.open() }

// Close stops fetching keys and waits for the fetchers to end.
func (s *Server) Close() { s.auth.issuers.close() }

// Handler returns the http.Handler serving the API.
func (s *Server) Handler() http.Handler { return s.engine }

func (s *Server) routes() error {
	releaseMode.Do(func() { gin.SetMode(gin.ReleaseMode) })
	e := gin.New()
	e.HandleMethodNotAllowed = true
	// Gin trusts every proxy unless told otherwise; nil trusts none.
	if err := e.SetTrustedProxies(s.cfg.TrustedProxies); err != nil {
		return fmt.Errorf("api: trusted proxies: %w", err)
	}
	// Only X-Forwarded-For, whose rightmost entries the trusted proxies
	// wrote. Gin would fall back to X-Real-IP, which a client can set,
	// when an entry does not parse.
	e.RemoteIPHeaders = []string{"X-Forwarded-For"}
	if tp := s.cfg.TracerProvider; tp != nil {
		e.Use(otelgin.Middleware("tokenpoold", otelgin.WithTracerProvider(tp),
			otelgin.WithPropagators(propagation.TraceContext{}), otelgin.WithMeterProvider(metricnoop.NewMeterProvider())))
	}
	e.Use(withRequestID, s.accessLog, s.recoverPanic)
	if len(s.cfg.CORSOrigins) > 0 {
		// Our own rule decides which origins may call, so a refusal is
		// ours (the JSON error, the access log's code, the per-IP limit);
		// the CORS layer then only adds the headers, and agrees by
		// asking the same rule.
		e.Use(s.checkOrigin)
		cc := cors.Config{
			AllowOriginFunc:  s.originListed,
			AllowMethods:     []string{http.MethodGet, http.MethodPost, http.MethodOptions},
			AllowHeaders:     []string{"Authorization", "Content-Type", "X-API-Key"},
			ExposeHeaders:    []string{"X-Request-Id", "Retry-After", "RateLimit", "RateLimit-Policy"},
			AllowCredentials: true,
			MaxAge:           10 * time.Minute,
		}
		if err := cc.Validate(); err != nil {
			return fmt.Errorf("api: CORS origins: %w", err)
		}
		e.Use(cors.New(cc))
	}
	e.NoRoute(func(c *gin.Context) { s.fail(c, errorf(http.StatusNotFound, codeNotFound, "no such route")) })
	e.NoMethod(func(c *gin.Context) {
		s.fail(c, errorf(http.StatusMethodNotAllowed, codeMethodNotAllowed, "method not allowed on this route"))
	})

	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	e.GET("/openapi.yaml", serveOpenAPI)
	if s.cfg.Admin != nil && len(s.cfg.AdminKeys) > 0 {
		admin := e.Group("/v1/admin", s.withDeadline, s.limitIP, s.authenticateAdmin)
		admin.GET("/profiles", s.getProfiles)
		admin.POST("/profiles/:name/prewarm", s.postPrewarm)
		if s.cfg.Providers != nil {
			admin.POST("/providers/:provider/resume", s.postResume)
		}
		if s.cfg.Ledger != nil {
			admin.GET("/ledger", s.getLedger)
			admin.POST("/ledger/lookup", s.postLedgerLookup)
		}
		if s.cfg.QuotaAdmin != nil {
			admin.GET("/usage", s.getUsage)
			admin.POST("/quotas/reset", s.postQuotaReset)
		}
	}

	creds := e.Group("", s.withDeadline, s.authenticate)
	creds.POST("/v1/credentials", s.postCredentials)
	creds.GET("/v1/credentials", s.getCredentials)
	creds.POST("/v1/session-config", s.postSessionConfig)
	creds.GET("/api/orga-client-secrets", s.getSessionConfig)
	if s.cfg.Realtime != nil {
		creds.POST("/navai/realtime/client-secret", s.realtimeSecret)
		creds.POST("/api/realtime-token", s.realtimeSecret)
	}
	s.engine = e
	return nil
}
