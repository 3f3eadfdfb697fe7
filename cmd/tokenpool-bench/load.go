package main

import (
	"bytes"
	"context"
	"encoding/json"
	"hash/maphash"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// Load sends requests to targets as virtual users and records every
// answer. It is safe for concurrent use while running.
type Load struct {
	Targets      []string // base URLs; requests go round robin
	Route        string   // "session", "orga" or "navai"
	Profile      string   // sent with session and orga routes; "" for the default
	Users        []string // one bearer token per virtual user
	Client       *http.Client
	MaxInFlight  int           // open loop: more in flight are counted as dropped, not sent
	MinRemaining time.Duration // a credential with less life left fails the check
	Check        bool          // parse credentials and check them (not for baselines)
	Foreign      func(token string) bool

	rec      *Recorder
	inFlight atomic.Int64
	next     atomic.Uint64
}

// request builds the request of the route for one user and target.
func (l *Load) request(ctx context.Context, n uint64) *http.Request {
	target := l.Targets[n%uint64(len(l.Targets))]
	var req *http.Request
	switch l.Route {
	case "orga":
		url := target + "/api/orga-client-secrets"
		if l.Profile != "" {
			url += "?profile=" + l.Profile
		}
		req, _ = http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	case "navai":
		req, _ = http.NewRequestWithContext(ctx, http.MethodPost, target+"/navai/realtime/client-secret", bytes.NewReader([]byte(`{}`)))
		req.Header.Set("Content-Type", "application/json")
	default:
		var body io.Reader
		if l.Profile != "" {
			body = bytes.NewReader([]byte(`{"profile":"` + l.Profile + `"}`))
		}
		req, _ = http.NewRequestWithContext(ctx, http.MethodPost, target+"/v1/session-config", body)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
	}
	req.Header.Set("Authorization", "Bearer "+l.Users[n%uint64(len(l.Users))])
	return req
}

// fire sends one request meant to leave at intended and records it.
func (l *Load) fire(ctx context.Context, intended time.Time) {
	n := l.next.Add(1) - 1
	s := Sample{Intended: intended, Target: int(n % uint64(len(l.Targets)))}
	req := l.request(ctx, n)
	s.BytesOut = max(req.ContentLength, 0)
	s.Sent = time.Now()
	resp, err := l.Client.Do(req)
	if err == nil {
		s.Status = resp.StatusCode
		s.Source = resp.Header.Get("X-Credential-Source")
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		s.Received = time.Now()
		s.BytesIn = int64(len(body))
		if s.Status < 200 || s.Status >= 400 {
			s.Err = resp.Status // as vegeta records it
		}
		if s.Status == http.StatusOK {
			// Parsed for baselines too, so the client does the same work
			// whatever it measures; only the checks differ.
			s.Token, s.Expires = credentialOf(body)
			if !l.Check {
				s.Token = ""
			}
		}
	} else {
		s.Received = time.Now()
		s.Err = err.Error()
	}
	s.Latency = s.Received.Sub(intended)
	l.rec.add(s)
}

// credentialOf reads the token and expiry of either answer shape.
func credentialOf(body []byte) (string, time.Time) {
	var a struct {
		EphemeralToken string    `json:"ephemeralToken"`
		ExpiresAt      time.Time `json:"expiresAt"`
		Value          string    `json:"value"`
		ExpiresUnix    int64     `json:"expires_at"`
	}
	if json.Unmarshal(body, &a) != nil {
		return "", time.Time{}
	}
	if a.Value != "" {
		return a.Value, time.Unix(a.ExpiresUnix, 0)
	}
	return a.EphemeralToken, a.ExpiresAt
}

// Open runs an open loop: requests leave on the scenario's schedule,
// whatever the answers do, so a slow server can't hide its latency by
// slowing the sender. Latency counts from the intended send time.
func (l *Load) Open(ctx context.Context, sc Scenario, start time.Time) {
	var wg sync.WaitGroup
	elapsed := time.Duration(0)
	for elapsed < sc.Duration && ctx.Err() == nil {
		r := sc.Rate(elapsed)
		if r <= 0 {
			// Nothing to send now: idle in real time, not just on the
			// schedule, so an idle phase lasts as long as it says.
			elapsed += 10 * time.Millisecond
			waitUntil(ctx, start.Add(elapsed), false)
			l.rec.touch(start.Add(elapsed))
			continue
		}
		at := start.Add(elapsed)
		gap := time.Duration(float64(time.Second) / r)
		waitUntil(ctx, at, gap >= 5*spinWindow)
		if l.MaxInFlight > 0 && l.inFlight.Load() >= int64(l.MaxInFlight) {
			l.rec.dropped(at)
		} else {
			l.inFlight.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer l.inFlight.Add(-1)
				l.fire(ctx, at)
			}()
		}
		elapsed += gap
	}
	wg.Wait()
}

// spinWindow is how long before a send time the pacer stops sleeping and
// spins: a Go timer on an idle Linux process fires 0.3–1 ms late (the
// netpoller's wait has millisecond resolution), which would be counted
// as the server's latency.
const spinWindow = time.Millisecond

// waitUntil returns at at, or when ctx is done. With spin it sleeps until
// spinWindow before and spins the rest; the pacer spins only when sends
// are at least 5 windows apart, so the spinning costs at most a fifth of
// a core.
func waitUntil(ctx context.Context, at time.Time, spin bool) {
	sleepTo := at
	if spin {
		sleepTo = at.Add(-spinWindow)
	}
	if d := time.Until(sleepTo); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
	for spin && time.Now().Before(at) && ctx.Err() == nil {
		runtime.Gosched()
	}
}

