package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/upstream"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// demo is what -demo adds: the simulated provider in-process and a random
// JWT secret, so the daemon runs with nothing configured.
type demo struct {
	sim  *upstreamtest.Server
	stop context.CancelFunc // ends a wait for the pool
	done chan struct{}      // closed once announce's goroutine returns
}

// demoLatency is the simulated provider's delay per call; a mint makes two
// calls, in the 150–600 ms a real exchange costs.
const demoLatency = 120 * time.Millisecond

// demoFillWait bounds the wait for the pool to hold its floor before the
// curl line is printed anyway.
const demoFillWait = 30 * time.Second

// startDemo starts the simulated provider and points cfg at it.
func startDemo(cfg *Config) (*demo, error) {
	sim, err := upstreamtest.Start(upstreamtest.Config{TTL: 120 * time.Second, Latency: demoLatency})
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	// Three providers, simulated: Orga as "default", OpenAI Realtime with
	// Navai's defaults as "realtime", and Gemini Live with its preset's
	// defaults as "gemini" (the simulator speaks every preset).
	navai := upstream.NavaiOptions{APIKey: upstreamtest.DefaultOpenAIKey, TTLSeconds: upstream.NavaiDefaultTTLSeconds}
	orga := newProfile("default", "orga", cfg)
	orga.Orga, orga.KeyEnv = upstream.OrgaConfig{APIKey: upstreamtest.DefaultAPIKey, BaseURL: sim.URL()}, "ORGA_API_KEY"
	openai := newProfile("realtime", "openai", cfg)
	openai.Navai, openai.OpenAIBaseURL, openai.KeyEnv = navai, sim.URL(), "OPENAI_API_KEY"
	gemini := newProfile("gemini", "gemini", cfg)
	preset, _ := upstream.PresetByName("gemini")
	if gemini.Endpoint, _, err = preset.Endpoint(sim.URL(), nil); err != nil {
		_ = sim.Close()
		return nil, fmt.Errorf("demo: %w", err)
	}
	gemini.Key, gemini.KeyEnv = upstreamtest.PresetKey("gemini"), "GEMINI_API_KEY"
	cfg.Profiles = Profiles{List: []Profile{orga, gemini, openai}, Default: "default", Realtime: "realtime"}
	if len(cfg.JWTSecret) == 0 {
		cfg.JWTSecret = make([]byte, minJWTSecret)
		_, _ = rand.Read(cfg.JWTSecret)
	}
	return &demo{sim: sim}, nil
}

// announce prints the curl line once the default profile's pool holds
// its floor, so that the first credential a new user fetches comes from
// the pool. It waits in the background: Open returns at once.
func (d *demo) announce(m *Main) {
	ctx, stop := context.WithCancel(context.Background())
	d.stop, d.done = stop, make(chan struct{})
	go func() {
		defer close(d.done)
		defer stop()
		name := m.Config.Profiles.Default
		floor := 0
		if p, ok := m.Config.Profiles.Get(name); ok {
			floor = p.Target
		}
		m.log.Info("demo: filling the pool before printing the curl line", "profile", name, "floor", floor)
		err := poll.Wait(ctx, demoFillWait, func() bool {
			st, err := m.pool.Stats(ctx, name)
			return err == nil && st.Usable >= floor
		})
		if err != nil {
			if ctx.Err() != nil {
				return // shutting down
			}
			m.log.Warn("demo: the pool did not reach its floor; printing the curl line anyway", "err", err)
		}
		if err := d.printCurl(m); err != nil {
			m.log.Error("demo", "err", err)
		}
	}()
}

// printCurl prints two lines starting with "curl " that fetch a
// credential as they stand: the default (Orga) profile's from
// /v1/session-config, and the Gemini profile's from /v1/credentials, with
// a caller JWT valid for a day, signed with the demo's secret. They go to
// stdout, never to the logs.
func (d *demo) printCurl(m *Main) error {
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
	base := "http://" + net.JoinHostPort(host, port)
	_, err = fmt.Fprintf(m.Stdout, "curl -sS -X POST -H 'Authorization: Bearer %s' %s/v1/session-config\n"+
		"curl -sS -X POST -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' -d '{\"profile\":\"gemini\"}' %s/v1/credentials\n",
		token, base, token, base)
	return err
}

// Close ends a wait for the pool, then stops the simulated provider.
func (d *demo) Close() {
	if d.stop != nil {
		d.stop()
		<-d.done
	}
	_ = d.sim.Close()
}
