package upstreamtest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"
)

// DefaultOpenAIKey is the OpenAI key the simulator accepts unless told
// otherwise.
const DefaultOpenAIKey = "sk-simulator-openai"

// The account's ids, which the simulator's answer to an unknown model
// names (a model it knows has "realtime" in its name).
const (
	SimProject      = "proj_Sim4u8Xq2Lm9Vb"
	SimOrganization = "org-Sim7Hk3Pq0Zr5Tn"
)

// OpenAIRequests returns the body of every client_secrets request that
// reached the simulator, in order, as sent.
func (s *Server) OpenAIRequests() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.openaiBodies...)
}

// openaiError answers in OpenAI's error shape.
func openaiError(w http.ResponseWriter, code int, typ, param, errCode, msg string) {
	e := map[string]any{"message": msg, "type": typ, "param": nil, "code": nil}
	if param != "" {
		e["param"] = param
	}
	if errCode != "" {
		e["code"] = errCode
	}
	writeJSON(w, code, map[string]any{"error": e})
}

// allowed keys of the request body, by path, as the API accepts them.
var openaiAllowed = map[string][]string{
	"":                     {"expires_after", "session"},
	"expires_after":        {"anchor", "seconds"},
	"session":              {"type", "model", "instructions", "audio", "output_modalities", "tools", "tool_choice", "max_output_tokens", "tracing", "prompt", "include", "truncation"},
	"session.audio":        {"input", "output"},
	"session.audio.output": {"voice", "format", "speed"},
}

// checkKeys reports the first key of obj, in sorted order, not allowed at
// path.
func checkKeys(path string, obj map[string]json.RawMessage) string {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ok := false
		for _, a := range openaiAllowed[path] {
			ok = ok || a == k
		}
		if !ok {
			if path == "" {
				return k
			}
			return path + "." + k
		}
	}
	return ""
}

// object decodes raw as a JSON object; ok is false when it is not one.
func object(raw json.RawMessage) (map[string]json.RawMessage, bool) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, false
	}
	return m, true
}

// openai answers POST /v1/realtime/client_secrets, validating the body as
// OpenAI does.
func (s *Server) openai(w http.ResponseWriter, r *http.Request) {
	arrived, body, cfg, reject, ok := s.receive(r, func(body []byte) { s.openaiBodies = append(s.openaiBodies, body) })
	if !ok {
		return
	}
	if reject || bearer(r) != cfg.OpenAIKey {
		s.count(func(c *Counts) { c.Unauthorized++ })
		openaiError(w, http.StatusUnauthorized, "invalid_request_error", "", "invalid_api_key",
			"Incorrect API key provided: "+mask(bearer(r))+". You can find your API key at https://platform.openai.com/account/api-keys.")
		return
	}
	if fail := s.maybeFail(cfg); fail {
		openaiError(w, http.StatusInternalServerError, "server_error", "", "", "The server had an error while processing your request.")
		return
	}
	top, ok := object(body)
	if !ok {
		openaiError(w, http.StatusBadRequest, "invalid_request_error", "", "", "We could not parse the JSON body of your request.")
		return
	}
	if k := checkKeys("", top); k != "" {
		openaiError(w, http.StatusBadRequest, "invalid_request_error", k, "unknown_parameter", fmt.Sprintf("Unknown parameter: '%s'.", k))
		return
	}
	ttl := 600
	if raw, ok := top["expires_after"]; ok {
		ea, isObj := object(raw)
		if !isObj {
			openaiError(w, http.StatusBadRequest, "invalid_request_error", "expires_after", "invalid_type",
				"Invalid type for 'expires_after': expected an object.")
			return
		}
		if k := checkKeys("expires_after", ea); k != "" {
			openaiError(w, http.StatusBadRequest, "invalid_request_error", k, "unknown_parameter", fmt.Sprintf("Unknown parameter: '%s'.", k))
			return
		}
		var anchor string
		if json.Unmarshal(ea["anchor"], &anchor) != nil || anchor != "created_at" {
			openaiError(w, http.StatusBadRequest, "invalid_request_error", "expires_after.anchor", "invalid_value",
				"Invalid value for 'expires_after.anchor': supported values are: 'created_at'.")
			return
		}
		if json.Unmarshal(ea["seconds"], &ttl) != nil || ttl < 10 || ttl > 7200 {
			openaiError(w, http.StatusBadRequest, "invalid_request_error", "expires_after.seconds", "integer_out_of_range",
				"Invalid 'expires_after.seconds': must be an integer between 10 and 7200.")
			return
		}
	}
	session := map[string]any{"type": "realtime", "object": "realtime.session", "id": "sess_" + randomHex(12)}
	if raw, ok := top["session"]; ok {
		if msg, param := checkSession(raw, session); msg != "" {
			code := "invalid_value"
			if strings.HasPrefix(msg, "Unknown") {
				code = "unknown_parameter"
			}
			openaiError(w, http.StatusBadRequest, "invalid_request_error", param, code, msg)
			return
		}
	}
	if m, ok := session["model"].(string); ok && !strings.Contains(strings.ToLower(m), "realtime") {
		// OpenAI's error object (https://platform.openai.com/docs/guides/error-codes):
		// an unknown model is 404 model_not_found, "The model `…` does not
		// exist or you do not have access to it."; a model the project may
		// not use is 403 model_not_found, "Project `proj_…` does not have
		// access to model `…`". The simulator answers the 404 with the ids
		// in its text, as the audit saw an answer name the account's
		// project and organization: what must never reach a caller.
		openaiError(w, http.StatusNotFound, "invalid_request_error", "session.model", "model_not_found",
			fmt.Sprintf("The model `%s` does not exist or project %s in organization %s does not have access to it.", m, SimProject, SimOrganization))
		return
	}
	if !s.takeQuota(w, cfg, arrived) {
		return
	}
	now := cfg.Now()
	exp := now.Add(time.Duration(ttl) * time.Second).Truncate(time.Second)
	value := "ek_" + randomHex(16)
	s.record(&Mint{Token: value, ExpiresAt: exp, MintedAt: now}, now)
	writeJSON(w, http.StatusOK, map[string]any{"value": value, "expires_at": exp.Unix(), "session": session})
}

