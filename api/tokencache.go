package api

import (
	"crypto/sha256"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
	lru "github.com/hashicorp/golang-lru/v2"
)

// DefaultJWTCacheSize is how many verified caller JWTs are kept by default.
const DefaultJWTCacheSize = 10_000

// tokenCache keeps the caller JWTs whose signature verified, so that a
// client sending the same JWT on every call, as clients do until it
// expires, costs one signature check, not one per request (as Envoy's
// jwt_authn cache does). A token is found by the SHA-256 of its bytes, so
// only the very token that was verified can hit. A hit is checked again
// against the clock (exp, nbf, iat, with the leeway), the audiences in
// force, and its issuer's keys: when they changed since (a rotation, a
// refetch), the token is verified again. At most size tokens are kept,
// the least recently used dropped first; a token is at most
// maxCredentialLen bytes, and its entry keeps of its claims only those a
// request reads (read: the profiles' allow.claims, the quotas' by and
// when, the tenant claim), so an entry's size does not grow with claims
// nobody reads (a groups list, say). It is safe for concurrent use; a nil
// *tokenCache keeps nothing.
type tokenCache struct {
	entries *lru.Cache[[sha256.Size]byte, *verified]
	now     func() time.Time
	read    map[string]bool
}

// verified is a token that passed verification, and what must hold for
// it to pass again.
type verified struct {
	caller        caller // without viaCookie, which is the request's
	exp, nbf, iat time.Time
	aud           []string
	keys          *keySet // its issuer's keys; nil for HS256
	generation    uint64  // of keys when it was verified
}

// newTokenCache keeps size tokens, and of their claims those named in
// read; size ≤ 0 is no cache.
func newTokenCache(size int, now func() time.Time, read map[string]bool) *tokenCache {
	if size <= 0 {
		return nil
	}
	entries, err := lru.New[[sha256.Size]byte, *verified](size)
	if err != nil {
		panic(err) // only for a size ≤ 0
	}
	if now == nil {
		now = time.Now
	}
	return &tokenCache{entries: entries, now: now, read: read}
}

// claimsRead are the claims a request reads from its caller, by cfg: the
// profiles' allow.claims, the quotas' by and when, and the tenant claim.
// (The email is read when the token is verified, into caller.email.)
func claimsRead(cfg Config) map[string]bool {
	read := map[string]bool{}
	quotas := func(qs []Quota) {
		for _, q := range qs {
			if q.By != "" {
				read[q.By] = true
			}
			for name := range q.When {
				read[name] = true
			}
		}
	}
	quotas(cfg.Quotas)
	for _, p := range cfg.Profiles {
		if p.Access != nil {
			for name := range p.Access.Claims {
				read[name] = true
			}
		}
		quotas(p.Quotas)
	}
	if cfg.TenantClaim != "" {
		read[cfg.TenantClaim] = true
	}
	return read
}

// get returns the caller of a token verified before that still passes.
// hsAudiences are the audiences an HS256 token must name (an issuer's
// tokens: the issuer's); none: aud is not checked. A token that no longer
// passes is dropped and reported as not found: it is verified again, and
// refused by that when it should be.
func (tc *tokenCache) get(token string, hsAudiences []string) (caller, bool) {
	if tc == nil {
		return caller{}, false
	}
	key := sha256.Sum256([]byte(token))
	v, ok := tc.entries.Get(key)
	if !ok {
		return caller{}, false
	}
	audiences := hsAudiences
	if v.keys != nil {
		audiences = v.keys.issuer.Audiences
	}
	if !v.stillValid(tc.now(), audiences) {
		tc.entries.Remove(key)
		return caller{}, false
	}
	return v.caller, true
}

// stillValid reports whether v passes now, as jwt.Validator checks it.
func (v *verified) stillValid(now time.Time, audiences []string) bool {
	switch {
	case !now.Before(v.exp.Add(jwtLeeway)):
		return false
	case !v.nbf.IsZero() && now.Before(v.nbf.Add(-jwtLeeway)):
		return false
	case !v.iat.IsZero() && now.Before(v.iat.Add(-jwtLeeway)):
		return false
	case len(audiences) > 0 && !slices.ContainsFunc(v.aud, func(a string) bool { return slices.Contains(audiences, a) }):
		return false
	case v.keys != nil && v.keys.generation.Load() != v.generation:
		return false
	}
	return true
}

// put keeps a token that verified with claims, by keys (nil: HS256),
// whose generation was generation before the token was verified.
func (tc *tokenCache) put(token string, c caller, claims jwt.MapClaims, keys *keySet, generation uint64) {
	if tc == nil {
		return
	}
	exp, err := claims.GetExpirationTime()
	if err != nil || exp == nil {
		return // exp is required; a token without one never got here
	}
	v := &verified{caller: c, exp: exp.Time, keys: keys, generation: generation}
	if nbf, err := claims.GetNotBefore(); err == nil && nbf != nil {
		v.nbf = nbf.Time
	}
	if iat, err := claims.GetIssuedAt(); err == nil && iat != nil {
		v.iat = iat.Time
	}
	if aud, err := claims.GetAudience(); err == nil {
		v.aud = aud
	}
	v.caller.viaCookie = false
	v.caller.claims = jwt.MapClaims{}
	for name := range tc.read {
		if value, ok := claims[name]; ok {
			v.caller.claims[name] = value
		}
	}
	tc.entries.Add(sha256.Sum256([]byte(token)), v)
}

// len is how many tokens are kept.
func (tc *tokenCache) len() int {
	if tc == nil {
		return 0
	}
	return tc.entries.Len()
}
