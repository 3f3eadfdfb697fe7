package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tokenpool/tokenpool/api"
	"github.com/tokenpool/tokenpool/ledger"
	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/pool"
	"github.com/tokenpool/tokenpool/upstream"
)

// Config is the daemon's configuration, read from the environment
// (DESIGN.md "Configuration"). Flags override a few local switches.
type Config struct {
	Addr string // TOKENPOOL_ADDR

	// One Redis topology at most; none: embedded Redis.
	RedisURL            string        // REDIS_URL
	RedisClusterAddrs   []string      // REDIS_CLUSTER_ADDRS
	RedisSentinelAddrs  []string      // REDIS_SENTINEL_ADDRS
	RedisSentinelMaster string        // REDIS_SENTINEL_MASTER
	RedisUsername       string        // REDIS_USERNAME, for Cluster and Sentinel
	RedisPassword       string        // REDIS_PASSWORD, for Cluster and Sentinel
	RedisSentinelPass   string        // REDIS_SENTINEL_PASSWORD
	RedisTLS            bool          // REDIS_TLS, for Cluster and Sentinel
	RedisWaitReplicas   int           // TOKENPOOL_REDIS_WAIT_REPLICAS
	RedisWaitTimeout    time.Duration // TOKENPOOL_REDIS_WAIT_TIMEOUT

	SealKeys [][]byte // TOKENPOOL_SEAL_KEYS
	// Ledger is the issuance ledger: TOKENPOOL_LEDGER_KEY (on when set),
	// TOKENPOOL_LEDGER_RETENTION, TOKENPOOL_LEDGER_MAX_RECORDS.
	Ledger ledger.Config
	// LedgerTenantClaim is TOKENPOOL_LEDGER_TENANT_CLAIM: the claim a
	// record names as the caller's tenant (default: a tenant quota's).
	LedgerTenantClaim string
	UpstreamRate      limiter.Limit // TOKENPOOL_UPSTREAM_RATE; zero: unlimited
	MintTimeout       time.Duration // TOKENPOOL_MINT_TIMEOUT

	OrgaAPIKey    string // ORGA_API_KEY
	OrgaBaseURL   string // ORGA_BASE_URL
	OpenAIBaseURL string // OPENAI_BASE_URL

	// ConfigFile is TOKENPOOL_CONFIG, a YAML file of named profiles.
	ConfigFile string
	// Profiles are the profiles from ConfigFile, else from the environment.
	Profiles Profiles

	JWTSecret    []byte   // TOKENPOOL_JWT_SECRET
	JWTIssuer    string   // TOKENPOOL_JWT_ISSUER
	JWTAudiences []string // TOKENPOOL_JWT_AUDIENCE, comma-separated
	JWTCookie    string   // TOKENPOOL_JWT_COOKIE
	JWTCacheSize int      // TOKENPOOL_JWT_CACHE_SIZE: verified caller JWTs kept; 0: none
	// JWTAssumeEmailVerified is TOKENPOOL_JWT_ASSUME_EMAIL_VERIFIED: HS256
	// tokens and the environment's issuer's count an email as verified
	// without an email_verified claim.
	JWTAssumeEmailVerified bool
	// Issuers are the identity providers whose JWTs are verified against
	// their JWKS: one from TOKENPOOL_JWKS_URL and its variables, and those
	// of the TOKENPOOL_CONFIG file's auth.issuers.
	Issuers   []api.Issuer
	APIKeys   []api.APIKey
	AdminKeys []api.APIKey // TOKENPOOL_ADMIN_KEYS

	PerUser limiter.Limit // TOKENPOOL_RATE_PER_USER
	PerIP   limiter.Limit // TOKENPOOL_RATE_PER_IP
	// IPv6Prefix is TOKENPOOL_IPV6_PREFIX: an IPv6 client's per-IP limit
	// is its /IPv6Prefix.
	IPv6Prefix int
	// PerIPv6Net is TOKENPOOL_RATE_PER_IPV6_AGGREGATE (default 10 times
	// TOKENPOOL_RATE_PER_IP; "off": none), shared by every IPv6 client of
	// one /IPv6NetPrefix (TOKENPOOL_IPV6_AGGREGATE_PREFIX).
	PerIPv6Net    limiter.Limit
	IPv6NetPrefix int

	PoolTarget        int           // TOKENPOOL_POOL_TARGET: the floor; 0: no pool
	PoolMax           int           // TOKENPOOL_POOL_MAX: the ceiling demand may raise the target to
	MinRemaining      time.Duration // TOKENPOOL_MIN_REMAINING
	RefillConcurrency int           // TOKENPOOL_REFILL_CONCURRENCY
	RequestTimeout    time.Duration // TOKENPOOL_REQUEST_TIMEOUT
	ShutdownTimeout   time.Duration // TOKENPOOL_SHUTDOWN_TIMEOUT
	BreakerCooldown   time.Duration // TOKENPOOL_BREAKER_COOLDOWN

	TrustedProxies []string // TOKENPOOL_TRUSTED_PROXIES
	CORSOrigins    []string // TOKENPOOL_CORS_ORIGINS

	// Tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT (or its _TRACES_
	// form) or OTEL_TRACES_EXPORTER=otlp is set; the SDK reads the other
	// OTEL_* variables itself.
	Tracing bool

	LogLevel slog.Level // TOKENPOOL_LOG_LEVEL
	// MetricsAddr is TOKENPOOL_METRICS_ADDR: Prometheus metrics on a
	// listener of their own, never the API's port; "" (off) to serve none.
	MetricsAddr string
	DebugAddr   string // TOKENPOOL_DEBUG_ADDR: net/http/pprof, off when empty; loopback unless TOKENPOOL_DEBUG_PUBLIC

	Demo bool // -demo
}

