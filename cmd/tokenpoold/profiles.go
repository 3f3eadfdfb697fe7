package main

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tokenpool/tokenpool/api"
	"github.com/tokenpool/tokenpool/pool"
	"github.com/tokenpool/tokenpool/upstream"
)

// Profile is one resolved profile. Each part is declared by the package
// that owns its behaviour: the pool's sizing (pool.Profile: name, target,
// ceiling, least life, shards; its Minter is built at start), the API's
// (api.ProfileInfo: the provider and who may use it), and the provider's
// settings (upstream's Orga config or Navai's options).
type Profile struct {
	pool.Profile
	api.ProfileInfo
	KeyEnv string // the variable holding the provider key, for the bad-key log line

	// Orga: the key, base URL and per-caller email mode (no Client: the
	// daemon gives one at start).
	Orga upstream.OrgaConfig
	// OpenAI: Navai's options are the session and the key policy; OnDemand
	// limits what the Navai routes mint on demand (realtime profile only).
	Navai         upstream.NavaiOptions
	OpenAIBaseURL string
	OnDemand      upstream.OnDemand
	// A preset's or an http profile's endpoint, and the key it mints with.
	Endpoint upstream.Endpoint
	Key      string
}

// newProfile is a profile of provider with the configuration's sizing.
// Orga's credentials come with their ICE servers; OpenAI's don't.
func newProfile(name, provider string, cfg *Config) Profile {
	return Profile{
		Profile:     pool.Profile{Name: name, Target: cfg.PoolTarget, MaxTarget: cfg.PoolMax, MinRemaining: cfg.MinRemaining},
		ProfileInfo: api.ProfileInfo{Provider: provider, ICE: provider == "orga"},
	}
}

// Profiles is every profile and which serve requests that name none.
type Profiles struct {
	List     []Profile // sorted by name
	Default  string    // for /v1/session-config and /api/orga-client-secrets
	Realtime string    // for the Navai routes; "" when no OpenAI profile
	// Quotas are the file's default quotas, for every profile without
	// its own.
	Quotas []api.Quota
}

// Get returns the named profile.
func (ps Profiles) Get(name string) (Profile, bool) {
	for _, p := range ps.List {
		if p.Name == name {
			return p, true
		}
	}
	return Profile{}, false
}

// profilesFromEnv is the configuration without TOKENPOOL_CONFIG: an Orga
// profile named "default" when ORGA_API_KEY is set, and an OpenAI profile
// from Navai's variables when OPENAI_API_KEY is set or request keys are
// allowed (NAVAI_ALLOW_FRONTEND_API_KEY=true), named "default" when it is
// the only one, else "realtime". Without OPENAI_API_KEY that profile keeps
// no pool and serves callers' own keys.
func profilesFromEnv(cfg *Config, e *envReader) Profiles {
	var ps Profiles
	if cfg.OrgaAPIKey != "" {
		p := newProfile("default", "orga", cfg)
		p.Orga, p.KeyEnv = upstream.OrgaConfig{APIKey: cfg.OrgaAPIKey, BaseURL: cfg.OrgaBaseURL}, "ORGA_API_KEY"
		ps.List = append(ps.List, p)
		ps.Default = "default"
	}
	if !openAIFromEnv(e.get) {
		return ps // no OpenAI profile: the Navai routes are off
	}
	navai, err := upstream.NavaiOptionsFromEnv(e.get)
	if err != nil {
		e.fail("OPENAI_REALTIME_CLIENT_SECRET_TTL", "is invalid: "+err.Error())
		return ps
	}
	name := "realtime"
	if ps.Default == "" {
		name, ps.Default = "default", "default"
	}
	p := newProfile(name, "openai", cfg)
	if navai.APIKey == "" {
		p.Target = 0 // nothing to pool with: callers bring their own key
	}
	p.Navai, p.OpenAIBaseURL, p.KeyEnv = navai, cfg.OpenAIBaseURL, "OPENAI_API_KEY"
	ps.List = append(ps.List, p)
	ps.Realtime = name
	sort.Slice(ps.List, func(i, j int) bool { return ps.List[i].Name < ps.List[j].Name })
	return ps
}

// openAIFromEnv reports whether the environment asks for an OpenAI
// profile: a backend key, or request keys explicitly allowed. Navai's
// reader owns the key policy; its errors are reported by profilesFromEnv.
func openAIFromEnv(getenv func(string) string) bool {
	o, _ := upstream.NavaiOptionsFromEnv(getenv)
	return o.APIKey != "" || o.AllowRequestKey
}

