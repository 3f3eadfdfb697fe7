// Package upstream mints credentials from the realtime providers (Orga
// AI and OpenAI Realtime with minters of their own, every other provider
// as an Endpoint described as data: see Presets) and guards them with a
// circuit breaker, retries and back-off, so the pool and the API never
// hammer a failing provider.
package upstream

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/tokenpool/tokenpool/mint"
)

// ErrBadKey matches a provider's 401 or 403 to the API key: the key is
// wrong or revoked, and retrying won't help.
var ErrBadKey = errors.New("upstream: provider rejected the API key")

// StatusError is a non-2xx answer from a provider.
type StatusError struct {
	Provider   string // "orga", "openai", a preset's name or an http profile's
	Op         string // what was asked: "mint", "ice"
	Code       int
	RetryAfter time.Duration // from a Retry-After header; zero when absent
	Body       string        // a short snippet with secrets removed
	// KeyRejected: the answer says the key is wrong whatever its status
	// (Google answers a bad key 400 API_KEY_INVALID).
	KeyRejected bool
}

func (e *StatusError) Error() string {
	if e.Provider == "openai" {
		// Navai's words, which its frontend matches on.
		return fmt.Sprintf("OpenAI client_secrets failed (%d): %s", e.Code, e.Body)
	}
	msg := fmt.Sprintf("%s: %s: status %d", e.Provider, e.Op, e.Code)
	if e.Body != "" {
		msg += ": " + e.Body
	}
	return msg
}

// PublicMessage is what a caller may be told of the failure: for OpenAI,
// Navai's words and the status with a fixed message per kind of failure
// in place of the provider's text (which can name the account's project
// and organization; it goes to the log only); nothing for other
// providers.
func (e *StatusError) PublicMessage() string {
	if e.Provider != "openai" {
		return ""
	}
	return fmt.Sprintf("OpenAI client_secrets failed (%d): %s", e.Code, failureKind(e.Code))
}

// failureKind is the caller's message for a provider's status.
func failureKind(code int) string {
	switch {
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return "the provider rejected the API key"
	case code == http.StatusTooManyRequests:
		return "the provider is limiting requests; retry later"
	case code >= 400 && code < 500:
		return "the provider refused the session's settings"
	}
	return "the provider failed"
}

// Is makes a 401/403 to a mint, or an answer that says the key is wrong,
// match ErrBadKey.
func (e *StatusError) Is(target error) bool {
	return target == ErrBadKey && e.Op == "mint" && (e.KeyRejected || e.Code == http.StatusUnauthorized || e.Code == http.StatusForbidden)
}

// retryable reports whether trying again may succeed: a server error, a
// timeout or a failed connection. Not a 4xx, not a bad key, not an
// answer we could not understand.
func retryable(err error) bool {
	var re *mint.Error
	if errors.As(err, &re) {
		return false
	}
	var se *StatusError
	if errors.As(err, &se) {
		return !se.KeyRejected && (se.Code >= 500 || se.Code == http.StatusRequestTimeout)
	}
	var pe *protocolError
	return !errors.As(err, &pe)
}

// protocolError is a 2xx answer we could not use.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return e.msg }

func protocolErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an
// HTTP-date. It returns zero when absent or unreadable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// keyShaped matches OpenAI-style keys and ephemeral secrets, JWTs, and
// email addresses (personal data a provider may echo back).
var keyShaped = regexp.MustCompile(`\b(?:sk|ek|rk|pk)[-_][A-Za-z0-9_\-*.]{6,}|\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*|[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}`)

// snippet returns a short, printable piece of an error body with every
// secret replaced, fit for an error message.
func snippet(body []byte, secrets ...string) string {
	s := string(body)
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	// Providers echo keys back, masked or not ("Incorrect API key
	// provided: sk-abc***xyz"): drop anything shaped like one.
	s = keyShaped.ReplaceAllString(s, "[redacted]")
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
