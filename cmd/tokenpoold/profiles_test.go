package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/pool"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// writeConfig writes a TOKENPOOL_CONFIG file for a test.
func writeConfig(tb testing.TB, body string) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "profiles.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

const twoProfiles = `
default_profile: default
realtime_profile: assistant
profiles:
  default:
    provider: orga
    target: 4
  assistant:
    provider: openai
    target: 3
    openai:
      model: gpt-realtime
      voice: marin
      instructions: You are a helpful assistant.
      client_secret_ttl_seconds: 600
  premium:
    provider: openai
    target: 2
    allow:
      claims: {plan: [pro]}
    openai:
      voice: cedar
`

// call makes one request and returns the status and JSON body.
func call(tb testing.TB, method, url, body string, header ...string) (int, map[string]any) {
	tb.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, url, rd)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

func profileEnv(tb testing.TB, sim *upstreamtest.Server, config string) map[string]string {
	return map[string]string{
		"TOKENPOOL_CONFIG": writeConfig(tb, config),
		"OPENAI_API_KEY":   upstreamtest.DefaultOpenAIKey,
		"OPENAI_BASE_URL":  sim.URL(),
	}
}

// TestTwoProfiles: one Orga and one OpenAI profile against the simulated
// provider. Each route answers from the right pool, and OpenAI receives
// exactly the body UPSTREAMS.md shows.
func TestTwoProfiles(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, profileEnv(t, sim, twoProfiles))
	ctx := context.Background()
	usable := func(p string) int {
		st, err := d.pool.Stats(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Usable
	}
	poll.Until(t, "both pools to fill", 10*time.Second, func() bool {
		return usable("default") == 4 && usable("assistant") == 3 && usable("premium") == 2
	})

	// OpenAI got exactly the documented body, field for field.
	want := `{"expires_after":{"anchor":"created_at","seconds":600},"session":{"type":"realtime","model":"gpt-realtime","instructions":"You are a helpful assistant.","audio":{"output":{"voice":"marin"}}}}`
	found := false
	for _, b := range sim.OpenAIRequests() {
		found = found || string(b) == want
	}
	if !found {
		t.Fatalf("OpenAI never received the documented body; got e.g. %s", sim.OpenAIRequests()[0])
	}

	bearer := "Bearer " + callerJWT(t, "alice")
	handedOut := func(p string) int64 {
		st, _ := d.pool.Stats(ctx, p)
		return st.HandedOut
	}
	tests := []struct {
		name, method, path, body, profile string
		orga                              bool
	}{
		{"POST /v1/session-config serves the default (Orga) pool", "POST", "/v1/session-config", "", "default", true},
		{"GET /api/orga-client-secrets serves the Orga pool", "GET", "/api/orga-client-secrets", "", "default", true},
		{"POST /v1/session-config can name the OpenAI profile", "POST", "/v1/session-config", `{"profile":"assistant"}`, "assistant", false},
		{"POST /navai/realtime/client-secret serves the realtime pool", "POST", "/navai/realtime/client-secret", `{}`, "assistant", false},
		{"POST /api/realtime-token serves the realtime pool", "POST", "/api/realtime-token", "", "assistant", false},
		{"a Navai request whose settings match another profile is served from it", "POST", "/navai/realtime/client-secret", `{"voice":"cedar"}`, "premium", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			auth := bearer
			if tt.profile == "premium" {
				tok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
					"sub": "carol", "plan": "pro", "exp": time.Now().Add(time.Hour).Unix(),
				}).SignedString([]byte(testJWTSecret))
				auth = "Bearer " + tok
			}
			before := handedOut(tt.profile)
			code, body := call(t, tt.method, d.url+tt.path, tt.body, "Authorization", auth)
			if code != 200 {
				t.Fatalf("%d %v", code, body)
			}
			token, _ := body["ephemeralToken"].(string)
			if v, ok := body["value"].(string); ok {
				token = v
				if _, ok := body["expires_at"].(float64); !ok {
					t.Fatalf("Navai answer without a numeric expires_at: %v", body)
				}
			}
			m, ok := sim.Lookup(token)
			if !ok {
				t.Fatal("a token the provider did not mint")
			}
			isOrga := m.TURNCredential != ""
			if isOrga != tt.orga {
				t.Fatalf("got an Orga credential: %v, want %v", isOrga, tt.orga)
			}
			if handedOut(tt.profile) != before+1 {
				t.Fatalf("not served from the %s pool", tt.profile)
			}
		})
	}

	t.Run("settings no profile has are minted on demand and counted, never pooled", func(t *testing.T) {
		before := len(sim.OpenAIRequests())
		code, body := call(t, "POST", d.url+"/navai/realtime/client-secret", `{"voice":"verse","language":"French"}`, "Authorization", bearer)
		if code != 200 {
			t.Fatalf("%d %v", code, body)
		}
		// Refills of the pooled profiles run alongside; find the request
		// with the asked-for voice.
		reqs := sim.OpenAIRequests()[before:]
		var asked []string
		for _, r := range reqs {
			var sent struct {
				Session struct {
					Instructions string
					Audio        struct{ Output struct{ Voice string } }
				}
			}
			if json.Unmarshal(r, &sent) == nil && sent.Session.Audio.Output.Voice == "verse" {
				asked = append(asked, sent.Session.Instructions)
			}
		}
		if len(asked) != 1 || asked[0] != "You are a helpful assistant.\nAlways reply in French." {
			t.Fatalf("on-demand mints with the asked-for voice: %q; all sent:\n%s", asked, bytes.Join(reqs, []byte("\n")))
		}
		od, _ := d.pool.OnDemand(ctx)
		if od["openai_settings"] != 1 {
			t.Fatalf("on-demand counters %v", od)
		}
	})

	t.Run("a caller without the claim may not use the restricted profile, even on demand", func(t *testing.T) {
		for _, c := range []struct{ path, body string }{
			{"/v1/session-config", `{"profile":"premium"}`},
			{"/navai/realtime/client-secret", `{"voice":"cedar"}`},
		} {
			if code, body := call(t, "POST", d.url+c.path, c.body, "Authorization", bearer); code != 403 {
				t.Fatalf("%s: %d %v; want 403", c.path, code, body)
			}
		}
	})

	t.Run("the Orga SDK route refuses an OpenAI profile", func(t *testing.T) {
		if code, _ := call(t, "GET", d.url+"/api/orga-client-secrets?profile=assistant", "", "Authorization", bearer); code != 400 {
			t.Fatalf("%d; want 400", code)
		}
	})
}

