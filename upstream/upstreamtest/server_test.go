package upstreamtest

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func mint(t *testing.T, s *Server, key string) (int, http.Header, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, s.URL()+"/v1/realtime/client-secrets", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return resp.StatusCode, resp.Header, m
}

func start(t *testing.T, cfg Config) *Server {
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSimulator(t *testing.T) {
	t.Run("the reference shape has a zone-less UTC expires_at and a JWT with a real exp", func(t *testing.T) {
		s := start(t, Config{TTL: time.Minute})
		code, _, m := mint(t, s, DefaultAPIKey)
		if code != 200 || m["token_type"] != "bearer" {
			t.Fatalf("%d %v", code, m)
		}
		exp, err := time.Parse("2006-01-02T15:04:05.999999", m["expires_at"].(string))
		if err != nil || time.Until(exp) < 55*time.Second || time.Until(exp) > 61*time.Second {
			t.Fatalf("expires_at %v: %v", m["expires_at"], err)
		}
		var c jwt.RegisteredClaims
		if _, _, err := jwt.NewParser().ParseUnverified(m["ephemeral_token"].(string), &c); err != nil || c.ExpiresAt == nil {
			t.Fatalf("token is not a JWT with exp: %v", err)
		}
	})
	t.Run("the guide shape has ephemeralToken and whole-second ttl", func(t *testing.T) {
		s := start(t, Config{Shape: ShapeGuide, TTL: 90500 * time.Millisecond})
		_, _, m := mint(t, s, DefaultAPIKey)
		if m["ephemeralToken"] == nil || m["ttl"] != 90.0 {
			t.Fatalf("%v", m)
		}
	})
	t.Run("a wrong key and the reject mode answer 401", func(t *testing.T) {
		s := start(t, Config{})
		if code, _, _ := mint(t, s, "sk_orga_ai_wrong"); code != 401 {
			t.Fatalf("wrong key: %d", code)
		}
		s.RejectKey(true)
		if code, _, _ := mint(t, s, DefaultAPIKey); code != 401 {
			t.Fatalf("reject mode: %d", code)
		}
		if c := s.Counts(); c.Unauthorized != 2 || c.Minted != 0 {
			t.Fatalf("counts %+v", c)
		}
	})
	t.Run("past the quota it answers 429 with Retry-After", func(t *testing.T) {
		t0 := time.Now() // its clock stands still: one quota window
		s := start(t, Config{Quota: 2, RetryAfter: 3 * time.Second, Now: func() time.Time { return t0 }})
		mint(t, s, DefaultAPIKey)
		mint(t, s, DefaultAPIKey)
		code, h, _ := mint(t, s, DefaultAPIKey)
		if code != 429 || h.Get("Retry-After") != "3" {
			t.Fatalf("%d Retry-After %q", code, h.Get("Retry-After"))
		}
	})
	t.Run("a failure rate of 1 fails every mint with 500", func(t *testing.T) {
		s := start(t, Config{FailureRate: 1})
		if code, _, _ := mint(t, s, DefaultAPIKey); code != 500 {
			t.Fatalf("%d", code)
		}
	})
	t.Run("ice-config needs a live token and gives its TURN credentials", func(t *testing.T) {
		s := start(t, Config{})
		_, _, m := mint(t, s, DefaultAPIKey)
		tok := m["ephemeral_token"].(string)
		for _, c := range []struct {
			token string
			want  int
		}{{tok, 200}, {"forged", 401}} {
			req, _ := http.NewRequest(http.MethodGet, s.URL()+"/v1/realtime/ice-config", nil)
			req.Header.Set("Authorization", "Bearer "+c.token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Fatalf("token %.8s: %d, want %d", c.token, resp.StatusCode, c.want)
			}
		}
		rec, ok := s.Lookup(tok)
		if !ok || !rec.ICEFetched || rec.TURNCredential == "" {
			t.Fatalf("record %+v", rec)
		}
	})
	t.Run("a token starts a session once", func(t *testing.T) {
		s := start(t, Config{})
		_, _, m := mint(t, s, DefaultAPIKey)
		tok := m["ephemeral_token"].(string)
		if err := s.Consume(tok); err != nil {
			t.Fatal(err)
		}
		if err := s.Consume(tok); err != ErrRejected {
			t.Fatalf("second use: %v", err)
		}
	})
}
