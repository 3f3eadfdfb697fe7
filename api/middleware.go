package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenpool/tokenpool/limiter"
)

// Keys of values kept on the gin.Context.
const (
	ctxRequestID = "tokenpool.request_id"
	ctxCaller    = "tokenpool.caller"
	ctxErrCode   = "tokenpool.err_code"
)

func requestID(c *gin.Context) string { return c.GetString(ctxRequestID) }

// withRequestID gives every request a fresh id, in X-Request-Id and in
// every log line. An id sent by the caller is not reused: the id keys the
// pool's retry-safe claim, so it must not be chosen by a caller.
func withRequestID(c *gin.Context) {
	id := uuid.NewString()
	c.Set(ctxRequestID, id)
	c.Header("X-Request-Id", id)
	if span := trace.SpanFromContext(c.Request.Context()); span.IsRecording() { // tracing on
		span.SetAttributes(attribute.String("tokenpool.request_id", id))
	}
	c.Next()
}

// accessLog writes one line per request, after it is answered. It logs
// the route template, never the query or any header value.
func (s *Server) accessLog(c *gin.Context) {
	start := time.Now()
	c.Next()
	route := c.FullPath()
	if route == "" {
		route = "unmatched"
	}
	took := time.Since(start)
	s.metrics.request(route, c.Writer.Status(), took)
	attrs := []slog.Attr{
		slog.String("request_id", requestID(c)),
		slog.String("method", c.Request.Method),
		slog.String("route", route),
		slog.Int("status", c.Writer.Status()),
		slog.Float64("duration_ms", float64(took.Microseconds())/1000),
		slog.String("client_ip", c.ClientIP()),
	}
	if who, ok := c.Get(ctxCaller); ok {
		attrs = append(attrs, slog.String("subject", who.(caller).subject))
	}
	if code := c.GetString(ctxErrCode); code != "" {
		attrs = append(attrs, slog.String("error_code", code))
	}
	if src := c.GetString(ctxSource); src != "" {
		attrs = append(attrs, slog.String("source", src))
	}
	if sc := trace.SpanContextFromContext(c.Request.Context()); sc.IsValid() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	s.log.LogAttrs(c.Request.Context(), slog.LevelInfo, "request", attrs...)
}

// recoverPanic turns a panic into a 500 with the stack in the log.
func (s *Server) recoverPanic(c *gin.Context) {
	defer func() {
		if v := recover(); v != nil {
			if err, ok := v.(error); ok && errors.Is(err, http.ErrAbortHandler) {
				panic(v)
			}
			s.log.Error("panic", "request_id", requestID(c), "panic", v, "stack", string(debug.Stack()))
			s.fail(c, errors.New("panic"))
		}
	}()
	c.Next()
}

// withDeadline bounds the rest of the request by the request timeout, so
// a slow provider or Redis answers 503 in time instead of hanging.
func (s *Server) withDeadline(c *gin.Context) {
	defer s.bound(c)()
	c.Next()
}

// bound bounds the rest of c by the request timeout; call the cancel it
// returns once c is answered.
func (s *Server) bound(c *gin.Context) context.CancelFunc {
	ctx, cancel := context.WithTimeout(c.Request.Context(), s.cfg.RequestTimeout)
	c.Request = c.Request.WithContext(ctx)
	return cancel
}

// ctxChecks keeps on the gin.Context the caller's limits, which the
// handler applies together with its take.
const ctxChecks = "tokenpool.checks"

// authenticate requires a caller (JWT or API key); 401 otherwise. It
// prepares the caller's limits (per-IP, then per-user) for the handler,
// which applies them in the same Redis round trip as its take. A request
// that goes no further (a bad credential, a cookie from another site) is
// counted against its address here; an address or user this replica saw
// refused is refused again until its retry time without asking Redis.
func (s *Server) authenticate(c *gin.Context) {
	ips := s.ipChecks(c)
	if s.refusedBefore(c, ips...) {
		return
	}
	who, err := s.auth.authenticate(c.Request)
	if err != nil {
		if !s.applyLimits(c, ips) {
			return
		}
		challenge := `Bearer realm="tokenpool"`
		msg := "authentication required: send Authorization: Bearer <JWT> or X-API-Key"
		if !errors.Is(err, errNoCredentials) {
			challenge += `, error="invalid_token"`
			msg = "invalid or expired credentials"
		}
		he := errorf(http.StatusUnauthorized, codeUnauthenticated, "%s", msg)
		he.header = http.Header{"Www-Authenticate": {challenge}}
		s.fail(c, he)
		return
	}
	if who.viaCookie && !fromAllowedOrigin(c.Request, s.cfg.CORSOrigins) {
		// Refused before the per-user limit: another site can't spend it.
		if s.applyLimits(c, ips) {
			s.fail(c, errorf(http.StatusForbidden, codeForbidden,
				"a cookie is accepted only from the app's origin (TOKENPOOL_CORS_ORIGINS or the same site); send Authorization: Bearer otherwise"))
		}
		return
	}
	user := limiter.Check{Policy: "user", Key: who.subject, Limit: s.cfg.PerUser}
	if s.refusedBefore(c, user) {
		return
	}
	if s.cfg.TenantClaim != "" {
		who.tenant, _ = Quota{By: s.cfg.TenantClaim}.who(who)
	}
	c.Set(ctxCaller, who)
	c.Set(ctxChecks, append(ips, user))
	c.Next()
}

