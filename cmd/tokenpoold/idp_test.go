package main

import (
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokenpool/tokenpool/internal/idptest"
	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

const testAudience = "tokenpool-test"

// idpEnv points a daemon at idp as the environment's issuer.
func idpEnv(idp *idptest.Server, extra ...string) map[string]string {
	env := map[string]string{
		"TOKENPOOL_JWKS_URL":     idp.JWKSURL(),
		"TOKENPOOL_JWT_ISSUER":   idp.URL(),
		"TOKENPOOL_JWT_AUDIENCE": testAudience,
	}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	return env
}

// readyz returns the status of GET /readyz.
func readyz(tb testing.TB, base string) int {
	tb.Helper()
	resp, err := client.Get(base + "/readyz")
	if err != nil {
		tb.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestIdentityProviderTokens: callers bring JWTs from their own identity
// provider (RS256 and ES256 keys in a JWKS), beside HS256 callers; every
// token that is not the issuer's own, for this app, unexpired and signed
// by a published key with an allowed algorithm, is refused.
func TestIdentityProviderTokens(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	idp := idptest.Start(t)
	other := idptest.Start(t) // an issuer nobody configured
	d := startDaemon(t, rs, sim, idpEnv(idp))
	poll.Until(t, "the keys to load", 10*time.Second, func() bool { return readyz(t, d.url) == 200 })
	good := jwt.MapClaims{"sub": "alice", "aud": testAudience}
	if n := len(logLines(d.logsNow(), "auth: identity provider keys loaded")); n != 1 {
		t.Fatalf("%d lines say the keys loaded, want 1", n)
	}

	for _, tc := range []struct{ name, token string }{
		{"an RS256 token", idp.Sign(t, "RS256", good)},
		{"an ES256 token", idp.Sign(t, "ES256", good)},
		// TOKENPOOL_JWT_ISSUER and _AUDIENCE hold for HS256 tokens too, as
		// with Supabase's legacy secret beside its signing keys.
		{"an HS256 token beside them", claimsJWT(t, map[string]any{"sub": "bob", "iss": idp.URL(), "aud": testAudience})},
	} {
		t.Run(tc.name+" gets a credential", func(t *testing.T) {
			if r := fetch(t, d.url, tc.token); r.status != 200 {
				t.Fatalf("%d %s", r.status, r.body)
			}
		})
	}
	with := func(k string, v any) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "alice", "aud": testAudience}
		c[k] = v
		return c
	}
	hsWithPublicKey := func() string {
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
			"sub": "alice", "aud": testAudience, "iss": idp.URL(), "exp": time.Now().Add(time.Hour).Unix(),
		})
		tok.Header["kid"] = idp.KID("RS256")
		s, err := tok.SignedString(idp.PublicKeyPEM(t))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	none := func() string {
		tok := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{
			"sub": "alice", "aud": testAudience, "iss": idp.URL(), "exp": time.Now().Add(time.Hour).Unix(),
		})
		tok.Header["kid"] = idp.KID("RS256")
		s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, tc := range []struct{ name, token string }{
		{"a wrong iss", idp.Sign(t, "RS256", with("iss", "https://evil.example"))},
		{"another issuer's token", other.Sign(t, "RS256", good)},
		{"a wrong aud", idp.Sign(t, "RS256", with("aud", "another-app"))},
		{"no aud", idp.Sign(t, "RS256", jwt.MapClaims{"sub": "alice"})},
		{"an alg the key is not for (PS256 with the RS256 key)", idp.SignWith(t, "RS256", jwt.SigningMethodPS256, "", good)},
		{"alg none", none()},
		{"HS256 signed with the RSA public key", hsWithPublicKey()},
		{"an expired token", idp.Sign(t, "RS256", with("exp", time.Now().Add(-time.Minute).Unix()))},
		{"an iat in the future", idp.Sign(t, "ES256", with("iat", time.Now().Add(time.Hour).Unix()))},
		{"no sub", idp.Sign(t, "RS256", jwt.MapClaims{"aud": testAudience})},
		{"a tampered payload", tamper(idp.Sign(t, "RS256", good))},
	} {
		t.Run(tc.name+" gets 401", func(t *testing.T) {
			if r := fetch(t, d.url, tc.token); r.status != 401 {
				t.Fatalf("%d %s", r.status, r.body)
			}
		})
	}
	t.Run("the access log names the caller, never the token", func(t *testing.T) {
		tok := idp.Sign(t, "ES256", jwt.MapClaims{"sub": "carol", "aud": testAudience})
		fetch(t, d.url, tok)
		logs := d.logsNow()
		if !strings.Contains(logs, `"subject":"user:carol"`) || strings.Contains(logs, tok) || strings.Contains(logs, strings.Split(tok, ".")[2]) {
			t.Fatal("the log lacks the subject or carries the token")
		}
	})
}

