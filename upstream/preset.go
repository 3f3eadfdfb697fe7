package upstream

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"
)

// Preset describes one provider's token endpoint, from its documentation
// (Doc), and the settings a profile of it may give: an Endpoint waiting
// for a profile's settings. See Presets.
type Preset struct {
	Name string // in the profile file: provider: <Name>
	Doc  string // the documentation page this description follows
	// BaseURL is the default base URL; "" makes base_url required.
	BaseURL string
	// KeyEnv is the variable the key comes from by default. With
	// SecretEnv, the key is a pair: KeyEnv's id and SecretEnv's secret.
	KeyEnv, SecretEnv string
	// Method and Path of the call; Path may hold {setting} placeholders.
	Method, Path         string
	KeyHeader, KeyScheme string // as Endpoint's
	Body                 map[string]any
	Form                 url.Values
	// Settings are what a profile may set, each with where it goes.
	Settings []Setting
	// The answer: as Endpoint's fields of the same names. TTL is the
	// life a token has when neither the answer nor a setting says.
	Token, ExpiresAt, ExpiresIn string
	JWTExpiry                   bool
	TTL                         time.Duration
	Extra                       map[string]string
	// Static are fixed fields of the handout; in a value, {base} is the
	// base URL, {ws} the same with ws:// or wss:// for its scheme, and
	// {setting} a setting's value.
	Static map[string]string
	// Tune makes the rare change data can't say (a field computed from
	// two settings), after the settings are placed. nil: none.
	Tune func(e *Endpoint, v Values) error
	// SingleUse reports whether, with settings v, the provider's page
	// says a token starts one session at most. nil: it doesn't say so (a
	// token may start sessions until it expires).
	SingleUse func(v Values) bool
}

// always is SingleUse for a provider whose every token is single-use.
func always(Values) bool { return true }

// Where a Setting goes.
const (
	inQuery  = "query:"  // a query parameter
	inBody   = "body:"   // a JSON body field, by dot path
	inPath   = "path:"   // Path's {name}
	inHeader = "header:" // a request header
	inTime   = "time:"   // a JSON body field: now plus the value in seconds, RFC 3339
	inFlags  = "flags:"  // a JSON body field: a list of names as an object of true
	inStatic = "static:" // a fixed field of the handout
)

// Setting is one setting of a preset's profile block.
type Setting struct {
	Name string
	Kind Kind
	// Required settings have no default; Default is used when the block
	// leaves the setting out (nil: leave it out of the call too).
	Required bool
	Default  any
	// Min and Max bound an Int; Enum lists a String's or Strings' values.
	Min, Max int
	Enum     []string
	// To says where the value goes: inQuery, inBody… and a name or path;
	// "" when only Tune reads it.
	To string
	// TTL: an Int that is the token's life in seconds, from the mint.
	TTL bool
}

// Kind is a Setting's type.
type Kind int

// The kinds of a Setting.
const (
	Int     Kind = iota
	String       // text
	Bool         // true or false
	Strings      // a list of text
	Object       // a JSON object, passed on as it is
)

// String names the kind in a configuration error.
func (k Kind) String() string {
	return [...]string{"a whole number", "text", "true or false", "a list of text", "a map"}[k]
}

// MaxSessionSetting is the name of the setting that caps a session's
// length at mint, for the providers that can.
const MaxSessionSetting = "max_session_seconds"

// Values are a profile's resolved settings, by name: int, string, bool,
// []string or map[string]any.
type Values map[string]any

// Int returns the named Int setting's value, 0 when unset.
func (v Values) Int(name string) int { n, _ := v[name].(int); return n }

// PresetByName returns the named preset.
func PresetByName(name string) (*Preset, bool) {
	for i := range Presets {
		if Presets[i].Name == name {
			return &Presets[i], true
		}
	}
	return nil, false
}

// IsProvider reports whether name is a provider of the profile file:
// orga, openai, http or a preset.
func IsProvider(name string) bool {
	_, ok := PresetByName(name)
	return ok || name == "orga" || name == "openai" || name == "http"
}

// PresetNames lists the presets' names, sorted.
func PresetNames() []string {
	var names []string
	for _, p := range Presets {
		names = append(names, p.Name)
	}
	sort.Strings(names)
	return names
}