// The TOKENPOOL_CONFIG file.
type (
	fileSpec struct {
		DefaultProfile  string      `yaml:"default_profile"`
		RealtimeProfile string      `yaml:"realtime_profile"`
		Auth            authSpec    `yaml:"auth"`
		Quotas          []quotaSpec `yaml:"quotas"`
		Profiles        yaml.Node   `yaml:"profiles"`
	}
	authSpec struct {
		Issuers []issuerSpec `yaml:"issuers"`
	}
	issuerSpec struct {
		Name              string   `yaml:"name"`
		Issuer            string   `yaml:"issuer"`
		JWKSURL           string   `yaml:"jwks_url"`
		Audiences         []string `yaml:"audiences"`
		AuthorizedParties []string `yaml:"authorized_parties"`
		Algorithms        []string `yaml:"algorithms"`
		UserClaim         string   `yaml:"user_claim"`
		// AssumeEmailVerified: the issuer's tokens never carry
		// email_verified, and their email counts as verified without it.
		AssumeEmailVerified bool   `yaml:"assume_email_verified"`
		Refresh             string `yaml:"refresh"`
		MinRefetch          string `yaml:"min_refetch"`
	}
	profileSpec struct {
		Provider     string      `yaml:"provider"`
		Target       *int        `yaml:"target"`
		MaxTarget    *int        `yaml:"max_target"`
		Shards       *int        `yaml:"shards"`
		MinRemaining string      `yaml:"min_remaining"`
		Allow        *accessSpec `yaml:"allow"`
		Fallback     []string    `yaml:"fallback"`
		// Quotas: nil, the file's default; an empty list, none.
		Quotas *[]quotaSpec `yaml:"quotas"`
		Orga   *orgaSpec    `yaml:"orga"`
		OpenAI *openaiSpec  `yaml:"openai"`
		HTTP   *httpSpec    `yaml:"http"`
		// Preset holds a preset's block, named after its provider; its
		// settings are the preset's to check.
		Preset map[string]yaml.Node `yaml:",inline"`
	}
	accessSpec struct {
		APIKeys []string            `yaml:"api_keys"`
		Claims  map[string][]string `yaml:"claims"`
	}
	orgaSpec struct {
		APIKeyEnv      string `yaml:"api_key_env"`
		BaseURL        string `yaml:"base_url"`
		PerCallerEmail bool   `yaml:"per_caller_email"`
	}
	openaiSpec struct {
		APIKeyEnv              string        `yaml:"api_key_env"`
		BaseURL                string        `yaml:"base_url"`
		Model                  string        `yaml:"model"`
		Voice                  string        `yaml:"voice"`
		Instructions           string        `yaml:"instructions"`
		Language               string        `yaml:"language"`
		VoiceAccent            string        `yaml:"voice_accent"`
		VoiceTone              string        `yaml:"voice_tone"`
		ClientSecretTTLSeconds *int          `yaml:"client_secret_ttl_seconds"`
		AllowAPIKeyFromRequest bool          `yaml:"allow_api_key_from_request"`
		OnDemand               *onDemandSpec `yaml:"on_demand"`
	}
	onDemandSpec struct {
		PooledOnly bool     `yaml:"pooled_only"`
		Models     []string `yaml:"models"`
		Voices     []string `yaml:"voices"`
	}
)

