package upstream

import (
	"cmp"
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/tokenpool/tokenpool/mint"
)

// Navai's defaults (@navai/voice-backend).
const (
	NavaiDefaultModel        = "gpt-realtime"
	NavaiDefaultVoice        = "marin"
	NavaiDefaultInstructions = "You are a helpful assistant."
	NavaiDefaultTTLSeconds   = 600
	navaiMinTTL, navaiMaxTTL = 10, 7200
)

// NavaiOptions are @navai/voice-backend's options: a realtime profile's
// session defaults and its API-key policy. Empty strings mean Navai's
// default (model, voice, instructions) or none (language, accent, tone).
type NavaiOptions struct {
	APIKey          string // the backend key; it always wins
	AllowRequestKey bool   // allowApiKeyFromRequest
	Model           string
	Voice           string
	Instructions    string
	Language        string
	VoiceAccent     string
	VoiceTone       string
	TTLSeconds      int // clientSecretTtlSeconds; 0: 600
}

// NavaiEnv names the environment variables NavaiOptionsFromEnv reads.
var NavaiEnv = []string{
	"OPENAI_API_KEY", "NAVAI_ALLOW_FRONTEND_API_KEY", "OPENAI_REALTIME_MODEL", "OPENAI_REALTIME_VOICE",
	"OPENAI_REALTIME_INSTRUCTIONS", "OPENAI_REALTIME_LANGUAGE", "OPENAI_REALTIME_VOICE_ACCENT",
	"OPENAI_REALTIME_VOICE_TONE", "OPENAI_REALTIME_CLIENT_SECRET_TTL",
}

// NavaiOptionsFromEnv reads Navai's environment variables with its
// defaults and key policy, with one deliberate difference: request keys
// are allowed only by NAVAI_ALLOW_FRONTEND_API_KEY=true, never because
// OPENAI_API_KEY is unset (Navai's fallback would let any caller use the
// daemon to try OpenAI keys). A TTL outside 10–7200 (or not a whole
// number) is an error in Navai's words.
func NavaiOptionsFromEnv(getenv func(string) string) (NavaiOptions, error) {
	get := func(k string) string { return strings.TrimSpace(getenv(k)) }
	o := NavaiOptions{
		APIKey:       get("OPENAI_API_KEY"),
		Model:        get("OPENAI_REALTIME_MODEL"),
		Voice:        get("OPENAI_REALTIME_VOICE"),
		Instructions: get("OPENAI_REALTIME_INSTRUCTIONS"),
		Language:     get("OPENAI_REALTIME_LANGUAGE"),
		VoiceAccent:  get("OPENAI_REALTIME_VOICE_ACCENT"),
		VoiceTone:    get("OPENAI_REALTIME_VOICE_TONE"),
		TTLSeconds:   NavaiDefaultTTLSeconds,
	}
	o.AllowRequestKey = strings.EqualFold(get("NAVAI_ALLOW_FRONTEND_API_KEY"), "true")
	if raw := get("OPENAI_REALTIME_CLIENT_SECRET_TTL"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil {
			return o, fmt.Errorf("clientSecretTtlSeconds must be between %d and %d. Received: %s", navaiMinTTL, navaiMaxTTL, raw)
		}
		o.TTLSeconds = n
	}
	return o, o.Validate()
}

// Validate checks the options as Navai does when its handler is created.
func (o NavaiOptions) Validate() error {
	if o.APIKey == "" && !o.AllowRequestKey {
		return fmt.Errorf("Missing openaiApiKey in NavaiVoiceBackendOptions.")
	}
	return checkTTL(o.ttl())
}

func (o NavaiOptions) ttl() int {
	if o.TTLSeconds == 0 {
		return NavaiDefaultTTLSeconds
	}
	return o.TTLSeconds
}

// CheckTTL checks a client secret TTL as Navai does, in its words.
func CheckTTL(ttl int) error { return checkTTL(ttl) }

func checkTTL(ttl int) error {
	if ttl < navaiMinTTL || ttl > navaiMaxTTL {
		return fmt.Errorf("clientSecretTtlSeconds must be between %d and %d. Received: %d", navaiMinTTL, navaiMaxTTL, ttl)
	}
	return nil
}

// Session resolves the session a request asks for, as Navai does: each
// setting from the request, else the options, else Navai's default; the
// instructions are the base instructions followed, one line each, by the
// language, accent and tone directives that are set.
func (o NavaiOptions) Session(r mint.NavaiRequest) RealtimeSession {
	base := cmp.Or(str(r.Instructions), o.Instructions, NavaiDefaultInstructions)
	lines := []string{strings.TrimSpace(base)}
	if v := cmp.Or(str(r.Language), o.Language); v != "" {
		lines = append(lines, "Always reply in "+v+".")
	}
	if v := cmp.Or(str(r.VoiceAccent), o.VoiceAccent); v != "" {
		lines = append(lines, "Use a "+v+" accent while speaking.")
	}
	if v := cmp.Or(str(r.VoiceTone), o.VoiceTone); v != "" {
		lines = append(lines, "Use a "+v+" tone while speaking.")
	}
	return RealtimeSession{
		Model:        cmp.Or(str(r.Model), o.Model, NavaiDefaultModel),
		Voice:        cmp.Or(str(r.Voice), o.Voice, NavaiDefaultVoice),
		Instructions: strings.Join(lines, "\n"),
		TTLSeconds:   o.ttl(),
	}
}

// Key resolves the API key as Navai does: the backend key always wins; a
// request's key is used only when the backend has none and request keys
// are allowed. It reports whether the key came from the request.
func (o NavaiOptions) Key(r mint.NavaiRequest) (key string, fromRequest bool, err error) {
	if o.APIKey != "" {
		return o.APIKey, false, nil
	}
	if k := str(r.APIKey); k != "" {
		if !o.AllowRequestKey {
			return "", false, &mint.Error{Code: mint.CodeForbidden,
				Message: "Passing apiKey from request is disabled. Set allowApiKeyFromRequest=true to enable it."}
		}
		return k, true, nil
	}
	return "", false, &mint.Error{Code: mint.CodeInvalid,
		Message: "Missing API key. Configure openaiApiKey or send apiKey in request."}
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return strings.TrimSpace(*p)
}

// MissingKey is the minter of an OpenAI profile without a backend key.
// Such a profile keeps no pool and serves callers' own keys through the
// Navai routes; anything else asking it to mint gets Navai's message.
var MissingKey mint.Minter = missingKey{}

type missingKey struct{}

func (missingKey) Mint(context.Context, mint.Request) (mint.Credential, error) {
	return mint.Credential{}, &mint.Error{Code: mint.CodeInvalid,
		Message: "Missing API key. Configure openaiApiKey or send apiKey in request."}
}
