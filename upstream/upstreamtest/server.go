// Package upstreamtest is a simulated realtime provider speaking Orga AI's
// and OpenAI's exact wire formats (UPSTREAMS.md), and every preset
// provider's token endpoint (presets.go), for tests, the demo and load
// tests.
//
// It mints real HS256 JWTs with a real exp, hands out per-token TURN
// credentials, and can be made slow, flaky, rate-limited or to reject the
// API key. It records every credential it minted, so tests can check that
// what callers got was genuine, unique and fresh.
package upstreamtest

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Shape is how the mint answer is spelled.
type Shape int

// The mint answer spellings (UPSTREAMS.md).
const (
	// ShapeReference: {"ephemeral_token","token_type","expires_at"} with
	// expires_at ISO-8601 without a zone (UTC), as the API reference and
	// the shipped SDK have it.
	ShapeReference Shape = iota
	// ShapeGuide: {"ephemeralToken","ttl"}, as the how-to guide has it.
	ShapeGuide
	// ShapeTokenOnly: {"ephemeral_token"} only; the expiry is the JWT's exp.
	ShapeTokenOnly
)

func (s Shape) String() string {
	switch s {
	case ShapeGuide:
		return "guide"
	case ShapeTokenOnly:
		return "token-only"
	default:
		return "reference"
	}
}

// ParseShape reads "reference", "guide" or "token-only".
func ParseShape(s string) (Shape, error) {
	for _, sh := range []Shape{ShapeReference, ShapeGuide, ShapeTokenOnly} {
		if s == sh.String() {
			return sh, nil
		}
	}
	return 0, fmt.Errorf("upstreamtest: unknown shape %q (want reference, guide or token-only)", s)
}

// DefaultAPIKey is the key the simulator accepts unless told otherwise.
const DefaultAPIKey = "sk_orga_ai_simulator"

// Config configures a Server. Zero values mean the documented default.
type Config struct {
	APIKey      string        // accepted Orga key; default: DefaultAPIKey
	OpenAIKey   string        // accepted OpenAI key; default: DefaultOpenAIKey
	TTL         time.Duration // token life; default: 120s
	Latency     time.Duration // added to every call; default: none
	FailureRate float64       // share of calls answered 500, 0–1
	Shape       Shape         // mint answer spelling; default: ShapeReference
	Quota       int           // mints per second before 429; 0: unlimited
	RetryAfter  time.Duration // Retry-After on a 429; default: 1s
	// Now is its clock: the quota's one-second windows, token lives and
	// the times it records. default: time.Now
	Now func() time.Time
}

// Mint is one credential the simulator minted.
type Mint struct {
	Token          string
	ExpiresAt      time.Time
	MintedAt       time.Time
	TURNUsername   string
	TURNCredential string
	ICEFetched     bool
	Consumed       bool
	Provider       string // a preset's name; "" for Orga and OpenAI
}

// Counts are the calls the simulator answered, by outcome.
type Counts struct {
	MintCalls    int // POST client-secrets, any outcome
	Minted       int // tokens issued
	ICECalls     int
	Unauthorized int // 401s
	RateLimited  int // 429s
	Failed       int // 500s
}

// Server is a running simulator. It is safe for concurrent use.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	sign []byte // HS256 key of the tokens it mints

	mu        sync.Mutex
	cfg       Config        // guarded by mu
	rejectKey bool          // guarded by mu: answer 401 to every mint
	throttle  time.Duration // guarded by mu: answer the next mint 429 with this Retry-After
	callTimes []time.Time   // guarded by mu: arrival of every mint call
	emails    []string      // guarded by mu: ?email= of each Orga mint call that had one

	openaiBodies [][]byte        // guarded by mu
	presetReqs   []PresetRequest // guarded by mu
	mints        map[string]*Mint
	order        []string // tokens in mint order
	counts       Counts
	window       int64 // unix second of the quota window
	inWindow     int   // mints answered in it
	perSecond    map[int64]int
}

// Start listens on 127.0.0.1 at a free port and serves.
func Start(cfg Config) (*Server, error) {
	return StartOn("127.0.0.1:0", cfg)
}

// StartOn listens on addr and serves.
func StartOn(addr string, cfg Config) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("upstreamtest: %w", err)
	}
	s := New(cfg)
	s.ln = ln
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// New returns a simulator that is not listening; use it as an
// http.Handler.
func New(cfg Config) *Server {
	s := &Server{mints: map[string]*Mint{}, perSecond: map[int64]int{}}
	s.sign = make([]byte, 32)
	_, _ = crand.Read(s.sign)
	s.SetConfig(cfg)
	return s
}

