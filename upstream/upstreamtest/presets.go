package upstreamtest

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The simulator speaks every preset provider's token endpoint as its
// documentation has it (the page is cited beside each), written here by
// hand from the same pages and not from the daemon's descriptions, so a
// description that strays from the wire format fails against it: each
// checks the key header, the method and the body's fields, answers the
// documented shape, and fails in the provider's own error shape.

// PresetKey is the key the simulator accepts for a preset provider; for
// hume, the "<API key>:<secret key>" pair.
func PresetKey(provider string) string {
	if provider == "hume" {
		return "sim-hume-key:sim-hume-secret"
	}
	return "sim-" + provider + "-key"
}

// PresetNames lists the preset providers the simulator speaks.
func PresetNames() []string {
	var names []string
	for _, p := range presetSims {
		if p.name != "acme" {
			names = append(names, p.name)
		}
	}
	return names
}

// PresetRequest is one request to a preset's endpoint, as it arrived.
type PresetRequest struct {
	Provider string
	Method   string
	Path     string
	Query    url.Values
	Header   http.Header
	Body     []byte
}

// PresetRequests returns every request a preset's endpoint received, in
// order.
func (s *Server) PresetRequests(provider string) []PresetRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []PresetRequest
	for _, r := range s.presetReqs {
		if r.Provider == provider {
			out = append(out, r)
		}
	}
	return out
}

// presetSim is one provider's endpoint.
type presetSim struct {
	name   string
	method string
	path   string // a trailing "*" matches any rest
	// key is the credential the request presents, as the provider reads
	// it ("" for none).
	key func(r *http.Request) string
	// mint checks the request and answers it: the status, the body, and
	// the credential minted (token "" for a refusal).
	mint func(s *Server, r *http.Request, body []byte, now time.Time) (int, any, string, time.Time)
	// fail is the provider's error body for a status and message; an
	// empty message is the provider's usual one for that status.
	fail func(status int, msg string) any
	// badKey is the status a wrong key gets.
	badKey int
	// rateLimit writes a 429 as the provider does: a Retry-After header,
	// unless it says when in the body.
	rateLimit func(w http.ResponseWriter, retry time.Duration, fail func(int, string) any)
}

