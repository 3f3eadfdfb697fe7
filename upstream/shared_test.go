package upstream

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/mint"
)

// replicas returns n guards sharing one Redis, as n replicas would.
func replicas(t *testing.T, n int, quota string) []*Guard {
	t.Helper()
	srv := redistest.New(t)
	var q limiter.Limit
	if quota != "" {
		q, _ = limiter.Parse(quota)
	}
	var gs []*Guard
	for i := range n {
		sh := NewShared(SharedConfig{Redis: srv.Client(), KeyPrefix: srv.Prefix, Quota: q, Replica: string(rune('a' + i))})
		gs = append(gs, NewGuard(GuardConfig{
			Provider: "orga", Shared: sh, OpenFor: 2 * time.Second, FailuresToOpen: 2, Attempts: 1,
			Logger: slog.New(slog.NewJSONHandler(&bytes.Buffer{}, nil)),
		}))
	}
	return gs
}

func TestSharedState(t *testing.T) {
	ctx := context.Background()

	t.Run("a 429 on one replica pauses every replica for its Retry-After", func(t *testing.T) {
		gs := replicas(t, 2, "")
		if _, err := gs[0].Wrap(&scripted{script: []error{err429}}).Mint(ctx, mint.Request{}); mint.RetryAfter(err) != 3*time.Second {
			t.Fatalf("got %v", err)
		}
		other := &scripted{script: []error{nil}}
		_, err := gs[1].Wrap(other).Mint(ctx, mint.Request{})
		if !errors.Is(err, mint.ErrUnavailable) || other.calls.Load() != 0 {
			t.Fatalf("the other replica: %v after %d calls; want unavailable without a call", err, other.calls.Load())
		}
		if ra := mint.RetryAfter(err); ra < 2*time.Second || ra > 3*time.Second {
			t.Fatalf("retry after %v, want what is left of 3s", ra)
		}
		if gs[1].Available() {
			t.Fatal("the other replica reports the provider available during the pause")
		}
	})

	t.Run("a fleet pause read before a resume is not taken up after it", func(t *testing.T) {
		gs := replicas(t, 2, "")
		if _, err := gs[0].Wrap(&scripted{script: []error{err429}}).Mint(ctx, mint.Request{}); !errors.Is(err, mint.ErrUnavailable) {
			t.Fatalf("got %v", err)
		}
		// gs[1] reads the fleet's pause as a mint does; the operator's
		// resume lands before it takes the pause up.
		g := gs[1]
		resumes := g.resumes.Load()
		h, err := g.cfg.Shared.gate(ctx, "orga")
		if err != nil || h.wait <= 0 {
			t.Fatalf("the fleet's pause: %+v, %v", h, err)
		}
		for _, r := range gs {
			r.Resume()
		}
		if _, err := g.cfg.Shared.Resume(ctx, "orga"); err != nil {
			t.Fatal(err)
		}
		g.fleetSays(h, resumes)
		if !g.Available() {
			t.Fatal("the resumed replica took up the pause it read before the resume")
		}
	})

	t.Run("a breaker opening on one replica stops the others", func(t *testing.T) {
		gs := replicas(t, 3, "")
		failing := &scripted{script: []error{err500}}
		for range 2 {
			gs[0].Wrap(failing).Mint(ctx, mint.Request{})
		}
		if gs[0].State() != "open" {
			t.Fatalf("state %s", gs[0].State())
		}
		for _, g := range gs[1:] {
			healthy := &scripted{script: []error{nil}}
			if _, err := g.Wrap(healthy).Mint(ctx, mint.Request{}); !errors.Is(err, mint.ErrUnavailable) || healthy.calls.Load() != 0 {
				t.Fatalf("another replica: %v after %d calls; want unavailable without a call", err, healthy.calls.Load())
			}
		}
		// After the 2s cool-down the others mint again, and not before.
		// The cool-down is a Redis key's life: Redis's clock, which every
		// replica reads, so the test waits for it.
		start := time.Now()
		poll.Until(t, "the other replicas to mint again", 5*time.Second, func() bool {
			_, err := gs[1].Wrap(&scripted{script: []error{nil}}).Mint(ctx, mint.Request{})
			return err == nil
		})
		if waited := time.Since(start); waited < time.Second {
			t.Fatalf("minted again after %v, inside the 2s cool-down", waited)
		}
	})

	t.Run("the quota spaces the fleet's mints so no second sees more than the rate", func(t *testing.T) {
		gs := replicas(t, 3, "10/s")
		var (
			mu    sync.Mutex
			times []time.Time
		)
		m := mintFunc(func(context.Context) (mint.Credential, error) {
			mu.Lock()
			times = append(times, time.Now())
			mu.Unlock()
			return mint.Credential{Token: "t"}, nil
		})
		var wg sync.WaitGroup
		stop := time.Now().Add(2500 * time.Millisecond)
		for _, g := range gs {
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for time.Now().Before(stop) {
						cctx, cancel := context.WithTimeout(ctx, time.Second)
						g.Wrap(m).Mint(cctx, mint.Request{})
						cancel()
					}
				}()
			}
		}
		wg.Wait()
		perSecond := map[int64]int{}
		for _, tm := range times {
			perSecond[tm.Unix()]++
		}
		for sec, n := range perSecond {
			if n > 10 {
				t.Fatalf("%d mints in second %d, quota 10/s", n, sec)
			}
		}
		// Evenly spaced: n mints span at least (n-1) emission intervals.
		n := len(times)
		span := times[n-1].Sub(times[0])
		if n < 20 || span < time.Duration(n-2)*100*time.Millisecond {
			t.Fatalf("%d mints over %v at 10/s", n, span)
		}
	})
}

type mintFunc func(context.Context) (mint.Credential, error)

func (f mintFunc) Mint(ctx context.Context, r mint.Request) (mint.Credential, error) { return f(ctx) }
