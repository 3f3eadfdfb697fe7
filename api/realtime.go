package api

import (
	"context"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/pool"
)

// RealtimeRequest is the body of Navai's client secret route. A nil field
// was not sent.
type RealtimeRequest struct {
	Model        *string `json:"model"`
	Voice        *string `json:"voice"`
	Instructions *string `json:"instructions"`
	Language     *string `json:"language"`
	VoiceAccent  *string `json:"voiceAccent"`
	VoiceTone    *string `json:"voiceTone"`
	APIKey       *string `json:"apiKey"`
}

// Realtime hands out OpenAI Realtime client secrets by Navai's rules. may
// reports whether the caller may use a profile.
type Realtime interface {
	ClientSecret(ctx context.Context, req RealtimeRequest, requestID string, may func(profile string) bool) (pool.Handout, error)
}

// RealtimeFunc adapts a function to Realtime.
type RealtimeFunc func(ctx context.Context, req RealtimeRequest, requestID string, may func(profile string) bool) (pool.Handout, error)

// ClientSecret calls f.
func (f RealtimeFunc) ClientSecret(ctx context.Context, req RealtimeRequest, requestID string, may func(string) bool) (pool.Handout, error) {
	return f(ctx, req, requestID, may)
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
	// The resolution of a Navai request drives the pool itself, so the
	// limits are applied first, on their own.
	if !s.applyLimits(c, c.MustGet(ctxChecks).([]limiter.Check)) {
		return
	}
	var req RealtimeRequest
	if err := readJSON(c, &req, false); err != nil {
		s.fail(c, err)
		return
	}
	who := c.MustGet(ctxCaller).(caller)
	h, err := s.cfg.Realtime.ClientSecret(c.Request.Context(), req, requestID(c), func(p string) bool { return s.may(who, p) })
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