// tamper makes a signed token's subject mallory and keeps the signature.
func tamper(token string) string {
	parts := strings.Split(token, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	payload = []byte(strings.Replace(string(payload), `"sub":"alice"`, `"sub":"mallory"`, 1))
	return parts[0] + "." + base64.RawURLEncoding.EncodeToString(payload) + "." + parts[2]
}

// TestIdentityProviderKeyRotation: a token signed by a new key (a new kid)
// makes the keys be fetched again, once, and is accepted; a burst of
// tokens with kids no key has fetches them at most once per interval and
// never holds a request much past a second.
func TestIdentityProviderKeyRotation(t *testing.T) {
	sim := startSim(t, upstreamtest.Config{})
	good := jwt.MapClaims{"sub": "alice", "aud": testAudience}

	t.Run("a rotated key is fetched and accepted", func(t *testing.T) {
		idp := idptest.Start(t)
		d := startDaemon(t, redistest.New(t), sim, idpEnv(idp))
		poll.Until(t, "the keys to load", 10*time.Second, func() bool { return readyz(t, d.url) == 200 })
		if r := fetch(t, d.url, idp.Sign(t, "RS256", good)); r.status != 200 {
			t.Fatalf("before rotation: %d %s", r.status, r.body)
		}
		idp.Rotate(t, "RS256")
		before := idp.Fetches()
		if r := fetch(t, d.url, idp.Sign(t, "RS256", good)); r.status != 200 {
			t.Fatalf("a token of the new key: %d %s", r.status, r.body)
		}
		if n := idp.Fetches() - before; n != 1 {
			t.Fatalf("the JWKS was fetched %d times for the new key, want 1", n)
		}
	})

	t.Run("a burst of unknown kids fetches at most once per interval", func(t *testing.T) {
		idp := idptest.Start(t)
		d := startDaemon(t, redistest.New(t), sim, idpEnv(idp, "TOKENPOOL_JWKS_MIN_REFETCH", "1s"))
		poll.Until(t, "the keys to load", 10*time.Second, func() bool { return readyz(t, d.url) == 200 })
		// 8 callers send tokens with kids no key has for about 2.5
		// intervals (bounded at 4,000 requests).
		before, start := idp.Fetches(), time.Now()
		var wg sync.WaitGroup
		statuses := make([]int, 4000)
		sent := make([]int, 8)
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < len(statuses) && time.Since(start) < 2500*time.Millisecond; i += 8 {
					tok := idp.SignWith(t, "RS256", jwt.SigningMethodRS256, fmt.Sprintf("unknown-%d", i), good)
					statuses[i] = fetch(t, d.url, tok).status
					sent[w]++
				}
			}()
		}
		wg.Wait()
		n := 0
		for _, c := range sent {
			n += c
		}
		took := time.Since(start)
		fetches := idp.Fetches() - before
		intervals := int64(took/time.Second) + 1
		t.Logf("%d tokens with unknown kids over %v: %d JWKS fetches (at most %d allowed)", n, took.Round(time.Millisecond), fetches, intervals)
		for i, st := range statuses {
			if st != 401 && st != 0 {
				t.Fatalf("token %d: %d, want 401", i, st)
			}
		}
		if fetches < 1 || fetches > intervals {
			t.Fatalf("%d fetches in %v; want 1 to %d", fetches, took, intervals)
		}
	})

	t.Run("a slow identity provider holds a request about a second at most", func(t *testing.T) {
		idp := idptest.Start(t)
		d := startDaemon(t, redistest.New(t), sim, idpEnv(idp))
		poll.Until(t, "the keys to load", 10*time.Second, func() bool { return readyz(t, d.url) == 200 })
		idp.SetDelay(10 * time.Second)
		r := fetch(t, d.url, idp.SignWith(t, "RS256", jwt.SigningMethodRS256, "not-yet-published", good))
		took := r.received.Sub(r.sent)
		t.Logf("a token with an unknown kid, the JWKS hanging: %d after %v", r.status, took.Round(time.Millisecond))
		if r.status != 401 || took > 2500*time.Millisecond {
			t.Fatalf("%d after %v; want 401 within about a second", r.status, took)
		}
		idp.SetDelay(0)
	})
}

