package api

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
)

// Issuer is an identity provider whose JWTs callers may bring, verified
// against the public keys it publishes (its JWKS).
type Issuer struct {
	// Name tells issuers apart in logs, readiness and subjects: a caller
	// of a named issuer is "idp:<name>:<user>", so two issuers' users never
	// share a per-user limit. default: "" (the issuer from the environment,
	// whose callers are "user:<user>" like HS256 callers)
	Name string
	// URL is the iss every token must carry, exactly. Required.
	URL string
	// JWKSURL is where the issuer publishes its keys. Required.
	JWKSURL string
	// Audiences: aud must hold one of them. Audiences or AuthorizedParties
	// is required, so a token the issuer made for another app is refused.
	Audiences []string
	// AuthorizedParties: azp (or, without azp, client_id) must be one of
	// them. default: not checked
	AuthorizedParties []string
	// Algorithms the issuer signs with. A key that names its own alg is
	// used with that one only. default: every asymmetric one (RS, PS, ES
	// 256/384/512 and EdDSA); never HS256, whose key is a shared secret
	Algorithms []string
	// UserClaim names the claim that identifies the user. default: "sub"
	UserClaim string
	// AssumeEmailVerified counts a token's email as verified when the
	// token has no email_verified claim, for an issuer that verifies every
	// email it puts in a token and never sends the claim. An explicit
	// false (or "false") is still unverified. default: false, an email is
	// verified only by email_verified true or "true"
	AssumeEmailVerified bool
	// Refresh is how often the keys are fetched again. default: 10m
	Refresh time.Duration
	// MinRefetch is how often, at most, a token whose kid no key has makes
	// the keys be fetched again (a rotated key). default: 30s
	MinRefetch time.Duration
}

// AsymmetricAlgorithms are the algorithms a JWKS issuer may sign with.
var AsymmetricAlgorithms = []string{
	"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
}

// Limits of fetching an issuer's keys.
const (
	jwksFetchTimeout = 5 * time.Second // a scheduled or first fetch
	jwksRequestWait  = time.Second     // the most a request waits for a refetch
	jwksMaxBody      = 1 << 20
	jwksRetryMin     = time.Second // retry backoff while a fetch fails
	jwksRetryMax     = 30 * time.Second
)

// Validate checks an issuer's settings and fills in the defaults.
func (is *Issuer) Validate() error {
	switch {
	case is.URL == "":
		return errors.New("issuer URL is required")
	case is.JWKSURL == "":
		return errors.New("JWKS URL is required")
	case len(is.Audiences) == 0 && len(is.AuthorizedParties) == 0:
		return errors.New("set an audience or authorized parties: without them a token the issuer made for another app would be accepted")
	}
	for _, a := range is.Algorithms {
		if !slices.Contains(AsymmetricAlgorithms, a) {
			return fmt.Errorf("algorithm %q: want some of %v (HS256 is for the shared secret, never a JWKS)", a, AsymmetricAlgorithms)
		}
	}
	if len(is.Algorithms) == 0 {
		is.Algorithms = AsymmetricAlgorithms
	}
	if is.UserClaim == "" {
		is.UserClaim = "sub"
	}
	if is.Refresh <= 0 {
		is.Refresh = 10 * time.Minute
	}
	if is.MinRefetch <= 0 {
		is.MinRefetch = 30 * time.Second
	}
	return nil
}

// keySet is one issuer's keys: fetched when opened and every Refresh,
// retried with backoff while a fetch fails, and fetched again when a token
// names a kid no key has, at most once per MinRefetch. Keys that loaded
// keep serving while the issuer is down. It is safe for concurrent use.
type keySet struct {
	issuer Issuer
	parser *jwt.Parser
	client *http.Client
	log    *slog.Logger

	store  jwkset.Storage // the keys verification reads: use sig or none
	loaded atomic.Bool
	// generation counts the times the keys changed: a token verified
	// under another generation is verified again (tokenCache).
	generation atomic.Uint64
	digestMu   sync.Mutex
	digest     [sha256.Size]byte // guarded by digestMu; of the keys last fetched
	refetch    *rate.Limiter
	flight     singleflight.Group // joins concurrent refetches
}