// minJWTSecret is the least HS256 key length (RFC 7518 §3.2: a key of the
// hash's size).
const minJWTSecret = 32

// LoadConfig reads the configuration from getenv. For demo it fills what
// the demo supplies itself (provider, JWT secret). Every invalid value is
// reported, each naming its variable.
func LoadConfig(getenv func(string) string, demo bool) (Config, error) {
	e := envReader{get: getenv}
	cfg := Config{
		Demo:                   demo,
		Addr:                   e.str("TOKENPOOL_ADDR", DefaultAddr),
		RedisURL:               e.redisURL("REDIS_URL"),
		RedisClusterAddrs:      e.addrs("REDIS_CLUSTER_ADDRS"),
		RedisSentinelAddrs:     e.addrs("REDIS_SENTINEL_ADDRS"),
		RedisSentinelMaster:    e.str("REDIS_SENTINEL_MASTER", ""),
		RedisUsername:          e.str("REDIS_USERNAME", ""),
		RedisPassword:          e.str("REDIS_PASSWORD", ""),
		RedisSentinelPass:      e.str("REDIS_SENTINEL_PASSWORD", ""),
		RedisTLS:               e.boolean("REDIS_TLS"),
		RedisWaitReplicas:      e.intIn("TOKENPOOL_REDIS_WAIT_REPLICAS", 0, 0, 16),
		RedisWaitTimeout:       e.duration("TOKENPOOL_REDIS_WAIT_TIMEOUT", pool.DefaultWaitTimeout),
		SealKeys:               e.sealKeys("TOKENPOOL_SEAL_KEYS"),
		UpstreamRate:           e.optionalLimit("TOKENPOOL_UPSTREAM_RATE"),
		MintTimeout:            e.duration("TOKENPOOL_MINT_TIMEOUT", pool.DefaultMintTimeout),
		OrgaAPIKey:             e.str("ORGA_API_KEY", ""),
		OrgaBaseURL:            e.baseURL("ORGA_BASE_URL", upstream.DefaultOrgaBaseURL),
		OpenAIBaseURL:          e.baseURL("OPENAI_BASE_URL", upstream.DefaultOpenAIBaseURL),
		ConfigFile:             e.str("TOKENPOOL_CONFIG", ""),
		JWTSecret:              []byte(e.str("TOKENPOOL_JWT_SECRET", "")),
		JWTIssuer:              e.str("TOKENPOOL_JWT_ISSUER", ""),
		JWTAudiences:           e.list("TOKENPOOL_JWT_AUDIENCE"),
		JWTCookie:              e.str("TOKENPOOL_JWT_COOKIE", ""),
		JWTCacheSize:           e.intIn("TOKENPOOL_JWT_CACHE_SIZE", api.DefaultJWTCacheSize, 0, 1_000_000),
		JWTAssumeEmailVerified: e.boolean("TOKENPOOL_JWT_ASSUME_EMAIL_VERIFIED"),
		APIKeys:                e.apiKeys("TOKENPOOL_API_KEYS"),
		AdminKeys:              e.apiKeys("TOKENPOOL_ADMIN_KEYS"),
		PerUser:                e.limit("TOKENPOOL_RATE_PER_USER", api.DefaultPerUser),
		PerIP:                  e.limit("TOKENPOOL_RATE_PER_IP", api.DefaultPerIP),
		IPv6Prefix:             e.intIn("TOKENPOOL_IPV6_PREFIX", api.DefaultIPv6Prefix, 1, 128),
		IPv6NetPrefix:          e.intIn("TOKENPOOL_IPV6_AGGREGATE_PREFIX", api.DefaultIPv6NetPrefix, 1, 128),
		PoolTarget:             e.intIn("TOKENPOOL_POOL_TARGET", pool.DefaultTarget, 0, 100000),
		PoolMax:                e.intIn("TOKENPOOL_POOL_MAX", pool.DefaultMaxTarget, 1, 100000),
		MinRemaining:           e.duration("TOKENPOOL_MIN_REMAINING", pool.DefaultMinRemaining),
		RefillConcurrency:      e.intIn("TOKENPOOL_REFILL_CONCURRENCY", pool.DefaultRefillConcurrency, 1, 1024),
		RequestTimeout:         e.duration("TOKENPOOL_REQUEST_TIMEOUT", api.DefaultRequestTimeout),
		ShutdownTimeout:        e.duration("TOKENPOOL_SHUTDOWN_TIMEOUT", 20*time.Second),
		BreakerCooldown:        e.duration("TOKENPOOL_BREAKER_COOLDOWN", upstream.DefaultOpenFor),
		TrustedProxies:         e.cidrs("TOKENPOOL_TRUSTED_PROXIES"),
		CORSOrigins:            e.origins("TOKENPOOL_CORS_ORIGINS"),
		LogLevel:               e.level("TOKENPOOL_LOG_LEVEL"),
		MetricsAddr:            e.metricsAddr("TOKENPOOL_METRICS_ADDR"),
		DebugAddr:              e.debugAddr("TOKENPOOL_DEBUG_ADDR", "TOKENPOOL_DEBUG_PUBLIC"),
		Tracing:                e.tracing(),
		Ledger:                 e.ledger(),
		LedgerTenantClaim:      e.str("TOKENPOOL_LEDGER_TENANT_CLAIM", ""),
	}
	cfg.PerIPv6Net = e.ipv6Aggregate("TOKENPOOL_RATE_PER_IPV6_AGGREGATE", cfg.PerIP)
	if cfg.IPv6NetPrefix > cfg.IPv6Prefix {
		e.fail("TOKENPOOL_IPV6_AGGREGATE_PREFIX", fmt.Sprintf("must be at most TOKENPOOL_IPV6_PREFIX (%d): the aggregate spans many clients' prefixes, got %d", cfg.IPv6Prefix, cfg.IPv6NetPrefix))
	}
	if is, ok := e.envIssuer(); ok {
		cfg.Issuers = append(cfg.Issuers, is)
	}
	if demo && getenv("TOKENPOOL_ADDR") == "" {
		cfg.Addr = "127.0.0.1:8080"
	}
	if !demo {
		switch {
		case cfg.ConfigFile != "":
			ps, issuers, err := profilesFromFile(cfg.ConfigFile, &cfg, getenv)
			if err != nil {
				e.fail("TOKENPOOL_CONFIG", fmt.Sprintf("(%s) is invalid:\n%v", cfg.ConfigFile, err))
			}
			cfg.Profiles = ps
			cfg.Issuers = append(cfg.Issuers, issuers...)
		case cfg.OrgaAPIKey == "" && !openAIFromEnv(getenv):
			e.fail("ORGA_API_KEY", "(or OPENAI_API_KEY, or a TOKENPOOL_CONFIG file) is required: the provider key tokenpool exchanges for session credentials")
		default:
			cfg.Profiles = profilesFromEnv(&cfg, &e)
		}
		if len(cfg.JWTSecret) == 0 && len(cfg.APIKeys) == 0 && len(cfg.Issuers) == 0 {
			e.fail("TOKENPOOL_JWT_SECRET", "(or TOKENPOOL_JWKS_URL, or TOKENPOOL_API_KEYS) is required, else no caller can authenticate")
		}
	}
	topologies := 0
	for _, set := range []bool{cfg.RedisURL != "", len(cfg.RedisClusterAddrs) > 0, len(cfg.RedisSentinelAddrs) > 0} {
		if set {
			topologies++
		}
	}
	if topologies > 1 {
		e.fail("REDIS_URL", "REDIS_CLUSTER_ADDRS and REDIS_SENTINEL_ADDRS are exclusive: set one")
	}
	if (len(cfg.RedisSentinelAddrs) > 0) != (cfg.RedisSentinelMaster != "") {
		e.fail("REDIS_SENTINEL_MASTER", "and REDIS_SENTINEL_ADDRS go together: set both or neither")
	}
	if n := len(cfg.JWTSecret); n > 0 && n < minJWTSecret {
		e.fail("TOKENPOOL_JWT_SECRET", fmt.Sprintf("must be at least %d bytes, got %d", minJWTSecret, n))
	}
	return cfg, errors.Join(e.errs...)
}

