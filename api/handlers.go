package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"slices"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/mint"
	"github.com/tokenpool/tokenpool/pool"
)

// ctxSource records on the gin.Context where a handout came from, for the
// access log.
const ctxSource = "tokenpool.source"

// maxBodyBytes bounds a request body.
const maxBodyBytes = 16 << 10

// sessionConfig is the credential answer: what the Orga client SDK's
// fetchSessionConfig reads (ephemeralToken, iceServers) plus expiry and
// provenance.
type sessionConfig struct {
	EphemeralToken string          `json:"ephemeralToken"`
	ICEServers     json.RawMessage `json:"iceServers"`
	ExpiresAt      string          `json:"expiresAt"`
	ExpiresIn      int64           `json:"expiresIn"`
	Profile        string          `json:"profile"`
	ID             string          `json:"id"`
}

// sessionRequest is the optional body of POST /v1/session-config.
type sessionRequest struct {
	Profile string `json:"profile"`
}

// postSessionConfig answers POST /v1/session-config.
func (s *Server) postSessionConfig(c *gin.Context) {
	var req sessionRequest
	if err := readJSON(c, &req, true); err != nil {
		s.failLimited(c, err)
		return
	}
	s.handOut(c, req.Profile, route{sessionShape: true, answer: s.sessionConfig})
}

// getSessionConfig answers GET /api/orga-client-secrets: the same body,
// for the Orga client SDK's plain GET. ?profile= picks a profile, which
// must carry ICE servers: the SDK requires them.
func (s *Server) getSessionConfig(c *gin.Context) {
	s.handOut(c, c.Query("profile"), route{sessionShape: true, iceOnly: true, answer: s.sessionConfig})
}

// sessionConfig writes a handout as the session-config answer.
func (s *Server) sessionConfig(c *gin.Context, h pool.Handout) {
	ice := h.ICEServers
	if len(ice) == 0 {
		ice = json.RawMessage("[]") // OpenAI: WebRTC with its own ICE
	}
	c.JSON(http.StatusOK, sessionConfig{
		EphemeralToken: h.Token,
		ICEServers:     ice,
		ExpiresAt:      h.ExpiresAt.UTC().Format(time.RFC3339),
		ExpiresIn:      int64(h.ExpiresAt.Sub(s.now()) / time.Second),
		Profile:        h.Profile,
		ID:             h.ID,
	})
}

// route is what a credential route serves.
type route struct {
	// sessionShape: the answer is the session-config shape, which has
	// room for Orga's and OpenAI's credentials only: a preset's extras
	// (a URL, a signed URL) would be lost.
	sessionShape bool
	// iceOnly: only profiles whose credentials carry ICE servers (the
	// Orga SDK's GET requires them).
	iceOnly bool
	// fallback: a profile's fallbacks stand in for it. Only a route whose
	// answer names the provider that answered offers them.
	fallback bool
	// answer writes a handout.
	answer func(*gin.Context, pool.Handout)
}

// handOut hands one credential of profile (the default profile when "")
// to the caller, and writes it as rt says.
func (s *Server) handOut(c *gin.Context, profile string, rt route) {
	if profile == "" {
		profile = s.cfg.DefaultProfile
	}
	info, ok := s.cfg.Profiles[profile]
	who := c.MustGet(ctxCaller).(caller)
	switch {
	case !ok:
		s.failLimited(c, pool.ErrUnknownProfile)
		return
	case !info.Access.allows(who):
		s.failLimited(c, errNotAllowed)
		return
	case rt.sessionShape && info.Provider != "orga" && info.Provider != "openai":
		s.failLimited(c, errorf(http.StatusBadRequest, codeBadRequest,
			"that profile is a %s profile: fetch it from POST /v1/credentials, whose answer carries what its client needs", info.Provider))
		return
	case rt.iceOnly && !info.ICE:
		s.failLimited(c, errorf(http.StatusBadRequest, codeBadRequest,
			"that profile's credentials carry no ICE servers, which the Orga SDK needs: fetch it from POST /v1/credentials"))
		return
	}
	h, limited, refused, err := s.take(c, profile)
	if refused {
		return
	}
	// A fallback stands in only once the caller's limits counted this
	// request: when they could not be read, neither may a fallback's
	// take go unlimited.
	if err != nil && limited && rt.fallback && standIn(err) {
		if h, refused, err = s.fallBack(c, profile, info.Fallback, who, err); refused {
			return
		}
	}
	if err != nil {
		s.fail(c, err)
		return
	}
	if s.callerGone(c, h) {
		return
	}
	s.credentialHeaders(c, h)
	rt.answer(c, h)
}

// standIn reports whether a take's failure is one a fallback profile may
// stand in for: the pool was empty and its provider could not mint
// (breaker open, paused, over its quota, failing). Not a refusal of the
// request, nor a request that ended.
func standIn(err error) bool {
	var re *mint.Error
	return !errors.As(err, &re) && !errors.Is(err, context.Canceled) &&
		(errors.Is(err, pool.ErrUnavailable) || errors.Is(err, pool.ErrProvider))
}

