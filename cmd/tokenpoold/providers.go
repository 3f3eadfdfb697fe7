package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/pool"
	"github.com/tokenpool/tokenpool/upstream"
)

// A preset's profile block: api_key_env, base_url (and, for a provider
// whose key is a pair, secret_key_env), then the preset's own settings.
var presetCommon = []string{"api_key_env", "base_url", "secret_key_env"}

// httpSpec is an http profile's block: any JSON token endpoint.
type httpSpec struct {
	// Name names the provider in answers, metrics and its breaker.
	// default: the profile's name
	Name      string            `yaml:"name"`
	APIKeyEnv string            `yaml:"api_key_env"`
	Method    string            `yaml:"method"`
	URL       string            `yaml:"url"`
	KeyHeader string            `yaml:"key_header"`
	KeyScheme string            `yaml:"key_scheme"`
	Headers   map[string]string `yaml:"headers"`
	Body      map[string]any    `yaml:"body"`
	Token     string            `yaml:"token"`
	ExpiresAt string            `yaml:"expires_at"`
	ExpiresIn string            `yaml:"expires_in"`
	TTL       *int              `yaml:"ttl_seconds"`
	Extras    map[string]string `yaml:"extras"`
}

var providerNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// resolvePreset reads a preset profile's block: its key from the
// environment, and its settings against the preset's.
func resolvePreset(p *Profile, pr *upstream.Preset, block *yaml.Node, key keyReader) error {
	raw := map[string]any{}
	if block.Kind != 0 {
		if err := block.Decode(&raw); err != nil {
			return fmt.Errorf("%s: want a map of settings: %w", pr.Name, err)
		}
	}
	str := func(k string) (string, error) {
		v, ok := raw[k]
		delete(raw, k)
		if !ok {
			return "", nil
		}
		s, isStr := v.(string)
		if !isStr || s == "" {
			return "", fmt.Errorf("%s.%s: want text, got %v", pr.Name, k, v)
		}
		return s, nil
	}
	keyEnv, err := str("api_key_env")
	if err != nil {
		return err
	}
	secretEnv, err := str("secret_key_env")
	if err != nil {
		return err
	}
	base, err := str("base_url")
	if err != nil {
		return err
	}
	if p.KeyEnv, p.Key, err = key(pr.Name+".api_key_env", keyEnv, pr.KeyEnv); err != nil {
		return err
	}
	if p.Key == "" {
		return fmt.Errorf("%s.api_key_env: %s is not set", pr.Name, p.KeyEnv)
	}
	switch {
	case pr.SecretEnv != "":
		env, secret, err := key(pr.Name+".secret_key_env", secretEnv, pr.SecretEnv)
		if err != nil {
			return err
		}
		if secret == "" {
			return fmt.Errorf("%s.secret_key_env: %s is not set", pr.Name, env)
		}
		p.Key += ":" + secret
		p.KeyEnv += " and " + env
	case secretEnv != "":
		return fmt.Errorf("%s.secret_key_env: %s takes one key", pr.Name, pr.Name)
	}
	if p.Endpoint, _, err = pr.Endpoint(base, raw); err != nil {
		return fmt.Errorf("%s.%w", pr.Name, err)
	}
	return nil
}

// checkLife refuses a token life (field) that leaves a handout nothing
// above the profile's least remaining life: every credential would be
// wasted before its first caller.
func checkLife(p Profile, field string) error {
	least := cmp.Or(p.MinRemaining, pool.DefaultMinRemaining) + pool.DefaultMaxClockSkew
	if ttl := p.Endpoint.TTL; ttl > 0 && ttl <= least {
		return fmt.Errorf("%s: a token that lives %s is never handed out: a handout needs min_remaining (%s) and %s of clock skew left; want more, or a shorter min_remaining",
			field, ttl, cmp.Or(p.MinRemaining, pool.DefaultMinRemaining), pool.DefaultMaxClockSkew)
	}
	return nil
}