// URL is the simulator's base URL, for ORGA_BASE_URL.
func (s *Server) URL() string { return "http://" + s.ln.Addr().String() }

// Close stops the simulator.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return s.srv.Shutdown(ctx)
}

// SetConfig replaces the whole configuration, defaults filled in.
func (s *Server) SetConfig(cfg Config) {
	if cfg.APIKey == "" {
		cfg.APIKey = DefaultAPIKey
	}
	if cfg.OpenAIKey == "" {
		cfg.OpenAIKey = DefaultOpenAIKey
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 120 * time.Second
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s.mu.Lock()
	s.cfg = cfg
	s.mu.Unlock()
}

// Update changes the configuration under the lock.
func (s *Server) Update(change func(*Config)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	change(&s.cfg)
}

// RejectKey makes every mint answer 401 (a revoked key) until called with
// false.
func (s *Server) RejectKey(reject bool) {
	s.mu.Lock()
	s.rejectKey = reject
	s.mu.Unlock()
}

// ThrottleNext makes the next mint call answer 429 with Retry-After d.
func (s *Server) ThrottleNext(d time.Duration) {
	s.mu.Lock()
	s.throttle = d
	s.mu.Unlock()
}

// Emails returns the ?email= of each Orga mint call that sent one.
func (s *Server) Emails() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.emails...)
}

// MintCallTimes returns when each mint call arrived, in order.
func (s *Server) MintCallTimes() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.callTimes...)
}

// Counts returns the calls answered so far.
func (s *Server) Counts() Counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts
}

// Minted returns every credential minted, in order.
func (s *Server) Minted() []Mint {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Mint, 0, len(s.order))
	for _, t := range s.order {
		out = append(out, *s.mints[t])
	}
	return out
}

// Lookup returns the record of a token and whether the simulator minted it.
func (s *Server) Lookup(token string) (Mint, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.mints[token]
	if !ok {
		return Mint{}, false
	}
	return *m, true
}

// MintsPerSecond returns how many tokens were issued in each Unix second.
func (s *Server) MintsPerSecond() map[int64]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[int64]int, len(s.perSecond))
	for k, v := range s.perSecond {
		out[k] = v
	}
	return out
}

// ErrRejected is returned by Consume for a token a session can't start
// with.
var ErrRejected = errors.New("upstreamtest: token expired or already consumed")

// Consume starts a session with token as the provider would: each token
// works once, before it expires.
func (s *Server) Consume(token string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.mints[token]
	if !ok || m.Consumed || s.cfg.Now().After(m.ExpiresAt) {
		return ErrRejected
	}
	m.Consumed = true
	return nil
}

// ServeHTTP answers the Orga AI and OpenAI endpoints, and every preset
// provider's (presets.go).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p := s.presetFor(r); p != nil {
		s.preset(w, r, p)
		return
	}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/v1/realtime/client-secrets":
		s.mint(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/v1/realtime/ice-config":
		s.ice(w, r)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/realtime/client_secrets":
		s.openai(w, r)
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"detail": "Not Found"})
	}
}

// now reads the simulator's clock.
func (s *Server) now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg.Now()
}

// delay waits the configured latency, or until the caller gives up.
func (s *Server) delay(r *http.Request) bool {
	s.mu.Lock()
	d := s.cfg.Latency
	s.mu.Unlock()
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

func (s *Server) mint(w http.ResponseWriter, r *http.Request) {
	arrived := s.now()
	if !s.delay(r) {
		return
	}
	s.mu.Lock()
	s.counts.MintCalls++
	s.callTimes = append(s.callTimes, arrived)
	if e := r.URL.Query().Get("email"); e != "" {
		s.emails = append(s.emails, e)
	}
	cfg, reject := s.cfg, s.rejectKey
	s.mu.Unlock()
	if reject || bearer(r) != cfg.APIKey {
		s.count(func(c *Counts) { c.Unauthorized++ })
		writeJSON(w, http.StatusUnauthorized, map[string]string{"detail": "Invalid API key"})
		return
	}
	if s.maybeFail(cfg) {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"detail": "Internal Server Error"})
		return
	}
	if !s.takeQuota(w, cfg, arrived) {
		return
	}
	now := cfg.Now()
	ttl := cfg.TTL
	if cfg.Shape == ShapeGuide {
		ttl = ttl.Truncate(time.Second) // the guide's ttl is whole seconds
	}
	exp := now.Add(ttl)
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Issuer:    "orga-sim",
		Subject:   "sess_" + randomHex(8),
		ID:        randomHex(16),
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(exp),
	}).SignedString(s.sign)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"detail": err.Error()})
		return
	}
	if cfg.Shape == ShapeTokenOnly {
		exp = exp.Truncate(time.Second) // what a reader of exp will see
	}
	s.record(&Mint{
		Token: token, ExpiresAt: exp, MintedAt: now,
		TURNUsername:   strconv.FormatInt(exp.Unix(), 10) + ":" + randomHex(6),
		TURNCredential: base64.StdEncoding.EncodeToString(randomBytes(20)),
	}, now)

	switch cfg.Shape {
	case ShapeGuide:
		writeJSON(w, http.StatusOK, map[string]any{"ephemeralToken": token, "ttl": int(ttl / time.Second)})
	case ShapeTokenOnly:
		writeJSON(w, http.StatusOK, map[string]any{"ephemeral_token": token, "token_type": "bearer"})
	default:
		writeJSON(w, http.StatusOK, map[string]any{
			"ephemeral_token": token, "token_type": "bearer",
			"expires_at": exp.UTC().Format("2006-01-02T15:04:05.000000"),
		})
	}
}