// TestIdentityProviderDownAtStart: with the JWKS failing, the daemon runs
// and is not ready (HS256 callers are still served); once the JWKS
// answers it is ready, and keys that loaded keep serving when it fails
// again.
func TestIdentityProviderDownAtStart(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	idp := idptest.Start(t)
	idp.SetDown(true)
	d := startDaemon(t, rs, sim, idpEnv(idp))
	tok := idp.Sign(t, "RS256", jwt.MapClaims{"sub": "alice", "aud": testAudience})

	poll.Until(t, "a failed fetch", 5*time.Second, func() bool { return idp.Fetches() > 0 })
	if st := readyz(t, d.url); st != 503 {
		t.Fatalf("readyz %d with no keys, want 503", st)
	}
	if r := fetch(t, d.url, tok); r.status != 401 {
		t.Fatalf("a JWKS token with no keys: %d", r.status)
	}
	if r := fetch(t, d.url, claimsJWT(t, map[string]any{"sub": "bob", "iss": idp.URL(), "aud": testAudience})); r.status != 200 {
		t.Fatalf("an HS256 caller while the JWKS is down: %d", r.status)
	}
	if n := len(logLines(d.logsNow(), "auth: fetching the identity provider's keys failed")); n == 0 {
		t.Fatal("the failure was not logged")
	}

	idp.SetDown(false)
	up := time.Now()
	poll.Until(t, "ready once the JWKS answers", 15*time.Second, func() bool { return readyz(t, d.url) == 200 })
	t.Logf("ready %v after the JWKS came back", time.Since(up).Round(time.Millisecond))
	if r := fetch(t, d.url, tok); r.status != 200 {
		t.Fatalf("after the keys loaded: %d %s", r.status, r.body)
	}
	if n := len(logLines(d.logsNow(), "auth: identity provider keys loaded")); n != 1 {
		t.Fatalf("%d lines say the keys loaded, want 1", n)
	}

	idp.SetDown(true)
	if r := fetch(t, d.url, tok); r.status != 200 || readyz(t, d.url) != 200 {
		t.Fatalf("with the JWKS down again: %d, readyz %d; want the loaded keys to serve", r.status, readyz(t, d.url))
	}
}

// TestIdentityProvidersInTheProfileFile: several issuers in auth.issuers;
// their claims work in allow rules and as the per-caller email, and their
// users are kept apart by issuer.
func TestIdentityProvidersInTheProfileFile(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	a, b := idptest.Start(t), idptest.Start(t)
	env := profileEnv(t, sim, fmt.Sprintf(`
auth:
  issuers:
    - name: shop
      issuer: %s
      jwks_url: %s
      audiences: [%s]
      algorithms: [ES256]
    - name: clinic
      issuer: %s
      jwks_url: %s
      authorized_parties: [https://clinic.example]
      user_claim: uid
default_profile: default
profiles:
  default:
    provider: orga
    target: 1
  pro:
    provider: orga
    target: 1
    allow:
      claims:
        plan: [pro]
  legacy:
    provider: orga
    orga:
      per_caller_email: true
`, a.URL(), a.JWKSURL(), testAudience, b.URL(), b.JWKSURL()))
	env["TOKENPOOL_RATE_PER_USER"] = "2/m"
	d := startDaemon(t, rs, sim, env)
	poll.Until(t, "both issuers' keys", 10*time.Second, func() bool { return readyz(t, d.url) == 200 })
	post := func(tok, profile string) int {
		code, _ := call(t, "POST", d.url+"/v1/session-config", `{"profile":"`+profile+`"}`, "Authorization", "Bearer "+tok)
		return code
	}

	shopPro := a.Sign(t, "ES256", jwt.MapClaims{"sub": "u1", "aud": testAudience, "plan": "pro", "email": "u1@shop.example", "email_verified": true})
	shopFree := a.Sign(t, "ES256", jwt.MapClaims{"sub": "u2", "aud": testAudience, "plan": "free"})
	if c := post(shopPro, "pro"); c != 200 {
		t.Fatalf("a pro claim on the pro profile: %d", c)
	}
	if c := post(shopFree, "pro"); c != 403 {
		t.Fatalf("a free claim on the pro profile: %d, want 403", c)
	}
	if c := post(shopPro, "legacy"); c != 200 || len(sim.Emails()) != 1 || sim.Emails()[0] != "u1@shop.example" {
		t.Fatalf("per-caller email: %d, provider saw %v", c, sim.Emails())
	}
	if c := post(a.Sign(t, "RS256", jwt.MapClaims{"sub": "u1", "aud": testAudience}), "default"); c != 401 {
		t.Fatalf("an algorithm the shop issuer doesn't use: %d, want 401", c)
	}
	unverified := a.Sign(t, "ES256", jwt.MapClaims{"sub": "u3", "aud": testAudience, "email": "victim@example.com", "email_verified": false})
	if c := post(unverified, "legacy"); c != 403 {
		t.Fatalf("an unverified email on a per-caller profile: %d, want 403", c)
	}

	// clinic: the user is uid, the app is azp; the same id as a shop user
	// is another user with a limit of its own.
	clinic := func(azp string) string {
		return b.Sign(t, "RS256", jwt.MapClaims{"uid": "u1", "sub": "ignored", "azp": azp})
	}
	if c := post(clinic("https://other.example"), "default"); c != 401 {
		t.Fatalf("an azp not authorized: %d, want 401", c)
	}
	for i := range 2 {
		if c := post(clinic("https://clinic.example"), "default"); c != 200 {
			t.Fatalf("clinic request %d: %d", i+1, c)
		}
	}
	if c := post(clinic("https://clinic.example"), "default"); c != 429 {
		t.Fatalf("a third clinic request: %d, want 429 (2/m)", c)
	}
	logs := d.logsNow()
	for _, s := range []string{`"subject":"idp:shop:u1"`, `"subject":"idp:clinic:u1"`} {
		if !strings.Contains(logs, s) {
			t.Fatalf("the access log lacks %s", s)
		}
	}
	if strings.Contains(logs, "u1@shop.example") {
		t.Fatal("an email reached the logs")
	}

	t.Run("a bad issuer stops the daemon naming it", func(t *testing.T) {
		for _, c := range []struct{ file, want string }{
			{"auth:\n  issuers:\n    - name: x\n      issuer: https://a.example/\n      jwks_url: http://a.example/jwks.json\n      audiences: [a]\nprofiles:\n  default:\n    provider: orga\n", "jwks_url"},
			{"auth:\n  issuers:\n    - name: x\n      issuer: https://a.example/\n      jwks_url: https://a.example/jwks.json\nprofiles:\n  default:\n    provider: orga\n", "audience"},
			{"auth:\n  issuers:\n    - name: x\n      issuer: https://a.example/\n      jwks_url: https://a.example/jwks.json\n      audiences: [a]\n      algorithms: [HS256]\nprofiles:\n  default:\n    provider: orga\n", "HS256"},
			{"auth:\n  issuers:\n    - name: Bad Name\n      issuer: https://a.example/\n      jwks_url: https://a.example/jwks.json\n      audiences: [a]\nprofiles:\n  default:\n    provider: orga\n", "name"},
		} {
			cfgEnv := map[string]string{"TOKENPOOL_CONFIG": writeConfig(t, c.file), "ORGA_API_KEY": "k"}
			if _, err := LoadConfig(envOf(cfgEnv), false); err == nil || !strings.Contains(err.Error(), "auth.issuers[0]") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%q: %v", c.want, err)
			}
		}
	})
}