// resolveHTTP reads an http profile's block: an endpoint none of the
// presets describe.
func resolveHTTP(p *Profile, s *httpSpec, key keyReader) error {
	if s == nil {
		return errors.New("http: describe the endpoint (method, url, key_header, token, and expires_at, expires_in or ttl_seconds)")
	}
	p.Provider = cmp.Or(s.Name, p.Name)
	if !providerNameRE.MatchString(p.Provider) || upstream.IsProvider(p.Provider) {
		return fmt.Errorf("http.name: the provider's name (default: the profile's): want 1-32 of a-z 0-9 - and no other provider's name, got %q", p.Provider)
	}
	if s.APIKeyEnv == "" {
		return errors.New("http.api_key_env: required: the variable holding the key")
	}
	var err error
	if p.KeyEnv, p.Key, err = key("http.api_key_env", s.APIKeyEnv, ""); err != nil {
		return err
	}
	if p.Key == "" {
		return fmt.Errorf("http.api_key_env: %s is not set", p.KeyEnv)
	}
	e := upstream.Endpoint{
		Provider: p.Provider, Method: strings.ToUpper(cmp.Or(s.Method, http.MethodPost)), URL: s.URL,
		KeyHeader: cmp.Or(s.KeyHeader, "Authorization"), KeyScheme: s.KeyScheme, Header: s.Headers,
		Body: s.Body, Token: s.Token, ExpiresAt: s.ExpiresAt, ExpiresIn: s.ExpiresIn, Extra: s.Extras,
	}
	if e.Method == http.MethodGet && len(s.Body) > 0 {
		return errors.New("http.body: a GET sends no body; use method: POST, or leave body out")
	}
	if s.TTL != nil {
		if *s.TTL < 1 || *s.TTL > int(24*time.Hour/time.Second) {
			return fmt.Errorf("http.ttl_seconds: want 1 to 86400, got %d", *s.TTL)
		}
		e.TTL = time.Duration(*s.TTL) * time.Second
	}
	if err := e.Check(); err != nil {
		return fmt.Errorf("http: %w", err)
	}
	p.Endpoint = e
	return nil
}

// checkFallbacks refuses a fallback that names no profile, or the
// profile itself, and any loop of fallbacks, naming its profiles: a
// fallback serves one hop at most, and a loop is a mistake.
func checkFallbacks(ps Profiles) error {
	next := map[string][]string{}
	for _, p := range ps.List {
		for _, fb := range p.Fallback {
			if _, ok := ps.Get(fb); !ok {
				return fmt.Errorf("profile %q: fallback: no profile %q", p.Name, fb)
			}
			if fb == p.Name {
				return fmt.Errorf("profile %q: fallback: a profile can't fall back to itself", p.Name)
			}
		}
		next[p.Name] = p.Fallback
	}
	// A depth-first walk; a profile met again on the path closes a loop.
	const (
		unseen = iota
		onPath
		done
	)
	state := map[string]int{}
	var path []string
	var walk func(string) error
	walk = func(name string) error {
		state[name] = onPath
		path = append(path, name)
		for _, fb := range next[name] {
			switch state[fb] {
			case onPath:
				i := slices.Index(path, fb)
				return fmt.Errorf("fallback: a loop: %s", strings.Join(append(slices.Clone(path[i:]), fb), " → "))
			case unseen:
				if err := walk(fb); err != nil {
					return err
				}
			}
		}
		path = path[:len(path)-1]
		state[name] = done
		return nil
	}
	for _, p := range ps.List {
		if state[p.Name] == unseen {
			if err := walk(p.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

// providerAdmin lifts a provider's pause and open breaker: the fleet's
// flags in Redis, and this replica's own pause at once.
type providerAdmin struct {
	shared *upstream.Shared
	guards map[string]*upstream.Guard
}

func (a providerAdmin) Resume(ctx context.Context, provider string) ([]string, error) {
	// The fleet's flags first: a mint reading them between the two steps
	// reads them lifted, or is one the local resume marks stale.
	lifted, err := a.shared.Resume(ctx, provider)
	if g := a.guards[provider]; g != nil {
		g.Resume()
	}
	return lifted, err
}

func rateString(l limiter.Limit) string {
	if l.Rate == 0 {
		return "unlimited"
	}
	return fmt.Sprintf("%d/%s", l.Rate, l.Period)
}