// fallBack hands the caller a credential of the first of fallbacks it may
// use, or answers err, the take's failure, when it may use none (or the
// fallback fails too: its failure is answered). The fallback spends the
// quotas of the profile asked for (the failed take gave its sessions
// back); refused reports that one is exhausted, and the 429 written.
func (s *Server) fallBack(c *gin.Context, profile string, fallbacks []string, who caller, err error) (_ pool.Handout, refused bool, _ error) {
	for _, fb := range fallbacks {
		if !s.may(who, fb) {
			continue
		}
		quotas := s.quotaChecks(who, profile)
		h, ds, ferr := s.pool.Fallback(c.Request.Context(), profile, fb, requestID(c), who.minted(), quotas)
		if ds != nil && !s.decided(c, quotas, ds) {
			return pool.Handout{}, true, nil
		}
		if ferr != nil {
			s.log.Warn("fallback failed too", "request_id", requestID(c), "profile", profile, "fallback", fb, "err", ferr.Error())
			return h, false, ferr
		}
		return h, false, nil
	}
	return pool.Handout{}, false, err
}

// take hands out one credential of profile behind the caller's limits,
// both in one round trip. limited reports that the limits counted the
// request and allowed it; refused that a limit refused, and the answer
// is written.
func (s *Server) take(c *gin.Context, profile string) (h pool.Handout, limited, refused bool, err error) {
	who := c.MustGet(ctxCaller).(caller)
	checks := c.MustGet(ctxChecks).([]limiter.Check)
	if quotas := s.quotaChecks(who, profile); len(quotas) > 0 {
		checks = slices.Concat(checks, quotas) // after the rates: see limiter.Check
	}
	h, ds, err := s.pool.GetLimited(c.Request.Context(), profile, requestID(c), who.minted(), checks)
	if ds != nil && !s.decided(c, checks, ds) {
		return pool.Handout{}, false, true, nil
	}
	return h, ds != nil, false, err
}

// failLimited answers err to a request that takes nothing, once the
// caller's limits, which every credential request counts against, allow
// it (else 429, as if they had been asked first).
func (s *Server) failLimited(c *gin.Context, err error) {
	if s.applyLimits(c, c.MustGet(ctxChecks).([]limiter.Check)) {
		s.fail(c, err)
	}
}

// callerGone puts h back when the caller disconnected before the answer
// could be written, and reports whether it did: the credential is not
// lost. A request past its own deadline whose caller is still connected
// gets the credential it holds.
func (s *Server) callerGone(c *gin.Context, h pool.Handout) bool {
	err := c.Request.Context().Err()
	if !errors.Is(err, context.Canceled) {
		return false
	}
	s.pool.Return(h)
	s.log.Info("caller gone before its credential was sent; put back", "request_id", requestID(c),
		"profile", h.Profile, "source", string(h.Source))
	he := errorf(http.StatusServiceUnavailable, codeUnavailable, "the request ended before a credential could be sent")
	he.header = http.Header{"Retry-After": {"1"}}
	s.fail(c, he)
	return true
}

// credentialHeaders marks an answer carrying a credential.
func (s *Server) credentialHeaders(c *gin.Context, h pool.Handout) {
	source := string(h.Source)
	if h.FallbackFor != "" {
		source = "fallback"
	}
	c.Set(ctxSource, source)
	c.Header("X-Credential-Source", source)
	c.Header("Cache-Control", "no-store")
	c.Header("Pragma", "no-cache")
}

// readJSON decodes an optional JSON object body into v: a body must be
// application/json, at most maxBodyBytes, one object; strict refuses
// unknown fields. An empty body leaves v as it is.
func readJSON(c *gin.Context, v any, strict bool) error {
	r := c.Request
	if r.Body == nil || r.ContentLength == 0 {
		return nil
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.Writer, r.Body, maxBodyBytes))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return errorf(http.StatusRequestEntityTooLarge, codeTooLarge, "request body is larger than %d bytes", maxBodyBytes)
	case err != nil:
		return errorf(http.StatusBadRequest, codeBadRequest, "could not read the request body")
	case len(bytes.TrimSpace(body)) == 0:
		return nil
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return errorf(http.StatusUnsupportedMediaType, codeMediaType, "Content-Type must be application/json")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return errorf(http.StatusBadRequest, codeBadRequest, "request body is not a JSON object of the expected fields")
	}
	if dec.More() {
		return errorf(http.StatusBadRequest, codeBadRequest, "request body has data after the JSON object")
	}
	return nil
}

// healthz answers liveness: the process serves HTTP.
func (s *Server) healthz(c *gin.Context) {
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusOK, gin.H{"status": "ok"})
}

// readyz answers readiness: Redis answers and every profile can serve.
func (s *Server) readyz(c *gin.Context) {
	if err := s.readiness(c.Request.Context()); err != nil {
		s.log.Warn("not ready", "request_id", requestID(c), "err", err.Error())
		he := errorf(http.StatusServiceUnavailable, codeNotReady, "not ready")
		he.header = http.Header{"Retry-After": {"1"}}
		s.fail(c, he)
		return
	}
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusOK, gin.H{"status": "ready"})
}

// ReadyCacheTTL is how long a readiness check's answer serves the checks
// after it: any rate of GET /readyz costs Redis at most one check per
// interval.
const ReadyCacheTTL = time.Second

// readiness checks the identity providers' keys and the pool, or answers
// what the last check found when it is under ReadyCacheTTL old.
func (s *Server) readiness(ctx context.Context) error {
	_, err := s.ready.Get(ctx, func() (struct{}, error) {
		// Not the request's context: the answer serves other requests too.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := s.auth.issuers.ready(); err != nil {
			return struct{}{}, err
		}
		return struct{}{}, s.pool.Ready(ctx)
	})
	return err
}

// unavailable answers a Redis failure outside the pool: a 503 to retry in
// a second, the cause in the log.
func unavailable(err error) error {
	he := errorf(http.StatusServiceUnavailable, codeUnavailable, "no credential available right now; retry later")
	he.header, he.cause = http.Header{"Retry-After": {"1"}}, err
	return he
}