// Closed runs a closed loop of n callers, each sending its next request
// when the last is answered: the way to find the most a server sustains.
func (l *Load) Closed(ctx context.Context, n int, d time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				l.fire(context.WithoutCancel(ctx), time.Now())
			}
		}()
	}
	wg.Wait()
}

// Sample is one answer.
type Sample struct {
	Intended, Sent, Received time.Time
	Latency                  time.Duration // from Intended: what a user waiting since then saw
	Status                   int           // 0: no answer
	Source                   string
	Token                    string
	Expires                  time.Time
	Target                   int
	BytesIn, BytesOut        int64
	Err                      string // the client's error, or the status line of an answer outside 2xx/3xx
}

// Recorder keeps per-second buckets and the checks. It is safe for
// concurrent use.
type Recorder struct {
	firstState   *poolState // the admin report at the first poll, and at the last
	lastState    *poolState
	start        time.Time
	minRemaining time.Duration
	foreign      func(string) bool

	mu         sync.Mutex
	seconds    []*Second
	all        *hdrhistogram.Histogram
	lag        *hdrhistogram.Histogram // intended → sent: the client's own delay
	byStatus   map[int]*hdrhistogram.Histogram
	tokens     map[uint64]struct{} // maphash of every token seen: no pointers for the GC to scan
	duplicates int
	shortLived int
	foreignN   int
	checked    int
	dropCount  int
	vegeta     vegeta.Metrics // the same samples, as vegeta's report counts them
}

// Second is one second of a run, by the requests' intended send time.
type Second struct {
	T        int            `json:"t"`
	Sent     int            `json:"sent"`
	Dropped  int            `json:"dropped"`
	Status   map[string]int `json:"status"`
	Pool     int            `json:"pool"`
	Direct   int            `json:"direct"`
	P50      float64        `json:"p50Ms"`
	P99      float64        `json:"p99Ms"`
	Ready    *int           `json:"ready,omitempty"`
	Usable   *int           `json:"usable,omitempty"`
	Target   *int           `json:"target,omitempty"`
	InFlight *int           `json:"inFlight,omitempty"`
	// The fleet's counters at this second, from the admin report.
	Minted       *int64 `json:"minted,omitempty"`
	Wasted       *int64 `json:"wasted,omitempty"`
	HandedOut    *int64 `json:"handedOut,omitempty"`
	DirectMinted *int64 `json:"directMinted,omitempty"`

	hist *hdrhistogram.Histogram
}

// tokenSeed seeds the hashes of tokens the checks keep. Two tokens of a
// million share a hash with a chance of about 3e-8: a duplicate counted
// falsely, never one missed.
var tokenSeed = maphash.MakeSeed()

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, int64(60*time.Second/time.Microsecond), 3)
}

// NewRecorder returns a recorder of a run starting at start.
func NewRecorder(start time.Time, minRemaining time.Duration, foreign func(string) bool) *Recorder {
	return &Recorder{start: start, minRemaining: minRemaining, foreign: foreign, all: newHist(), lag: newHist(), byStatus: map[int]*hdrhistogram.Histogram{}, tokens: map[uint64]struct{}{}}
}

func (r *Recorder) secondLocked(at time.Time) *Second {
	i := max(int(at.Sub(r.start)/time.Second), 0)
	for len(r.seconds) <= i {
		r.seconds = append(r.seconds, &Second{T: len(r.seconds), Status: map[string]int{}, hist: newHist()})
	}
	return r.seconds[i]
}

func (r *Recorder) touch(at time.Time) {
	r.mu.Lock()
	r.secondLocked(at)
	r.mu.Unlock()
}

func (r *Recorder) dropped(at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.secondLocked(at).Dropped++
	r.dropCount++
}

func (r *Recorder) add(s Sample) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sec := r.secondLocked(s.Intended)
	sec.Sent++
	sec.Status[strconv.Itoa(s.Status)]++
	us := max(s.Latency.Microseconds(), 1)
	_ = sec.hist.RecordValue(us)
	_ = r.all.RecordValue(us)
	_ = r.lag.RecordValue(max(s.Sent.Sub(s.Intended).Microseconds(), 1))
	h := r.byStatus[s.Status]
	if h == nil {
		h = newHist()
		r.byStatus[s.Status] = h
	}
	_ = h.RecordValue(us)
	r.vegeta.Add(&vegeta.Result{
		Code: uint16(s.Status), Timestamp: s.Intended, Latency: s.Latency,
		BytesIn: uint64(s.BytesIn), BytesOut: uint64(s.BytesOut), Error: s.Err,
	})
	switch s.Source {
	case "pool":
		sec.Pool++
	case "direct", "on_demand":
		sec.Direct++
	}
	if s.Token == "" {
		return
	}
	r.checked++
	key := maphash.String(tokenSeed, s.Token)
	if _, dup := r.tokens[key]; dup {
		r.duplicates++
	}
	r.tokens[key] = struct{}{}
	if s.Expires.Sub(s.Received) < r.minRemaining {
		r.shortLived++
	}
	if r.foreign != nil && r.foreign(s.Token) {
		r.foreignN++
	}
}

// pool records the pool's state at a moment.
func (r *Recorder) pool(at time.Time, s poolState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sec := r.secondLocked(at)
	sec.Ready, sec.Usable, sec.Target, sec.InFlight = &s.Ready, &s.Usable, &s.Target, &s.InFlight
	sec.Minted, sec.Wasted, sec.HandedOut, sec.DirectMinted = &s.Minted, &s.Wasted, &s.HandedOut, &s.Direct
	if r.firstState == nil {
		r.firstState = &s
	}
	r.lastState = &s
}
