package recent

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestOneReadPerInterval: answers, errors included, serve until TTL, then
// one read serves the callers arriving together.
func TestOneReadPerInterval(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	v := &Value[int]{TTL: time.Second, Now: clock.Now}
	var reads atomic.Int64
	fail := errors.New("redis down")
	read := func(err error) func() (int, error) {
		return func() (int, error) { return int(reads.Add(1)), err }
	}
	ctx := context.Background()
	for range 5 {
		if n, err := v.Get(ctx, read(nil)); n != 1 || err != nil {
			t.Fatalf("within the interval: %d %v, want the first read's 1", n, err)
		}
	}
	clock.advance(time.Second)
	if _, err := v.Get(ctx, read(fail)); !errors.Is(err, fail) {
		t.Fatalf("after the interval: %v, want a new read's error", err)
	}
	if _, err := v.Get(ctx, read(nil)); !errors.Is(err, fail) {
		t.Fatalf("an error is an answer too: %v", err)
	}

	// Rounds of 8 callers at once: each round's read holds until all 8
	// have started, so they overlap it, and serves them all.
	for round := range 20 {
		clock.advance(time.Second)
		before := reads.Load()
		var started sync.WaitGroup
		started.Add(8)
		read := func() (int, error) { started.Wait(); return int(reads.Add(1)), nil }
		var wg sync.WaitGroup
		got := make([]int, 8)
		for i := range got {
			wg.Add(1)
			go func() {
				defer wg.Done()
				started.Done()
				got[i], _ = v.Get(ctx, read)
			}()
		}
		wg.Wait()
		if n := reads.Load() - before; n != 1 {
			t.Fatalf("round %d: %d reads for 8 callers at once, want 1", round, n)
		}
		for _, n := range got {
			if n != int(before)+1 {
				t.Fatalf("round %d: answers %v, want every one %d", round, got, before+1)
			}
		}
	}
}

// TestACallerThatGoesAwayStopsWaiting: the read goes on for the others.
func TestACallerThatGoesAwayStopsWaiting(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	v := &Value[int]{TTL: time.Second, Now: clock.Now}
	release := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := v.Get(ctx, func() (int, error) { <-release; return 7, nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("%v, want the caller's own end", err)
	}
	close(release)
	n, err := v.Get(context.Background(), func() (int, error) { return 8, nil })
	if err != nil || (n != 7 && n != 8) {
		t.Fatalf("%d %v", n, err)
	}
}