var presetSims = []presetSim{
	{
		// https://ai.google.dev/gemini-api/docs/ephemeral-tokens; errors:
		// https://ai.google.dev/gemini-api/docs/troubleshooting (a bad key
		// is 400 INVALID_ARGUMENT; a 429 says when in RetryInfo).
		name: "gemini", method: http.MethodPost, path: "/v1alpha/auth_tokens",
		key: header("x-goog-api-key", ""), badKey: http.StatusBadRequest,
		fail: func(status int, msg string) any {
			st := map[int]string{400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL"}[status]
			msg = msgOr(msg, status, map[int]string{400: "API key not valid. Please pass a valid API key.", 429: "Resource has been exhausted (e.g. check quota).", 500: "An internal error has occurred."})
			e := map[string]any{"code": status, "message": msg, "status": st}
			if strings.HasPrefix(msg, "API key not valid") {
				e["details"] = []any{map[string]any{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
					"domain": "googleapis.com", "metadata": map[string]any{"service": "generativelanguage.googleapis.com"}}}
			}
			return map[string]any{"error": e}
		},
		rateLimit: func(w http.ResponseWriter, retry time.Duration, fail func(int, string) any) {
			body := fail(http.StatusTooManyRequests, "").(map[string]any)
			body["error"].(map[string]any)["details"] = []any{map[string]any{
				"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": fmt.Sprintf("%ds", int(retry.Seconds()))}}
			writeJSON(w, http.StatusTooManyRequests, body)
		},
		mint: func(s *Server, _ *http.Request, body []byte, now time.Time) (int, any, string, time.Time) {
			m, err := jsonObject(body, true, "uses", "expireTime", "newSessionExpireTime", "bidiGenerateContentSetup", "fieldMask")
			if err == nil {
				_, _, err = intField(m, "uses", 0, 1<<30)
			}
			newSession, expire := now.Add(time.Minute), now.Add(30*time.Minute)
			for k, t := range map[string]*time.Time{"newSessionExpireTime": &newSession, "expireTime": &expire} {
				if v, ok := m[k].(string); ok && err == nil {
					if *t, err = time.Parse(time.RFC3339, v); err == nil && t.Sub(now) >= 20*time.Hour {
						err = fmt.Errorf("%s must be less than 20 hours in the future", k)
					}
				}
			}
			if err != nil {
				return http.StatusBadRequest, err.Error(), "", time.Time{}
			}
			exp := newSession // a session can start until then, and must end by expire
			if expire.Before(exp) {
				exp = expire
			}
			return http.StatusOK, map[string]any{"name": "auth_tokens/" + randomHex(16)}, "", exp
		},
	},
	{
		// https://learn.microsoft.com/en-us/azure/foundry/openai/how-to/realtime-audio-webrtc
		name: "azure-openai", method: http.MethodPost, path: "/openai/v1/realtime/client_secrets",
		key: header("api-key", ""), badKey: http.StatusUnauthorized,
		fail: func(status int, msg string) any {
			msg = msgOr(msg, status, map[int]string{401: "Access denied due to invalid subscription key or wrong API endpoint.", 429: "Requests have exceeded the rate limit.", 500: "The server had an error."})
			return map[string]any{"error": map[string]any{"code": strconv.Itoa(status), "message": msg}}
		},
		rateLimit: retryAfterHeader,
		mint: func(s *Server, r *http.Request, body []byte, now time.Time) (int, any, string, time.Time) {
			if r.URL.Query().Has("api-version") {
				return http.StatusBadRequest, "the GA /openai/v1 URL takes no api-version", "", time.Time{}
			}
			var req struct {
				Session struct {
					Type  string `json:"type"`
					Model string `json:"model"`
				} `json:"session"`
				ExpiresAfter *struct {
					Anchor  string `json:"anchor"`
					Seconds int    `json:"seconds"`
				} `json:"expires_after"`
			}
			if json.Unmarshal(body, &req) != nil || req.Session.Type != "realtime" || req.Session.Model == "" {
				return http.StatusBadRequest, "session.type must be realtime and session.model a deployment", "", time.Time{}
			}
			ttl := 600
			if e := req.ExpiresAfter; e != nil {
				if e.Anchor != "created_at" || e.Seconds < 10 || e.Seconds > 7200 {
					return http.StatusBadRequest, "expires_after: anchor created_at, seconds 10 to 7200", "", time.Time{}
				}
				ttl = e.Seconds
			}
			exp := now.Add(time.Duration(ttl) * time.Second).Truncate(time.Second)
			v := "ek_" + randomHex(16)
			return http.StatusOK, map[string]any{"value": v, "expires_at": exp.Unix(),
				"session": map[string]any{"type": "realtime", "object": "realtime.session", "id": "sess_" + randomHex(8), "model": req.Session.Model}}, v, exp
		},
	},
	{
		// https://docs.x.ai/docs/guides/voice/agent; the path is OpenAI's
		// too: the key tells them apart.
		name: "xai", method: http.MethodPost, path: "/v1/realtime/client_secrets",
		key: header("Authorization", "Bearer"), badKey: http.StatusUnauthorized,
		fail: func(status int, msg string) any {
			msg = msgOr(msg, status, map[int]string{401: "Incorrect API key provided.", 429: "Too many requests.", 500: "Internal server error."})
			return map[string]any{"code": http.StatusText(status), "error": msg}
		},
		rateLimit: retryAfterHeader,
		mint: func(s *Server, _ *http.Request, body []byte, now time.Time) (int, any, string, time.Time) {
			m, err := jsonObject(body, true, "expires_after", "session")
			ttl := 600
			if ea, ok := m["expires_after"].(map[string]any); ok && err == nil {
				if _, anchored := ea["anchor"]; anchored {
					err = fmt.Errorf("expires_after.anchor is not supported")
				} else if n, ok, ferr := intField(ea, "seconds", 1, 3600); ferr != nil {
					err = ferr
				} else if ok {
					ttl = n
				}
			}
			if err != nil {
				return http.StatusBadRequest, err.Error(), "", time.Time{}
			}
			exp := now.Add(time.Duration(ttl) * time.Second).Truncate(time.Second)
			v := "xai-realtime-client-secret-" + randomHex(16)
			return http.StatusOK, map[string]any{"value": v, "expires_at": exp.Unix()}, v, exp
		},
	},
	{
		// https://elevenlabs.io/docs/eleven-agents/customization/authentication
		// (a LiveKit JWT for WebRTC; a signed URL for WebSocket, 15 minutes).
		name: "elevenlabs-agent", method: http.MethodGet, path: "/v1/convai/conversation/*",
		key: header("xi-api-key", ""), badKey: http.StatusUnauthorized, fail: elevenLabsError, rateLimit: retryAfterHeader,
		mint: func(s *Server, r *http.Request, _ []byte, now time.Time) (int, any, string, time.Time) {
			q := r.URL.Query()
			if q.Get("agent_id") == "" {
				return http.StatusUnprocessableEntity, "agent_id: Field required", "", time.Time{}
			}
			switch strings.TrimPrefix(r.URL.Path, "/v1/convai/conversation/") {
			case "token":
				exp := now.Add(10 * time.Minute).Truncate(time.Second)
				t := s.signed("livekit", now, exp)
				return http.StatusOK, map[string]any{"token": t}, t, exp
			case "get-signed-url":
				u := "ws://" + r.Host + "/v1/convai/conversation?" + url.Values{
					"agent_id": {q.Get("agent_id")}, "conversation_signature": {randomHex(16)}}.Encode()
				return http.StatusOK, map[string]any{"signed_url": u}, u, now.Add(15 * time.Minute)
			}
			return http.StatusNotFound, "Not Found", "", time.Time{}
		},
	},
	{
		// https://elevenlabs.io/docs/api-reference/tokens/create
		name: "elevenlabs", method: http.MethodPost, path: "/v1/single-use-token/*",
		key: header("xi-api-key", ""), badKey: http.StatusUnauthorized, fail: elevenLabsError, rateLimit: retryAfterHeader,
		mint: func(s *Server, r *http.Request, _ []byte, now time.Time) (int, any, string, time.Time) {
			typ := strings.TrimPrefix(r.URL.Path, "/v1/single-use-token/")
			if typ != "realtime_scribe" && typ != "tts_websocket" {
				return http.StatusUnprocessableEntity, "token_type: Input should be 'realtime_scribe' or 'tts_websocket'", "", time.Time{}
			}
			t := "sutkn_" + randomHex(16)
			return http.StatusOK, map[string]any{"token": t}, t, now.Add(15 * time.Minute)
		},
	},
	{
		// https://www.assemblyai.com/docs/api-reference/streaming-api/generate-streaming-token
		// (the raw key in Authorization; GET with query parameters).
		name: "assemblyai", method: http.MethodGet, path: "/v3/token",
		key: header("Authorization", ""), badKey: http.StatusUnauthorized,
		fail: func(status int, msg string) any {
			msg = msgOr(msg, status, map[int]string{401: "Invalid API key", 429: "Rate limit exceeded", 500: "Internal server error"})
			return map[string]any{"error": msg}
		},
		rateLimit: retryAfterHeader,
		mint: func(s *Server, r *http.Request, _ []byte, now time.Time) (int, any, string, time.Time) {
			q := map[string]any{}
			for k, v := range r.URL.Query() {
				q[k] = json.Number(v[0])
			}
			ttl, ok, err := intField(q, "expires_in_seconds", 1, 600)
			if err == nil && !ok {
				err = fmt.Errorf("expires_in_seconds is required")
			}
			if err == nil {
				_, _, err = intField(q, "max_session_duration_seconds", 60, 10800)
			}
			if err != nil {
				return http.StatusBadRequest, err.Error(), "", time.Time{}
			}
			exp := now.Add(time.Duration(ttl) * time.Second)
			t := s.signed("assemblyai", now, exp)
			return http.StatusOK, map[string]any{"token": t, "expires_in_seconds": ttl}, t, exp
		},
	},
	{
		// https://developers.deepgram.com/reference/auth/tokens/grant
		// ("Authorization: Token <key>"; ttl_seconds 1–3600, default 30).
		name: "deepgram", method: http.MethodPost, path: "/v1/auth/grant",
		key: header("Authorization", "Token"), badKey: http.StatusUnauthorized,
		fail: func(status int, msg string) any {
			code := map[int]string{400: "Bad Request", 401: "INVALID_AUTH", 429: "TOO_MANY_REQUESTS", 500: "INTERNAL_SERVER_ERROR"}[status]
			msg = msgOr(msg, status, map[int]string{401: "Invalid credentials.", 429: "Too many requests. Please try again later", 500: "Internal server error."})
			return map[string]any{"err_code": code, "err_msg": msg, "request_id": randomHex(8)}
		},
		rateLimit: retryAfterHeader,
		mint: func(s *Server, _ *http.Request, body []byte, now time.Time) (int, any, string, time.Time) {
			m, err := jsonObject(body, true, "ttl_seconds")
			ttl, ferr := optionalInt(m, "ttl_seconds", 1, 3600, 30)
			err = cmp.Or(err, ferr)
			if err != nil {
				return http.StatusBadRequest, err.Error(), "", time.Time{}
			}
			exp := now.Add(time.Duration(ttl) * time.Second)
			t := s.signed("deepgram", now, exp)
			return http.StatusOK, map[string]any{"access_token": t, "expires_in": ttl}, t, exp
		},
	},
	{
		// https://docs.cartesia.ai/api-reference/auth/access-token (a
		// Cartesia-Version is required; the answer is the token only).
		name: "cartesia", method: http.MethodPost, path: "/access-token",
		key: header("Authorization", "Bearer"), badKey: http.StatusUnauthorized,
		fail: func(status int, msg string) any {
			code := map[int]string{400: "invalid_request", 401: "unauthorized", 429: "rate_limited", 500: "internal_error"}[status]
			msg = msgOr(msg, status, map[int]string{401: "Invalid API key.", 429: "You have exceeded your plan's rate limit.", 500: "Internal server error."})
			return map[string]any{"error_code": code, "title": http.StatusText(status), "message": msg, "request_id": randomHex(8)}
		},
		rateLimit: retryAfterHeader,
		mint: func(s *Server, r *http.Request, body []byte, now time.Time) (int, any, string, time.Time) {
			if !slices.Contains([]string{"2024-06-10", "2024-11-13", "2025-04-16", "2026-03-01"}, r.Header.Get("Cartesia-Version")) {
				return http.StatusBadRequest, "Cartesia-Version is required", "", time.Time{}
			}
			m, err := jsonObject(body, false, "grants", "expires_in")
			ttl := 3600
			if err == nil {
				g, ok := m["grants"].(map[string]any)
				for k, v := range g {
					if _, isBool := v.(bool); !isBool || (k != "tts" && k != "stt" && k != "agent") {
						ok = false
					}
				}
				if !ok {
					err = fmt.Errorf("grants must be an object of tts, stt and agent booleans")
				} else if n, ok, ferr := intField(m, "expires_in", 1, 3600); ferr != nil {
					err = ferr
				} else if ok {
					ttl = n
				}
			}
			if err != nil {
				return http.StatusBadRequest, err.Error(), "", time.Time{}
			}
			exp := now.Add(time.Duration(ttl) * time.Second)
			t := s.signed("cartesia", now, exp)
			return http.StatusOK, map[string]any{"token": t}, t, exp
		},
	},
	{
		// https://docs.speechmatics.com/get-started/authentication
		// (?type=rt; ttl 60–86400 required; the answer has no expiry).
		name: "speechmatics", method: http.MethodPost, path: "/v1/api_keys",
		key: header("Authorization", "Bearer"), badKey: http.StatusUnauthorized,
		fail: func(status int, msg string) any {
			msg = msgOr(msg, status, map[int]string{401: "Permission Denied", 429: "Too Many Requests", 500: "Internal Server Error"})
			return map[string]any{"code": status, "error": msg}
		},
		rateLimit: retryAfterHeader,
		mint: func(s *Server, r *http.Request, body []byte, now time.Time) (int, any, string, time.Time) {
			if r.URL.Query().Get("type") != "rt" {
				return http.StatusUnprocessableEntity, "type must be rt or batch", "", time.Time{}
			}
			m, err := jsonObject(body, false, "ttl", "client_ref", "region")
			ttl, ok, ferr := intField(m, "ttl", 60, 86400)
			if err == nil && (ferr != nil || !ok) {
				err = fmt.Errorf("ttl must be an integer from 60 to 86400")
			}
			if err != nil {
				return http.StatusUnprocessableEntity, err.Error(), "", time.Time{}
			}
			exp := now.Add(time.Duration(ttl) * time.Second)
			t := s.signed("speechmatics", now, exp)
			return http.StatusCreated, map[string]any{"apikey_id": nil, "key_value": t}, t, exp
		},
	},
	{
		// https://soniox.com/docs/api-reference/auth/create_temporary_api_key
		name: "soniox", method: http.MethodPost, path: "/v1/auth/temporary-api-key",
		key: header("Authorization", "Bearer"), badKey: http.StatusUnauthorized,
		fail: func(status int, msg string) any {
			typ := map[int]string{400: "invalid_request", 401: "unauthenticated", 429: "rate_limit_exceeded", 500: "internal_error"}[status]
			msg = msgOr(msg, status, map[int]string{401: "Invalid API key.", 429: "Too many requests.", 500: "Internal error."})
			return map[string]any{"status_code": status, "error_type": typ, "message": msg, "validation_errors": []any{}, "request_id": randomHex(8)}
		},
		rateLimit: retryAfterHeader,
		mint: func(s *Server, _ *http.Request, body []byte, now time.Time) (int, any, string, time.Time) {
			m, err := jsonObject(body, false, "usage_type", "expires_in_seconds", "client_reference_id", "max_session_duration_seconds", "single_use")
			if u, _ := m["usage_type"].(string); err == nil && u != "transcribe_websocket" && u != "tts_rt" {
				err = fmt.Errorf("usage_type must be transcribe_websocket or tts_rt")
			}
			ttl, ok, ferr := intField(m, "expires_in_seconds", 1, 3600)
			if err == nil && (ferr != nil || !ok) {
				err = fmt.Errorf("expires_in_seconds must be an integer from 1 to 3600")
			}
			if err == nil {
				_, _, err = intField(m, "max_session_duration_seconds", 1, 18000)
			}
			if err != nil {
				return http.StatusBadRequest, err.Error(), "", time.Time{}
			}
			exp := now.Add(time.Duration(ttl) * time.Second).Truncate(time.Millisecond)
			k := "temp:" + randomHex(16)
			return http.StatusCreated, map[string]any{"api_key": k, "expires_at": exp.UTC().Format("2006-01-02T15:04:05.000Z")}, k, exp
		},
	},
	{
		// https://docs.fish.audio/developer-guide/getting-started/ephemeral-tokens
		// (scoped keys; single_use is always true; 429 with Retry-After).
		name: "fish", method: http.MethodPost, path: "/v1/auth/tokens",
		key: header("Authorization", "Bearer"), badKey: http.StatusUnauthorized,
		fail: func(status int, msg string) any {
			code := map[int]string{400: "invalid_request", 401: "invalid_token", 429: "rate_limit_exceeded", 500: "internal_error"}[status]
			msg = msgOr(msg, status, map[int]string{401: "Invalid Token", 429: "Rate limit exceeded", 500: "Internal Server Error"})
			return map[string]any{"message": msg, "status": status, "code": code}
		},
		rateLimit: retryAfterHeader,
		mint: func(s *Server, _ *http.Request, body []byte, now time.Time) (int, any, string, time.Time) {
			m, err := jsonObject(body, false, "scopes", "ttl_seconds", "max_session_duration_seconds", "allowed_origins", "end_user_id", "single_use")
			scopes, _ := m["scopes"].([]any)
			if err == nil && len(scopes) == 0 {
				err = fmt.Errorf("scopes is required")
			}
			if su, ok := m["single_use"].(bool); err == nil && ok && !su {
				err = fmt.Errorf("multi_use_not_supported")
			}
			ttl, ferr := optionalInt(m, "ttl_seconds", 1, 86400, 60)
			err = cmp.Or(err, ferr)
			if err != nil {
				return http.StatusBadRequest, err.Error(), "", time.Time{}
			}
			exp := now.Add(time.Duration(ttl) * time.Second).Truncate(time.Second)
			t := "ek-fish-" + randomHex(16)
			return http.StatusOK, map[string]any{"token": t, "token_id": "etk_" + randomHex(16), "expires_at": exp.UTC().Format(time.RFC3339),
				"expires_in": ttl, "scopes": scopes, "single_use": true}, t, exp
		},
	},
	{
		// https://dev.hume.ai/docs/introduction/api-key (OAuth2 client
		// credentials, Basic auth with the key pair; 30 minutes).
		name: "hume", method: http.MethodPost, path: "/oauth2-cc/token",
		key: func(r *http.Request) string {
			id, secret, ok := r.BasicAuth()
			if !ok {
				return ""
			}
			return id + ":" + secret
		},
		badKey: http.StatusUnauthorized,
		fail: func(status int, msg string) any {
			msg = msgOr(msg, status, map[int]string{401: "invalid_client", 429: "too_many_requests", 500: "server_error"})
			return map[string]any{"error": msg}
		},
		rateLimit: retryAfterHeader,
		mint: func(s *Server, r *http.Request, body []byte, now time.Time) (int, any, string, time.Time) {
			form, err := url.ParseQuery(string(body))
			if err != nil || r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" || form.Get("grant_type") != "client_credentials" {
				return http.StatusBadRequest, "unsupported_grant_type", "", time.Time{}
			}
			exp := now.Add(30 * time.Minute)
			t := s.signed("hume", now, exp)
			return http.StatusOK, map[string]any{"access_token": t, "token_type": "Bearer", "expires_in": 1800}, t, exp
		},
	},
	{
		// No provider's: an endpoint none of the presets describe, for
		// http profiles. Its key is in X-Acme-Key, its answer nests the
		// token, an absolute expiry and a URL.
		name: "acme", method: http.MethodPost, path: "/acme/v2/session-tokens",
		key: header("X-Acme-Key", ""), badKey: http.StatusForbidden,
		fail: func(status int, msg string) any {
			return map[string]any{"ok": false, "problem": map[string]any{"status": status, "detail": cmp.Or(msg, http.StatusText(status))}}
		},
		rateLimit: retryAfterHeader,
		mint: func(s *Server, r *http.Request, body []byte, now time.Time) (int, any, string, time.Time) {
			m, err := jsonObject(body, false, "kind", "ttl")
			ttl, ok, ferr := intField(m, "ttl", 1, 3600)
			if err == nil && (ferr != nil || !ok || m["kind"] != "realtime") {
				err = fmt.Errorf("want kind realtime and ttl 1 to 3600")
			}
			if err != nil {
				return http.StatusBadRequest, err.Error(), "", time.Time{}
			}
			exp := now.Add(time.Duration(ttl) * time.Second).Truncate(time.Second)
			t := "acme_" + randomHex(16)
			return http.StatusOK, map[string]any{"ok": true, "data": map[string]any{
				"session":  map[string]any{"credentials": []any{map[string]any{"token": t, "expires": exp.UTC().Format(time.RFC3339)}}},
				"endpoint": "wss://" + r.Host + "/acme/v2/stream",
			}}, t, exp
		},
	},
}

