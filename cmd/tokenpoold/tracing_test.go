package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// TestTracesFollowARequestAndCarryNoSecret runs a daemon whose spans go to
// an in-memory exporter. A pooled handout and a miss (a per-caller Orga
// profile, which mints with the caller's email) each come with a W3C trace
// context: each makes an HTTP server span, Redis spans and, on the miss,
// the provider's calls, all in the caller's trace, whose id the access log
// line names. The refiller's rounds and mints are traced too. Then every
// span's name, attributes, events, links, status and resource are searched
// for every secret of the run: none is there.
func TestTracesFollowARequestAndCarryNoSecret(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	d := startDaemon(t, rs, sim, profileEnv(t, sim, `
profiles:
  default:
    provider: orga
    target: 2
  personal:
    provider: orga
    orga:
      per_caller_email: true
`), func(m *Main) { m.TracerProvider = tp })
	poll.Until(t, "the pool to hold 2", 10*time.Second, func() bool {
		st, err := d.pool.Stats(t.Context(), "default")
		return err == nil && st.Usable >= 2
	})

	const email = "dave.doe+tp@example.com"
	jwt := claimsJWT(t, map[string]any{"sub": "dave", "email": email, "email_verified": true})
	request := func(traceID, body string) (int, map[string]any) {
		t.Helper()
		return call(t, "POST", d.url+"/v1/session-config", body,
			"Authorization", "Bearer "+jwt, "traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	}
	const pooledTrace, missTrace = "4bf92f3577b34da6a3ce929d0e0e4736", "5cf92f3577b34da6a3ce929d0e0e4737"
	code, pooled := request(pooledTrace, "")
	if code != 200 {
		t.Fatalf("pooled handout: %d %v", code, pooled)
	}
	code, missed := request(missTrace, `{"profile":"personal"}`)
	if code != 200 {
		t.Fatalf("miss: %d %v", code, missed)
	}

	// The server span ends after the answer is written: wait for both.
	var spans tracetest.SpanStubs
	poll.Until(t, "both server spans", 5*time.Second, func() bool {
		spans = exp.GetSpans()
		n := 0
		for _, s := range spans {
			if s.SpanKind == trace.SpanKindServer {
				n++
			}
		}
		return n >= 2
	})
	for _, c := range []struct {
		trace     string
		source    string
		providers int // provider calls in the request's trace
	}{
		{pooledTrace, "pool", 0},
		{missTrace, "direct", 2}, // Orga: the client secret, then the ICE servers
	} {
		in := inTrace(spans, c.trace)
		var server, redisCalls, providerCalls int
		for _, s := range in {
			switch {
			case s.SpanKind == trace.SpanKindServer && s.Name == "POST /v1/session-config":
				server++
				if s.Parent.SpanID().String() != "00f067aa0ba902b7" {
					t.Errorf("trace %s: the server span's parent is %s, not the caller's span", c.trace, s.Parent.SpanID())
				}
			case strings.Contains(s.InstrumentationScope.Name, "redisotel"):
				redisCalls++
			case attr(s, "tokenpool.provider") == "orga":
				providerCalls++
			}
		}
		if server != 1 || redisCalls == 0 || providerCalls != c.providers {
			t.Errorf("trace %s (%s): %d server spans, %d Redis, %d provider calls; want 1, some, %d:\n%s",
				c.trace, c.source, server, redisCalls, providerCalls, c.providers, describe(in))
		}
		lines := 0
		for _, l := range logLines(d.logsNow(), "request") {
			if l["trace_id"] == c.trace {
				lines++
				if l["source"] != c.source {
					t.Errorf("trace %s: the access log line says source %v, want %s", c.trace, l["source"], c.source)
				}
			}
		}
		if lines != 1 {
			t.Errorf("trace %s: %d access log lines name it, want 1", c.trace, lines)
		}
	}

	// The refiller's rounds and their mints, with the provider's calls.
	var rounds, mints, refillCalls int
	for _, s := range spans {
		switch s.Name {
		case "pool.refill":
			rounds++
		case "pool.mint":
			mints++
			for _, c := range spans {
				if c.Parent.SpanID() == s.SpanContext.SpanID() && attr(c, "tokenpool.provider") == "orga" {
					refillCalls++
				}
			}
		}
	}
	if rounds == 0 || mints < 2 || refillCalls < 2*mints {
		t.Errorf("refill: %d rounds, %d mints, %d provider calls under them", rounds, mints, refillCalls)
	}

	// No secret anywhere in any span.
	secrets := map[string]string{
		"the Orga key": upstreamtest.DefaultAPIKey, "the OpenAI key": upstreamtest.DefaultOpenAIKey,
		"the JWT secret": testJWTSecret, "the caller JWT": jwt,
		"the email": email, "the email, URL-encoded": url.QueryEscape(email), "the email's user": "dave.doe",
	}
	for i, m := range sim.Minted() {
		secrets[fmt.Sprintf("token %d", i)] = m.Token
		if m.TURNUsername != "" {
			secrets[fmt.Sprintf("TURN username %d", i)] = m.TURNUsername
			secrets[fmt.Sprintf("TURN credential %d", i)] = m.TURNCredential
		}
	}
	if len(sim.Minted()) < 3 {
		t.Fatalf("only %d mints to look for", len(sim.Minted()))
	}
	spans = exp.GetSpans()
	for _, s := range spans {
		text := spanText(s)
		for what, secret := range secrets {
			if strings.Contains(text, secret) {
				t.Errorf("span %q carries %s:\n%s", s.Name, what, text)
			}
		}
	}
	t.Logf("%d spans searched for %d secrets", len(spans), len(secrets))
}

func inTrace(spans tracetest.SpanStubs, traceID string) tracetest.SpanStubs {
	var out tracetest.SpanStubs
	for _, s := range spans {
		if s.SpanContext.TraceID().String() == traceID {
			out = append(out, s)
		}
	}
	return out
}

func attr(s tracetest.SpanStub, key string) string {
	for _, a := range s.Attributes {
		if string(a.Key) == key {
			return a.Value.Emit()
		}
	}
	return ""
}

func describe(spans tracetest.SpanStubs) string {
	var b strings.Builder
	for _, s := range spans {
		fmt.Fprintf(&b, "  %s %q (%s)\n", s.SpanKind, s.Name, s.InstrumentationScope.Name)
	}
	return b.String()
}

// spanText is everything a span carries, as text.
func spanText(s tracetest.SpanStub) string {
	var b strings.Builder
	kv := func(attrs []attribute.KeyValue) {
		for _, a := range attrs {
			fmt.Fprintf(&b, "%s=%s\n", a.Key, a.Value.Emit())
		}
	}
	fmt.Fprintf(&b, "name=%s\nstatus=%s %s\n", s.Name, s.Status.Code, s.Status.Description)
	kv(s.Attributes)
	for _, e := range s.Events {
		fmt.Fprintf(&b, "event=%s\n", e.Name)
		kv(e.Attributes)
	}
	for _, l := range s.Links {
		kv(l.Attributes)
	}
	if s.Resource != nil {
		kv(s.Resource.Attributes())
	}
	return b.String()
}

// TestTracingIsSwitchedByTheStandardVariables: on with an OTLP endpoint
// or OTEL_TRACES_EXPORTER=otlp, off by default and with none; another
// exporter or a gRPC protocol is refused at start, naming the variable.
func TestTracingIsSwitchedByTheStandardVariables(t *testing.T) {
	base := map[string]string{"ORGA_API_KEY": "k", "TOKENPOOL_JWT_SECRET": testJWTSecret}
	with := func(kv ...string) map[string]string {
		env := map[string]string{}
		for k, v := range base {
			env[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			env[kv[i]] = kv[i+1]
		}
		return env
	}
	for _, c := range []struct {
		env  map[string]string
		on   bool
		fail string
	}{
		{with(), false, ""},
		{with("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"), true, ""},
		{with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/v1/traces"), true, ""},
		{with("OTEL_TRACES_EXPORTER", "otlp"), true, ""},
		{with("OTEL_TRACES_EXPORTER", "none", "OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"), false, ""},
		{with("OTEL_SDK_DISABLED", "true", "OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"), false, ""},
		{with("OTEL_TRACES_EXPORTER", "zipkin"), false, "OTEL_TRACES_EXPORTER"},
		{with("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"), false, "OTEL_EXPORTER_OTLP_PROTOCOL"},
	} {
		cfg, err := LoadConfig(envOf(c.env), false)
		switch {
		case c.fail != "" && (err == nil || !strings.Contains(err.Error(), c.fail)):
			t.Errorf("%v: error %v, want one naming %s", c.env, err, c.fail)
		case c.fail == "" && err != nil:
			t.Errorf("%v: %v", c.env, err)
		case c.fail == "" && cfg.Tracing != c.on:
			t.Errorf("%v: tracing %v, want %v", c.env, cfg.Tracing, c.on)
		}
	}
}

// TestTracesAreExportedByOTLPOverHTTP: with OTEL_EXPORTER_OTLP_ENDPOINT
// pointing at a collector (here, a test server decoding OTLP), a request's
// spans reach it by the time the daemon has stopped, under the service
// name tokenpoold.
func TestTracesAreExportedByOTLPOverHTTP(t *testing.T) {
	var (
		mu       sync.Mutex
		services = map[string]bool{}
		names    = map[string]bool{}
	)
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req coltracepb.ExportTraceServiceRequest
		if r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
			http.Error(w, "not OTLP traces", http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, rs := range req.ResourceSpans {
			for _, a := range rs.GetResource().GetAttributes() {
				if a.Key == "service.name" {
					services[a.GetValue().GetStringValue()] = true
				}
			}
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					names[s.Name] = true
				}
			}
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		b, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		_, _ = w.Write(b)
	}))
	defer collector.Close()
	// The SDK reads the process's environment.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.URL)
	t.Setenv("OTEL_SERVICE_NAME", "")

	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": collector.URL})
	if !d.Config.Tracing {
		t.Fatal("tracing is off with OTEL_EXPORTER_OTLP_ENDPOINT set")
	}
	if r := fetch(t, d.url, callerJWT(t, "erin")); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil { // flushes the batch
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !services["tokenpoold"] || !names["POST /v1/session-config"] {
		t.Fatalf("the collector received services %v, spans %v", services, names)
	}
}
