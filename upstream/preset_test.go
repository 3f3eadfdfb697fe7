package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/mint"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// presetRequired are the settings a preset can't do without, for tests.
var presetRequired = map[string]map[string]any{
	"azure-openai":     {"deployment": "gpt-realtime-prod"},
	"elevenlabs-agent": {"agent_id": "agent_sim"},
	"elevenlabs":       {"token_type": "realtime_scribe"},
	"cartesia":         {"grants": []any{"tts", "stt"}},
	"fish":             {"scopes": []any{"stt:write"}},
}

// presetMinter is a preset's minter against the simulator, with its
// required settings and more.
func presetMinter(tb testing.TB, sim *upstreamtest.Server, name string, more map[string]any) *EndpointMinter {
	tb.Helper()
	p, ok := PresetByName(name)
	if !ok {
		tb.Fatalf("no preset %q", name)
	}
	raw := map[string]any{}
	for k, v := range presetRequired[name] {
		raw[k] = v
	}
	for k, v := range more {
		raw[k] = v
	}
	e, _, err := p.Endpoint(sim.URL(), raw)
	if err != nil {
		tb.Fatal(err)
	}
	m, err := NewEndpointMinter(e, upstreamtest.PresetKey(name), nil)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// Every preset mints from the simulator, which speaks its provider's
// documented request and answer: the token is one the provider issued,
// its expiry the provider's, and the extras its client needs are there.
func TestEveryPresetMintsFromItsWireFormat(t *testing.T) {
	sim, err := upstreamtest.Start(upstreamtest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	wantExtra := map[string]string{
		"gemini": "url", "azure-openai": "url", "xai": "url", "assemblyai": "url", "deepgram": "url",
		"speechmatics": "url", "hume": "url",
	}
	for _, name := range PresetNames() {
		t.Run(name, func(t *testing.T) {
			c, err := presetMinter(t, sim, name, nil).Mint(context.Background(), mint.Request{})
			if err != nil {
				t.Fatal(err)
			}
			rec, ok := sim.Lookup(c.Token)
			if !ok || rec.Provider != name {
				t.Fatalf("token %.12s… is not one %s minted (%+v)", c.Token, name, rec)
			}
			if d := c.ExpiresAt.Sub(rec.ExpiresAt); d < -2*time.Second || d > 2*time.Second {
				t.Fatalf("expires %v; the provider says %v", c.ExpiresAt, rec.ExpiresAt)
			}
			if k := wantExtra[name]; k != "" {
				var extra map[string]string
				if err := json.Unmarshal(c.Extra, &extra); err != nil || !strings.HasPrefix(extra[k], "ws") && !strings.HasPrefix(extra[k], "http") {
					t.Fatalf("extra %s: %s (%v)", k, c.Extra, err)
				}
			}
			if n := len(sim.PresetRequests(name)); n != 1 {
				t.Fatalf("%d requests reached the provider; want 1", n)
			}
		})
	}
}

// Each preset's errors, in its provider's shape, become what the guard
// acts on: a wrong key is ErrBadKey (Gemini's 400 API_KEY_INVALID
// included), a 429 says how long to wait (Gemini in its body), a 500 is
// retried.
func TestEveryPresetsErrorsAreRead(t *testing.T) {
	sim, err := upstreamtest.Start(upstreamtest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	for _, name := range PresetNames() {
		t.Run(name, func(t *testing.T) {
			m := presetMinter(t, sim, name, nil)
			sim.ThrottleNext(7 * time.Second)
			_, err := m.Mint(context.Background(), mint.Request{})
			var se *StatusError
			if !errors.As(err, &se) || se.Code != http.StatusTooManyRequests || se.RetryAfter != 7*time.Second {
				t.Fatalf("429: %v; want one asking for 7s", err)
			}
			sim.Update(func(c *upstreamtest.Config) { c.FailureRate = 1 })
			_, err = m.Mint(context.Background(), mint.Request{})
			sim.Update(func(c *upstreamtest.Config) { c.FailureRate = 0 })
			if !errors.As(err, &se) || se.Code != http.StatusInternalServerError || !retryable(err) {
				t.Fatalf("500: %v; want a retryable status error", err)
			}
			sim.RejectKey(true)
			_, err = m.Mint(context.Background(), mint.Request{})
			sim.RejectKey(false)
			if !errors.Is(err, ErrBadKey) || retryable(err) {
				t.Fatalf("wrong key: %v; want ErrBadKey", err)
			}
			if strings.Contains(err.Error(), upstreamtest.PresetKey(name)) {
				t.Fatalf("the error carries the key: %v", err)
			}
		})
	}
}

// A provider's redirect is not followed: the key, in whatever header the
// provider reads it from, never reaches the host it points to.
func TestAProvidersRedirectKeepsTheKey(t *testing.T) {
	var leaked atomic.Bool
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("xi-api-key") != "" {
			leaked.Store(true)
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(`{"token":"t"}`))
	}))
	defer other.Close()
	redirecting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, strings.Replace(other.URL, "127.0.0.1", "localhost", 1)+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer redirecting.Close()
	p, _ := PresetByName("elevenlabs")
	e, _, err := p.Endpoint(redirecting.URL, map[string]any{"token_type": "realtime_scribe"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewEndpointMinter(e, "sk-eleven-secret", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Mint(context.Background(), mint.Request{})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusTemporaryRedirect || leaked.Load() {
		t.Fatalf("got %v (key sent on: %v); want the redirect answered as a failure, the key kept", err, leaked.Load())
	}
}

// docs/providers.md has a row for every preset, citing the page its
// description follows, and the simulator speaks every preset.
func TestEveryPresetIsDocumentedAndSimulated(t *testing.T) {
	doc, err := os.ReadFile("../docs/providers.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range Presets {
		if !strings.Contains(string(doc), "| `"+p.Name+"` | [") || !strings.Contains(string(doc), "("+p.Doc+")") {
			t.Errorf("docs/providers.md: no row for %s citing %s", p.Name, p.Doc)
		}
	}
	if got, want := upstreamtest.PresetNames(), PresetNames(); !slices.Equal(slices.Sorted(slices.Values(got)), want) {
		t.Errorf("the simulator speaks %v; the presets are %v", got, want)
	}
}
