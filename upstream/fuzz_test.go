package upstream

import (
	"encoding/json"
	"testing"
	"time"
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
