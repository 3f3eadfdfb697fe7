package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/mint"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

func TestOpenAISendsExactlyTheDocumentedBody(t *testing.T) {
	sim := startSim(t, upstreamtest.Config{})
	o, err := NewOpenAI(OpenAIConfig{APIKey: upstreamtest.DefaultOpenAIKey, BaseURL: sim.URL(), Session: RealtimeSession{
		Model: "gpt-realtime", Voice: "marin", Instructions: "You are a helpful assistant.", TTLSeconds: 600,
	}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := o.Mint(context.Background(), mint.Request{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c.Token, "ek_") || time.Until(c.ExpiresAt) < 590*time.Second || c.ICEServers != nil {
		t.Fatalf("credential %v %v", c.ExpiresAt, c.ICEServers)
	}
	got := sim.OpenAIRequests()[0]
	want := `{"expires_after":{"anchor":"created_at","seconds":600},
	 "session":{"type":"realtime","model":"gpt-realtime",
	            "instructions":"You are a helpful assistant.",
	            "audio":{"output":{"voice":"marin"}}}}`
	var compact bytes.Buffer
	_ = json.Compact(&compact, []byte(want))
	if string(got) != compact.String() {
		t.Fatalf("body sent:\n%s\nwant:\n%s", got, compact.String())
	}
}

func TestSimulatorRejectsWhatOpenAIRejects(t *testing.T) {
	sim := startSim(t, upstreamtest.Config{})
	tests := []struct{ name, body, param string }{
		{"expires_after as a bare number", `{"expires_after":600,"session":{"type":"realtime"}}`, "expires_after"},
		{"type and model at the top level", `{"type":"realtime","model":"gpt-realtime"}`, "model"},
		{"voice at the top level", `{"voice":"marin","session":{"type":"realtime"}}`, "voice"},
		{"voice directly in session", `{"session":{"type":"realtime","voice":"marin"}}`, "session.voice"},
		{"a TTL out of range", `{"expires_after":{"anchor":"created_at","seconds":9000}}`, "expires_after.seconds"},
		{"another anchor", `{"expires_after":{"anchor":"now","seconds":60}}`, "expires_after.anchor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, sim.URL()+"/v1/realtime/client_secrets", strings.NewReader(tt.body))
			req.Header.Set("Authorization", "Bearer "+upstreamtest.DefaultOpenAIKey)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e struct{ Error struct{ Param, Code string } }
			_ = json.NewDecoder(resp.Body).Decode(&e)
			if resp.StatusCode != 400 || !strings.HasPrefix(e.Error.Param, tt.param) {
				t.Fatalf("%d %+v; want 400 on %s", resp.StatusCode, e, tt.param)
			}
		})
	}
}

func TestOpenAIErrorsInNavaisWordsWithoutTheKey(t *testing.T) {
	sim := startSim(t, upstreamtest.Config{})
	key := "sk-proj-wrongwrongwrong123456"
	o, _ := NewOpenAI(OpenAIConfig{APIKey: key, BaseURL: sim.URL(), Session: RealtimeSession{Model: "m", Voice: "v", TTLSeconds: 60}})
	_, err := o.Mint(context.Background(), mint.Request{})
	var se *StatusError
	if !errors.As(err, &se) || !errors.Is(err, ErrBadKey) {
		t.Fatalf("got %v", err)
	}
	if !strings.HasPrefix(err.Error(), "OpenAI client_secrets failed (401): ") {
		t.Fatalf("message %q is not Navai's", err)
	}
	if strings.Contains(err.Error(), key) || strings.Contains(err.Error(), key[:7]+"*") || strings.Contains(err.Error(), key[len(key)-4:]) {
		t.Fatalf("message %q leaks the key", err)
	}
	// The caller sees Navai's words and the status, never the provider's
	// text: the log has that.
	if pm := se.PublicMessage(); pm != "OpenAI client_secrets failed (401): the provider rejected the API key" {
		t.Fatalf("the caller would see %q", pm)
	}
}
