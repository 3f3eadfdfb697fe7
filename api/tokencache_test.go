package api

import (
	"context"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tokenpool/tokenpool/internal/idptest"
	"github.com/tokenpool/tokenpool/internal/poll"
)

// fakeClock is a clock a test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// cachedAuth is an authenticator with a verified token cache of size,
// HS256 tokens and idp's, both for the audience "app", on clock.
// A profile reads the plan claim, a quota org_id.
func cachedAuth(t *testing.T, idp *idptest.Server, size int, clock *fakeClock) (*authenticator, *Metrics) {
	t.Helper()
	m := NewMetrics(prometheus.NewRegistry())
	a, err := newAuthenticator(Config{
		JWTSecret: testSecret, JWTAudiences: []string{"app"}, JWTCacheSize: size, Now: clock.now, Metrics: m,
		Issuers:  []Issuer{{URL: idp.URL(), JWKSURL: idp.JWKSURL(), Audiences: []string{"app"}, MinRefetch: time.Millisecond}},
		Profiles: map[string]ProfileInfo{"pro": {Access: &Access{Claims: map[string][]string{"plan": {"pro"}}}}},
		Quotas:   []Quota{{Name: "org", Sessions: 5, Per: time.Hour, By: "org_id"}},
	}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	a.issuers.open()
	t.Cleanup(a.issuers.close)
	poll.Until(t, "the keys to load", 10*time.Second, func() bool { return a.issuers.ready() == nil })
	return a, m
}

// TestTheVerifiedTokenCache: a token sent again is not verified again,
// but a cached token still passes only while it is unexpired, for this
// app, and signed by a key its issuer publishes now; and the cache stays
// within its size however many tokens come.
func TestTheVerifiedTokenCache(t *testing.T) {
	idp := idptest.Start(t)
	clock := &fakeClock{t: time.Now()}
	ctx := context.Background()
	claims := func(sub string, exp time.Duration, aud string) jwt.MapClaims {
		return jwt.MapClaims{"sub": sub, "aud": aud, "iat": clock.now().Unix(), "exp": clock.now().Add(exp).Unix()}
	}
	hs := func(c jwt.MapClaims) string { return signJWT(t, c, jwt.SigningMethodHS256, testSecret) }
	accepted := func(a *authenticator, token string) bool {
		c, err := a.jwt(ctx, token)
		return err == nil && c.subject != ""
	}

	t.Run("a token sent again is verified once", func(t *testing.T) {
		a, m := cachedAuth(t, idp, 100, clock)
		tokens := []string{
			hs(claims("hs", time.Hour, "app")),
			idp.Sign(t, "RS256", claims("rs", time.Hour, "app")),
			idp.Sign(t, "ES256", claims("es", time.Hour, "app")),
		}
		for range 3 {
			for i, tok := range tokens {
				want := "user:" + []string{"hs", "rs", "es"}[i]
				if c, err := a.jwt(ctx, tok); err != nil || c.kind != "jwt" || c.subject != want {
					t.Fatalf("%+v, %v; want %s", c, err, want)
				}
			}
		}
		if v, c := testutil.ToFloat64(m.verifiedJWTs), testutil.ToFloat64(m.cached); v != 3 || c != 6 {
			t.Fatalf("%v verified, %v from the cache; want 3 and 6", v, c)
		}
	})

	t.Run("an expired token is refused though cached", func(t *testing.T) {
		a, m := cachedAuth(t, idp, 100, clock)
		tokens := []string{hs(claims("hs", 20*time.Second, "app")), idp.Sign(t, "ES256", claims("es", 20*time.Second, "app"))}
		for _, tok := range tokens {
			if !accepted(a, tok) || !accepted(a, tok) {
				t.Fatal("a fresh token was refused")
			}
		}
		clock.add(24 * time.Second) // past exp, within the 5 s leeway
		for _, tok := range tokens {
			if !accepted(a, tok) {
				t.Fatal("a token within the leeway was refused")
			}
		}
		if c := testutil.ToFloat64(m.cached); c != 4 {
			t.Fatalf("%v from the cache, want 4", c)
		}
		clock.add(2 * time.Second)
		for _, tok := range tokens {
			if accepted(a, tok) {
				t.Fatal("an expired token was accepted")
			}
		}
		if c, n := testutil.ToFloat64(m.cached), a.cache.len(); c != 4 || n != 0 {
			t.Fatalf("%v from the cache, %d kept; want 4 and none", c, n)
		}
	})

	t.Run("a token of a key no longer published is refused though cached", func(t *testing.T) {
		a, m := cachedAuth(t, idp, 100, clock)
		old := idp.Sign(t, "RS256", claims("rs", time.Hour, "app"))
		es := idp.Sign(t, "ES256", claims("es", time.Hour, "app"))
		for _, tok := range []string{old, old, es} {
			if !accepted(a, tok) {
				t.Fatal("a fresh token was refused")
			}
		}
		idp.Rotate(t, "RS256")
		// A token of the new key makes the daemon fetch the keys again.
		if !accepted(a, idp.Sign(t, "RS256", claims("rs2", time.Hour, "app"))) {
			t.Fatal("a token of the new key was refused")
		}
		if accepted(a, old) {
			t.Fatal("a token of the rotated-out key was accepted")
		}
		// A token of a key still published is verified again, and passes.
		verified := testutil.ToFloat64(m.verifiedJWTs)
		if !accepted(a, es) || !accepted(a, es) {
			t.Fatal("a token of a key still published was refused")
		}
		if v := testutil.ToFloat64(m.verifiedJWTs) - verified; v != 1 {
			t.Fatalf("the token of a key still published was verified %v times after the keys changed, want 1", v)
		}
	})

	t.Run("a token for another audience is refused though cached", func(t *testing.T) {
		a, _ := cachedAuth(t, idp, 100, clock)
		for _, tok := range []string{hs(claims("hs", time.Hour, "other")), idp.Sign(t, "RS256", claims("rs", time.Hour, "other"))} {
			a.cache.entries.Purge()
			if accepted(a, tok) || a.cache.len() != 0 {
				t.Fatal("a token for another audience was accepted or kept")
			}
			// Even a verified copy of it in the cache (as a daemon whose
			// audience was this one would have kept) does not pass.
			parsed, _, err := jwt.NewParser().ParseUnverified(tok, jwt.MapClaims{})
			if err != nil {
				t.Fatal(err)
			}
			c := parsed.Claims.(jwt.MapClaims)
			var keys *keySet
			var gen uint64
			if alg, _ := algOf(tok); alg != "HS256" {
				keys = a.issuers.get(idp.URL())
				gen = keys.generation.Load()
			}
			a.cache.put(tok, caller{subject: "user:x", kind: "jwt", claims: c}, c, keys, gen)
			if a.cache.len() != 1 {
				t.Fatal("the copy was not kept")
			}
			if accepted(a, tok) {
				t.Fatal("a cached token for another audience was accepted")
			}
		}
	})

	t.Run("a cached caller keeps the claims requests read, and allows as verified", func(t *testing.T) {
		a, m := cachedAuth(t, idp, 100, clock)
		pro, free := claims("p", time.Hour, "app"), claims("f", time.Hour, "app")
		for _, c := range []jwt.MapClaims{pro, free} {
			c["org_id"], c["groups"] = "acme", []string{"a", "b"}
		}
		pro["plan"], free["plan"] = "pro", "free"
		access := &Access{Claims: map[string][]string{"plan": {"pro"}}}
		for _, tc := range []struct {
			token string
			may   bool
		}{{hs(pro), true}, {idp.Sign(t, "ES256", free), false}} {
			for range 2 {
				c, err := a.jwt(ctx, tc.token)
				if err != nil || access.allows(c) != tc.may || c.claims["org_id"] != "acme" {
					t.Fatalf("%+v, %v; want allowed %v, org_id acme", c, err, tc.may)
				}
			}
			c, _ := a.jwt(ctx, tc.token)
			if _, kept := c.claims["groups"]; kept || len(c.claims) != 2 {
				t.Fatalf("a cached caller keeps %v; want plan and org_id only", c.claims)
			}
		}
		if v, c := testutil.ToFloat64(m.verifiedJWTs), testutil.ToFloat64(m.cached); v != 2 || c != 4 {
			t.Fatalf("%v verified, %v from the cache; want 2 and 4", v, c)
		}
	})

	t.Run("the keys fetched again unchanged leave the cache be", func(t *testing.T) {
		a, m := cachedAuth(t, idp, 100, clock)
		tok := idp.Sign(t, "RS256", claims("rs", time.Hour, "app"))
		if !accepted(a, tok) {
			t.Fatal("a fresh token was refused")
		}
		if err := a.issuers.get(idp.URL()).fetch(ctx, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if !accepted(a, tok) || testutil.ToFloat64(m.cached) != 1 {
			t.Fatalf("after a refetch of the same keys: %v from the cache, want 1", testutil.ToFloat64(m.cached))
		}
	})

	t.Run("the cache stays within its size under a flood of tokens", func(t *testing.T) {
		const size, flood = 1000, 5000
		a, _ := cachedAuth(t, idp, size, clock)
		// Each token near the 4 KiB a credential may be, most of it a
		// claim no request reads: 600 numbers, each a value of its own
		// once decoded.
		groups := make([]int, 600)
		for i := range groups {
			groups[i] = 100 + i
		}
		tokens := make([]string, flood)
		for i := range tokens {
			c := claims("u"+strconv.Itoa(i), time.Hour, "app")
			c["groups"], c["org_id"] = groups, "acme"
			tokens[i] = hs(c)
		}
		before := heapInUse()
		for _, tok := range tokens {
			if !accepted(a, tok) {
				t.Fatal("a fresh token was refused")
			}
			if accepted(a, tampered(tok)) {
				t.Fatal("a tampered token was accepted")
			}
		}
		grew := int64(heapInUse()) - int64(before)
		t.Logf("%d distinct tokens of %d bytes: %d kept, the heap grew %d KiB", flood, len(tokens[0]), a.cache.len(), grew/1024)
		if n := a.cache.len(); n != size {
			t.Fatalf("%d tokens kept, want %d", n, size)
		}
		// Decoded whole, each token's claims take some 20 KiB: 1,000 of
		// them, 20 MiB.
		if grew > 4<<20 {
			t.Fatalf("the heap grew %d KiB for a cache of %d", grew/1024, size)
		}
		runtime.KeepAlive(tokens)
	})
}

// tampered is token with a character in the middle of its signature
// changed (the last one may carry only padding bits).
func tampered(token string) string {
	i := len(token) - 10
	repl := byte('A')
	if token[i] == 'A' {
		repl = 'B'
	}
	return token[:i] + string(repl) + token[i+1:]
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
