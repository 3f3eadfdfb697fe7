package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/mint"
	"github.com/tokenpool/tokenpool/pool"
)

// Error codes of the JSON error body.
const (
	codeBadRequest       = "bad_request"
	codeUnauthenticated  = "unauthenticated"
	codeForbidden        = "forbidden"
	codeNotFound         = "not_found"
	codeMethodNotAllowed = "method_not_allowed"
	codeTooLarge         = "body_too_large"
	codeMediaType        = "unsupported_media_type"
	codeRateLimited      = "rate_limited"
	codeQuotaExceeded    = "quota_exceeded"
	codeUnavailable      = "unavailable"
	codeProvider         = "provider_error"
	codeNotReady         = "not_ready"
	codeInternal         = "internal"
)

// errNotAllowed: the caller may not use the profile it asked for.
var errNotAllowed = errors.New("api: profile not allowed for this caller")

// httpError is an error the API raises itself, with its answer decided.
// Its message is shown to the caller, so it never holds a secret.
type httpError struct {
	status  int
	code    string
	message string
	header  http.Header // extra answer headers, e.g. WWW-Authenticate
	cause   error       // for the log only
}

func (e *httpError) Error() string {
	if e.cause != nil {
		return e.message + ": " + e.cause.Error()
	}
	return e.message
}

func (e *httpError) Unwrap() error { return e.cause }

func errorf(status int, code, format string, args ...any) *httpError {
	return &httpError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

// errorBody is the JSON shape of every error answer.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	RequestID string `json:"requestId"`
}

// fail is the one place errors become HTTP answers (STYLE.md rule 8). The
// caller sees a fixed message per class; the cause goes to the log only.
func (s *Server) fail(c *gin.Context, err error) {
	var (
		he     *httpError
		re     *mint.Error
		pm     publicMessager
		status int
		code   string
		msg    string
	)
	switch {
	case errors.As(err, &he):
		status, code, msg = he.status, he.code, he.message
		for k, vs := range he.header {
			for _, v := range vs {
				c.Writer.Header().Add(k, v)
			}
		}
	case errors.As(err, &re):
		status, code = answerOf(re.Code)
		msg = re.Message
	case errors.Is(err, pool.ErrUnknownProfile):
		status, code, msg = http.StatusBadRequest, codeBadRequest, "unknown profile"
	case errors.Is(err, errNotAllowed):
		status, code, msg = http.StatusForbidden, codeForbidden, "this caller may not use that profile"
	case errors.Is(err, pool.ErrClosed):
		status, code, msg = http.StatusServiceUnavailable, codeUnavailable, "shutting down; retry on another replica"
		setRetryAfter(c, time.Second)
	case errors.Is(err, pool.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		status, code, msg = http.StatusServiceUnavailable, codeUnavailable, "no credential available right now; retry later"
		setRetryAfter(c, mint.RetryAfter(err))
	case errors.Is(err, pool.ErrProvider):
		status, code, msg = http.StatusBadGateway, codeProvider, "the provider failed to issue a credential"
		if errors.As(err, &pm) && pm.PublicMessage() != "" {
			msg = pm.PublicMessage() // e.g. Navai's "OpenAI client_secrets failed (401): …"
		}
	case errors.Is(err, context.Canceled):
		// The caller went away; nobody reads this answer.
		status, code, msg = http.StatusServiceUnavailable, codeUnavailable, "request cancelled"
	default:
		status, code, msg = http.StatusInternalServerError, codeInternal, "internal error"
	}
	c.Set(ctxErrCode, code)
	if status >= 500 {
		s.log.LogAttrs(c.Request.Context(), slog.LevelWarn, "request failed",
			slog.String("request_id", requestID(c)), slog.Int("status", status),
			slog.String("code", code), slog.String("err", err.Error()))
	}
	var body errorBody
	body.Error.Code, body.Error.Message, body.RequestID = code, msg, requestID(c)
	c.Header("Cache-Control", "no-store")
	c.AbortWithStatusJSON(status, body)
}

// publicMessager is a provider error with a message fit for the caller.
type publicMessager interface{ PublicMessage() string }

// answerOf maps a domain error's code to the answer's status and code.
func answerOf(c mint.Code) (int, string) {
	if c == mint.CodeForbidden {
		return http.StatusForbidden, codeForbidden
	}
	return http.StatusBadRequest, codeBadRequest
}

func setRetryAfter(c *gin.Context, d time.Duration) {
	c.Header("Retry-After", limiter.RetryAfter(d))
}
