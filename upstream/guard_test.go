package upstream

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/mint"
)

// scripted answers each call with the next error of its script (nil:
// success); past the end it repeats the last.
type scripted struct {
	mu     sync.Mutex
	script []error
	calls  atomic.Int64
	block  bool // wait for ctx instead
}

func (s *scripted) Mint(ctx context.Context, r mint.Request) (mint.Credential, error) {
	n := s.calls.Add(1)
	if s.block {
		<-ctx.Done()
		return mint.Credential{}, ctx.Err()
	}
	s.mu.Lock()
	err := s.script[min(int(n)-1, len(s.script)-1)]
	s.mu.Unlock()
	if err != nil {
		return mint.Credential{}, err
	}
	return mint.Credential{Token: "t", ExpiresAt: time.Now().Add(time.Minute)}, nil
}

var (
	err500 = &StatusError{Provider: "orga", Op: "mint", Code: 500}
	err401 = &StatusError{Provider: "orga", Op: "mint", Code: 401}
	err429 = &StatusError{Provider: "orga", Op: "mint", Code: 429, RetryAfter: 3 * time.Second}
)

func testGuard(logs *bytes.Buffer) *Guard {
	return NewGuard(GuardConfig{
		Provider: "orga", KeyEnv: "ORGA_API_KEY",
		BackoffBase: time.Millisecond, BackoffMax: 2 * time.Millisecond,
		OpenFor: time.Hour,
		Logger:  slog.New(slog.NewJSONHandler(logs, nil)),
	})
}

func TestGuard(t *testing.T) {
	ctx := context.Background()

	t.Run("server errors are retried until one succeeds", func(t *testing.T) {
		m := &scripted{script: []error{err500, err500, nil}}
		if _, err := testGuard(&bytes.Buffer{}).Wrap(m).Mint(ctx, mint.Request{}); err != nil {
			t.Fatal(err)
		}
		if n := m.calls.Load(); n != 3 {
			t.Fatalf("calls = %d, want 3", n)
		}
	})

	t.Run("retries stop after the configured attempts", func(t *testing.T) {
		m := &scripted{script: []error{err500}}
		if _, err := testGuard(&bytes.Buffer{}).Wrap(m).Mint(ctx, mint.Request{}); !errors.Is(err, err500) {
			t.Fatalf("got %v", err)
		}
		if n := m.calls.Load(); n != 3 {
			t.Fatalf("calls = %d, want 3", n)
		}
	})

	t.Run("a bad key is not retried and is logged once naming the variable", func(t *testing.T) {
		var logs bytes.Buffer
		g := testGuard(&logs)
		m := &scripted{script: []error{err401}}
		for range 4 {
			if _, err := g.Wrap(m).Mint(ctx, mint.Request{}); !errors.Is(err, ErrBadKey) {
				t.Fatalf("got %v", err)
			}
		}
		if n := m.calls.Load(); n != 4 {
			t.Fatalf("calls = %d, want 4 (one per mint)", n)
		}
		if n := strings.Count(logs.String(), "ORGA_API_KEY"); n == 0 {
			t.Fatalf("no log line names ORGA_API_KEY: %s", logs.String())
		}
		lines := 0
		for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			if strings.Contains(l, "rejected the API key") {
				lines++
			}
		}
		if lines != 1 {
			t.Fatalf("%d bad-key log lines, want 1:\n%s", lines, logs.String())
		}
	})

	t.Run("the breaker opens after consecutive failures and stops calling", func(t *testing.T) {
		g := testGuard(&bytes.Buffer{})
		m := &scripted{script: []error{err401}}
		for range 5 {
			g.Wrap(m).Mint(ctx, mint.Request{})
		}
		if g.State() != "open" || g.Available() {
			t.Fatalf("state = %s, want open", g.State())
		}
		before := m.calls.Load()
		_, err := g.Wrap(m).Mint(ctx, mint.Request{})
		var u *mint.UnavailableError
		if !errors.As(err, &u) || u.RetryAfter < time.Minute {
			t.Fatalf("got %v; want unavailable with the open time left", err)
		}
		if m.calls.Load() != before {
			t.Fatal("an open breaker called the provider")
		}
	})

	t.Run("a 429 pauses minting for its Retry-After without tripping the breaker", func(t *testing.T) {
		g := testGuard(&bytes.Buffer{})
		m := &scripted{script: []error{err429, nil}}
		_, err := g.Wrap(m).Mint(ctx, mint.Request{})
		if mint.RetryAfter(err) != 3*time.Second {
			t.Fatalf("got %v (retry after %v)", err, mint.RetryAfter(err))
		}
		_, err = g.Wrap(m).Mint(ctx, mint.Request{})
		if !errors.Is(err, mint.ErrUnavailable) || m.calls.Load() != 1 {
			t.Fatalf("during the pause: %v, calls %d; want unavailable, no call", err, m.calls.Load())
		}
		if g.State() != "closed" {
			t.Fatalf("state = %s, want closed", g.State())
		}
	})

	t.Run("a caller giving up is not a provider failure", func(t *testing.T) {
		g := testGuard(&bytes.Buffer{})
		m := &scripted{block: true}
		for range 8 {
			cctx, cancel := context.WithTimeout(ctx, time.Millisecond)
			g.Wrap(m).Mint(cctx, mint.Request{})
			cancel()
		}
		if g.State() != "closed" {
			t.Fatalf("state = %s after cancelled calls, want closed", g.State())
		}
	})

	t.Run("a hung provider is cut off by the attempt timeout and counts as a failure", func(t *testing.T) {
		g := NewGuard(GuardConfig{AttemptTimeout: 10 * time.Millisecond, Attempts: 1, FailuresToOpen: 2,
			Logger: slog.New(slog.NewJSONHandler(&bytes.Buffer{}, nil))})
		m := &scripted{block: true}
		for range 2 {
			if _, err := g.Wrap(m).Mint(ctx, mint.Request{}); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("got %v", err)
			}
		}
		if g.State() != "open" {
			t.Fatalf("state = %s, want open", g.State())
		}
	})
}
