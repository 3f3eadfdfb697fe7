// Command tokenpoold is the tokenpool daemon: it pre-fetches realtime
// provider credentials into a Redis-backed pool and hands one to each
// authenticated caller.
//
//	tokenpoold          configuration from the environment
//	tokenpoold -demo    embedded Redis, simulated provider, prints a curl line
//	tokenpoold -healthcheck  exit 0 when the daemon on this host is ready
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenpool/tokenpool/api"
	"github.com/tokenpool/tokenpool/ledger"
	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/mint"
	"github.com/tokenpool/tokenpool/pool"
	"github.com/tokenpool/tokenpool/upstream"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is main without the process: it returns the exit code. 2 means the
// configuration is invalid.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "ledger" {
		return ledgerCommand(ctx, args[1:], getenv, stdout, stderr)
	}
	fs := flag.NewFlagSet("tokenpoold", flag.ContinueOnError)
	fs.SetOutput(stderr)
	demo := fs.Bool("demo", false, "run with embedded Redis and a simulated provider; print a curl line that fetches a credential")
	addr := fs.String("addr", "", "listen address (overrides TOKENPOOL_ADDR)")
	health := fs.Bool("healthcheck", false, "GET /readyz of the daemon on this host and exit 0 when ready (for container health checks)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *health {
		a := *addr
		if a == "" {
			a = getenv("TOKENPOOL_ADDR")
		}
		return healthcheck(ctx, a, stderr)
	}
	cfg, err := LoadConfig(getenv, *demo)
	if err != nil {
		fmt.Fprintf(stderr, "tokenpoold: invalid configuration:\n%v\n", err)
		return 2
	}
	if *addr != "" {
		cfg.Addr = *addr
	}
	m := &Main{Config: cfg, Stdout: stdout, Stderr: stderr}
	if err := m.Open(ctx); err != nil {
		if m.log != nil {
			m.log.Error("tokenpoold: start failed", "err", err)
		} else {
			fmt.Fprintf(stderr, "tokenpoold: %v\n", err)
		}
		closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = m.Close(closeCtx)
		return 1
	}
	// The process's default loggers (the standard log package's, slog's)
	// write into the same JSON stream, so no library's line breaks it.
	slog.SetDefault(m.log)
	<-ctx.Done()
	m.log.Info("shutting down", "timeout", cfg.ShutdownTimeout.String())
	closeCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := m.Close(closeCtx); err != nil {
		m.log.Error("shutdown", "err", err)
		return 1
	}
	m.log.Info("stopped")
	return 0
}

// healthcheck asks the daemon listening on addr's port on this host
// whether it is ready.
func healthcheck(ctx context.Context, addr string, stderr io.Writer) int {
	if addr == "" {
		addr = ":8080"
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		fmt.Fprintf(stderr, "healthcheck: TOKENPOOL_ADDR %q: %v\n", addr, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort("127.0.0.1", port)+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "healthcheck: %v\n", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "healthcheck: /readyz answered %d\n", resp.StatusCode)
		return 1
	}
	return 0
}

// Main is one running daemon: Open wires and starts everything, Close
// stops it gracefully. Tests drive it on 127.0.0.1:0.
type Main struct {
	Config Config
	Stdout io.Writer // the demo's curl line
	Stderr io.Writer // JSON logs
	// TracerProvider receives the spans; nil: one exporting OTLP when
	// the OTEL_* variables ask for it (Config.Tracing), else none.
	TracerProvider trace.TracerProvider

	tracer     trace.TracerProvider     // nil: tracing is off
	ownTracer  *sdktrace.TracerProvider // built here, so flushed and shut down by Close
	log        *slog.Logger
	logs       *logBuffer // batches the log lines
	rdb        redis.UniversalClient
	embedded   *embeddedRedis
	demo       *demo
	pool       *pool.Pool
	api        *api.Server
	guards     map[string]*upstream.Guard // by provider
	shared     *upstream.Shared           // the fleet's provider state in Redis
	replica    string                     // this replica's id
	sealed     bool                       // entries are sealed (TOKENPOOL_SEAL_KEYS)
	httpClient *http.Client               // the providers' calls

	upstreamMetrics *upstream.Metrics
	ln              net.Listener
	http            *http.Server
	reg             *prometheus.Registry
	metrics         *http.Server // nil: TOKENPOOL_METRICS_ADDR is off
	metricsLn       net.Listener
	metricsDone     chan struct{} // closed when the metrics server has stopped
	debug           *http.Server
	debugLn         net.Listener
	served          chan error
}

