package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokenpool/tokenpool/mint"
)

// maxCredentialLen bounds the caller credential read from a header or
// cookie; longer is refused before any parsing.
const maxCredentialLen = 4096

// jwtLeeway is the clock skew allowed on exp, nbf and iat.
const jwtLeeway = 5 * time.Second

// APIKey is a server caller's key: the caller sends the key itself, the
// daemon keeps only its SHA-256.
type APIKey struct {
	Name   string
	SHA256 [32]byte
}

// ParseAPIKeys reads "name:sha256hex,…".
func ParseAPIKeys(s string) ([]APIKey, error) {
	var keys []APIKey
	seen := map[string]bool{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, hexSum, ok := strings.Cut(item, ":")
		if !ok || name == "" {
			return nil, fmt.Errorf("entry %d: want name:sha256hex", len(keys)+1)
		}
		if seen[name] {
			return nil, fmt.Errorf("key name %q listed twice", name)
		}
		sum, err := hex.DecodeString(hexSum)
		if err != nil || len(sum) != sha256.Size {
			return nil, fmt.Errorf("key %q: want 64 hex digits of SHA-256", name)
		}
		k := APIKey{Name: name}
		copy(k.SHA256[:], sum)
		keys = append(keys, k)
		seen[name] = true
	}
	return keys, nil
}

// caller is who an authenticated request comes from.
type caller struct {
	subject string         // "user:<sub>" for a JWT, "key:<name>" for an API key
	kind    string         // "jwt" or "api_key"
	keyName string         // the API key's name
	claims  map[string]any // the JWT's claims
	email   string         // the JWT's email claim, when a string and verified (see emailOf)
	// viaCookie: the JWT came in the cookie, which a browser attaches to
	// requests another site makes too, so the request's origin is checked.
	viaCookie bool
	tenant    string // the tenant claim's value (Config.TenantClaim), for the ledger
}

// minted is who a credential minted for c is for, as a per-caller minter
// and the issuance ledger read it.
func (c caller) minted() *mint.Caller {
	return &mint.Caller{Subject: c.subject, Email: c.email, Tenant: c.tenant}
}

// authenticator checks caller credentials: a JWT (Authorization: Bearer,
// or a cookie when configured), HS256 with the shared secret or signed by
// an identity provider's published key, or a static API key (X-API-Key,
// or a Bearer value that is not a JWT). It is safe for concurrent use.
type authenticator struct {
	secret  []byte
	hs256   *jwt.Parser
	issuers *keySets // nil: no identity providers
	keys    []APIKey
	cookie  string
	// assumeEmailVerified: an HS256 token without email_verified counts
	// as verified (Config.JWTAssumeEmailVerified).
	assumeEmailVerified bool
	audiences           []string    // of HS256 tokens (Config.JWTAudiences)
	cache               *tokenCache // nil: every token is verified each time
	metrics             *Metrics
}

// parserOptions are what every JWT is held to, whoever signed it: exp
// required, iat not in the future, a small leeway for clocks.
func parserOptions(cfg Config) []jwt.ParserOption {
	opts := []jwt.ParserOption{jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithLeeway(jwtLeeway)}
	if cfg.Now != nil {
		opts = append(opts, jwt.WithTimeFunc(cfg.Now))
	}
	return opts
}

func newAuthenticator(cfg Config, log *slog.Logger) (*authenticator, error) {
	opts := append(parserOptions(cfg), jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}))
	if cfg.JWTIssuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.JWTIssuer))
	}
	if len(cfg.JWTAudiences) > 0 {
		opts = append(opts, jwt.WithAudience(cfg.JWTAudiences...))
	}
	issuers, err := newKeySets(cfg, log)
	if err != nil {
		return nil, err
	}
	return &authenticator{
		secret: cfg.JWTSecret, hs256: jwt.NewParser(opts...), issuers: issuers, keys: cfg.APIKeys, cookie: cfg.JWTCookie,
		assumeEmailVerified: cfg.JWTAssumeEmailVerified, audiences: cfg.JWTAudiences,
		cache: newTokenCache(cfg.JWTCacheSize, cfg.Now, claimsRead(cfg)), metrics: cfg.Metrics,
	}, nil
}