// TestIdentityProviderEnvErrors: the environment's issuer is checked at
// start, each error naming its variable.
func TestIdentityProviderEnvErrors(t *testing.T) {
	base := map[string]string{"ORGA_API_KEY": "k"}
	for _, c := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"a JWKS without an issuer", map[string]string{"TOKENPOOL_JWKS_URL": "https://a.example/jwks.json", "TOKENPOOL_JWT_AUDIENCE": "a"}, "issuer URL is required"},
		{"a JWKS without an audience", map[string]string{"TOKENPOOL_JWKS_URL": "https://a.example/jwks.json", "TOKENPOOL_JWT_ISSUER": "https://a.example/"}, "audience"},
		{"a JWKS over plain HTTP", map[string]string{"TOKENPOOL_JWKS_URL": "http://a.example/jwks.json", "TOKENPOOL_JWT_ISSUER": "https://a.example/", "TOKENPOOL_JWT_AUDIENCE": "a"}, "https"},
		{"HS256 among the algorithms", map[string]string{"TOKENPOOL_JWKS_URL": "https://a.example/jwks.json", "TOKENPOOL_JWT_ISSUER": "https://a.example/", "TOKENPOOL_JWT_AUDIENCE": "a", "TOKENPOOL_JWT_ALGS": "RS256,HS256"}, "HS256"},
		{"a user claim without a JWKS", map[string]string{"TOKENPOOL_JWT_SECRET": testJWTSecret, "TOKENPOOL_JWT_USER_CLAIM": "uid"}, "TOKENPOOL_JWT_USER_CLAIM"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range c.env {
				env[k] = v
			}
			_, err := LoadConfig(envOf(env), false)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v; want an error with %q", err, c.want)
			}
		})
	}
	t.Run("a JWKS alone lets callers in", func(t *testing.T) {
		idp := idptest.Start(t)
		env := map[string]string{"ORGA_API_KEY": "k"}
		for k, v := range idpEnv(idp) {
			env[k] = v
		}
		cfg, err := LoadConfig(envOf(env), false)
		if err != nil || len(cfg.Issuers) != 1 || cfg.Issuers[0].UserClaim != "sub" {
			t.Fatalf("%+v, %v", cfg.Issuers, err)
		}
	})
}