// envReader reads typed variables and collects one error per bad one.
type envReader struct {
	get  func(string) string
	errs []error
}

func (e *envReader) fail(name, msg string) {
	e.errs = append(e.errs, fmt.Errorf("%s %s", name, msg))
}

func (e *envReader) str(name, def string) string {
	if v := strings.TrimSpace(e.get(name)); v != "" {
		return v
	}
	return def
}

func (e *envReader) intIn(name string, def, lo, hi int) int {
	v := e.str(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		e.fail(name, fmt.Sprintf("must be a whole number from %d to %d, got %q", lo, hi, v))
		return def
	}
	return n
}

func (e *envReader) duration(name string, def time.Duration) time.Duration {
	v := e.str(name, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		e.fail(name, fmt.Sprintf("must be a positive duration such as 30s or 2m, got %q", v))
		return def
	}
	return d
}

func (e *envReader) limit(name string, def limiter.Limit) limiter.Limit {
	v := e.str(name, "")
	if v == "" {
		return def
	}
	l, err := limiter.Parse(v)
	if err != nil {
		e.fail(name, fmt.Sprintf("must be a rate such as 10/m or 5/s: %v", err))
	}
	return l
}

// ipv6Aggregate reads the limit every IPv6 client of one aggregate
// prefix shares: by default ten times the per-IP limit, "off" for none.
func (e *envReader) ipv6Aggregate(name string, perIP limiter.Limit) limiter.Limit {
	if strings.EqualFold(e.str(name, ""), "off") {
		return limiter.Limit{}
	}
	return e.limit(name, limiter.Limit{Rate: 10 * perIP.Rate, Burst: 10 * perIP.Burst, Period: perIP.Period})
}

