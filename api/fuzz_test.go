package api

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
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