// TestNavaiOverHTTP: Navai's key policy and messages through the routes,
// with a profile that has no backend key (callers bring their own).
func TestNavaiOverHTTP(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	env := profileEnv(t, sim, `
profiles:
  default:
    provider: orga
  byok:
    provider: openai
    openai:
      api_key_env: NO_SUCH_KEY
      allow_api_key_from_request: true
`)
	d := startDaemon(t, rs, sim, env)
	bearer := "Bearer " + callerJWT(t, "alice")

	code, body := call(t, "POST", d.url+"/navai/realtime/client-secret", `{}`, "Authorization", bearer)
	if e := body["error"].(map[string]any); code != 400 || e["message"] != "Missing API key. Configure openaiApiKey or send apiKey in request." {
		t.Fatalf("no key anywhere: %d %v", code, body)
	}
	callerKey := upstreamtest.DefaultOpenAIKey
	code, body = call(t, "POST", d.url+"/navai/realtime/client-secret", `{"apiKey":"`+callerKey+`","model":"gpt-realtime"}`, "Authorization", bearer)
	if code != 200 || !strings.HasPrefix(body["value"].(string), "ek_") {
		t.Fatalf("a caller's own key: %d %v", code, body)
	}
	od, _ := d.pool.OnDemand(context.Background())
	if od["openai_request_key"] != 1 {
		t.Fatalf("on-demand counters %v", od)
	}
	code, body = call(t, "POST", d.url+"/api/realtime-token", `{"apiKey":"sk-caller-wrong-key-123456"}`, "Authorization", bearer)
	msg, _ := body["error"].(map[string]any)["message"].(string)
	if code != 502 || !strings.HasPrefix(msg, "OpenAI client_secrets failed (401): ") || strings.Contains(msg, "wrong-key") {
		t.Fatalf("a wrong caller key: %d %q", code, msg)
	}
	if strings.Contains(d.logsNow(), callerKey) {
		t.Fatal("a caller's key reached the logs")
	}
	if n, _ := rs.Client().Keys(context.Background(), pool.Keys("", "byok").Pattern()).Result(); len(n) > 0 {
		t.Fatalf("a caller-key mint touched the byok pool: %v", n)
	}
}

