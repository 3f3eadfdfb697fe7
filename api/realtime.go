package api

import (
	"net/http"
	"slices"

	"github.com/gin-gonic/gin"

	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/mint"
	"github.com/tokenpool/tokenpool/pool"
)

// Realtime resolves Navai's client secret requests (upstream.Realtime):
// Profile is the routes' own profile, and Resolve plans one request.
type Realtime interface {
	Profile() string
	Resolve(req mint.NavaiRequest) (mint.Plan, error)
}

// navaiSecret is the answer Navai's frontend reads: a string value and a
// numeric expires_at (Unix seconds).
type navaiSecret struct {
	Value     string `json:"value"`
	ExpiresAt int64  `json:"expires_at"`
}

// realtimeSecret answers POST /navai/realtime/client-secret and POST
// /api/realtime-token. Like Navai's handler it ignores fields it doesn't
// know; a known field that is not a string is refused.
func (s *Server) realtimeSecret(c *gin.Context) {
	var req mint.NavaiRequest
	if err := readJSON(c, &req, false); err != nil {
		s.failLimited(c, err)
		return
	}
	who := c.MustGet(ctxCaller).(caller)
	rt := s.cfg.Realtime
	if !s.may(who, rt.Profile()) {
		s.failLimited(c, errNotAllowed)
		return
	}
	plan, err := rt.Resolve(req)
	if err != nil {
		s.failLimited(c, err)
		return
	}
	for _, p := range plan.Needs {
		if !s.may(who, p) {
			s.failLimited(c, errNotAllowed)
			return
		}
	}
	if plan.Refused != nil {
		s.failLimited(c, plan.Refused)
		return
	}
	var h pool.Handout
	if plan.Pooled != "" {
		var refused bool
		if h, _, refused, err = s.take(c, plan.Pooled); refused {
			return
		}
	} else {
		checks := slices.Concat(c.MustGet(ctxChecks).([]limiter.Check), s.quotaChecks(who, rt.Profile()))
		var ds []limiter.Decision
		h, ds, err = s.pool.MintOnce(c.Request.Context(), rt.Profile(), requestID(c), plan.Minter, who.minted(), plan.Label, checks)
		if ds != nil && !s.decided(c, checks, ds) {
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
	c.JSON(http.StatusOK, navaiSecret{Value: h.Token, ExpiresAt: h.ExpiresAt.Unix()})
}
