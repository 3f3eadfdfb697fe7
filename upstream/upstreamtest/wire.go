package upstreamtest

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The pieces the preset endpoints (presets.go) are written with.

// header reads the key a request presents in a header, after scheme and
// a space when scheme is set.
func header(name, scheme string) func(*http.Request) string {
	return func(r *http.Request) string {
		v := r.Header.Get(name)
		if scheme == "" {
			return v
		}
		if len(v) > len(scheme) && strings.EqualFold(v[:len(scheme)+1], scheme+" ") {
			return v[len(scheme)+1:]
		}
		return ""
	}
}

// retryAfterHeader is the usual 429: Retry-After in whole seconds.
func retryAfterHeader(w http.ResponseWriter, retry time.Duration, fail func(int, string) any) {
	w.Header().Set("Retry-After", strconv.Itoa(int((retry+time.Second-1)/time.Second)))
	writeJSON(w, http.StatusTooManyRequests, fail(http.StatusTooManyRequests, ""))
}

// jsonObject decodes a body that must be one JSON object (an empty body
// is an empty object when empty is allowed) and refuses keys not listed.
func jsonObject(body []byte, empty bool, allowed ...string) (map[string]any, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		if empty {
			return map[string]any{}, nil
		}
		return nil, fmt.Errorf("a JSON body is required")
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("the body is not a JSON object")
	}
	for k := range m {
		if !slices.Contains(allowed, k) {
			return nil, fmt.Errorf("unknown field %q", k)
		}
	}
	return m, nil
}

// intField reads an integer field within bounds; ok false when absent.
func intField(m map[string]any, k string, lo, hi int) (n int, ok bool, err error) {
	v, present := m[k]
	if !present {
		return 0, false, nil
	}
	num, isNum := v.(json.Number)
	i, perr := strconv.Atoi(string(num))
	if !isNum || perr != nil || i < lo || i > hi {
		return 0, true, fmt.Errorf("%s must be an integer from %d to %d", k, lo, hi)
	}
	return i, true, nil
}

// optionalInt is intField with a default for an absent field.
func optionalInt(m map[string]any, k string, lo, hi, def int) (int, error) {
	n, ok, err := intField(m, k, lo, hi)
	if !ok {
		n = def
	}
	return n, err
}

// msgOr is msg, or the provider's usual message for status when empty.
func msgOr(msg string, status int, usual map[int]string) string {
	return cmp.Or(msg, usual[status])
}

// signed mints an HS256 JWT expiring at exp, as most providers' tokens are.
func (s *Server) signed(provider string, now, exp time.Time) string {
	t, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Issuer: provider + "-sim", ID: randomHex(12), IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(exp),
	}).SignedString(s.sign)
	return t
}

// elevenLabsError is ElevenLabs' error shape
// (https://elevenlabs.io/docs/eleven-api/resources/errors).
func elevenLabsError(status int, msg string) any {
	st := map[int]string{401: "invalid_api_key", 422: "invalid_parameters", 429: "rate_limit_exceeded", 500: "internal_error"}[status]
	if msg == "" {
		msg = map[int]string{401: "Invalid API key", 429: "Too many requests", 500: "Internal server error"}[status]
	}
	return map[string]any{"detail": map[string]any{"status": st, "message": msg}}
}
