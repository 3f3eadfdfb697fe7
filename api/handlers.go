package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tokenpool/tokenpool/limiter"
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
	s.handOut(c, req.Profile, false)
}

// getSessionConfig answers GET /api/orga-client-secrets: the same body,
// for the Orga client SDK's plain GET. ?profile= picks a profile, which
// must carry ICE servers: the SDK requires them.
func (s *Server) getSessionConfig(c *gin.Context) {
	s.handOut(c, c.Query("profile"), true)
}

func (s *Server) handOut(c *gin.Context, profile string, iceOnly bool) {
	if profile == "" {
		profile = s.cfg.DefaultProfile
	}
	info, ok := s.cfg.Profiles[profile]
	switch {
	case !ok:
		s.failLimited(c, pool.ErrUnknownProfile)
		return
	case !info.Access.allows(c.MustGet(ctxCaller).(caller)):
		s.failLimited(c, errNotAllowed)
		return
	case iceOnly && !info.ICE:
		s.failLimited(c, errorf(http.StatusBadRequest, codeBadRequest,
			"that profile is an OpenAI Realtime profile: fetch it from POST /navai/realtime/client-secret"))
		return
	}
	h, refused, err := s.take(c, profile)
	if refused {
		return
	}
	if err != nil {
		s.fail(c, err)
		return
	}
	if s.callerGone(c, h) {
		return
	}
	ice := h.ICEServers
	if len(ice) == 0 {
		ice = json.RawMessage("[]") // OpenAI: WebRTC with its own ICE
	}
	s.credentialHeaders(c, h)
	c.JSON(http.StatusOK, sessionConfig{
		EphemeralToken: h.Token,
		ICEServers:     ice,
		ExpiresAt:      h.ExpiresAt.UTC().Format(time.RFC3339),
		ExpiresIn:      int64(h.ExpiresAt.Sub(s.now()) / time.Second),
		Profile:        h.Profile,
		ID:             h.ID,
	})
}

// take hands out one credential of profile behind the caller's limits,
// both in one round trip. refused reports that a limit refused, and the
// answer is written.
func (s *Server) take(c *gin.Context, profile string) (h pool.Handout, refused bool, err error) {
	checks := c.MustGet(ctxChecks).([]limiter.Check)
	h, ds, err := s.pool.GetLimited(c.Request.Context(), profile, requestID(c), checks)
	if ds != nil && !s.decided(c, checks, ds) {
		return pool.Handout{}, true, nil
	}
	return h, false, err
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
	c.Set(ctxSource, string(h.Source))
	c.Header("X-Credential-Source", string(h.Source))
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