var (
	errNoCredentials  = errors.New("no credentials")
	errBadCredentials = errors.New("invalid credentials")
)

// authenticate returns the caller of r, errNoCredentials when r carries
// none, or errBadCredentials. The reason a credential failed is not
// returned: it would help an attacker and could echo the credential.
func (a *authenticator) authenticate(r *http.Request) (caller, error) {
	if v := r.Header.Get("X-API-Key"); v != "" {
		return a.apiKey(v)
	}
	if h := r.Header.Get("Authorization"); h != "" {
		if len(h) > maxCredentialLen {
			return caller{}, errBadCredentials
		}
		scheme, value, _ := strings.Cut(h, " ")
		value = strings.TrimSpace(value)
		if !strings.EqualFold(scheme, "Bearer") || value == "" {
			return caller{}, errBadCredentials
		}
		if strings.Count(value, ".") == 2 {
			return a.jwt(r.Context(), value)
		}
		return a.apiKey(value)
	}
	if a.cookie != "" {
		if ck, err := r.Cookie(a.cookie); err == nil && ck.Value != "" {
			c, err := a.jwt(r.Context(), ck.Value)
			c.viaCookie = true
			return c, err
		}
	}
	return caller{}, errNoCredentials
}

// jwt verifies a caller JWT, or finds it verified before in the cache
// (see tokenCache). The header's alg picks the verifier: HS256 is checked
// with the shared secret only, any other alg with the keys of the issuer
// its iss names, with that issuer's algorithms pinned, so a token can't
// choose a key of the wrong kind (HS256 signed with an RSA public key,
// alg none).
func (a *authenticator) jwt(ctx context.Context, token string) (caller, error) {
	if len(token) > maxCredentialLen {
		return caller{}, errBadCredentials
	}
	if c, ok := a.cache.get(token, a.audiences); ok {
		a.metrics.verification(true)
		return c, nil
	}
	alg, ok := algOf(token)
	if !ok {
		return caller{}, errBadCredentials
	}
	var (
		claims    jwt.MapClaims
		userClaim = "sub"
		prefix    = "user:"
		assume    = a.assumeEmailVerified
		keys      *keySet
		gen       uint64
		err       error
	)
	if alg == jwt.SigningMethodHS256.Alg() {
		if len(a.secret) == 0 {
			return caller{}, errBadCredentials
		}
		claims = jwt.MapClaims{}
		_, err = a.hs256.ParseWithClaims(token, claims, func(*jwt.Token) (any, error) { return a.secret, nil })
	} else {
		unverified, _, perr := jwt.NewParser().ParseUnverified(token, jwt.MapClaims{})
		if perr != nil {
			return caller{}, errBadCredentials
		}
		iss, _ := unverified.Claims.GetIssuer()
		k := a.issuers.get(iss)
		if k == nil {
			return caller{}, errBadCredentials
		}
		keys, gen = k, k.generation.Load() // before: a rotation meanwhile makes the cached token stale
		claims, err = k.verify(ctx, token)
		userClaim, assume = k.issuer.UserClaim, k.issuer.AssumeEmailVerified
		if k.issuer.Name != "" {
			prefix = "idp:" + k.issuer.Name + ":"
		}
	}
	user, _ := claims[userClaim].(string)
	if err != nil || user == "" || len(user) > 256 {
		return caller{}, errBadCredentials
	}
	c := caller{subject: prefix + user, kind: "jwt", claims: claims, email: emailOf(claims, assume)}
	if a.cache != nil {
		a.metrics.verification(false)
		a.cache.put(token, c, claims, keys, gen)
	}
	return c, nil
}

