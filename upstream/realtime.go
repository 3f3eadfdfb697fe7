package upstream

import (
	"errors"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/tokenpool/tokenpool/mint"
)

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
	// Guard wraps on-demand mints with the backend key (the profile's
	// breaker and quota). Mints with a caller's own key bypass it: their
	// failures say nothing about our account.
	Guard *Guard
	// BaseURL of the OpenAI API and Client for on-demand mints.
	BaseURL string
	Client  *http.Client
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

// Restricted is the model and voice of the session a profile with an
// access rule resolves to (Navai's defaults included); an empty field
// restricts nothing.
type Restricted struct {
	Profile      string
	Model, Voice string
}

// datedSnapshot is the date an OpenAI model snapshot's name ends with:
// gpt-realtime-2025-08-28 is a snapshot the alias gpt-realtime points to
// (https://platform.openai.com/docs/models/gpt-realtime, "Snapshots").
var datedSnapshot = regexp.MustCompile(`-\d{4}-\d{2}-\d{2}$`)

// SameModel reports whether two model names (neither empty) may name one
// model at the provider: compared without case and spaces around, and a
// dated snapshot as the alias it belongs to. It errs towards the same, as
// what it guards is a restriction.
func SameModel(a, b string) bool {
	norm := func(s string) string {
		return datedSnapshot.ReplaceAllString(strings.ToLower(strings.TrimSpace(s)), "")
	}
	return a != "" && b != "" && norm(a) == norm(b)
}

// SameVoice reports whether two voice names (neither empty) may name one
// voice at the provider: compared without case and spaces around.
func SameVoice(a, b string) bool {
	return a != "" && b != "" && strings.EqualFold(strings.TrimSpace(a), strings.TrimSpace(b))
}

// Realtime resolves a request to Navai's client secret route by Navai's
// rules into a Plan: the key and session; a session a pooled profile has
// is served from that pool, any other is minted on demand (never pooled);
// a caller's own key is always minted on demand, never pooled, logged or
// stored. It decides nothing about the caller: the Plan names the profiles
// the caller must be allowed. It is safe for concurrent use.
type Realtime struct {
	cfg        RealtimeConfig
	names      []string     // Pooled names, sorted
	restricted []Restricted // cfg.Restricted less what the realtime profile itself offers
}

// NewRealtime returns a Realtime.
func NewRealtime(cfg RealtimeConfig) (*Realtime, error) {
	if cfg.Profile == "" {
		return nil, errors.New("upstream: realtime: Profile is required")
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
	own := cfg.Options.Session(mint.NavaiRequest{})
	for _, x := range cfg.Restricted {
		if SameModel(x.Model, own.Model) {
			x.Model = ""
		}
		if SameVoice(x.Voice, own.Voice) {
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

// Profile is the realtime profile: the Navai routes' own.
func (r *Realtime) Profile() string { return r.cfg.Profile }

// Resolve plans the answer to a Navai request. Its error is the request's
// fault (its key); it is answered after checking the caller may use the
// realtime profile, as Navai's handler checks nothing else first.
func (r *Realtime) Resolve(req mint.NavaiRequest) (mint.Plan, error) {
	var plan mint.Plan
	key, fromRequest, err := r.cfg.Options.Key(req)
	if err != nil {
		return mint.Plan{}, err
	}
	session := r.cfg.Options.Session(req)
	if !fromRequest {
		for _, name := range r.names {
			if r.cfg.Pooled[name] == session {
				// On demand would hand out the same session around its rule.
				plan.Needs, plan.Pooled = append(plan.Needs, name), name
				return plan, nil
			}
		}
	}
	for _, x := range r.restricted {
		if SameModel(x.Model, session.Model) || SameVoice(x.Voice, session.Voice) {
			plan.Needs = append(plan.Needs, x.Profile)
		}
	}
	if plan.Refused = r.onDemand(session); plan.Refused != nil {
		return plan, nil
	}
	o, err := NewOpenAI(OpenAIConfig{APIKey: key, BaseURL: r.cfg.BaseURL, Session: session, Client: r.cfg.Client})
	if err != nil {
		plan.Refused = &mint.Error{Code: mint.CodeInvalid, Message: err.Error()}
		return plan, nil
	}
	plan.Minter, plan.Label = o, LabelOpenAIRequestKey
	if !fromRequest {
		plan.Label = LabelOpenAISettings
		if r.cfg.Guard != nil {
			plan.Minter = r.cfg.Guard.Wrap(o)
		}
	}
	return plan, nil
}

// onDemand checks a session no pooled profile serves against what the
// realtime profile's OnDemand allows. A caller's own key is held to the
// same rules.
func (r *Realtime) onDemand(s RealtimeSession) error {
	refuse := func(msg string) error { return &mint.Error{Code: mint.CodeForbidden, Message: msg} }
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
