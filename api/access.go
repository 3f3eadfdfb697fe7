package api

import (
	"fmt"
	"slices"
)

// Access says who may use a profile: API keys by name, and JWT callers
// whose claims match. A nil *Access allows every authenticated caller.
type Access struct {
	// APIKeys lists the API key names allowed.
	APIKeys []string
	// Claims lists claims a caller's JWT must all carry, each with one of
	// the listed values (for an array claim: any element).
	Claims map[string][]string
}

// ProfileInfo is what the API knows of a profile.
type ProfileInfo struct {
	Provider string  // "orga" or "openai"
	Access   *Access // nil: every authenticated caller
}

// allows reports whether the caller may use a profile under a.
func (a *Access) allows(c caller) bool {
	if a == nil {
		return true
	}
	if c.kind == "api_key" {
		return slices.Contains(a.APIKeys, c.keyName)
	}
	if len(a.Claims) == 0 {
		return false
	}
	for name, allowed := range a.Claims {
		if !claimMatches(c.claims[name], allowed) {
			return false
		}
	}
	return true
}

// claimMatches reports whether a claim's value (a string, a number, a
// bool, or an array of them) is, or holds, one of allowed.
func claimMatches(v any, allowed []string) bool {
	switch v := v.(type) {
	case nil:
		return false
	case []any:
		for _, e := range v {
			if claimMatches(e, allowed) {
				return true
			}
		}
		return false
	default:
		return slices.Contains(allowed, fmt.Sprint(v))
	}
}

// may reports whether the caller may use the named profile; an unknown
// profile is no.
func (s *Server) may(c caller, profile string) bool {
	p, ok := s.cfg.Profiles[profile]
	return ok && p.Access.allows(c)
}