// checkOrigin refuses a browser request whose Origin is neither this
// host's nor one of the CORS origins, as every other refusal is: counted
// against the client's address (429 once over its limit), then 403 with
// the JSON error. A request without Origin (a server, curl) passes.
func (s *Server) checkOrigin(c *gin.Context) {
	o := c.Request.Header.Get("Origin")
	if o == "" || o == "http://"+c.Request.Host || o == "https://"+c.Request.Host || s.originListed(o) {
		c.Next()
		return
	}
	defer s.bound(c)()
	ips := s.ipChecks(c)
	if !s.refusedBefore(c, ips...) && s.applyLimits(c, ips) {
		s.fail(c, errorf(http.StatusForbidden, codeForbidden, "this origin may not call the API; the server lists the origins it accepts (TOKENPOOL_CORS_ORIGINS)"))
	}
}

// originListed reports whether o is one of the CORS origins.
func (s *Server) originListed(o string) bool { return listedOrigin(s.cfg.CORSOrigins, o) }

// limitIP applies the per-IP limit alone (the admin routes).
func (s *Server) limitIP(c *gin.Context) {
	ips := s.ipChecks(c)
	if !s.refusedBefore(c, ips...) && s.applyLimits(c, ips) {
		c.Next()
	}
}

// ipChecks are the per-IP limits on the client address Gin derives from
// trusted proxies only: the address's own (for IPv6, its IPv6Prefix),
// then for IPv6 the aggregate of its IPv6NetPrefix, when set.
func (s *Server) ipChecks(c *gin.Context) []limiter.Check {
	ip := c.ClientIP()
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return []limiter.Check{{Policy: "ip", Key: "ip:" + ip, Limit: s.cfg.PerIP}}
	}
	a = a.Unmap().WithZone("")
	checks := make([]limiter.Check, 1, 3) // room for the user's
	checks[0] = limiter.Check{Policy: "ip", Key: clientKey(a, s.cfg.IPv6Prefix), Limit: s.cfg.PerIP}
	if a.Is6() && s.cfg.PerIPv6Net.Rate > 0 {
		checks = append(checks, limiter.Check{Policy: "ipnet", Key: "ipnet:" + prefixOf(a, s.cfg.IPv6NetPrefix), Limit: s.cfg.PerIPv6Net})
	}
	return checks
}

// clientKey is the per-IP limit's key for a client address: the address
// for IPv4, its prefix of bits for IPv6 (64 by default), since one
// subscriber is handed a whole /64 (or /56, /48) and could use a new
// address for every request.
func clientKey(a netip.Addr, bits int) string {
	if a.Is6() {
		return "ip:" + prefixOf(a, bits)
	}
	return "ip:" + a.String()
}

func prefixOf(a netip.Addr, bits int) string {
	p, _ := a.Prefix(bits)
	return p.String()
}

// refusedBefore answers 429 from the deny cache when one of checks was
// refused on this replica and its retry time has not come, and reports
// whether it did.
func (s *Server) refusedBefore(c *gin.Context, checks ...limiter.Check) bool {
	if s.denials == nil {
		return false
	}
	for _, check := range checks {
		if d, ok := s.denials.Denied(check.Policy, check.Key); ok {
			s.refuse(c, d)
			return true
		}
	}
	return false
}

// applyLimits applies checks on their own (a request that takes nothing
// from the pool), and reports whether they allowed it; when not, it has
// answered.
func (s *Server) applyLimits(c *gin.Context, checks []limiter.Check) bool {
	ds, err := s.limiter.AllowAll(c.Request.Context(), checks)
	if err != nil {
		// Without Redis no credential can be handed out either.
		s.fail(c, unavailable(err))
		return false
	}
	return s.decided(c, checks, ds)
}

// decided sets the RateLimit headers of the decisions of checks, and
// answers 429 when one denied: it reports whether all allowed.
func (s *Server) decided(c *gin.Context, checks []limiter.Check, ds []limiter.Decision) bool {
	for _, d := range ds {
		if !d.Allowed {
			if s.denials != nil {
				s.denials.Remember(checks, ds)
			}
			s.refuse(c, ds...)
			return false
		}
	}
	for _, d := range ds {
		d.SetHeaders(c.Writer.Header(), d.Policy)
	}
	return true
}

// refuse answers 429 for the last of ds, which denied, with every
// decision's headers.
func (s *Server) refuse(c *gin.Context, ds ...limiter.Decision) {
	for _, d := range ds {
		d.SetHeaders(c.Writer.Header(), d.Policy)
	}
	last := ds[len(ds)-1]
	s.metrics.denied(last.Policy)
	if last.Quota {
		s.fail(c, errorf(http.StatusTooManyRequests, codeQuotaExceeded, "session quota %s is used up until its window ends; retry later", last.Policy))
		return
	}
	s.fail(c, errorf(http.StatusTooManyRequests, codeRateLimited, "too many requests (%s limit); retry later", last.Policy))
}