// checkSession validates the session object and copies it into echo.
func checkSession(raw json.RawMessage, echo map[string]any) (msg, param string) {
	sess, ok := object(raw)
	if !ok {
		return "Invalid type for 'session': expected an object.", "session"
	}
	if k := checkKeys("session", sess); k != "" {
		return fmt.Sprintf("Unknown parameter: '%s'.", k), k
	}
	var typ string
	if json.Unmarshal(sess["type"], &typ) != nil || typ != "realtime" {
		return "Missing or invalid 'session.type': expected 'realtime'.", "session.type"
	}
	for _, k := range []string{"model", "instructions"} {
		if v, ok := sess[k]; ok {
			var sv string
			if json.Unmarshal(v, &sv) != nil {
				return fmt.Sprintf("Invalid type for 'session.%s': expected a string.", k), "session." + k
			}
			echo[k] = sv
		}
	}
	if v, ok := sess["audio"]; ok {
		audio, ok := object(v)
		if !ok {
			return "Invalid type for 'session.audio': expected an object.", "session.audio"
		}
		if k := checkKeys("session.audio", audio); k != "" {
			return fmt.Sprintf("Unknown parameter: '%s'.", k), k
		}
		if o, ok := audio["output"]; ok {
			out, ok := object(o)
			if !ok {
				return "Invalid type for 'session.audio.output': expected an object.", "session.audio.output"
			}
			if k := checkKeys("session.audio.output", out); k != "" {
				return fmt.Sprintf("Unknown parameter: '%s'.", k), k
			}
			var voice string
			if json.Unmarshal(out["voice"], &voice) != nil || voice == "" {
				return "Invalid type for 'session.audio.output.voice': expected a string.", "session.audio.output.voice"
			}
			echo["audio"] = map[string]any{"output": map[string]any{"voice": voice}}
		}
	}
	return "", ""
}

// mask shows a key as OpenAI's error message does.
func mask(k string) string {
	if len(k) <= 8 {
		return "***"
	}
	return k[:3] + strings.Repeat("*", 10) + k[len(k)-4:]
}
