package api

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

const fuzzIssuer = "https://idp.example"

// fuzzAuth is an authenticator with an HS256 secret, an API key, a cookie
// and one JWKS issuer whose RS256 key is loaded (and never fetched again:
// fuzzing makes no network calls). It returns the issuer's private key.
func fuzzAuth(tb testing.TB) (*authenticator, *rsa.PrivateKey) {
	tb.Helper()
	cfg := Config{
		JWTSecret: testSecret, JWTCookie: "session",
		APIKeys: []APIKey{{Name: "backend", SHA256: sha256.Sum256([]byte("server-key-1"))}},
		Issuers: []Issuer{{URL: fuzzIssuer, JWKSURL: fuzzIssuer + "/jwks.json", Audiences: []string{"app"}}},
	}
	a, err := newAuthenticator(cfg, discardLogger())
	if err != nil {
		tb.Fatal(err)
	}
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	jwk, err := jwkset.NewJWKFromKey(&priv.PublicKey, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: "k1", ALG: jwkset.AlgRS256}})
	if err != nil {
		tb.Fatal(err)
	}
	k := a.issuers.get(fuzzIssuer)
	if err := k.store.KeyWrite(context.Background(), jwk); err != nil {
		tb.Fatal(err)
	}
	k.loaded.Store(true)
	k.refetch = rate.NewLimiter(0, 0) // never
	return a, priv
}

// fuzzSeeds are tokens worth starting from: good ones of each kind and
// the classic attacks.
func fuzzSeeds(tb testing.TB, priv *rsa.PrivateKey) []string {
	tb.Helper()
	exp := time.Now().Add(time.Hour).Unix()
	sign := func(m jwt.SigningMethod, key any, claims jwt.MapClaims, kid string) string {
		t := jwt.NewWithClaims(m, claims)
		if kid != "" {
			t.Header["kid"] = kid
		}
		s, err := t.SignedString(key)
		if err != nil {
			tb.Fatal(err)
		}
		return s
	}
	der, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	pub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	idp := jwt.MapClaims{"sub": "alice", "iss": fuzzIssuer, "aud": "app", "exp": exp}
	return []string{
		sign(jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "alice", "exp": exp}, ""),
		sign(jwt.SigningMethodRS256, priv, idp, "k1"),
		sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, idp, "k1"),
		sign(jwt.SigningMethodHS256, pub, idp, "k1"),
		sign(jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(-time.Hour).Unix()}, ""),
		sign(jwt.SigningMethodRS256, priv, idp, "unknown"),
		"eyJhbGciOiJub25lIn0.e30.", "a.b.c", "..", "",
	}
}

// mustVerify fails unless token is genuinely valid: HS256 with the secret,
// or RS256 with the issuer's key and its iss and aud, never alg none.
func mustVerify(t *testing.T, token string, priv *rsa.PrivateKey) {
	t.Helper()
	opts := []jwt.ParserOption{jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithLeeway(jwtLeeway)}
	hs := jwt.NewParser(append(opts, jwt.WithValidMethods([]string{"HS256"}))...)
	if _, err := hs.Parse(token, func(*jwt.Token) (any, error) { return testSecret, nil }); err == nil {
		return
	}
	rs := jwt.NewParser(append(opts, jwt.WithValidMethods([]string{"RS256"}), jwt.WithIssuer(fuzzIssuer), jwt.WithAudience("app"))...)
	if _, err := rs.Parse(token, func(*jwt.Token) (any, error) { return &priv.PublicKey, nil }); err == nil {
		return
	}
	t.Fatalf("accepted a token that does not verify: %q", token)
}

// FuzzJWT: the JWT verifier never panics and accepts only tokens that
// verify on their own (so never alg none, never HS256 signed with the RSA
// public key).
func FuzzJWT(f *testing.F) {
	a, priv := fuzzAuth(f)
	for _, s := range fuzzSeeds(f, priv) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, token string) {
		c, err := a.jwt(context.Background(), token)
		if err != nil {
			return
		}
		if c.subject == "" || c.kind != "jwt" {
			t.Fatalf("accepted %q as %+v", token, c)
		}
		mustVerify(t, token, priv)
	})
}