// Open starts the daemon and returns once it listens.
func (m *Main) Open(ctx context.Context) error {
	m.openLogs()
	if err := m.openTracing(ctx); err != nil {
		return err
	}
	if m.Config.Demo {
		d, err := startDemo(&m.Config)
		if err != nil {
			return err
		}
		m.demo = d
	}
	if err := m.openRedis(ctx); err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	m.reg = reg
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.upstreamMetrics = upstream.NewMetrics(reg)
	m.replica = pool.NewReplicaID()
	m.shared = upstream.NewShared(upstream.SharedConfig{Redis: m.rdb, Quota: m.Config.UpstreamRate, Replica: m.replica})
	if err := m.openPool(reg); err != nil {
		return err
	}
	if err := m.openAPI(reg); err != nil {
		return err
	}
	if err := m.listen(); err != nil {
		return err
	}
	m.logListening()
	if m.demo != nil {
		m.demo.announce(m)
	}
	return nil
}

// openLogs starts the JSON log on Stderr.
func (m *Main) openLogs() {
	if m.Stdout == nil {
		m.Stdout = io.Discard
	}
	if m.Stderr == nil {
		m.Stderr = io.Discard
	}
	m.logs = newLogBuffer(m.Stderr)
	m.log = slog.New(slog.NewJSONHandler(m.logs, &slog.HandlerOptions{Level: m.Config.LogLevel}))
}

// openTracing takes TracerProvider, or builds one exporting OTLP when
// the OTEL_* variables ask for it.
func (m *Main) openTracing(ctx context.Context) error {
	m.tracer = m.TracerProvider
	if m.tracer == nil && m.Config.Tracing {
		tp, err := newTracerProvider(ctx)
		if err != nil {
			return err
		}
		m.tracer, m.ownTracer = tp, tp
		// OpenTelemetry reports export failures through a process-wide
		// handler: into this daemon's JSON stream.
		log := m.log
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			log.Warn("tracing: "+err.Error(), "component", "otel")
		}))
	}
	return nil
}

// openPool builds every profile's minter and the pool (not yet
// refilling: listen starts it).
func (m *Main) openPool(reg *prometheus.Registry) error {
	cfg := &m.Config
	var sealer *pool.Sealer
	if len(cfg.SealKeys) > 0 {
		var err error
		if sealer, err = pool.NewSealer(cfg.SealKeys); err != nil {
			return err
		}
	} else if m.embedded == nil {
		m.log.Warn("TOKENPOOL_SEAL_KEYS is unset: credentials are stored in Redis in plain text; anyone who can read this Redis can use them")
	}
	m.sealed = sealer != nil
	var profiles []pool.Profile
	for _, p := range cfg.Profiles.List {
		minter, err := m.minter(p)
		if err != nil {
			return fmt.Errorf("profile %q: %w", p.Name, err)
		}
		pp := p.Profile
		pp.Minter, pp.ProviderName = minter, p.Provider
		profiles = append(profiles, pp)
	}
	var err error
	m.pool, err = pool.New(pool.Config{
		Store: pool.NewStore(m.rdb, pool.StoreConfig{
			Sealer: sealer, WaitReplicas: cfg.RedisWaitReplicas, WaitTimeout: cfg.RedisWaitTimeout, Ledger: cfg.Ledger,
		}),
		Profiles:          profiles,
		RefillConcurrency: cfg.RefillConcurrency,
		MintTimeout:       cfg.MintTimeout,
		ReplicaID:         m.replica,
		Metrics:           pool.NewMetrics(reg),
		TracerProvider:    m.tracer,
		Logger:            m.log,
	})
	if err != nil {
		return err
	}
	reg.MustRegister(m.pool.Collector())
	return nil
}

