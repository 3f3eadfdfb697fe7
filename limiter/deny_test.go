package limiter

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestDenyCacheRefusesUntilTheRetryTime(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	c := NewDenyCache(0, clock.now)
	lim, _ := Parse("3/m")
	checks := []Check{{Policy: "ip", Key: "ip:a", Limit: lim}, {Policy: "user", Key: "user:a", Limit: lim}}
	c.Remember(checks, []Decision{
		{Policy: "ip", Allowed: true, Limit: lim, Remaining: 5, ResetAfter: time.Second},
		{Policy: "user", Allowed: false, Limit: lim, RetryAfter: 20 * time.Second, ResetAfter: 60 * time.Second},
	})
	if _, ok := c.Denied("ip", "ip:a"); ok {
		t.Fatal("an allowed decision was remembered as a refusal")
	}
	if _, ok := c.Denied("ip", "user:a"); ok {
		t.Fatal("a refusal under one policy answered for another")
	}
	clock.add(15 * time.Second)
	d, ok := c.Denied("user", "user:a")
	if !ok || d.Allowed || d.RetryAfter != 5*time.Second || d.ResetAfter != 45*time.Second || d.Limit != lim || d.Policy != "user" {
		t.Fatalf("15 s in: %+v, %v; want refused, retry after 5s, reset after 45s", d, ok)
	}
	clock.add(5*time.Second - time.Nanosecond)
	if _, ok := c.Denied("user", "user:a"); !ok {
		t.Fatal("refusal ended before its retry time")
	}
	clock.add(time.Nanosecond)
	if _, ok := c.Denied("user", "user:a"); ok {
		t.Fatal("refusal outlived its retry time: Redis would allow now")
	}
}

func TestDenyCacheStaysWithinItsSize(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	c := NewDenyCache(10, clock.now)
	lim, _ := Parse("1/s")
	refuse := func(key string, retry time.Duration) {
		c.Remember([]Check{{Policy: "ip", Key: key, Limit: lim}}, []Decision{{Policy: "ip", Limit: lim, RetryAfter: retry}})
	}
	for i := range 10 {
		refuse(fmt.Sprint("old", i), time.Second)
	}
	refuse("new", time.Minute)
	if _, ok := c.Denied("ip", "new"); ok {
		t.Fatal("remembered past the size with nothing expired")
	}
	clock.add(2 * time.Second)
	refuse("new", time.Minute)
	if _, ok := c.Denied("ip", "new"); !ok {
		t.Fatal("expired refusals were not swept to make room")
	}
	if n := len(c.m); n != 1 {
		t.Fatalf("%d refusals kept, want 1", n)
	}
}
