package limiter

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/redistest"
)

func TestParse(t *testing.T) {
	good := []struct {
		in   string
		want Limit
	}{
		{"10/m", Limit{Rate: 10, Burst: 10, Period: time.Minute}},
		{"5/s", Limit{Rate: 5, Burst: 5, Period: time.Second}},
		{"1000/h", Limit{Rate: 1000, Burst: 1000, Period: time.Hour}},
		{" 50/10s ", Limit{Rate: 50, Burst: 50, Period: 10 * time.Second}},
	}
	for _, tt := range good {
		t.Run(tt.in+" parses", func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	for _, in := range []string{"", "10", "0/m", "-1/s", "x/m", "10/fortnight", "10/0s", "1.5/s"} {
		t.Run(in+" is refused", func(t *testing.T) {
			if l, err := Parse(in); err == nil {
				t.Fatalf("got %+v, want an error", l)
			}
		})
	}
}

func TestAllowIsSharedAndRendersHeaders(t *testing.T) {
	srv := redistest.New(t)
	// Two limiters on one Redis stand for two replicas.
	a, b := New(srv.Client(), srv.Prefix), New(srv.Client(), srv.Prefix)
	lim, _ := Parse("3/m")
	ctx := context.Background()
	for i, l := range []*Limiter{a, b, a} {
		d, err := l.Allow(ctx, "user:alice", lim)
		if err != nil || !d.Allowed || d.Remaining != 2-i {
			t.Fatalf("event %d: %+v, %v", i+1, d, err)
		}
	}
	d, err := b.Allow(ctx, "user:alice", lim)
	if err != nil || d.Allowed {
		t.Fatalf("4th event: %+v, %v; want denied", d, err)
	}
	if d.RetryAfter <= 0 || d.RetryAfter > 20*time.Second {
		t.Fatalf("retry after %v, want about 20s", d.RetryAfter)
	}
	h := http.Header{}
	d.SetHeaders(h, "user")
	if got := h.Get("RateLimit-Policy"); got != `"user";q=3;w=60` {
		t.Fatalf("RateLimit-Policy = %q", got)
	}
	if got := h.Get("RateLimit"); got != `"user";r=0;t=60` {
		t.Fatalf("RateLimit = %q", got)
	}
	if got := h.Get("Retry-After"); got != "20" {
		t.Fatalf("Retry-After = %q", got)
	}
	if d, _ := a.Allow(ctx, "user:bob", lim); !d.Allowed {
		t.Fatal("another key must have its own allowance")
	}
}