// realtime resolves the Navai routes' requests: the realtime profile's
// options, the pooled OpenAI sessions and the restricted ones. nil when
// there is no realtime profile.
func (m *Main) realtime() (api.Realtime, error) {
	ps := m.Config.Profiles
	rp, ok := ps.Get(ps.Realtime)
	if !ok {
		return nil, nil
	}
	pooled := map[string]upstream.RealtimeSession{}
	var restricted []upstream.Restricted
	for _, p := range ps.List {
		if p.Provider != "openai" {
			continue
		}
		session := p.Navai.Session(mint.NavaiRequest{})
		if p.Target > 0 {
			pooled[p.Name] = session
		}
		if p.Access != nil {
			// What the profile resolves to, defaults included: a profile
			// that names no model still serves Navai's default.
			restricted = append(restricted, upstream.Restricted{Profile: p.Name, Model: session.Model, Voice: session.Voice})
		}
	}
	rt, err := upstream.NewRealtime(upstream.RealtimeConfig{
		Profile: rp.Name, Options: rp.Navai, Pooled: pooled,
		Guard: m.guard("openai"), BaseURL: rp.OpenAIBaseURL,
		OnDemand: rp.OnDemand, Restricted: restricted, Client: m.providerClient("openai"),
	})
	if err != nil {
		return nil, fmt.Errorf("profile %q: %w", rp.Name, err)
	}
	return rt, nil
}

// openAPI builds the HTTP API over the pool.
func (m *Main) openAPI(reg *prometheus.Registry) error {
	cfg := &m.Config
	ps := cfg.Profiles
	realtime, err := m.realtime()
	if err != nil {
		return err
	}
	warnQuotaReuse(m.log, ps)
	apiProfiles := map[string]api.ProfileInfo{}
	for _, p := range ps.List {
		apiProfiles[p.Name] = p.ProfileInfo
	}
	lim := limiter.New(m.rdb, "")
	var books api.Ledger // nil: the ledger is off
	if cfg.Ledger.On() {
		books = ledgerAdmin{Reader: &ledger.Reader{RDB: m.rdb, Streams: m.pool.IssuedStreams()}, key: cfg.Ledger.Key}
	}
	ac := api.Config{
		Pool: m.pool, Limiter: lim, QuotaAdmin: lim, Ledger: books,
		Profiles: apiProfiles, DefaultProfile: ps.Default, Quotas: ps.Quotas, TenantClaim: cfg.LedgerTenantClaim,
		JWTSecret: cfg.JWTSecret, JWTIssuer: cfg.JWTIssuer, JWTAudiences: cfg.JWTAudiences, JWTCookie: cfg.JWTCookie,
		JWTCacheSize:           cfg.JWTCacheSize,
		JWTAssumeEmailVerified: cfg.JWTAssumeEmailVerified,
		Issuers:                cfg.Issuers,
		APIKeys:                cfg.APIKeys, PerUser: cfg.PerUser, PerIP: cfg.PerIP,
		IPv6Prefix: cfg.IPv6Prefix, PerIPv6Net: cfg.PerIPv6Net, IPv6NetPrefix: cfg.IPv6NetPrefix,
		TrustedProxies: cfg.TrustedProxies, CORSOrigins: cfg.CORSOrigins,
		RequestTimeout: cfg.RequestTimeout, Logger: m.log,
		Admin: m.pool, AdminKeys: cfg.AdminKeys, Providers: providerAdmin{shared: m.shared, guards: m.guards},
		Breaker: func(profile string) string {
			if p, ok := ps.Get(profile); ok && m.guards[p.Provider] != nil {
				return m.guards[p.Provider].State()
			}
			return "closed"
		},
		Metrics:        api.NewMetrics(reg),
		TracerProvider: m.tracer, Realtime: realtime,
	}
	m.api, err = api.New(ac)
	return err
}

