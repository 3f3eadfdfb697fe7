package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokenpool/tokenpool/mint"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

func startSim(tb testing.TB, cfg upstreamtest.Config) *upstreamtest.Server {
	tb.Helper()
	sim, err := upstreamtest.Start(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sim.Close() })
	return sim
}

func newOrga(tb testing.TB, base, key string) *Orga {
	tb.Helper()
	o, err := NewOrga(OrgaConfig{APIKey: key, BaseURL: base})
	if err != nil {
		tb.Fatal(err)
	}
	return o
}

func TestOrgaMintsFromEveryAnswerShape(t *testing.T) {
	for _, shape := range []upstreamtest.Shape{upstreamtest.ShapeReference, upstreamtest.ShapeGuide, upstreamtest.ShapeTokenOnly} {
		t.Run(shape.String(), func(t *testing.T) {
			sim := startSim(t, upstreamtest.Config{Shape: shape, TTL: 90 * time.Second})
			c, err := newOrga(t, sim.URL(), upstreamtest.DefaultAPIKey).Mint(context.Background(), mint.Request{})
			if err != nil {
				t.Fatal(err)
			}
			m, ok := sim.Lookup(c.Token)
			if !ok {
				t.Fatalf("token %q was not minted by the provider", c.Token)
			}
			if d := c.ExpiresAt.Sub(m.ExpiresAt); d < -time.Second || d > time.Second {
				t.Fatalf("expiry %v, provider says %v", c.ExpiresAt, m.ExpiresAt)
			}
			var ice []struct {
				URLs       any    `json:"urls"`
				Username   string `json:"username"`
				Credential string `json:"credential"`
			}
			if err := json.Unmarshal(c.ICEServers, &ice); err != nil || len(ice) != 2 {
				t.Fatalf("ice servers %s: %v", c.ICEServers, err)
			}
			if ice[1].Username != m.TURNUsername || ice[1].Credential != m.TURNCredential {
				t.Fatalf("TURN credentials are not the ones issued for this token")
			}
		})
	}
}

func TestOrgaExpiry(t *testing.T) {
	sent := time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)
	withExp, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		ExpiresAt: jwt.NewNumericDate(sent.Add(3 * time.Minute)),
	}).SignedString([]byte("k"))
	noExp, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{}).SignedString([]byte("k"))
	ttl := 120.0

	tests := []struct {
		name  string
		sec   string
		token string
		want  time.Time
	}{
		{"expires_at without a zone is UTC", `{"expires_at":"2026-11-22T08:55:05.675222"}`, withExp,
			time.Date(2026, 11, 22, 8, 55, 5, 675222000, time.UTC)},
		{"expires_at with a zone keeps it", `{"expires_at":"2026-11-22T09:55:05+01:00"}`, withExp,
			time.Date(2026, 11, 22, 8, 55, 5, 0, time.UTC)},
		{"expires_at as Unix seconds", `{"expires_at":1795337705}`, withExp, time.Unix(1795337705, 0)},
		{"ttl counts from when the mint was sent", `{"ttl":120}`, withExp, sent.Add(time.Duration(ttl) * time.Second)},
		{"expires_at wins over ttl", `{"expires_at":"2026-11-22T08:01:00","ttl":120}`, withExp,
			time.Date(2026, 11, 22, 8, 1, 0, 0, time.UTC)},
		{"the JWT exp is the last resort", `{}`, withExp, sent.Add(3 * time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sec orgaSecret
			if err := json.Unmarshal([]byte(tt.sec), &sec); err != nil {
				t.Fatal(err)
			}
			got, err := orgaExpiry(sec, tt.token, sent)
			if err != nil || !got.Equal(tt.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}

	bad := []struct{ name, sec, token string }{
		{"no expiry anywhere is an error", `{}`, noExp},
		{"an unreadable expires_at is an error", `{"expires_at":"tomorrow"}`, withExp},
		{"an opaque token without expiry is an error", `{}`, "not-a-jwt"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			var sec orgaSecret
			_ = json.Unmarshal([]byte(tt.sec), &sec)
			if _, err := orgaExpiry(sec, tt.token, sent); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}

func TestOrgaRejectsUnusableAnswers(t *testing.T) {
	tests := []struct {
		name      string
		mint, ice string
	}{
		{"no token", `{"ttl":60}`, `{"iceServers":[{"urls":"stun:x"}]}`},
		{"mint answer not JSON", `<html>`, `{"iceServers":[{"urls":"stun:x"}]}`},
		{"no ice servers", `{"ephemeralToken":"t","ttl":60}`, `{"iceServers":[]}`},
		{"ice server without urls", `{"ephemeralToken":"t","ttl":60}`, `{"iceServers":[{"username":"u"}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodPost {
					w.Write([]byte(tt.mint))
					return
				}
				w.Write([]byte(tt.ice))
			}))
			defer srv.Close()
			_, err := newOrga(t, srv.URL, "k").Mint(context.Background(), mint.Request{})
			var pe *protocolError
			if !errors.As(err, &pe) || retryable(err) {
				t.Fatalf("got %v; want a protocol error that is not retried", err)
			}
		})
	}
}

func TestOrgaErrorsCarryNoSecrets(t *testing.T) {
	const key = "sk_orga_ai_secretsecret"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "7")
		w.WriteHeader(http.StatusTooManyRequests)
		w.Write([]byte(`{"detail":"slow down, ` + strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ") + `"}`))
	}))
	defer srv.Close()
	_, err := newOrga(t, srv.URL, key).Mint(context.Background(), mint.Request{})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 429 || se.RetryAfter != 7*time.Second {
		t.Fatalf("got %v", err)
	}
	if strings.Contains(err.Error(), key) {
		t.Fatalf("error %q contains the API key", err)
	}
}

func TestOrgaBadKeyMatchesErrBadKey(t *testing.T) {
	sim := startSim(t, upstreamtest.Config{})
	_, err := newOrga(t, sim.URL(), "sk_orga_ai_wrong").Mint(context.Background(), mint.Request{})
	if !errors.Is(err, ErrBadKey) || retryable(err) {
		t.Fatalf("got %v; want ErrBadKey, not retryable", err)
	}
}

func TestOrgaHonoursTheDeadline(t *testing.T) {
	sim := startSim(t, upstreamtest.Config{Latency: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := newOrga(t, sim.URL(), upstreamtest.DefaultAPIKey).Mint(ctx, mint.Request{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v; want the deadline", err)
	}
}

func TestGuardedOrgaPausesOnTheProvidersQuota(t *testing.T) {
	t0 := time.Now() // the provider's clock stands still: one quota window
	sim := startSim(t, upstreamtest.Config{Quota: 1, RetryAfter: 2 * time.Second, Now: func() time.Time { return t0 }})
	g := NewGuard(GuardConfig{Provider: "orga"})
	m := g.Wrap(newOrga(t, sim.URL(), upstreamtest.DefaultAPIKey))
	if _, err := m.Mint(context.Background(), mint.Request{}); err != nil {
		t.Fatal(err)
	}
	_, err := m.Mint(context.Background(), mint.Request{})
	if !errors.Is(err, mint.ErrUnavailable) || mint.RetryAfter(err) != 2*time.Second {
		t.Fatalf("over quota: %v (retry after %v); want unavailable for 2s", err, mint.RetryAfter(err))
	}
	before := sim.Counts().MintCalls
	if _, err := m.Mint(context.Background(), mint.Request{}); !errors.Is(err, mint.ErrUnavailable) || sim.Counts().MintCalls != before {
		t.Fatalf("during the pause: %v; want unavailable without a call", err)
	}
}
