package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// received is what the callers got: every credential with the number of
// times it was handed to a caller, by source.
type received struct {
	mu       sync.Mutex
	tokens   map[string]int    // token -> times received
	subjects map[string]string // token -> the caller's subject
	fromPool int64             // answers with X-Credential-Source: pool
	statuses map[int]int64     // answers other than 200, by status

	handouts  atomic.Int64 // 200 answers
	transport atomic.Int64 // requests that got no answer
	atKill    atomic.Int64 // of those, requests to a replica as it was killed
}

func newReceived() *received {
	return &received{tokens: map[string]int{}, subjects: map[string]string{}, statuses: map[int]int64{}}
}

// callers drive handouts through every replica of w.
type callers struct {
	w    *world
	got  *received
	rate float64 // handouts per second in all, 0: as fast as they can
	n    int
}

var transport = &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: 30 * time.Second}

// run starts c.n callers and returns when ctx is done and all have
// finished their last request.
func (c *callers) run(ctx context.Context) {
	var wg sync.WaitGroup
	for i := range c.n {
		wg.Add(1)
		go func() { defer wg.Done(); c.caller(ctx, i) }()
	}
	wg.Wait()
}

func (c *callers) caller(ctx context.Context, i int) {
	bearer, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject: "chaos-" + strconv.Itoa(i), ExpiresAt: jwt.NewNumericDate(time.Now().Add(48 * time.Hour)),
	}).SignedString([]byte(c.w.jwtSecret))
	// A client waits longer than the daemon's request deadline, so every
	// request that reaches a live replica gets its answer.
	client := &http.Client{Timeout: 30 * time.Second, Transport: transport}
	var tick *time.Ticker
	if c.rate > 0 {
		tick = time.NewTicker(time.Duration(float64(c.n) / c.rate * float64(time.Second)))
		defer tick.Stop()
	}
	for k := i; ctx.Err() == nil; k++ {
		if tick != nil {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return
			}
		}
		r := c.w.replicas[k%len(c.w.replicas)]
		if !c.once(client, r, bearer, "user:chaos-"+strconv.Itoa(i)) {
			pause(ctx, 20*time.Millisecond)
		}
	}
}

// once asks r for one credential and records the answer. It reports
// whether the caller may go on at once.
func (c *callers) once(client *http.Client, r *replica, bearer, subject string) bool {
	req, _ := http.NewRequest(http.MethodPost, r.url+"/v1/session-config", nil)
	req.Header.Set("Authorization", "Bearer "+bearer)
	r.inFlight.Add(1)
	resp, err := client.Do(req)
	if err != nil {
		r.inFlight.Add(-1)
		c.got.transport.Add(1)
		if r.dying.Load() && !errors.Is(err, syscall.ECONNREFUSED) {
			c.got.atKill.Add(1)
		}
		return false
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	r.inFlight.Add(-1)
	if err != nil {
		c.got.transport.Add(1)
		if r.dying.Load() {
			c.got.atKill.Add(1)
		}
		return false
	}
	if resp.StatusCode != http.StatusOK {
		c.got.mu.Lock()
		c.got.statuses[resp.StatusCode]++
		c.got.mu.Unlock()
		return false
	}
	var a struct {
		EphemeralToken string `json:"ephemeralToken"`
	}
	if json.Unmarshal(body, &a) != nil || a.EphemeralToken == "" {
		c.got.mu.Lock()
		c.got.statuses[-1]++ // a 200 that is not a credential
		c.got.mu.Unlock()
		return false
	}
	c.got.handouts.Add(1)
	c.got.mu.Lock()
	c.got.tokens[a.EphemeralToken]++
	c.got.subjects[a.EphemeralToken] = subject
	if resp.Header.Get("X-Credential-Source") == "pool" {
		c.got.fromPool++
	}
	c.got.mu.Unlock()
	return true
}

func pause(ctx context.Context, d time.Duration) {
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
}
