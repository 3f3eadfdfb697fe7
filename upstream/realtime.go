package upstream

import (
	"context"
	"errors"
	"net/http"
	"slices"
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
	// OnDemand limits what a request may choose when no pooled profile has
	// its session. default: anything, as Navai allows
	OnDemand OnDemand
	// Restricted are the models and voices of profiles with an access
	// rule: an on-demand session using one needs the caller to be allowed
	// that profile, so the rule can't be got around by asking for the same
	// voice with other instructions. default: none
	Restricted []Restricted
}

// OnDemand limits the sessions a Navai request may have minted on demand
// (those no pooled profile has). The zero value allows any.
type OnDemand struct {
	PooledOnly bool     // refuse every session no pooled profile has
	Models     []string // the models allowed; empty: any
	Voices     []string // the voices allowed; empty: any
}

// Restricted is a model or voice that a profile with an access rule sets;
// an empty field restricts nothing.
type Restricted struct {
	Profile      string
	Model, Voice string
}

// Realtime answers Navai's client secret route: Navai's rules resolve the
// key and session; a session a pooled profile has is served from that
// pool, any other is minted on demand and never pooled; a caller's own key
// is always minted on demand, never pooled, logged or stored. It is safe
// for concurrent use.
type Realtime struct {
	cfg        RealtimeConfig
	names      []string     // Pooled names, sorted
	restricted []Restricted // cfg.Restricted less what the realtime profile itself offers
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
	// The realtime profile's own model and voice are open to whoever may
	// use it, whichever other profile also names them.
	own := cfg.Options.Session(NavaiRequest{})
	for _, x := range cfg.Restricted {
		if x.Model == own.Model {
			x.Model = ""
		}
		if x.Voice == own.Voice {
			x.Voice = ""
		}
		if x.Model != "" || x.Voice != "" {
			r.restricted = append(r.restricted, x)
		}
	}
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
	if err := r.onDemand(session, may); err != nil {
		return pool.Handout{}, err
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

// onDemand checks that a session no pooled profile serves may be minted
// for this caller: no restricted model or voice the caller isn't allowed,
// and what the realtime profile's OnDemand allows. A caller's own key is
// held to the same rules.
func (r *Realtime) onDemand(s RealtimeSession, may func(profile string) bool) error {
	for _, x := range r.restricted {
		if (x.Model == s.Model || x.Voice == s.Voice) && !may(x.Profile) {
			return pool.ErrNotAllowed
		}
	}
	refuse := func(msg string) error { return &pool.RequestError{Status: http.StatusForbidden, Message: msg} }
	switch p := r.cfg.OnDemand; {
	case p.PooledOnly:
		return refuse("only the server's pooled sessions are offered: leave model, voice, instructions, language, accent and tone out")
	case len(p.Models) > 0 && !slices.Contains(p.Models, s.Model):
		return refuse("that model is not offered; ask for one the server allows, or leave it out")
	case len(p.Voices) > 0 && !slices.Contains(p.Voices, s.Voice):
		return refuse("that voice is not offered; ask for one the server allows, or leave it out")
	}
	return nil
}
