package upstream

import (
	"context"
	"errors"
	"net/http"
	"sort"
	"time"

	"github.com/tokenpool/tokenpool/pool"
)

// RealtimePool is what Realtime needs of the pool.
type RealtimePool interface {
	Get(ctx context.Context, profile, requestID string) (pool.Handout, error)
	MintOnce(ctx context.Context, profile string, m pool.Minter, label string, minRemaining time.Duration) (pool.Handout, error)
}

// RealtimeConfig configures Realtime.
type RealtimeConfig struct {
	// Profile is the realtime profile: Options are its defaults and key
	// policy, its access rule governs the Navai routes, and on-demand mints
	// are bounded under it. Required.
	Profile string
	Options NavaiOptions
	// Pooled are the OpenAI profiles that keep a pool, by name: a request
	// whose session matches one is served from it.
	Pooled map[string]RealtimeSession
	Pool   RealtimePool // required
	// Guard wraps on-demand mints with the backend key (the profile's
	// breaker and quota). Mints with a caller's own key bypass it: their
	// failures say nothing about our account.
	Guard *Guard
	// BaseURL of the OpenAI API and Client for on-demand mints.
	BaseURL string
	Client  *http.Client
	// MinRemaining is the least life of an on-demand credential.
	MinRemaining time.Duration
}

// Realtime answers Navai's client secret route: Navai's rules resolve the
// key and session; a session a pooled profile has is served from that
// pool, any other is minted on demand and never pooled; a caller's own key
// is always minted on demand, never pooled, logged or stored. It is safe
// for concurrent use.
type Realtime struct {
	cfg   RealtimeConfig
	names []string // Pooled names, sorted
}

// NewRealtime returns a Realtime.
func NewRealtime(cfg RealtimeConfig) (*Realtime, error) {
	if cfg.Profile == "" || cfg.Pool == nil {
		return nil, errors.New("upstream: realtime: Profile and Pool are required")
	}
	if err := cfg.Options.Validate(); err != nil {
		return nil, err
	}
	if cfg.Client == nil {
		cfg.Client = NewHTTPClient()
	}
	r := &Realtime{cfg: cfg}
	for name := range cfg.Pooled {
		r.names = append(r.names, name)
	}
	sort.Strings(r.names)
	return r, nil
}

// On-demand mint labels, counted by the pool.
const (
	LabelOpenAISettings   = "openai_settings"    // settings no pooled profile has
	LabelOpenAIRequestKey = "openai_request_key" // the caller's own key
)

// ClientSecret hands one OpenAI client secret to the caller of a Navai
// request. may reports whether the caller may use a profile.
func (r *Realtime) ClientSecret(ctx context.Context, req NavaiRequest, requestID string, may func(profile string) bool) (pool.Handout, error) {
	if !may(r.cfg.Profile) {
		return pool.Handout{}, pool.ErrNotAllowed
	}
	key, fromRequest, err := r.cfg.Options.Key(req)
	if err != nil {
		return pool.Handout{}, err
	}
	session := r.cfg.Options.Session(req)
	if !fromRequest {
		for _, name := range r.names {
			if r.cfg.Pooled[name] != session {
				continue
			}
			if !may(name) {
				// On demand would hand out the same session around the rule.
				return pool.Handout{}, pool.ErrNotAllowed
			}
			return r.cfg.Pool.Get(ctx, name, requestID)
		}
	}
	o, err := NewOpenAI(OpenAIConfig{APIKey: key, BaseURL: r.cfg.BaseURL, Session: session, Client: r.cfg.Client})
	if err != nil {
		return pool.Handout{}, &pool.RequestError{Status: http.StatusBadRequest, Message: err.Error()}
	}
	var m pool.Minter = o
	label := LabelOpenAIRequestKey
	if !fromRequest {
		label = LabelOpenAISettings
		if r.cfg.Guard != nil {
			m = r.cfg.Guard.Wrap(o)
		}
	}
	return r.cfg.Pool.MintOnce(ctx, r.cfg.Profile, m, label, r.cfg.MinRemaining)
}