// receive takes a mint call: waits the latency (ok false when the caller
// gave up first), reads the body, counts the call and records it (under
// the lock), and returns the configuration it is answered under.
func (s *Server) receive(r *http.Request, record func(body []byte)) (arrived time.Time, body []byte, cfg Config, reject, ok bool) {
	arrived = s.now()
	if !s.delay(r) {
		return arrived, nil, cfg, false, false
	}
	body, _ = io.ReadAll(io.LimitReader(r.Body, 1<<20))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts.MintCalls++
	s.callTimes = append(s.callTimes, arrived)
	record(body)
	return arrived, body, s.cfg, s.rejectKey, true
}

// count updates the counts under the lock.
func (s *Server) count(f func(*Counts)) {
	s.mu.Lock()
	f(&s.counts)
	s.mu.Unlock()
}

// maybeFail reports whether this call fails (FailureRate), counting it.
func (s *Server) maybeFail(cfg Config) bool {
	if cfg.FailureRate > 0 && rand.Float64() < cfg.FailureRate {
		s.count(func(c *Counts) { c.Failed++ })
		return true
	}
	return false
}

// takeQuota counts a mint against the per-second quota, or a ThrottleNext,
// and answers 429 when over; it reports whether the mint may go on.
func (s *Server) takeQuota(w http.ResponseWriter, cfg Config, arrived time.Time) bool {
	retry, over := s.overQuota(cfg, arrived)
	if !over {
		return true
	}
	w.Header().Set("Retry-After", strconv.Itoa(int((retry+time.Second-1)/time.Second)))
	writeJSON(w, http.StatusTooManyRequests, map[string]string{"detail": "Rate limit exceeded"})
	return false
}

// overQuota counts a mint against the per-second quota, or a
// ThrottleNext, and reports whether it is over, and the wait to ask for.
func (s *Server) overQuota(cfg Config, arrived time.Time) (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	retry := s.throttle
	s.throttle = 0
	if retry == 0 && cfg.Quota > 0 {
		if sec := arrived.Unix(); sec != s.window {
			s.window, s.inWindow = sec, 0
		}
		if s.inWindow >= cfg.Quota {
			retry = cfg.RetryAfter
		} else {
			s.inWindow++
		}
	}
	if retry == 0 {
		return 0, false
	}
	s.counts.RateLimited++
	return retry, true
}

// record keeps a minted credential.
func (s *Server) record(m *Mint, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mints[m.Token] = m
	s.order = append(s.order, m.Token)
	s.counts.Minted++
	s.perSecond[now.Unix()]++
}

func (s *Server) ice(w http.ResponseWriter, r *http.Request) {
	if !s.delay(r) {
		return
	}
	s.mu.Lock()
	s.counts.ICECalls++
	m, ok := s.mints[bearer(r)]
	if !ok || s.cfg.Now().After(m.ExpiresAt) {
		s.counts.Unauthorized++
		s.mu.Unlock()
		writeJSON(w, http.StatusUnauthorized, map[string]string{"detail": "Token expired or already consumed"})
		return
	}
	m.ICEFetched = true
	user, cred := m.TURNUsername, m.TURNCredential
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"iceServers": []map[string]any{
		{"urls": "stun:stun1.l.google.com:19302"},
		{"urls": []string{"turn:turn.orga-ai.com:3478"}, "username": user, "credential": cred},
	}})
}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return h[7:]
	}
	return ""
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = crand.Read(b)
	return b
}

func randomHex(n int) string { return hex.EncodeToString(randomBytes(n)) }
