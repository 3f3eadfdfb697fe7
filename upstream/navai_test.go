package upstream

import (
	"errors"
	"testing"

	"github.com/tokenpool/tokenpool/mint"
)

func sp(s string) *string { return &s }

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestNavaiEnvDefaults(t *testing.T) {
	o, err := NavaiOptionsFromEnv(env("OPENAI_API_KEY", "sk-x"))
	if err != nil {
		t.Fatal(err)
	}
	s := o.Session(mint.NavaiRequest{})
	want := RealtimeSession{Model: "gpt-realtime", Voice: "marin", Instructions: "You are a helpful assistant.", TTLSeconds: 600}
	if s != want {
		t.Fatalf("defaults %+v, want %+v", s, want)
	}
	o, _ = NavaiOptionsFromEnv(env("OPENAI_API_KEY", "sk-x", "OPENAI_REALTIME_MODEL", "gpt-realtime-mini",
		"OPENAI_REALTIME_VOICE", "cedar", "OPENAI_REALTIME_INSTRUCTIONS", "Be brief.",
		"OPENAI_REALTIME_LANGUAGE", "Spanish", "OPENAI_REALTIME_CLIENT_SECRET_TTL", "120"))
	s = o.Session(mint.NavaiRequest{})
	if s.Model != "gpt-realtime-mini" || s.Voice != "cedar" || s.Instructions != "Be brief.\nAlways reply in Spanish." || s.TTLSeconds != 120 {
		t.Fatalf("from env %+v", s)
	}
}

func TestNavaiTTLBounds(t *testing.T) {
	for _, tc := range []struct {
		ttl, msg string
	}{
		{"9", "clientSecretTtlSeconds must be between 10 and 7200. Received: 9"},
		{"7201", "clientSecretTtlSeconds must be between 10 and 7200. Received: 7201"},
		{"soon", "clientSecretTtlSeconds must be between 10 and 7200. Received: soon"},
	} {
		_, err := NavaiOptionsFromEnv(env("OPENAI_API_KEY", "k", "OPENAI_REALTIME_CLIENT_SECRET_TTL", tc.ttl))
		if err == nil || err.Error() != tc.msg {
			t.Errorf("TTL %s: %v; want %q", tc.ttl, err, tc.msg)
		}
	}
	for _, ok := range []string{"10", "7200"} {
		if _, err := NavaiOptionsFromEnv(env("OPENAI_API_KEY", "k", "OPENAI_REALTIME_CLIENT_SECRET_TTL", ok)); err != nil {
			t.Errorf("TTL %s: %v", ok, err)
		}
	}
}