// optionalLimit reads a limit that is off when unset.
func (e *envReader) optionalLimit(name string) limiter.Limit {
	return e.limit(name, limiter.Limit{})
}

// tracing reads whether traces are exported, from the standard OTEL_*
// variables: OTLP over HTTP only, so a gRPC protocol or another exporter
// is refused rather than silently sent nowhere.
func (e *envReader) tracing() bool {
	exporter := e.str("OTEL_TRACES_EXPORTER", "")
	switch exporter {
	case "", "otlp", "none":
	default:
		e.fail("OTEL_TRACES_EXPORTER", fmt.Sprintf("must be otlp or none (OTLP over HTTP), got %q", exporter))
	}
	for _, name := range []string{"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"} {
		if v := e.str(name, "http/protobuf"); v != "http/protobuf" {
			e.fail(name, fmt.Sprintf("must be http/protobuf (tokenpoold exports OTLP over HTTP), got %q", v))
		}
	}
	if exporter == "none" || strings.EqualFold(e.str("OTEL_SDK_DISABLED", ""), "true") {
		return false
	}
	return exporter == "otlp" || e.str("OTEL_EXPORTER_OTLP_ENDPOINT", "") != "" || e.str("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "") != ""
}

func (e *envReader) boolean(name string) bool {
	v := e.str(name, "false")
	b, err := strconv.ParseBool(v)
	if err != nil {
		e.fail(name, fmt.Sprintf("must be true or false, got %q", v))
	}
	return b
}

// addrs reads a comma list of host:port.
func (e *envReader) addrs(name string) []string {
	items := e.list(name)
	for _, item := range items {
		if _, port, err := net.SplitHostPort(item); err != nil || port == "" {
			e.fail(name, fmt.Sprintf("must list host:port addresses, got %q", item))
		}
	}
	return items
}

func (e *envReader) sealKeys(name string) [][]byte {
	keys, err := pool.ParseSealKeys(e.str(name, ""))
	if err != nil {
		// Never echo the value: it is a key.
		e.fail(name, fmt.Sprintf("must be comma-separated base64 AES-256 keys: %v", err))
	}
	return keys
}

func (e *envReader) redisURL(name string) string {
	v := e.str(name, "")
	if v == "" {
		return ""
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
		e.fail(name, "must be a redis:// or rediss:// URL with a host")
	}
	return v
}

func (e *envReader) baseURL(name, def string) string {
	v := e.str(name, def)
	if upstream.CheckBaseURL(v) != nil {
		e.fail(name, "must be an http:// or https:// URL with a host")
	}
	return v
}

func (e *envReader) apiKeys(name string) []api.APIKey {
	keys, err := api.ParseAPIKeys(e.str(name, ""))
	if err != nil {
		e.fail(name, fmt.Sprintf("must be name:sha256hex,…: %v", err))
	}
	return keys
}

func (e *envReader) list(name string) []string {
	var out []string
	for _, item := range strings.Split(e.str(name, ""), ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

func (e *envReader) cidrs(name string) []string {
	items := e.list(name)
	for _, item := range items {
		if net.ParseIP(item) == nil {
			if _, _, err := net.ParseCIDR(item); err != nil {
				e.fail(name, fmt.Sprintf("must list IP addresses or CIDRs, got %q", item))
			}
		}
	}
	return items
}

func (e *envReader) origins(name string) []string {
	items := e.list(name)
	for _, item := range items {
		u, err := url.Parse(item)
		if item == "*" {
			e.fail(name, "must list origins; * is not allowed since requests carry credentials")
		} else if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			e.fail(name, fmt.Sprintf("must list origins such as https://app.example.com, got %q", item))
		}
	}
	return items
}

// envIssuer reads the identity provider of the environment:
// TOKENPOOL_JWKS_URL with TOKENPOOL_JWT_ISSUER (its iss) and
// TOKENPOOL_JWT_AUDIENCE, TOKENPOOL_JWT_ALGS, TOKENPOOL_JWT_USER_CLAIM,
// TOKENPOOL_JWT_AZP, TOKENPOOL_JWKS_REFRESH, TOKENPOOL_JWKS_MIN_REFETCH.
// ok is false when TOKENPOOL_JWKS_URL is unset.
func (e *envReader) envIssuer() (api.Issuer, bool) {
	only := []string{"TOKENPOOL_JWT_ALGS", "TOKENPOOL_JWT_USER_CLAIM", "TOKENPOOL_JWT_AZP", "TOKENPOOL_JWKS_REFRESH", "TOKENPOOL_JWKS_MIN_REFETCH"}
	if e.str("TOKENPOOL_JWKS_URL", "") == "" {
		for _, name := range only {
			if e.str(name, "") != "" {
				e.fail(name, "applies to the JWKS issuer only: set TOKENPOOL_JWKS_URL too")
			}
		}
		return api.Issuer{}, false
	}
	is := api.Issuer{
		URL:               e.str("TOKENPOOL_JWT_ISSUER", ""),
		JWKSURL:           e.jwksURL("TOKENPOOL_JWKS_URL", e.str("TOKENPOOL_JWKS_URL", "")),
		Audiences:         e.list("TOKENPOOL_JWT_AUDIENCE"),
		AuthorizedParties: e.list("TOKENPOOL_JWT_AZP"),
		Algorithms:        e.list("TOKENPOOL_JWT_ALGS"),
		UserClaim:         e.str("TOKENPOOL_JWT_USER_CLAIM", ""),
		Refresh:           e.duration("TOKENPOOL_JWKS_REFRESH", 0),
		MinRefetch:        e.duration("TOKENPOOL_JWKS_MIN_REFETCH", 0),
		// One setting for both: the app's own tokens and its issuer's.
		AssumeEmailVerified: e.boolean("TOKENPOOL_JWT_ASSUME_EMAIL_VERIFIED"),
	}
	if err := is.Validate(); err != nil {
		e.fail("TOKENPOOL_JWKS_URL", "(with TOKENPOOL_JWT_ISSUER, TOKENPOOL_JWT_AUDIENCE or TOKENPOOL_JWT_AZP, TOKENPOOL_JWT_ALGS) is invalid: "+err.Error())
	}
	return is, true
}

// jwksURL checks a JWKS URL: https, or http to this host only, since a
// key fetched over plain HTTP elsewhere could be anyone's.
func (e *envReader) jwksURL(name, v string) string {
	if err := checkJWKSURL(v); err != nil {
		e.fail(name, err.Error())
	}
	return v
}

func checkJWKSURL(v string) error {
	u, err := url.Parse(v)
	if err != nil || u.Host == "" {
		return fmt.Errorf("must be an https:// URL, got %q", v)
	}
	ip := net.ParseIP(u.Hostname())
	if u.Scheme != "https" && !(u.Scheme == "http" && (u.Hostname() == "localhost" || (ip != nil && ip.IsLoopback()))) {
		return fmt.Errorf("must be https:// (http:// only to this host), got %q", v)
	}
	return nil
}

// DefaultAddr is TOKENPOOL_ADDR's default.
const DefaultAddr = ":8080"

// DefaultMetricsAddr is where metrics are served unless
// TOKENPOOL_METRICS_ADDR says otherwise: this host only, since they name
// every profile and its state. A container sets ":9464" for its scraper.
const DefaultMetricsAddr = "127.0.0.1:9464"

// metricsAddr reads the metrics address: host:port or :port (every
// interface, as a container's scraper needs), or "off".
func (e *envReader) metricsAddr(name string) string {
	v := e.str(name, DefaultMetricsAddr)
	if strings.EqualFold(v, "off") {
		return ""
	}
	host, port, err := net.SplitHostPort(v)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
		e.fail(name, fmt.Sprintf("must be host:port, :port or off, got %q", v))
		return ""
	}
	if apiHost, apiPort, err := net.SplitHostPort(e.str("TOKENPOOL_ADDR", DefaultAddr)); err == nil && apiPort == port && port != "0" &&
		(host == apiHost || anyHost(host) || anyHost(apiHost)) {
		e.fail(name, fmt.Sprintf("%q is the API's address (TOKENPOOL_ADDR): metrics need a port of their own", v))
		return ""
	}
	return v
}

// anyHost reports whether a listen address's host means every interface.
func anyHost(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }

// debugAddr reads the pprof address. A bare port (":6060") listens on
// loopback only; another interface must be asked for explicitly with
// public=true, since pprof shows the process's memory and stacks.
func (e *envReader) debugAddr(name, public string) string {
	v := e.str(name, "")
	if v == "" {
		return ""
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		e.fail(name, fmt.Sprintf("must be host:port or :port, got %q", v))
		return ""
	}
	if host == "" {
		return net.JoinHostPort("127.0.0.1", port)
	}
	ip := net.ParseIP(host)
	if host != "localhost" && (ip == nil || !ip.IsLoopback()) && !e.boolean(public) {
		e.fail(name, fmt.Sprintf("%q is not a loopback address: profiling data is for this host only; set %s=true to serve it there anyway", v, public))
	}
	return v
}

// ledger reads the issuance ledger's variables.
func (e *envReader) ledger() ledger.Config {
	c := ledger.Config{Key: []byte(e.str("TOKENPOOL_LEDGER_KEY", ""))}
	if raw := e.get("TOKENPOOL_LEDGER_RETENTION"); raw != "" {
		d, err := api.ParseWindow(raw)
		if err != nil {
			e.fail("TOKENPOOL_LEDGER_RETENTION", "must be a duration such as 168h or 7d")
		}
		c.Retention = d
	}
	c.MaxRecords = e.intIn("TOKENPOOL_LEDGER_MAX_RECORDS", 0, 0, 1_000_000_000)
	if !c.On() {
		return c
	}
	c, err := c.WithDefaults()
	if err != nil {
		e.fail("TOKENPOOL_LEDGER_KEY", strings.TrimPrefix(err.Error(), "ledger: "))
	}
	return c
}

func (e *envReader) level(name string) slog.Level {
	var l slog.Level
	if v := e.str(name, "info"); l.UnmarshalText([]byte(v)) != nil {
		e.fail(name, fmt.Sprintf("must be debug, info, warn or error, got %q", v))
	}
	return l
}
