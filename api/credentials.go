package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tokenpool/tokenpool/pool"
)

// credential is the answer of /v1/credentials, the same for every
// profile: the token and its life, with what the provider's client needs
// beside it (Orga's iceServers; a preset's extras, such as a WebSocket
// url or a signed URL) added at the top level.
type credential struct {
	Provider   string          `json:"provider"`
	Profile    string          `json:"profile"`
	Token      string          `json:"token"`
	ExpiresAt  string          `json:"expiresAt"`
	ExpiresIn  int64           `json:"expiresIn"`
	ID         string          `json:"id"`
	ICEServers json.RawMessage `json:"iceServers,omitempty"`
}

// postCredentials answers POST /v1/credentials: {"profile": …}, or no
// body for the default profile.
func (s *Server) postCredentials(c *gin.Context) {
	var req sessionRequest
	if err := readJSON(c, &req, true); err != nil {
		s.failLimited(c, err)
		return
	}
	s.handOut(c, req.Profile, route{fallback: true, answer: s.credential})
}

// getCredentials answers GET /v1/credentials?profile=…
func (s *Server) getCredentials(c *gin.Context) {
	s.handOut(c, c.Query("profile"), route{fallback: true, answer: s.credential})
}

// credential writes a handout as the /v1/credentials answer.
func (s *Server) credential(c *gin.Context, h pool.Handout) {
	b, err := json.Marshal(credential{
		Provider: s.cfg.Profiles[h.Profile].Provider, Profile: h.Profile, Token: h.Token,
		ExpiresAt: h.ExpiresAt.UTC().Format(time.RFC3339), ExpiresIn: int64(h.ExpiresAt.Sub(s.now()) / time.Second),
		ID: h.ID, ICEServers: h.ICEServers,
	})
	if err != nil {
		s.fail(c, err)
		return
	}
	// The extras are a JSON object whose names the provider's description
	// keeps apart from the fields above (upstream.Endpoint.Check).
	if x := bytes.TrimSpace(h.Extra); len(x) > 2 && x[0] == '{' && x[len(x)-1] == '}' && json.Valid(x) {
		b = append(append(b[:len(b)-1], ','), x[1:]...)
	}
	c.Data(http.StatusOK, "application/json; charset=utf-8", b)
}
