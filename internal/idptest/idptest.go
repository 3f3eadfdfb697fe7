// Package idptest is a stand-in identity provider for tests: an HTTP
// server publishing a JWKS with one RS256 and one ES256 key, which signs
// caller JWTs with them, rotates them, counts fetches and can be made to
// fail.
package idptest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// JWKSPath is where the server publishes its keys.
const JWKSPath = "/.well-known/jwks.json"

// Server is a running stand-in identity provider. Its issuer (iss) is its
// URL. It is safe for concurrent use.
type Server struct {
	srv     *httptest.Server
	fetches atomic.Int64

	mu     sync.Mutex
	keys   map[string]signer // guarded by mu; by alg: the key tokens are signed with
	serial int               // guarded by mu; for fresh kids
	down   bool              // guarded by mu; answer 503
	delay  time.Duration     // guarded by mu; before each answer
}

type signer struct {
	kid string
	key crypto.Signer // *rsa.PrivateKey or *ecdsa.PrivateKey
	// How the key is published: its use and alg ("": sig and the alg
	// its tokens are signed with).
	use    jwkset.USE
	jwkAlg jwkset.ALG
}

// NoKID, as SignWith's kid, leaves the kid out of the token's header.
const NoKID = "-"

// Start runs a Server on 127.0.0.1 until the test ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s, err := New()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	return s
}

// New runs a Server on 127.0.0.1 until Close, for a program that is not a
// test (the bench's identity provider).
func New() (*Server, error) {
	s := &Server{keys: map[string]signer{}}
	for _, alg := range []string{"RS256", "ES256"} {
		if err := s.rotateLocked(alg); err != nil {
			return nil, err
		}
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	return s, nil
}

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// URL is the issuer's URL, its iss.
func (s *Server) URL() string { return s.srv.URL }

// JWKSURL is where its keys are.
func (s *Server) JWKSURL() string { return s.srv.URL + JWKSPath }

// Fetches is how often the JWKS was asked for.
func (s *Server) Fetches() int64 { return s.fetches.Load() }

// SetDown makes the JWKS answer 503 (true) or the keys (false).
func (s *Server) SetDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

// SetDelay holds each JWKS answer for d.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	s.delay = d
	s.mu.Unlock()
}

// Rotate replaces alg's key with a new one under a new kid; the old key is
// no longer published, as after a provider's rotation completes.
func (s *Server) Rotate(tb testing.TB, alg string) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.rotateLocked(alg); err != nil {
		tb.Fatal(err)
	}
}

func (s *Server) rotateLocked(alg string) error {
	s.serial++
	kid := fmt.Sprintf("%s-key-%d", alg, s.serial)
	var (
		key crypto.Signer
		err error
	)
	switch alg {
	case "RS256":
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		err = fmt.Errorf("idptest: no key for %s", alg)
	}
	if err != nil {
		return err
	}
	s.keys[alg] = signer{kid: kid, key: key}
	return nil
}

// Sign signs claims with alg's current key, its kid in the header. exp is
// an hour ahead and iss the server's URL unless claims set them.
func (s *Server) Sign(tb testing.TB, alg string, claims jwt.MapClaims) string {
	tb.Helper()
	return s.SignWith(tb, alg, jwt.GetSigningMethod(alg), "", claims)
}

// SignWith signs claims with keyAlg's current key by method (which may be
// another algorithm of the same key type), under kid ("": the key's own).
func (s *Server) SignWith(tb testing.TB, keyAlg string, method jwt.SigningMethod, kid string, claims jwt.MapClaims) string {
	tb.Helper()
	tok, err := s.signWith(keyAlg, method, kid, claims)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// Token is Sign for a program that is not a test.
func (s *Server) Token(alg string, claims jwt.MapClaims) (string, error) {
	return s.signWith(alg, jwt.GetSigningMethod(alg), "", claims)
}

func (s *Server) signWith(keyAlg string, method jwt.SigningMethod, kid string, claims jwt.MapClaims) (string, error) {
	s.mu.Lock()
	k, ok := s.keys[keyAlg]
	s.mu.Unlock()
	if !ok {
		return "", fmt.Errorf("idptest: no key for %s", keyAlg)
	}
	c := jwt.MapClaims{"iss": s.URL(), "exp": time.Now().Add(time.Hour).Unix()}
	for name, v := range claims {
		c[name] = v
	}
	if kid == "" {
		kid = k.kid
	}
	t := jwt.NewWithClaims(method, c)
	if kid != NoKID {
		t.Header["kid"] = kid
	}
	return t.SignedString(k.key)
}

// PublicKeyPEM is the RS256 key's public half as PEM, as anyone can get it:
// what an attacker signs an HS256 token with in the key-confusion attack.
func (s *Server) PublicKeyPEM(tb testing.TB) []byte {
	tb.Helper()
	s.mu.Lock()
	k := s.keys["RS256"].key.(*rsa.PrivateKey)
	s.mu.Unlock()
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// Publish changes how alg's key is published: with use (say, enc) and
// jwkAlg (say, RSA-OAEP) in place of sig and alg.
func (s *Server) Publish(alg string, use jwkset.USE, jwkAlg jwkset.ALG) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[alg]
	k.use, k.jwkAlg = use, jwkAlg
	s.keys[alg] = k
}

// KID is the kid of alg's current key.
func (s *Server) KID(alg string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keys[alg].kid
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != JWKSPath {
		http.NotFound(w, r)
		return
	}
	s.fetches.Add(1)
	s.mu.Lock()
	down, delay := s.down, s.delay
	var set jwkset.JWKSMarshal
	for alg, k := range s.keys {
		use, jwkAlg := jwkset.UseSig, jwkset.ALG(alg)
		if k.use != "" {
			use, jwkAlg = k.use, k.jwkAlg
		}
		jwk, err := jwkset.NewJWKFromKey(k.key.Public(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{
			KID: k.kid, ALG: jwkAlg, USE: use,
		}})
		if err != nil {
			s.mu.Unlock()
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		set.Keys = append(set.Keys, jwk.Marshal())
	}
	s.mu.Unlock()
	select {
	case <-time.After(delay):
	case <-r.Context().Done():
		return
	}
	if down {
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(set)
}
