package upstream

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/mint"
)

// FuzzOrgaAnswers feeds the Orga decoders (the mint answer in both
// spellings, then the ICE answer) arbitrary bodies: they never panic, and
// what they accept is usable: a token, an expiry, and a JSON array of ICE
// servers each with urls.
func FuzzOrgaAnswers(f *testing.F) {
	sent := time.Date(2026, 11, 22, 8, 53, 5, 0, time.UTC)
	ice := `{"iceServers":[{"urls":"stun:stun1.l.google.com:19302"},{"urls":["turn:turn.orga-ai.com:3478"],"username":"u","credential":"c"}]}`
	for _, mint := range []string{
		`{"ephemeral_token":"eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3OTU1MjA4NDZ9.c2ln","token_type":"bearer","expires_at":"2026-11-22T08:55:05.675222"}`,
		`{"ephemeralToken":"eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3OTU1MjA4NDZ9.c2ln","ttl":120}`,
		`{"ephemeral_token":"eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3OTU1MjA4NDZ9.c2ln"}`,
		`{"ephemeral_token":"t","expires_at":1795520846.5}`,
		`{"ephemeral_token":"t","expires_at":"tomorrow"}`,
		`{"ephemeral_token":"t","ttl":-1}`,
		`[]`, ``,
	} {
		f.Add([]byte(mint), []byte(ice))
	}
	f.Add([]byte(`{"ephemeralToken":"t","ttl":60}`), []byte(`{"iceServers":[{"urls":[]}]}`))
	f.Add([]byte(`{"ephemeralToken":"t","ttl":60}`), []byte(`{"iceServers":[]}`))
	f.Fuzz(func(t *testing.T, mint, iceBody []byte) {
		token, exp, err := decodeOrgaSecret(mint, sent)
		if err == nil && (token == "" || exp.IsZero()) {
			t.Fatalf("accepted %q as token %q expiring %v", mint, token, exp)
		}
		servers, err := parseICE(iceBody)
		if err != nil {
			return
		}
		var list []struct {
			URLs json.RawMessage `json:"urls"`
		}
		if json.Unmarshal(servers, &list) != nil || len(list) == 0 {
			t.Fatalf("accepted %q as %q, not a list of servers", iceBody, servers)
		}
		for _, s := range list {
			if !validURLs(s.URLs) {
				t.Fatalf("accepted a server without urls: %q", iceBody)
			}
		}
	})
}

// FuzzOpenAIAnswer feeds the OpenAI client secret decoder arbitrary
// bodies: it never panics, and what it accepts has a value and an expiry.
func FuzzOpenAIAnswer(f *testing.F) {
	for _, body := range []string{
		`{"value":"ek_68af296e8e408191a1120ab6383263c2","expires_at":1756310470,"session":{"type":"realtime","id":"sess_1"}}`,
		`{"value":"ek_1","expires_at":0}`,
		`{"value":"","expires_at":1756310470}`,
		`{"value":7}`,
		`{"error":{"message":"Incorrect API key provided: sk-abc***xyz"}}`,
		``,
	} {
		f.Add([]byte(body))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := decodeOpenAISecret(body)
		if err == nil && (c.Token == "" || c.ExpiresAt.IsZero()) {
			t.Fatalf("accepted %q as %+v", body, c)
		}
	})
}

// FuzzNavaiResolve resolves arbitrary Navai request bodies against a
// realtime profile (gpt-realtime-mini) beside two profiles with an access
// rule: premium, which names no model and so serves Navai's default
// gpt-realtime, and studio, whose voice is cedar. Resolving never panics,
// and a session that may reach the provider with premium's model or
// studio's voice, in any case or as a dated snapshot, needs that profile.
func FuzzNavaiResolve(f *testing.F) {
	opts := NavaiOptions{APIKey: "sk-backend", Model: "gpt-realtime-mini"}
	premium := NavaiOptions{APIKey: "sk-backend", Instructions: "You are the premium concierge."}
	studio := NavaiOptions{APIKey: "sk-backend", Model: "gpt-realtime-mini", Voice: "cedar"}
	restricted := []Restricted{}
	pooled := map[string]RealtimeSession{"assistant": opts.Session(mint.NavaiRequest{})}
	for name, o := range map[string]NavaiOptions{"premium": premium, "studio": studio} {
		s := o.Session(mint.NavaiRequest{})
		pooled[name] = s
		restricted = append(restricted, Restricted{Profile: name, Model: s.Model, Voice: s.Voice})
	}
	rt, err := NewRealtime(RealtimeConfig{Profile: "assistant", Options: opts, Pooled: pooled, Restricted: restricted, BaseURL: "http://127.0.0.1:1"})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		`{}`, `{"model":"gpt-realtime"}`, `{"model":"GPT-Realtime "}`, `{"model":"gpt-realtime-2025-08-28"}`,
		`{"voice":"Cedar"}`, `{"model":"gpt-realtime-mini-2025-10-06","voice":"verse"}`,
		`{"model":"gpt-realtime","instructions":"You are the premium concierge.","language":"English"}`,
		`{"instructions":"You are the premium concierge."}`, `{"apiKey":"sk-other","model":7}`,
		`{"model":"gpt-realtime-2025-08-2x"}`, `{"model":"gpt-realtime- 123- 1- 1"}`,
	} {
		f.Add([]byte(s))
	}
	reaches := func(got, want string) bool { // an independent reading of "the same model"
		got = strings.ToLower(strings.TrimSpace(got))
		rest, ok := strings.CutPrefix(got, want)
		if !ok {
			return false
		}
		if rest == "" {
			return true
		}
		// -YYYY-MM-DD, each a digit 0-9
		if len(rest) != 11 || rest[0] != '-' || rest[5] != '-' || rest[8] != '-' {
			return false
		}
		for i, b := range []byte(rest) {
			if i != 0 && i != 5 && i != 8 && (b < '0' || b > '9') {
				return false
			}
		}
		return true
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req mint.NavaiRequest
		if json.Unmarshal(body, &req) != nil {
			return
		}
		plan, err := rt.Resolve(req)
		if err != nil {
			return
		}
		if plan.Pooled != "" {
			if !slices.Contains(plan.Needs, plan.Pooled) {
				t.Fatalf("%s: served from %s without needing it", body, plan.Pooled)
			}
			return
		}
		s := opts.Session(req)
		if reaches(s.Model, "gpt-realtime") && !slices.Contains(plan.Needs, "premium") {
			t.Fatalf("%s: model %q without needing premium (needs %v)", body, s.Model, plan.Needs)
		}
		if strings.EqualFold(strings.TrimSpace(s.Voice), "cedar") && !slices.Contains(plan.Needs, "studio") {
			t.Fatalf("%s: voice %q without needing studio (needs %v)", body, s.Voice, plan.Needs)
		}
		if plan.Refused == nil && plan.Minter == nil {
			t.Fatalf("%s: neither refused nor minted", body)
		}
	})
}