// listen opens the listener (and pprof when asked), then starts the
// identity providers' key fetches, the refiller and the HTTP server.
func (m *Main) listen() error {
	cfg := &m.Config
	// The side listeners first: one that can't open leaves the API's
	// port unbound.
	if cfg.MetricsAddr != "" {
		if err := m.openMetrics(cfg.MetricsAddr); err != nil {
			return err
		}
	}
	if cfg.DebugAddr != "" {
		if err := m.openDebug(cfg.DebugAddr); err != nil {
			return err
		}
	}
	var err error
	m.ln, err = net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s (TOKENPOOL_ADDR): %w", cfg.Addr, err)
	}
	m.http = &http.Server{
		Handler:           m.api.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      cfg.RequestTimeout + 5*time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(m.log.Handler(), slog.LevelWarn),
	}
	m.api.Open() // identity providers' keys; /readyz waits for them
	m.pool.Open()
	m.served = make(chan error, 1)
	go func() { m.served <- m.http.Serve(m.ln) }()
	return nil
}

// logListening logs the daemon's address and what it serves.
func (m *Main) logListening() {
	cfg := &m.Config
	ps := cfg.Profiles
	names := make([]string, 0, len(ps.List))
	for _, p := range ps.List {
		names = append(names, fmt.Sprintf("%s(%s, target %d)", p.Name, p.Provider, p.Target))
	}
	m.log.Info("listening", "addr", m.Addr(), "metrics_addr", m.MetricsAddr(), "replica", m.replica, "redis", m.redisKind(),
		"profiles", names, "default_profile", ps.Default, "realtime_profile", ps.Realtime,
		"sealed", m.sealed, "upstream_rate", rateString(cfg.UpstreamRate), "demo", cfg.Demo, "tracing", m.tracer != nil)
}

// guard returns the provider's guard: one breaker per provider per
// replica, shared by all its profiles. The bad-key line names every
// variable the provider's keys come from.
func (m *Main) guard(provider string) *upstream.Guard {
	if g, ok := m.guards[provider]; ok {
		return g
	}
	var envs []string
	for _, p := range m.Config.Profiles.List {
		if p.Provider == provider && p.KeyEnv != "" && !slices.Contains(envs, p.KeyEnv) {
			envs = append(envs, p.KeyEnv)
		}
	}
	g := upstream.NewGuard(upstream.GuardConfig{
		Provider: provider, KeyEnv: strings.Join(envs, " or "), OpenFor: m.Config.BreakerCooldown,
		Logger: m.log, Shared: m.shared, Metrics: m.upstreamMetrics,
	})
	if m.guards == nil {
		m.guards = map[string]*upstream.Guard{}
	}
	m.guards[provider] = g
	return g
}

// minter builds a profile's minter behind its provider's guard.
func (m *Main) minter(p Profile) (mint.Minter, error) {
	switch p.Provider {
	case "orga":
		oc := p.Orga
		oc.Client = m.providerClient("orga")
		o, err := upstream.NewOrga(oc)
		if err != nil {
			return nil, err
		}
		return m.guard("orga").Wrap(o), nil
	case "openai":
		if p.Navai.APIKey == "" {
			return upstream.MissingKey, nil
		}
		o, err := upstream.NewOpenAI(upstream.OpenAIConfig{
			APIKey: p.Navai.APIKey, BaseURL: p.OpenAIBaseURL, Session: p.Navai.Session(mint.NavaiRequest{}),
			Client: m.providerClient("openai"),
		})
		if err != nil {
			return nil, err
		}
		return m.guard("openai").Wrap(o), nil
	}
	if p.Endpoint.URL == "" {
		return nil, fmt.Errorf("unknown provider %q", p.Provider)
	}
	e, err := upstream.NewEndpointMinter(p.Endpoint, p.Key, m.providerClient(p.Provider))
	if err != nil {
		return nil, err
	}
	return m.guard(p.Provider).Wrap(e), nil
}