// Endpoint resolves the preset with one profile's settings: base is its
// base URL ("" for the preset's), raw the block's settings as decoded
// from the file. Each error names the setting.
func (p *Preset) Endpoint(base string, raw map[string]any) (Endpoint, Values, error) {
	base = strings.TrimRight(cmp.Or(base, p.BaseURL), "/")
	if base == "" {
		return Endpoint{}, nil, errors.New("base_url: required for " + p.Name + " (the resource's endpoint)")
	}
	if err := CheckBaseURL(base); err != nil {
		return Endpoint{}, nil, fmt.Errorf("base_url: %w", err)
	}
	bu, _ := url.Parse(base) // parsed by CheckBaseURL
	if bu.RawQuery != "" || bu.Fragment != "" || bu.User != nil {
		return Endpoint{}, nil, errors.New("base_url: want a URL without a query, fragment or user")
	}
	base = bu.String() // the scheme in lower case
	v, err := p.values(raw)
	if err != nil {
		return Endpoint{}, nil, err
	}
	e := Endpoint{
		Provider: p.Name, Method: p.Method, KeyHeader: p.KeyHeader, KeyScheme: p.KeyScheme,
		Body: deepCopy(p.Body), Header: map[string]string{}, Times: map[string]time.Duration{}, Form: p.Form,
		Token: p.Token, ExpiresAt: p.ExpiresAt, ExpiresIn: p.ExpiresIn,
		JWTExpiry: p.JWTExpiry, TTL: p.TTL, Extra: maps.Clone(p.Extra), Static: map[string]string{},
		SingleUse: p.SingleUse != nil && p.SingleUse(v),
	}
	path, query := p.Path, url.Values{}
	static := maps.Clone(p.Static)
	if static == nil {
		static = map[string]string{}
	}
	for _, s := range p.Settings {
		val, ok := v[s.Name]
		if !ok {
			continue
		}
		if s.TTL {
			e.TTL = time.Duration(val.(int)) * time.Second
		}
		where, name, _ := strings.Cut(s.To, ":")
		switch where + ":" {
		case inQuery:
			query.Set(name, fmt.Sprint(val))
		case inBody:
			setPath(e.Body, name, val)
		case inFlags:
			flags := map[string]any{}
			for _, f := range val.([]string) {
				flags[f] = true
			}
			setPath(e.Body, name, flags)
		case inPath:
			path = strings.ReplaceAll(path, "{"+name+"}", url.PathEscape(fmt.Sprint(val)))
		case inHeader:
			e.Header[name] = fmt.Sprint(val)
		case inTime:
			e.Times[name] = time.Duration(val.(int)) * time.Second
		case inStatic:
			static[name] = fmt.Sprint(val)
		}
	}
	if p.Body == nil && len(e.Body) == 0 && len(e.Times) == 0 {
		e.Body = nil // a call without a body (a GET, a path-only POST)
	}
	u, rest, _ := strings.Cut(base+path, "?")
	e.URL = u
	fixed, err := url.ParseQuery(rest)
	if err != nil {
		return Endpoint{}, nil, fmt.Errorf("the preset's path %q: %w", p.Path, err)
	}
	for k, vs := range fixed {
		query[k] = append(vs, query[k]...)
	}
	if len(query) > 0 {
		e.URL += "?" + query.Encode()
	}
	for k, s := range static {
		s = strings.ReplaceAll(s, "{base}", base)
		s = strings.ReplaceAll(s, "{ws}", "ws"+strings.TrimPrefix(base, "http"))
		for name, val := range v {
			s = strings.ReplaceAll(s, "{"+name+"}", fmt.Sprint(val))
		}
		e.Static[k] = s
	}
	if p.Tune != nil {
		if err := p.Tune(&e, v); err != nil {
			return Endpoint{}, nil, err
		}
	}
	if err := e.Check(); err != nil {
		return Endpoint{}, nil, err
	}
	return e, v, nil
}

// values checks a block's settings against the preset's and fills in
// the defaults.
func (p *Preset) values(raw map[string]any) (Values, error) {
	v := Values{}
	known := map[string]*Setting{}
	var names []string
	for i := range p.Settings {
		s := &p.Settings[i]
		known[s.Name], names = s, append(names, s.Name)
	}
	keys := slices.Sorted(maps.Keys(raw))
	for _, k := range keys {
		s, ok := known[k]
		switch {
		case !ok && k == MaxSessionSetting:
			return nil, fmt.Errorf("%s: %s can't cap a session's length when it mints (its documentation offers no such field); leave it out", k, p.Name)
		case !ok:
			return nil, fmt.Errorf("%s: unknown setting for %s (want one of api_key_env, base_url, %s)", k, p.Name, strings.Join(names, ", "))
		}
		val, err := s.check(raw[k])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		v[k] = val
	}
	for _, s := range p.Settings {
		if _, ok := v[s.Name]; ok {
			continue
		}
		switch {
		case s.Required:
			return nil, fmt.Errorf("%s: required for %s", s.Name, p.Name)
		case s.Default != nil:
			v[s.Name] = s.Default
		}
	}
	return v, nil
}

// check converts a value decoded from the file to the setting's kind and
// checks its bounds.
func (s *Setting) check(raw any) (any, error) {
	bad := fmt.Errorf("want %s, got %v", s.Kind, raw)
	switch s.Kind {
	case Int:
		n, ok := raw.(int)
		if !ok {
			return nil, bad
		}
		if n < s.Min || n > s.Max {
			return nil, fmt.Errorf("want %d to %d, got %d", s.Min, s.Max, n)
		}
		return n, nil
	case String:
		str, ok := raw.(string)
		if !ok || str == "" {
			return nil, bad
		}
		if len(s.Enum) > 0 && !slices.Contains(s.Enum, str) {
			return nil, fmt.Errorf("want one of %s, got %q", strings.Join(s.Enum, ", "), str)
		}
		return str, nil
	case Bool:
		b, ok := raw.(bool)
		if !ok {
			return nil, bad
		}
		return b, nil
	case Strings:
		list, ok := raw.([]any)
		if !ok || len(list) == 0 {
			return nil, fmt.Errorf("want a list of at least one text, got %v", raw)
		}
		out := make([]string, 0, len(list))
		for _, x := range list {
			str, ok := x.(string)
			if !ok || str == "" {
				return nil, bad
			}
			if len(s.Enum) > 0 && !slices.Contains(s.Enum, str) {
				return nil, fmt.Errorf("want each of %s, got %q", strings.Join(s.Enum, ", "), str)
			}
			out = append(out, str)
		}
		return out, nil
	case Object:
		m, ok := raw.(map[string]any)
		if !ok {
			return nil, bad
		}
		return m, nil
	}
	return nil, bad
}