// presetFor finds the preset endpoint a request is for.
func (s *Server) presetFor(r *http.Request) *presetSim {
	for i := range presetSims {
		p := &presetSims[i]
		match := r.URL.Path == p.path
		if prefix, ok := strings.CutSuffix(p.path, "*"); ok {
			match = strings.HasPrefix(r.URL.Path, prefix)
		}
		if !match || r.Method != p.method {
			continue
		}
		if p.name == "xai" && p.key(r) != PresetKey("xai") {
			continue // OpenAI's endpoint, at the same path
		}
		return p
	}
	return nil
}

// preset answers one preset endpoint's request, with the faults the
// configuration asks for (latency, 500s, 429s, a rejected key).
func (s *Server) preset(w http.ResponseWriter, r *http.Request, p *presetSim) {
	arrived, body, cfg, reject, ok := s.receive(r, func(body []byte) {
		s.presetReqs = append(s.presetReqs, PresetRequest{Provider: p.name, Method: r.Method, Path: r.URL.Path, Query: r.URL.Query(), Header: r.Header.Clone(), Body: body})
	})
	if !ok {
		return
	}
	if reject || p.key(r) != PresetKey(p.name) {
		s.count(func(c *Counts) { c.Unauthorized++ })
		writeJSON(w, p.badKey, p.fail(p.badKey, ""))
		return
	}
	if s.maybeFail(cfg) {
		writeJSON(w, http.StatusInternalServerError, p.fail(http.StatusInternalServerError, ""))
		return
	}
	if retry, ok := s.overQuota(cfg, arrived); ok {
		p.rateLimit(w, retry, p.fail)
		return
	}
	now := cfg.Now()
	status, answer, token, exp := p.mint(s, r, body, now)
	if status/100 != 2 {
		writeJSON(w, status, p.fail(status, answer.(string)))
		return
	}
	if token == "" {
		token, _ = answer.(map[string]any)["name"].(string) // gemini's is the resource name
	}
	s.record(&Mint{Token: token, ExpiresAt: exp, MintedAt: now, Provider: p.name}, now)
	writeJSON(w, status, answer)
}