// providerClient is the HTTP client of a provider's calls: one connection
// pool for every provider, each call a span when tracing is on.
func (m *Main) providerClient(provider string) *http.Client {
	if m.httpClient == nil {
		m.httpClient = upstream.NewHTTPClient()
	}
	return upstream.TraceCalls(m.httpClient, m.tracer, provider)
}

// openMetrics serves GET /metrics on addr (TOKENPOOL_METRICS_ADDR), a
// listener of its own: the API's port serves none, so a public load
// balancer never exposes them. A scrape reads the pool's figures from
// Redis at most once per pool.ScrapeCacheTTL, whatever the scrape rate.
func (m *Main) openMetrics(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s (TOKENPOOL_METRICS_ADDR): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg, Timeout: 10 * time.Second}))
	m.metrics, m.metricsLn = &http.Server{
		Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 15 * time.Second,
		ErrorLog: slog.NewLogLogger(m.log.Handler(), slog.LevelWarn),
	}, ln
	m.metricsDone = make(chan struct{})
	go func() {
		defer close(m.metricsDone)
		_ = m.metrics.Serve(ln)
	}()
	return nil
}

// MetricsAddr is the address metrics are served on; "" when off.
func (m *Main) MetricsAddr() string {
	if m.metricsLn == nil {
		return ""
	}
	return m.metricsLn.Addr().String()
}

// openDebug serves net/http/pprof on addr (TOKENPOOL_DEBUG_ADDR), for
// profiling; keep it on localhost.
func (m *Main) openDebug(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s (TOKENPOOL_DEBUG_ADDR): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	m.debug, m.debugLn = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln
	go func() { _ = m.debug.Serve(ln) }()
	m.log.Warn("profiling endpoints are on (TOKENPOOL_DEBUG_ADDR)", "addr", ln.Addr().String())
	return nil
}

// DebugAddr is the address pprof listens on; "" when off.
func (m *Main) DebugAddr() string {
	if m.debugLn == nil {
		return ""
	}
	return m.debugLn.Addr().String()
}

// Addr is the address the daemon listens on.
func (m *Main) Addr() string {
	if m.ln == nil {
		return ""
	}
	return m.ln.Addr().String()
}

// Close stops taking requests and stops the refiller, lets requests and
// mints in flight finish together (mints are pooled or their reservations
// released), then closes Redis. It returns every error.
func (m *Main) Close(ctx context.Context) error {
	var errs []error
	// The refiller's mints in flight drain while the requests do, each
	// with the whole of ctx: a slow request must not use up the time a
	// mint needs to be pooled.
	drained := make(chan error, 1)
	if m.pool != nil {
		go func() { drained <- m.pool.Drain(ctx) }()
	}
	if m.http != nil {
		if err := m.http.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http shutdown: %w", err))
		}
		if m.served != nil {
			if err := <-m.served; err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs = append(errs, fmt.Errorf("http serve: %w", err))
			}
		}
		m.http = nil
	}
	if m.ln != nil && m.served == nil { // opened, never served: Open failed after it
		_ = m.ln.Close()
	}
	if m.metrics != nil {
		_ = m.metrics.Close()
		<-m.metricsDone
	}
	if m.debug != nil {
		_ = m.debug.Close()
	}
	if m.api != nil {
		m.api.Close()
	}
	if m.pool != nil {
		if err := <-drained; err != nil {
			errs = append(errs, fmt.Errorf("pool drain: %w", err))
		}
		if err := m.pool.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("pool close: %w", err))
		}
	}
	if m.rdb != nil {
		_ = m.rdb.Close()
	}
	if m.embedded != nil {
		m.embedded.Close()
	}
	if m.demo != nil {
		m.demo.Close()
	}
	if m.ownTracer != nil {
		if err := m.ownTracer.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("tracing: flushing spans: %w", err))
		}
	}
	if m.logs != nil {
		m.logs.Stop() // flushed; later lines write through
	}
	return errors.Join(errs...)
}
