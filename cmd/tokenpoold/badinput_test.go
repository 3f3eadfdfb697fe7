package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/pool"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

func TestBadConfigFileExits2NamingProfileAndField(t *testing.T) {
	tests := []struct {
		name, file string
		want       []string // all must appear in the message
	}{
		{"an unknown field", "profiles:\n  default:\n    provider: orga\n    targt: 5\n", []string{`profile "default"`, "targt"}},
		{"an unknown provider", "profiles:\n  eu:\n    provider: azure\n", []string{`profile "eu"`, "provider", "azure"}},
		{"a TTL out of Navai's range", "profiles:\n  a:\n    provider: openai\n    openai:\n      client_secret_ttl_seconds: 9000\n",
			[]string{`profile "a"`, "openai.client_secret_ttl_seconds", "clientSecretTtlSeconds must be between 10 and 7200. Received: 9000"}},
		{"a negative target", "profiles:\n  default:\n    provider: orga\n    target: -3\n", []string{`profile "default"`, "target"}},
		{"no shards", "profiles:\n  default:\n    provider: orga\n    shards: 0\n", []string{`profile "default"`, "shards", "1 to 64"}},
		{"too many shards", "profiles:\n  default:\n    provider: orga\n    shards: 65\n", []string{`profile "default"`, "shards", "1 to 64"}},
		{"a key variable that is not set", "profiles:\n  default:\n    provider: orga\n    orga:\n      api_key_env: ORGA_KEY_EU\n",
			[]string{`profile "default"`, "orga.api_key_env", "ORGA_KEY_EU is not set"}},
		{"a pool of per-caller credentials", "profiles:\n  default:\n    provider: orga\n    target: 5\n    orga:\n      per_caller_email: true\n",
			[]string{`profile "default"`, "target", "per_caller_email"}},
		{"openai settings in an orga profile", "profiles:\n  default:\n    provider: orga\n    openai:\n      voice: marin\n", []string{`profile "default"`, "openai"}},
		{"an empty allow", "profiles:\n  default:\n    provider: orga\n    allow: {}\n", []string{`profile "default"`, "allow"}},
		{"a bad min_remaining", "profiles:\n  default:\n    provider: orga\n    min_remaining: soon\n", []string{`profile "default"`, "min_remaining"}},
		{"a bad profile name", "profiles:\n  \"a b\":\n    provider: orga\n", []string{`profile "a b"`, "name"}},
		{"a default profile that doesn't exist", "default_profile: nope\nprofiles:\n  a:\n    provider: orga\n", []string{"default_profile", "nope"}},
		{"no default among several", "profiles:\n  a:\n    provider: orga\n  b:\n    provider: orga\n", []string{"default_profile"}},
		{"a realtime profile that isn't openai", "realtime_profile: default\nprofiles:\n  default:\n    provider: orga\n", []string{"realtime_profile", "not an openai profile"}},
		{"no profiles", "profiles: {}\n", []string{"profiles"}},
		{"not YAML", "profiles: [unclosed\n", []string{"TOKENPOOL_CONFIG"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{
				"TOKENPOOL_CONFIG": writeConfig(t, tt.file), "TOKENPOOL_JWT_SECRET": testJWTSecret,
				"ORGA_API_KEY": "k", "OPENAI_API_KEY": "sk-k",
			}
			var stderr bytes.Buffer
			if code := run(context.Background(), nil, envOf(env), io.Discard, &stderr); code != 2 {
				t.Fatalf("exit %d, want 2; stderr: %s", code, stderr.String())
			}
			for _, w := range append(tt.want, "TOKENPOOL_CONFIG") {
				if !strings.Contains(stderr.String(), w) {
					t.Fatalf("stderr lacks %q:\n%s", w, stderr.String())
				}
			}
		})
	}
	t.Run("a missing file", func(t *testing.T) {
		env := map[string]string{"TOKENPOOL_CONFIG": filepath.Join(t.TempDir(), "nope.yaml"), "TOKENPOOL_JWT_SECRET": testJWTSecret}
		var stderr bytes.Buffer
		if code := run(context.Background(), nil, envOf(env), io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "nope.yaml") {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
	})
	t.Run("a TTL out of range from Navai's env variable", func(t *testing.T) {
		env := map[string]string{"OPENAI_API_KEY": "sk-k", "OPENAI_REALTIME_CLIENT_SECRET_TTL": "5", "TOKENPOOL_JWT_SECRET": testJWTSecret}
		var stderr bytes.Buffer
		code := run(context.Background(), nil, envOf(env), io.Discard, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), "OPENAI_REALTIME_CLIENT_SECRET_TTL") ||
			!strings.Contains(stderr.String(), "clientSecretTtlSeconds must be between 10 and 7200. Received: 5") {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
	})
}

// TestBadRequestsChangeNothing: each bad request gets a clear 4xx, and
// the pools, counters and provider see nothing of it.
func TestBadRequestsChangeNothing(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, profileEnv(t, sim, twoProfiles))
	ctx := context.Background()
	snapshot := func() []any {
		out := []any{sim.Counts().MintCalls}
		for _, p := range []string{"default", "assistant", "premium"} {
			st, err := d.pool.Stats(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			st.Usable = 0                                         // moves with the clock
			st.LastMinute, st.LastHour = pool.Cost{}, pool.Cost{} // spans that move with the clock; the counters are compared
			out = append(out, st)
		}
		od, _ := d.pool.OnDemand(ctx)
		return append(out, od)
	}
	// Settled: every pool holds its whole target and no mint is in flight,
	// so the refiller has nothing left to do that would move the snapshot.
	poll.Until(t, "full pools and no mint in flight", 10*time.Second, func() bool {
		for _, p := range []string{"default", "assistant", "premium"} {
			st, _ := d.pool.Stats(ctx, p)
			if st.InFlight != 0 || st.Target == 0 || st.Usable < st.Target || st.Usable != int(st.Minted) {
				return false
			}
		}
		return true
	})
	before := snapshot()

	auth := "Bearer " + callerJWT(t, "alice")
	big := `{"profile":"` + strings.Repeat("a", 20<<10) + `"}`
	tests := []struct {
		name, path, body, contentType string
		status                        int
		code                          string
	}{
		{"an unknown profile", "/v1/session-config", `{"profile":"nope"}`, "application/json", 400, "bad_request"},
		{"a profile this caller may not use", "/v1/session-config", `{"profile":"premium"}`, "application/json", 403, "forbidden"},
		{"malformed JSON", "/v1/session-config", `{"profile":`, "application/json", 400, "bad_request"},
		{"an unknown field", "/v1/session-config", `{"profil":"default"}`, "application/json", 400, "bad_request"},
		{"an oversized body", "/v1/session-config", big, "application/json", 413, "body_too_large"},
		{"a wrong content type", "/v1/session-config", `{"profile":"default"}`, "text/plain", 415, "unsupported_media_type"},
		{"malformed JSON to Navai", "/navai/realtime/client-secret", `{"voice":`, "application/json", 400, "bad_request"},
		{"a non-string setting to Navai", "/navai/realtime/client-secret", `{"voice":7}`, "application/json", 400, "bad_request"},
		{"an oversized body to Navai", "/api/realtime-token", big, "application/json", 413, "body_too_large"},
		{"a wrong content type to Navai", "/api/realtime-token", `{}`, "application/x-www-form-urlencoded", 415, "unsupported_media_type"},
		{"a restricted session through Navai", "/navai/realtime/client-secret", `{"voice":"cedar"}`, "application/json", 403, "forbidden"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := call(t, "POST", d.url+tt.path, tt.body, "Authorization", auth, "Content-Type", tt.contentType)
			e, _ := body["error"].(map[string]any)
			if status != tt.status || e["code"] != tt.code || e["message"] == "" || body["requestId"] == "" {
				t.Fatalf("%d %v; want %d %s", status, body, tt.status, tt.code)
			}
		})
	}
	if after := snapshot(); !reflect.DeepEqual(before, after) {
		t.Fatalf("bad requests changed something:\nbefore %+v\nafter  %+v", before, after)
	}
}
