package upstream

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// TraceCalls returns a client that makes c's calls, each a client span of
// tp named after its method and path, with the provider's name, the host,
// the path and the answer's status. It never records the query (a
// per-caller Orga mint carries the caller's email there), the headers (the
// key) or a body (the credentials); otelhttp records the whole URL, so it
// is not used here. No trace context is sent to the provider. A nil tp
// returns c.
func TraceCalls(c *http.Client, tp trace.TracerProvider, provider string) *http.Client {
	if tp == nil {
		return c
	}
	base := c.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	traced := *c
	traced.Transport = tracedTransport{base: base, provider: provider, tracer: tp.Tracer("github.com/tokenpool/tokenpool/upstream")}
	return &traced
}

type tracedTransport struct {
	base     http.RoundTripper
	provider string
	tracer   trace.Tracer
}

func (t tracedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	attrs := []attribute.KeyValue{
		attribute.String("tokenpool.provider", t.provider),
		semconv.HTTPRequestMethodKey.String(req.Method),
		semconv.URLScheme(req.URL.Scheme),
		semconv.URLPath(req.URL.Path),
		semconv.ServerAddress(req.URL.Hostname()),
	}
	if port, err := strconv.Atoi(req.URL.Port()); err == nil {
		attrs = append(attrs, semconv.ServerPort(port))
	}
	ctx, span := t.tracer.Start(req.Context(), req.Method+" "+req.URL.Path,
		trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	defer span.End() // at the answer's headers: the bodies are small
	resp, err := t.base.RoundTrip(req.WithContext(ctx))
	if err != nil {
		// The kind of failure only: an error's text can quote the URL.
		kind := "connection"
		var ne net.Error
		if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
			kind = "timeout"
		} else if errors.Is(err, context.Canceled) {
			kind = "canceled"
		}
		span.SetAttributes(semconv.ErrorTypeKey.String(kind))
		span.SetStatus(codes.Error, kind)
		return nil, err
	}
	span.SetAttributes(semconv.HTTPResponseStatusCode(resp.StatusCode))
	if resp.StatusCode >= 400 {
		span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(resp.StatusCode)))
		span.SetStatus(codes.Error, strconv.Itoa(resp.StatusCode))
	}
	return resp, nil
}