// FuzzCallerCredentials: reading a caller from arbitrary Authorization,
// X-API-Key and Cookie headers never panics, and accepts only the API
// key or a token that verifies; a cookie is used (and marked) only when
// neither header is sent.
func FuzzCallerCredentials(f *testing.F) {
	a, priv := fuzzAuth(f)
	for _, s := range fuzzSeeds(f, priv) {
		f.Add("Bearer "+s, "", "")
		f.Add("", "", "session="+s)
	}
	f.Add("", "server-key-1", "")
	f.Add("Bearer server-key-1", "", "")
	f.Add("Basic dXNlcjpwYXNz", "", "")
	f.Add("bearer  ", "", "session=; other=1")
	f.Fuzz(func(t *testing.T, authorization, apiKey, cookie string) {
		r, _ := http.NewRequest(http.MethodPost, "http://tokenpool.test/v1/session-config", nil)
		r.Header["Authorization"] = []string{authorization}
		r.Header["X-Api-Key"] = []string{apiKey}
		r.Header["Cookie"] = []string{cookie}
		c, err := a.authenticate(r)
		if err != nil {
			return
		}
		_, bearer, _ := strings.Cut(authorization, " ")
		bearer = strings.TrimSpace(bearer)
		switch c.kind {
		case "api_key":
			presented := apiKey
			if presented == "" {
				presented = bearer
			}
			if sha256.Sum256([]byte(presented)) != a.keys[0].SHA256 {
				t.Fatalf("accepted an API key from %q / %q", authorization, apiKey)
			}
		case "jwt":
			if c.viaCookie != (authorization == "" && apiKey == "") {
				t.Fatalf("viaCookie %v with Authorization %q, X-API-Key %q", c.viaCookie, authorization, apiKey)
			}
			token := bearer
			if c.viaCookie {
				ck, err := r.Cookie("session")
				if err != nil {
					t.Fatalf("accepted a cookie the request does not carry: %q", cookie)
				}
				token = ck.Value
			}
			mustVerify(t, token, priv)
		default:
			t.Fatalf("accepted as %+v", c)
		}
	})
}

// FuzzJWKSKeyChoice: from any JWKS an identity provider publishes, the
// keys a token may be checked with (with a kid or without) are only keys
// for signatures (use sig or none) whose alg, when they name one, is the
// token's, and with a kid only the key it names.
func FuzzJWKSKeyChoice(f *testing.F) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	var set jwkset.JWKSMarshal
	for _, m := range []jwkset.JWKMetadataOptions{
		{KID: "rsa1", ALG: jwkset.AlgRS256},
		{KID: "enc1", ALG: jwkset.AlgRSAOAEP, USE: jwkset.UseEnc},
		{KID: "any", USE: jwkset.UseSig},
		{KID: "bare"},
	} {
		j, err := jwkset.NewJWKFromKey(&priv.PublicKey, jwkset.JWKOptions{Metadata: m})
		if err != nil {
			f.Fatal(err)
		}
		set.Keys = append(set.Keys, j.Marshal())
	}
	seed, err := json.Marshal(set)
	if err != nil {
		f.Fatal(err)
	}
	for _, alg := range []string{"RS256", "PS256", "RS512", "ES256", "RSA-OAEP"} {
		f.Add(seed, alg, "", false)
		f.Add(seed, alg, "rsa1", true)
		f.Add(seed, alg, "enc1", true)
	}
	f.Add([]byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0","use":"sig"}]}`), "HS256", "", false)
	f.Fuzz(func(t *testing.T, jwks []byte, alg, kid string, hasKID bool) {
		var raw struct {
			Keys []json.RawMessage `json:"keys"`
		}
		if json.Unmarshal(jwks, &raw) != nil {
			return
		}
		var keys []jwkset.JWK
		for _, r := range raw.Keys {
			if j, err := jwkset.NewJWKFromRawJSON(r, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{}); err == nil {
				keys = append(keys, j)
			}
		}
		for _, j := range usableKeys(keys, alg, kid, hasKID) {
			m := j.Marshal()
			if m.USE != "" && m.USE != jwkset.UseSig {
				t.Fatalf("a key for %q chosen to verify a signature", m.USE)
			}
			if m.ALG != "" && m.ALG.String() != alg {
				t.Fatalf("a key for %s chosen to verify a %s token", m.ALG, alg)
			}
			if hasKID && m.KID != kid {
				t.Fatalf("kid %q chose the key %q", kid, m.KID)
			}
		}
	})
}