// algOf reads the alg of a JWT's header, which picks its verifier, without
// decoding the claims: the verifier decodes them once.
func algOf(token string) (string, bool) {
	head, _, ok := strings.Cut(token, ".")
	if !ok {
		return "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		return "", false
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if json.Unmarshal(b, &h) != nil || h.Alg == "" {
		return "", false
	}
	return h.Alg, true
}

// emailOf is the email claim when the token says it is verified: a
// per-caller profile mints under it. Only true or "true" (as Apple and
// some Cognito and Keycloak mappers send it) is verified; "false", any
// other value, and no email_verified at all are not, unless the issuer is
// configured to assume it (its tokens never carry the claim). Minting
// under an email nobody verified is the "nOAuth" account takeover.
func emailOf(claims jwt.MapClaims, assumeVerified bool) string {
	email, _ := claims["email"].(string)
	switch v, ok := claims["email_verified"]; {
	case !ok:
		if !assumeVerified {
			return ""
		}
	case v != true && v != "true":
		return ""
	}
	return email
}

// apiKey compares the key's hash with every configured hash in constant
// time, without stopping at a match.
func (a *authenticator) apiKey(key string) (caller, error) {
	if len(key) > maxCredentialLen {
		return caller{}, errBadCredentials
	}
	sum := sha256.Sum256([]byte(key))
	match := -1
	for i, k := range a.keys {
		if subtle.ConstantTimeCompare(sum[:], k.SHA256[:]) == 1 {
			match = i
		}
	}
	if match < 0 {
		return caller{}, errBadCredentials
	}
	return caller{subject: "key:" + a.keys[match].Name, kind: "api_key", keyName: a.keys[match].Name}, nil
}

// fromAllowedOrigin reports whether a browser request was made by the app
// itself: its Origin is one of allowed, or the browser says the page that
// made it is of the same origin or site (Sec-Fetch-Site). A request with
// neither (another site's navigation or form, curl, an old browser) is not.
func fromAllowedOrigin(r *http.Request, allowed []string) bool {
	if o := r.Header.Get("Origin"); o != "null" && listedOrigin(allowed, o) {
		return true
	}
	switch r.Header.Get("Sec-Fetch-Site") {
	case "same-origin", "same-site":
		return true
	}
	return false
}

// listedOrigin reports whether o is one of allowed, compared as browsers
// serialize an origin (scheme and host in lower case).
func listedOrigin(allowed []string, o string) bool {
	return o != "" && slices.ContainsFunc(allowed, func(a string) bool { return strings.EqualFold(a, o) })
}

// Access says who may use a profile: API keys by name, and JWT callers
// whose claims match. A nil *Access allows every authenticated caller.
type Access struct {
	// APIKeys lists the API key names allowed.
	APIKeys []string
	// Claims lists claims a caller's JWT must all carry, each with one of
	// the listed values (for an array claim: any element). An email
	// counts only when verified (see emailOf).
	Claims map[string][]string
}

// ProfileInfo is what the API knows of a profile.
type ProfileInfo struct {
	Provider string // "orga" or "openai": a label in the admin report
	// ICE says its credentials carry ICE servers, as the Orga SDK's GET
	// route requires; the route refuses profiles without.
	ICE    bool
	Access *Access // nil: every authenticated caller
	// Fallback are the profiles that stand in for this one on
	// /v1/credentials when its pool is empty and its provider can't mint:
	// the first the caller may use.
	Fallback []string
	// Quotas cap the sessions handed out of this profile; nil: the
	// daemon's default (Config.Quotas).
	Quotas []Quota
}

// allows reports whether the caller may use a profile under a.
func (a *Access) allows(c caller) bool {
	if a == nil {
		return true
	}
	if c.kind == "api_key" {
		return slices.Contains(a.APIKeys, c.keyName)
	}
	if len(a.Claims) == 0 {
		return false
	}
	for name, allowed := range a.Claims {
		v := c.claims[name]
		if name == "email" {
			// Only a verified email, as for per-caller profiles: anyone
			// may register an address nobody verified.
			v = nil
			if c.email != "" {
				v = c.email
			}
		}
		if !claimMatches(v, allowed) {
			return false
		}
	}
	return true
}

// claimMatches reports whether a claim's value (a string, a number, a
// bool, or an array of them) is, or holds, one of allowed.
func claimMatches(v any, allowed []string) bool {
	switch v := v.(type) {
	case nil:
		return false
	case []any:
		for _, e := range v {
			if claimMatches(e, allowed) {
				return true
			}
		}
		return false
	default:
		return slices.Contains(allowed, fmt.Sprint(v))
	}
}

// may reports whether the caller may use the named profile; an unknown
// profile is no.
func (s *Server) may(c caller, profile string) bool {
	p, ok := s.cfg.Profiles[profile]
	return ok && p.Access.allows(c)
}
