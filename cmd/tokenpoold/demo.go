package main

import (
	"crypto/rand"
	"fmt"
	"net"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokenpool/tokenpool/upstream"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// demo is what -demo adds: the simulated provider in-process and a random
// JWT secret, so the daemon runs with nothing configured.
type demo struct {
	sim *upstreamtest.Server
}

// demoLatency is the simulated provider's delay per call; a mint makes two
// calls, in the 150–600 ms a real exchange costs.
const demoLatency = 120 * time.Millisecond

// startDemo starts the simulated provider and points cfg at it.
func startDemo(cfg *Config) (*demo, error) {
	sim, err := upstreamtest.Start(upstreamtest.Config{TTL: 120 * time.Second, Latency: demoLatency})
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	// Both providers, simulated: Orga as "default", OpenAI Realtime with
	// Navai's defaults as "realtime".
	navai := upstream.NavaiOptions{APIKey: upstreamtest.DefaultOpenAIKey, TTLSeconds: upstream.NavaiDefaultTTLSeconds}
	cfg.Profiles = Profiles{
		List: []Profile{
			{Name: "default", Provider: "orga", Target: cfg.PoolTarget, MaxTarget: cfg.PoolMax, MinRemaining: cfg.MinRemaining,
				OrgaAPIKey: upstreamtest.DefaultAPIKey, OrgaBaseURL: sim.URL(), KeyEnv: "ORGA_API_KEY"},
			{Name: "realtime", Provider: "openai", Target: cfg.PoolTarget, MaxTarget: cfg.PoolMax, MinRemaining: cfg.MinRemaining,
				Navai: navai, OpenAIBaseURL: sim.URL(), KeyEnv: "OPENAI_API_KEY"},
		},
		Default: "default", Realtime: "realtime",
	}
	if len(cfg.JWTSecret) == 0 {
		cfg.JWTSecret = make([]byte, minJWTSecret)
		_, _ = rand.Read(cfg.JWTSecret)
	}
	return &demo{sim: sim}, nil
}

// announce prints one line starting with "curl " that fetches a
// credential as it stands: a caller JWT valid for a day, signed with the
// demo's secret. It goes to stdout, never to the logs.
func (d *demo) announce(m *Main) error {
	now := time.Now()
	claims := jwt.RegisteredClaims{
		Subject:   "demo-user",
		Issuer:    m.Config.JWTIssuer,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(24 * time.Hour)),
	}
	if len(m.Config.JWTAudiences) > 0 {
		claims.Audience = jwt.ClaimStrings{m.Config.JWTAudiences[0]}
	}
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(m.Config.JWTSecret)
	if err != nil {
		return fmt.Errorf("demo: sign caller JWT: %w", err)
	}
	host, port, _ := net.SplitHostPort(m.Addr())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	_, err = fmt.Fprintf(m.Stdout, "curl -sS -X POST -H 'Authorization: Bearer %s' http://%s/v1/session-config\n",
		token, net.JoinHostPort(host, port))
	return err
}

// Close stops the simulated provider.
func (d *demo) Close() { _ = d.sim.Close() }