// TestOrgaClientCompatibility replays what @orga-ai/core's
// fetchSessionConfig and @navai/voice-frontend's client do.
func TestOrgaClientCompatibility(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	env := profileEnv(t, sim, twoProfiles)
	env["TOKENPOOL_JWT_COOKIE"] = "app_session"
	d := startDaemon(t, rs, sim, env)
	jwtAlice := callerJWT(t, "alice")

	// fetchSessionConfig(endpoint): a plain GET; apps add a Bearer header,
	// browsers send their cookies (and, from the app's own site,
	// Sec-Fetch-Site). It requires truthy ephemeralToken and iceServers,
	// else "Invalid response from session config endpoint".
	for name, h := range map[string][]string{
		"with a cookie":        {"Cookie", "app_session=" + jwtAlice, "Sec-Fetch-Site", "same-site"},
		"with a Bearer header": {"Authorization", "Bearer " + jwtAlice},
	} {
		t.Run("fetchSessionConfig "+name, func(t *testing.T) {
			code, body := call(t, "GET", d.url+"/api/orga-client-secrets", "", h...)
			tok, _ := body["ephemeralToken"].(string)
			ice, _ := body["iceServers"].([]any)
			if code != 200 || tok == "" || len(ice) == 0 {
				t.Fatalf("Invalid response from session config endpoint: %d %v", code, body)
			}
		})
	}
	t.Run("a cookie with a bad JWT is refused", func(t *testing.T) {
		if code, _ := call(t, "GET", d.url+"/api/orga-client-secrets", "", "Cookie", "app_session=eyJ.bad.jwt"); code != 401 {
			t.Fatalf("%d", code)
		}
	})

	// The Navai frontend client POSTs JSON and requires a string value and
	// a numeric expires_at.
	for _, body := range []string{`{}`, `{"model":"gpt-realtime","voice":"marin"}`} {
		t.Run("the Navai client posting "+body, func(t *testing.T) {
			code, ans := call(t, "POST", d.url+"/navai/realtime/client-secret", body, "Cookie", "app_session="+jwtAlice, "Sec-Fetch-Site", "same-origin")
			v, ok1 := ans["value"].(string)
			_, ok2 := ans["expires_at"].(float64)
			if code != 200 || !ok1 || v == "" || !ok2 {
				t.Fatalf("%d %v", code, ans)
			}
		})
	}
}

// TestOrgaPerCallerEmail: an Orga profile that mints for each caller with
// the caller's email claim, never pooled.
func TestOrgaPerCallerEmail(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, profileEnv(t, sim, `
profiles:
  default:
    provider: orga
    orga:
      per_caller_email: true
`))
	tok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "dave", "email": "dave@example.com", "email_verified": "true", "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(testJWTSecret))
	code, body := call(t, "POST", d.url+"/v1/session-config", "", "Authorization", "Bearer "+tok)
	if code != 200 {
		t.Fatalf("%d %v", code, body)
	}
	if e := sim.Emails(); len(e) != 1 || e[0] != "dave@example.com" {
		t.Fatalf("emails sent to the provider: %v", e)
	}
	if code, body := call(t, "POST", d.url+"/v1/session-config", "", "Authorization", "Bearer "+callerJWT(t, "noemail")); code != 403 {
		t.Fatalf("a caller without an email claim: %d %v", code, body)
	}
	if n := rs.Client().ZCard(context.Background(), pool.Keys("", "default").Ready()).Val(); n != 0 {
		t.Fatalf("%d per-caller credentials pooled", n)
	}
}