var (
	issuerNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)
	envNameRE    = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`)
)

// knownFields reports the first key of a mapping node that t (a struct,
// through its yaml tags) doesn't have, with the file's line, and descends
// into nested structs. Decoding alone would name Go types and lose lines.
func knownFields(n *yaml.Node, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode {
		for i, item := range n.Content {
			if err := knownFields(item, t.Elem(), fmt.Sprintf("%s[%d].", strings.TrimSuffix(path, "."), i)); err != nil {
				return err
			}
		}
		return nil
	}
	if t.Kind() != reflect.Struct || n.Kind != yaml.MappingNode {
		return nil
	}
	fields := map[string]reflect.Type{}
	var names []string
	inline := false // an inline map takes the other keys: its owner checks them
	for i := 0; i < t.NumField(); i++ {
		tag, opts, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if opts == "inline" {
			inline = true
			continue
		}
		fields[tag] = t.Field(i).Type
		names = append(names, tag)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		ft, ok := fields[k.Value]
		if !ok && inline {
			continue
		}
		if !ok {
			return fmt.Errorf("line %d: unknown field %q (want one of %s)", k.Line, path+k.Value, strings.Join(names, ", "))
		}
		if err := knownFields(n.Content[i+1], ft, path+k.Value+"."); err != nil {
			return err
		}
	}
	return nil
}

// strictDecode decodes one YAML document into v, refusing unknown fields.
func strictDecode(b []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	return dec.Decode(v)
}

// profilesFromFile reads TOKENPOOL_CONFIG: the profiles and the identity
// providers of auth.issuers. Each error names the profile (or issuer) and
// the field. Provider keys come from the environment (api_key_env), never
// from the file.
func profilesFromFile(path string, cfg *Config, getenv func(string) string) (Profiles, []api.Issuer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Profiles{}, nil, err
	}
	return parseProfileFile(b, cfg, getenv)
}

// parseProfileFile is profilesFromFile on the file's bytes.
func parseProfileFile(b []byte, cfg *Config, getenv func(string) string) (Profiles, []api.Issuer, error) {
	var f fileSpec
	if err := strictDecode(b, &f); err != nil {
		return Profiles{}, nil, err
	}
	issuers, err := issuersFromFile(f.Auth.Issuers)
	if err != nil {
		return Profiles{}, nil, err
	}
	ps, err := profilesOf(f, cfg, getenv)
	return ps, issuers, err
}

// issuersFromFile checks auth.issuers.
func issuersFromFile(specs []issuerSpec) ([]api.Issuer, error) {
	var out []api.Issuer
	seen := map[string]bool{}
	for i, s := range specs {
		is, err := issuerOf(s, seen)
		if err != nil {
			return nil, fmt.Errorf("auth.issuers[%d] (%s): %w", i, s.Name, err)
		}
		out = append(out, is)
	}
	return out, nil
}

// issuerOf checks one auth.issuers entry; seen holds the names before it.
func issuerOf(s issuerSpec, seen map[string]bool) (api.Issuer, error) {
	is := api.Issuer{
		Name: s.Name, URL: s.Issuer, JWKSURL: s.JWKSURL, Audiences: s.Audiences,
		AuthorizedParties: s.AuthorizedParties, Algorithms: s.Algorithms, UserClaim: s.UserClaim,
		AssumeEmailVerified: s.AssumeEmailVerified,
	}
	if !issuerNameRE.MatchString(s.Name) {
		return is, errors.New("name: want 1-32 of a-z 0-9 - (it prefixes the issuer's subjects: idp:<name>:<user>)")
	}
	if seen[s.Name] {
		return is, errors.New("name: listed twice")
	}
	seen[s.Name] = true
	if err := checkJWKSURL(s.JWKSURL); err != nil {
		return is, fmt.Errorf("jwks_url: %w", err)
	}
	var err error
	if is.Refresh, err = optionalDuration("refresh", s.Refresh); err != nil {
		return is, err
	}
	if is.MinRefetch, err = optionalDuration("min_refetch", s.MinRefetch); err != nil {
		return is, err
	}
	return is, is.Validate()
}

// optionalDuration reads a file's duration field; "" is zero (the default).
func optionalDuration(field, raw string) (time.Duration, error) {
	if raw == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(raw)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s: want a positive duration such as 10m, got %q", field, raw)
	}
	return d, nil
}

// profilesOf resolves the file's profiles and its default and realtime
// profiles.
func profilesOf(f fileSpec, cfg *Config, getenv func(string) string) (Profiles, error) {
	if f.Profiles.Kind != yaml.MappingNode || len(f.Profiles.Content) == 0 {
		return Profiles{}, errors.New("profiles: want a map of at least one named profile")
	}
	var ps Profiles
	var errs []error
	for i := 0; i+1 < len(f.Profiles.Content); i += 2 {
		name, node := f.Profiles.Content[i].Value, f.Profiles.Content[i+1]
		var spec profileSpec
		err := knownFields(node, reflect.TypeOf(spec), "")
		if err == nil {
			err = node.Decode(&spec)
		}
		if err == nil {
			var p Profile
			p, err = resolveProfile(name, spec, cfg, getenv)
			ps.List = append(ps.List, p)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("profile %q: %w", name, err))
		}
	}
	if len(errs) > 0 {
		return Profiles{}, errors.Join(errs...)
	}
	sort.Slice(ps.List, func(i, j int) bool { return ps.List[i].Name < ps.List[j].Name })

	var err error
	if ps.Default, err = pick(ps, f.DefaultProfile, "default_profile", ""); err != nil {
		return Profiles{}, err
	}
	if ps.Realtime, err = pick(ps, f.RealtimeProfile, "realtime_profile", "openai"); err != nil {
		return Profiles{}, err
	}
	if err := checkFallbacks(ps); err != nil {
		return Profiles{}, err
	}
	if ps.Quotas, err = quotasOf(f.Quotas); err != nil {
		return Profiles{}, err
	}
	for _, p := range ps.List {
		od := p.OnDemand
		if p.Name != ps.Realtime && (od.PooledOnly || len(od.Models) > 0 || len(od.Voices) > 0) {
			return Profiles{}, fmt.Errorf("profile %q: openai.on_demand: only the realtime_profile (%q) mints on demand", p.Name, ps.Realtime)
		}
	}
	return ps, nil
}

// pick resolves a default: the named profile, else one named "default"
// (of the provider, when one is asked for), else the only candidate.
func pick(ps Profiles, name, field, provider string) (string, error) {
	var candidates []string
	for _, p := range ps.List {
		if provider == "" || p.Provider == provider {
			candidates = append(candidates, p.Name)
		}
	}
	if name != "" {
		p, ok := ps.Get(name)
		if !ok {
			return "", fmt.Errorf("%s: no profile %q", field, name)
		}
		if provider != "" && p.Provider != provider {
			return "", fmt.Errorf("%s: profile %q is not an %s profile", field, name, provider)
		}
		return name, nil
	}
	for _, c := range candidates {
		if c == "default" {
			return c, nil
		}
	}
	switch len(candidates) {
	case 0:
		if provider == "" {
			return "", fmt.Errorf("%s: no profiles", field)
		}
		return "", nil // no OpenAI profile: the Navai routes are off
	case 1:
		return candidates[0], nil
	}
	return "", fmt.Errorf("%s: required when several profiles could serve and none is named \"default\"", field)
}

func resolveProfile(name string, s profileSpec, cfg *Config, getenv func(string) string) (Profile, error) {
	if !pool.ValidProfileName(name) {
		return Profile{}, errors.New("name: want 1-64 of A-Z a-z 0-9 . _ -")
	}
	p := newProfile(name, s.Provider, cfg)
	if err := resolveSizing(&p, s); err != nil {
		return p, err
	}
	if err := resolveAccess(&p, s); err != nil {
		return p, err
	}
	key := func(field, envName, def string) (string, string, error) {
		envName = cmp.Or(envName, def)
		if !envNameRE.MatchString(envName) {
			return "", "", fmt.Errorf("%s: %q is not an environment variable name", field, envName)
		}
		return envName, strings.TrimSpace(getenv(envName)), nil
	}
	for k := range s.Preset {
		if k != s.Provider {
			return p, fmt.Errorf("unknown field %q: a block of settings is named after the profile's provider (%q)", k, s.Provider)
		}
	}
	p.Fallback = s.Fallback
	if s.Quotas != nil {
		var err error
		if p.Quotas, err = quotasOf(*s.Quotas); err != nil {
			return p, err
		}
	}
	if s.HTTP != nil && s.Provider != "http" {
		return p, fmt.Errorf("http: not allowed in a %s profile", s.Provider)
	}
	switch s.Provider {
	case "orga":
		return p, resolveOrga(&p, s, cfg, key)
	case "openai":
		return p, resolveOpenAI(&p, s, cfg, key)
	case "http":
		if err := resolveHTTP(&p, s.HTTP, key); err != nil {
			return p, err
		}
		return p, checkLife(p, "http.ttl_seconds")
	}
	if pr, ok := upstream.PresetByName(s.Provider); ok {
		if s.Orga != nil || s.OpenAI != nil {
			return p, fmt.Errorf("orga, openai: not allowed in a %s profile", s.Provider)
		}
		block := s.Preset[s.Provider]
		if err := resolvePreset(&p, pr, &block, key); err != nil {
			return p, err
		}
		return p, checkLife(p, s.Provider+".ttl_seconds")
	}
	return p, fmt.Errorf("provider: want orga, openai, http or one of %s, got %q", strings.Join(upstream.PresetNames(), ", "), s.Provider)
}

// keyReader reads a provider key from the variable a field names (or its
// default), and returns that variable's name with it.
type keyReader func(field, envName, def string) (name, value string, err error)

// resolveSizing reads the pool's sizing: target, ceiling, shards, least
// life.
func resolveSizing(p *Profile, s profileSpec) error {
	if s.MaxTarget != nil {
		if *s.MaxTarget < 1 || *s.MaxTarget > 100000 {
			return fmt.Errorf("max_target: want 1 to 100000, got %d", *s.MaxTarget)
		}
		p.MaxTarget = *s.MaxTarget
	}
	if s.Shards != nil {
		if *s.Shards < 1 || *s.Shards > pool.MaxShards {
			return fmt.Errorf("shards: want 1 to %d, got %d", pool.MaxShards, *s.Shards)
		}
		p.Shards = *s.Shards
	}
	if s.Target != nil {
		if *s.Target < 0 || *s.Target > 100000 {
			return fmt.Errorf("target: want 0 to 100000, got %d", *s.Target)
		}
		p.Target = *s.Target
	}
	if s.MinRemaining != "" {
		d, err := time.ParseDuration(s.MinRemaining)
		if err != nil || d <= 0 {
			return fmt.Errorf("min_remaining: want a positive duration such as 30s, got %q", s.MinRemaining)
		}
		p.MinRemaining = d
	}
	return nil
}

// resolveAccess reads who may use the profile.
func resolveAccess(p *Profile, s profileSpec) error {
	if s.Allow != nil {
		if len(s.Allow.APIKeys) == 0 && len(s.Allow.Claims) == 0 {
			return errors.New("allow: list api_keys or claims (or leave allow out to allow every caller)")
		}
		p.Access = &api.Access{APIKeys: s.Allow.APIKeys, Claims: s.Allow.Claims}
	}
	return nil
}

// resolveOrga reads an Orga profile's key, base URL and per-caller mode.
func resolveOrga(p *Profile, s profileSpec, cfg *Config, key keyReader) error {
	if s.OpenAI != nil {
		return errors.New("openai: not allowed in an orga profile")
	}
	o := s.Orga
	if o == nil {
		o = &orgaSpec{}
	}
	var err error
	if p.KeyEnv, p.Orga.APIKey, err = key("orga.api_key_env", o.APIKeyEnv, "ORGA_API_KEY"); err != nil {
		return err
	}
	if p.Orga.APIKey == "" {
		return fmt.Errorf("orga.api_key_env: %s is not set", p.KeyEnv)
	}
	p.Orga.BaseURL = cmp.Or(o.BaseURL, cfg.OrgaBaseURL)
	if err := upstream.CheckBaseURL(p.Orga.BaseURL); err != nil {
		return fmt.Errorf("orga.base_url: %w", err)
	}
	p.Orga.PerCallerEmail = o.PerCallerEmail
	if p.Orga.PerCallerEmail && s.Target != nil && *s.Target > 0 {
		return errors.New("target: a per_caller_email profile mints for each caller and keeps no pool; leave target out")
	}
	if p.Orga.PerCallerEmail {
		p.Target = 0
	}
	return nil
}

// resolveOpenAI reads an OpenAI profile's key, Navai options and on-demand
// policy.
func resolveOpenAI(p *Profile, s profileSpec, cfg *Config, key keyReader) error {
	if s.Orga != nil {
		return errors.New("orga: not allowed in an openai profile")
	}
	o := s.OpenAI
	if o == nil {
		o = &openaiSpec{}
	}
	keyEnv, apiKey, err := key("openai.api_key_env", o.APIKeyEnv, "OPENAI_API_KEY")
	if err != nil {
		return err
	}
	p.KeyEnv = keyEnv
	p.Navai = upstream.NavaiOptions{
		APIKey: apiKey, Model: o.Model, Voice: o.Voice, Instructions: o.Instructions,
		Language: o.Language, VoiceAccent: o.VoiceAccent, VoiceTone: o.VoiceTone,
		TTLSeconds: upstream.NavaiDefaultTTLSeconds, AllowRequestKey: o.AllowAPIKeyFromRequest,
	}
	if od := o.OnDemand; od != nil {
		if od.PooledOnly && (len(od.Models) > 0 || len(od.Voices) > 0) {
			return errors.New("openai.on_demand: pooled_only leaves nothing for models or voices to allow; set one or the other")
		}
		p.OnDemand = upstream.OnDemand{PooledOnly: od.PooledOnly, Models: od.Models, Voices: od.Voices}
	}
	if o.ClientSecretTTLSeconds != nil {
		p.Navai.TTLSeconds = *o.ClientSecretTTLSeconds
	}
	if err := upstream.CheckTTL(p.Navai.TTLSeconds); err != nil {
		return fmt.Errorf("openai.client_secret_ttl_seconds: %w", err)
	}
	if err := p.Navai.Validate(); err != nil {
		return fmt.Errorf("openai.api_key_env: %s is not set and allow_api_key_from_request is false: %w", p.KeyEnv, err)
	}
	if apiKey == "" && s.Target != nil && *s.Target > 0 {
		return fmt.Errorf("target: %s is not set, so there is no key to keep a pool with", p.KeyEnv)
	}
	if apiKey == "" {
		p.Target = 0
	}
	p.OpenAIBaseURL = cmp.Or(o.BaseURL, cfg.OpenAIBaseURL)
	if err := upstream.CheckBaseURL(p.OpenAIBaseURL); err != nil {
		return fmt.Errorf("openai.base_url: %w", err)
	}
	return nil
}