func TestNavaiKeyPolicy(t *testing.T) {
	disabled := "Passing apiKey from request is disabled. Set allowApiKeyFromRequest=true to enable it."
	missing := "Missing API key. Configure openaiApiKey or send apiKey in request."
	tests := []struct {
		name        string
		env         func(string) string
		reqKey      *string
		wantKey     string
		fromRequest bool
		wantErr     string
		status      int
	}{
		{"the backend key wins over a request key", env("OPENAI_API_KEY", "sk-backend"), sp("sk-caller"), "sk-backend", false, "", 0},
		{"the backend key serves a request without one", env("OPENAI_API_KEY", "sk-backend"), nil, "sk-backend", false, "", 0},
		{"with request keys allowed and none sent: missing", env("NAVAI_ALLOW_FRONTEND_API_KEY", "true"), nil, "", false, missing, 400},
		{"NAVAI_ALLOW_FRONTEND_API_KEY=true allows request keys", env("NAVAI_ALLOW_FRONTEND_API_KEY", "TRUE"), sp("sk-caller"), "sk-caller", true, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := NavaiOptionsFromEnv(tt.env)
			if err != nil {
				t.Fatal(err)
			}
			key, fromReq, err := o.Key(mint.NavaiRequest{APIKey: tt.reqKey})
			if tt.wantErr != "" {
				var re *mint.Error
				if !errors.As(err, &re) || re.Message != tt.wantErr || status(re.Code) != tt.status {
					t.Fatalf("got %v; want %d %q", err, tt.status, tt.wantErr)
				}
				return
			}
			if err != nil || key != tt.wantKey || fromReq != tt.fromRequest {
				t.Fatalf("got %q %v %v", key, fromReq, err)
			}
		})
	}
	t.Run("with no backend key, request keys are not allowed unless enabled (unlike Navai's fallback)", func(t *testing.T) {
		if _, err := NavaiOptionsFromEnv(env("NAVAI_ALLOW_FRONTEND_API_KEY", "false")); err == nil ||
			err.Error() != "Missing openaiApiKey in NavaiVoiceBackendOptions." {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("a request key with request keys disabled is refused", func(t *testing.T) {
		o := NavaiOptions{AllowRequestKey: false, APIKey: ""}
		_, _, err := o.Key(mint.NavaiRequest{APIKey: sp("sk-caller")})
		var re *mint.Error
		if !errors.As(err, &re) || re.Message != disabled || status(re.Code) != 403 {
			t.Fatalf("got %v", err)
		}
		if err := o.Validate(); err == nil || err.Error() != "Missing openaiApiKey in NavaiVoiceBackendOptions." {
			t.Fatalf("validate: %v", err)
		}
	})
}

func TestNavaiInstructions(t *testing.T) {
	o := NavaiOptions{APIKey: "k", Instructions: "Default base.", VoiceTone: "calm"}
	tests := []struct {
		name string
		req  mint.NavaiRequest
		want string
	}{
		{"options only", mint.NavaiRequest{}, "Default base.\nUse a calm tone while speaking."},
		{"every directive, in order", mint.NavaiRequest{
			Instructions: sp("You are a friendly travel assistant."), Language: sp("Spanish"),
			VoiceAccent: sp("neutral Latin American Spanish"), VoiceTone: sp("warm and enthusiastic"),
		}, "You are a friendly travel assistant.\nAlways reply in Spanish.\nUse a neutral Latin American Spanish accent while speaking.\nUse a warm and enthusiastic tone while speaking."},
		{"base instructions are trimmed; blank directives are left out", mint.NavaiRequest{
			Instructions: sp("  Hi.  "), Language: sp("   "),
		}, "Hi.\nUse a calm tone while speaking."},
		{"Navai's default base", mint.NavaiRequest{VoiceTone: sp("dry")}, "Default base.\nUse a dry tone while speaking."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := o.Session(tt.req).Instructions; got != tt.want {
				t.Fatalf("got %q\nwant %q", got, tt.want)
			}
		})
	}
	if got := (NavaiOptions{}).Session(mint.NavaiRequest{}).Instructions; got != "You are a helpful assistant." {
		t.Fatalf("no options: %q", got)
	}
}

// errNotAllowed stands for the API's refusal of a profile the caller may
// not use.
var errNotAllowed = errors.New("not allowed")

// serve does with a plan what the API does: refuse a caller who may not
// use the realtime profile or one of the plan's, else take from its pool
// ("get:<profile>") or mint on demand ("once:<profile>:<label>").
func serve(r *Realtime, plan mint.Plan, may func(string) bool) (string, error) {
	for _, p := range append([]string{r.Profile()}, plan.Needs...) {
		if !may(p) {
			return "", errNotAllowed
		}
	}
	if plan.Refused != nil {
		return "", plan.Refused
	}
	if plan.Pooled != "" {
		return "get:" + plan.Pooled, nil
	}
	return "once:" + r.Profile() + ":" + plan.Label, nil
}

// status is the API's answer to a code.
func status(c mint.Code) int {
	if c == mint.CodeForbidden {
		return 403
	}
	return 400
}

func TestRealtimeRoutesEachRequest(t *testing.T) {
	opts := NavaiOptions{APIKey: "sk-backend"}
	pooled := map[string]RealtimeSession{
		"realtime": opts.Session(mint.NavaiRequest{}),
		"spanish":  opts.Session(mint.NavaiRequest{Language: sp("Spanish")}),
	}
	all := func(string) bool { return true }
	tests := []struct {
		name string
		opts NavaiOptions
		req  mint.NavaiRequest
		may  func(string) bool
		want string
		err  error
	}{
		{"no overrides: the realtime pool", opts, mint.NavaiRequest{}, all, "get:realtime", nil},
		{"settings another profile has: that pool", opts, mint.NavaiRequest{Language: sp("Spanish")}, all, "get:spanish", nil},
		{"settings no profile has: minted on demand", opts, mint.NavaiRequest{Voice: sp("cedar")}, all, "once:realtime:openai_settings", nil},
		{"a caller's key: on demand, never pooled", NavaiOptions{AllowRequestKey: true}, mint.NavaiRequest{APIKey: sp("sk-caller")}, all, "once:realtime:openai_request_key", nil},
		{"a caller not allowed the realtime profile", opts, mint.NavaiRequest{}, func(string) bool { return false }, "", errNotAllowed},
		{"a pooled session the caller may not use is not minted around the rule", opts, mint.NavaiRequest{Language: sp("Spanish")},
			func(p string) bool { return p != "spanish" }, "", errNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewRealtime(RealtimeConfig{Profile: "realtime", Options: tt.opts, Pooled: pooled,
				Guard: NewGuard(GuardConfig{Provider: "openai"})})
			if err != nil {
				t.Fatal(err)
			}
			plan, err := r.Resolve(tt.req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := serve(r, plan, tt.may)
			if !errors.Is(err, tt.err) || got != tt.want {
				t.Fatalf("got %q, %v; want %q, %v", got, err, tt.want, tt.err)
			}
			if tt.want == "once:realtime:openai_request_key" {
				if _, guarded := plan.Minter.(*Guarded); guarded {
					t.Fatal("a caller's key went through the account's breaker and quota")
				}
			}
			if tt.want == "once:realtime:openai_settings" {
				if _, guarded := plan.Minter.(*Guarded); !guarded {
					t.Fatal("an on-demand mint with the backend key bypassed the breaker")
				}
			}
		})
	}
}