func newKeySet(is Issuer, cfg Config, log *slog.Logger) (*keySet, error) {
	if err := is.Validate(); err != nil {
		return nil, err
	}
	opts := append(parserOptions(cfg), jwt.WithValidMethods(is.Algorithms), jwt.WithIssuer(is.URL))
	if len(is.Audiences) > 0 {
		opts = append(opts, jwt.WithAudience(is.Audiences...))
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	return &keySet{
		issuer: is, parser: jwt.NewParser(opts...), log: log, store: jwkset.NewMemoryStorage(),
		// Each fetch carries its deadline.
		client:  &http.Client{Transport: limitBody{t}, CheckRedirect: refuseRedirect},
		refetch: rate.NewLimiter(rate.Every(is.MinRefetch), 1),
	}, nil
}

// errJWKSRedirect: the JWKS URL answered a redirect, which is not
// followed. The URL's host and scheme, which the configuration checks,
// are what vouch for the keys; a redirect, even on the same host (where
// an identity provider may serve many tenants, each with its own keys),
// would let its target publish keys the daemon trusts.
var errJWKSRedirect = errors.New("the JWKS URL answered a redirect, which is not followed: set the JWKS URL to the address the identity provider publishes")

// refuseRedirect is the JWKS client's CheckRedirect.
func refuseRedirect(*http.Request, []*http.Request) error { return errJWKSRedirect }

// name is how logs and readiness name the issuer.
func (k *keySet) name() string {
	if k.issuer.Name != "" {
		return k.issuer.Name
	}
	return k.issuer.URL
}

// run keeps the keys fresh until ctx ends.
func (k *keySet) run(ctx context.Context) {
	failures := 0
	for {
		wait := k.issuer.Refresh
		wasLoaded := k.loaded.Load()
		if err := k.fetch(ctx, jwksFetchTimeout); err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			if failures == 1 || failures%10 == 0 {
				k.log.Warn("auth: fetching the identity provider's keys failed", "issuer", k.name(),
					"jwks_url", k.issuer.JWKSURL, "err", err.Error(), "consecutive_failures", failures, "keys_loaded", k.loaded.Load())
			}
			d := min(jwksRetryMin<<min(failures-1, 8), jwksRetryMax)
			wait = min(d/2+rand.N(d/2+1), k.issuer.Refresh)
		} else {
			if !wasLoaded || failures > 0 {
				k.log.Info("auth: identity provider keys loaded", "issuer", k.name())
			}
			failures = 0
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// fetch reads the issuer's JWKS into a scratch store and, when it holds
// at least one usable key, replaces the keys in use with it: a failed or
// empty answer leaves the keys that loaded before.
func (k *keySet) fetch(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	scratch := jwkset.NewMemoryStorage()
	if _, err := jwkset.NewStorageFromHTTP(k.issuer.JWKSURL, jwkset.HTTPClientStorageOptions{
		Client: k.client, Ctx: ctx, HTTPTimeout: timeout, Storage: scratch,
	}); err != nil {
		if errors.Is(err, errJWKSRedirect) {
			return errJWKSRedirect // not the url.Error, which carries the redirect's whole Location
		}
		return err
	}
	all, err := scratch.KeyReadAll(ctx)
	if err != nil {
		return err
	}
	// Encryption keys (use: enc) never verify a signature.
	all = slices.DeleteFunc(all, func(j jwkset.JWK) bool { return !forSignatures(j) })
	if len(all) == 0 {
		return errors.New("the JWKS has no key this daemon can use")
	}
	if err := k.store.KeyReplaceAll(ctx, all); err != nil {
		return err
	}
	k.changed(all)
	k.loaded.Store(true)
	return nil
}

// changed counts a new generation of keys when all differs from the keys
// fetched before: a refetch that finds the same keys (every scheduled
// one, mostly) leaves the cached tokens be.
func (k *keySet) changed(all []jwkset.JWK) {
	keys := make([]string, len(all))
	for i, j := range all {
		b, _ := json.Marshal(j.Marshal())
		keys[i] = string(b)
	}
	slices.Sort(keys) // in whatever order the JWKS lists them
	h := sha256.New()
	for _, key := range keys {
		h.Write([]byte(key))
		h.Write([]byte{0})
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	k.digestMu.Lock()
	defer k.digestMu.Unlock()
	if sum != k.digest {
		k.digest = sum
		k.generation.Add(1)
	}
}

// keyfunc finds a token's keys (see keysFor). A kid no key has makes the
// keys be fetched again, at most once per MinRefetch for the whole process
// and for at most jwksRequestWait; requests asking meanwhile wait for the
// same fetch instead of starting their own.
func (k *keySet) keyfunc(ctx context.Context) jwt.Keyfunc {
	return func(t *jwt.Token) (any, error) {
		kid, hasKID := t.Header[jwkset.HeaderKID].(string)
		if _, named := t.Header[jwkset.HeaderKID]; named && !hasKID {
			return nil, errors.New("kid is not a string")
		}
		key, err := k.keysFor(ctx, t.Method.Alg(), kid, hasKID)
		if !errors.Is(err, jwkset.ErrKeyNotFound) || !hasKID {
			return key, err
		}
		_, ferr, _ := k.flight.Do("refetch", func() (any, error) {
			if !k.refetch.Allow() {
				return nil, errors.New("refetched recently")
			}
			return nil, k.fetch(context.WithoutCancel(ctx), jwksRequestWait)
		})
		if ferr != nil {
			return nil, err
		}
		return k.keysFor(ctx, t.Method.Alg(), kid, hasKID)
	}
}

// keysFor returns the key named by kid, or without a kid every key the
// token may be checked with, as a jwt.VerificationKeySet.
func (k *keySet) keysFor(ctx context.Context, alg, kid string, hasKID bool) (any, error) {
	var all []jwkset.JWK
	if hasKID {
		j, err := k.store.KeyRead(ctx, kid)
		if err != nil {
			return nil, err
		}
		all = []jwkset.JWK{j}
	} else {
		var err error
		if all, err = k.store.KeyReadAll(ctx); err != nil {
			return nil, err
		}
	}
	usable := usableKeys(all, alg, kid, hasKID)
	if len(usable) == 0 {
		return nil, fmt.Errorf("no published key may verify a %s token", alg)
	}
	if hasKID {
		return publicKey(usable[0]), nil
	}
	set := jwt.VerificationKeySet{Keys: make([]jwt.VerificationKey, 0, len(usable))}
	for _, j := range usable {
		set.Keys = append(set.Keys, publicKey(j))
	}
	return set, nil
}

// usableKeys picks from keys those a token signed with alg may be checked
// with: the key its kid names (without a kid, any key), only if the key
// is for signatures (use sig or none) and names no alg or alg itself. A
// key that names its algorithm verifies only that one, with a kid or
// without.
func usableKeys(keys []jwkset.JWK, alg, kid string, hasKID bool) []jwkset.JWK {
	var out []jwkset.JWK
	for _, j := range keys {
		m := j.Marshal()
		if (hasKID && m.KID != kid) || !forSignatures(j) || (m.ALG != "" && m.ALG.String() != alg) {
			continue
		}
		out = append(out, j)
	}
	return out
}

// forSignatures reports whether a key may verify signatures: its use is
// sig or not given.
func forSignatures(j jwkset.JWK) bool {
	u := j.Marshal().USE
	return u == "" || u == jwkset.UseSig
}

// publicKey is a key's public half (a JWKS may carry private keys by
// mistake).
func publicKey(j jwkset.JWK) jwt.VerificationKey {
	key := j.Key()
	if pk, ok := key.(interface{ Public() crypto.PublicKey }); ok {
		key = pk.Public()
	}
	return key
}

// verify checks a token of this issuer and returns its claims.
func (k *keySet) verify(ctx context.Context, token string) (jwt.MapClaims, error) {
	claims := jwt.MapClaims{}
	if _, err := k.parser.ParseWithClaims(token, claims, k.keyfunc(ctx)); err != nil {
		return nil, err
	}
	if ap := k.issuer.AuthorizedParties; len(ap) > 0 {
		azp, ok := claims["azp"].(string)
		if !ok {
			azp, _ = claims["client_id"].(string)
		}
		if !slices.Contains(ap, azp) {
			return nil, errors.New("azp is not an authorized party")
		}
	}
	return claims, nil
}

// limitBody caps what is read of an answer, so a JWKS URL can't make the
// daemon read without end.
type limitBody struct{ rt http.RoundTripper }

func (l limitBody) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.rt.RoundTrip(r)
	if err == nil {
		resp.Body = struct {
			io.Reader
			io.Closer
		}{io.LimitReader(resp.Body, jwksMaxBody), resp.Body}
	}
	return resp, err
}

// keySets are every issuer's keys, by iss. Open starts one refresher per
// issuer; Close stops them and waits.
type keySets struct {
	byIssuer map[string]*keySet
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

func newKeySets(cfg Config, log *slog.Logger) (*keySets, error) {
	ks := &keySets{byIssuer: map[string]*keySet{}}
	for i, is := range cfg.Issuers {
		k, err := newKeySet(is, cfg, log)
		if err != nil {
			return nil, fmt.Errorf("api: config: issuer %d (%s): %w", i+1, is.URL, err)
		}
		if _, dup := ks.byIssuer[k.issuer.URL]; dup {
			return nil, fmt.Errorf("api: config: issuer %s listed twice", is.URL)
		}
		ks.byIssuer[k.issuer.URL] = k
	}
	return ks, nil
}

func (ks *keySets) open() {
	ctx, cancel := context.WithCancel(context.Background())
	ks.cancel = cancel
	for _, k := range ks.byIssuer {
		ks.wg.Add(1)
		go func() {
			defer ks.wg.Done()
			k.run(ctx)
		}()
	}
}

func (ks *keySets) close() {
	if ks.cancel != nil {
		ks.cancel()
	}
	ks.wg.Wait()
}

// get returns the issuer whose iss is iss; nil when none is.
func (ks *keySets) get(iss string) *keySet {
	if ks == nil {
		return nil
	}
	return ks.byIssuer[iss]
}

// ready reports an error naming each issuer whose keys never loaded.
func (ks *keySets) ready() error {
	var errs []error
	for _, k := range ks.byIssuer {
		if !k.loaded.Load() {
			errs = append(errs, fmt.Errorf("identity provider %s: no keys loaded yet", k.name()))
		}
	}
	return errors.Join(errs...)
}
