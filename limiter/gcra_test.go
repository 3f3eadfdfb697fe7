package limiter

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"

	"github.com/tokenpool/tokenpool/internal/redistest"
)

// The fused take applies limits with LuaGCRA instead of redis_rate: both
// must give the same answers and share their keys.

func TestLuaGCRAAnswersAsRedisRateDoes(t *testing.T) {
	srv := redistest.New(t)
	rdb := srv.Client()
	l := New(rdb, srv.Prefix)
	rr := redis_rate.NewLimiter(rdb)
	ctx := context.Background()
	for _, spec := range []string{"3/m", "5/s", "10/10s", "1/h"} {
		t.Run(spec+": the same decisions, event by event", func(t *testing.T) {
			lim, _ := Parse(spec)
			theirs, ours := "theirs:"+spec, "ours:"+spec
			// Each side reads Redis's clock when it runs, and redis_rate's
			// call comes first: every time either side computes is off by
			// at most the longest span of a pair of calls so far (a loaded
			// machine can make it milliseconds).
			var slack time.Duration
			for i := range 2*lim.Burst + 2 {
				started := time.Now()
				want, err := rr.Allow(ctx, l.prefix+theirs, lim)
				if err != nil {
					t.Fatal(err)
				}
				got, err := l.AllowAll(ctx, []Check{{Policy: "p", Key: ours, Limit: lim}})
				if err != nil || len(got) != 1 {
					t.Fatalf("event %d: %v, %v", i+1, got, err)
				}
				slack = max(slack, time.Since(started)+time.Millisecond)
				g := got[0]
				if g.Allowed != (want.Allowed == 1) || g.Remaining != want.Remaining {
					t.Fatalf("event %d: allowed %v remaining %d; redis_rate: allowed %d remaining %d", i+1, g.Allowed, g.Remaining, want.Allowed, want.Remaining)
				}
				if d := g.RetryAfter - max(want.RetryAfter, 0); d < -slack || d > slack {
					t.Fatalf("event %d: retry after %v, redis_rate %v (the calls' clocks %v apart at most)", i+1, g.RetryAfter, want.RetryAfter, slack)
				}
				if d := g.ResetAfter - want.ResetAfter; d < -slack || d > slack {
					t.Fatalf("event %d: reset after %v, redis_rate %v (the calls' clocks %v apart at most)", i+1, g.ResetAfter, want.ResetAfter, slack)
				}
			}
		})
	}
}

func TestLuaGCRASharesRedisRateKeys(t *testing.T) {
	srv := redistest.New(t)
	l := New(srv.Client(), srv.Prefix)
	ctx := context.Background()
	lim, _ := Parse("5/m")
	check := []Check{{Policy: "user", Key: "user:alice", Limit: lim}}
	// A replica that still checks with redis_rate and one with LuaGCRA
	// count against one allowance.
	for i := range 5 {
		var allowed bool
		if i%2 == 0 {
			d, err := l.Allow(ctx, "user:alice", lim)
			if err != nil {
				t.Fatal(err)
			}
			allowed = d.Allowed
		} else {
			ds, err := l.AllowAll(ctx, check)
			if err != nil {
				t.Fatal(err)
			}
			allowed = ds[0].Allowed
		}
		if !allowed {
			t.Fatalf("event %d of 5 denied", i+1)
		}
	}
	if d, _ := l.Allow(ctx, "user:alice", lim); d.Allowed {
		t.Fatal("6th event allowed by redis_rate")
	}
	if ds, _ := l.AllowAll(ctx, check); ds[0].Allowed {
		t.Fatal("6th event allowed by LuaGCRA")
	}
}

func TestAllowAllStopsAtTheFirstDenial(t *testing.T) {
	srv := redistest.New(t)
	for _, name := range []string{"in one script", "at once, as on a Cluster"} {
		t.Run(name, func(t *testing.T) {
			l := New(srv.Client(), srv.Prefix+name)
			ctx := context.Background()
			one, _ := Parse("1/m")
			ten, _ := Parse("10/m")
			checks := []Check{{Policy: "ip", Key: "ip:a", Limit: one}, {Policy: "user", Key: "user:a", Limit: ten}}
			allow := l.AllowAll
			if name != "in one script" {
				allow = l.AllowAtOnce
			}
			ds, err := allow(ctx, checks)
			if err != nil || len(ds) != 2 || !ds[0].Allowed || !ds[1].Allowed || ds[1].Remaining != 9 {
				t.Fatalf("first: %+v, %v", ds, err)
			}
			for i := range 3 {
				ds, err = allow(ctx, checks)
				if err != nil || len(ds) != 1 || ds[0].Allowed || ds[0].Policy != "ip" {
					t.Fatalf("denied %d: %+v, %v; want the ip decision alone, denied", i+1, ds, err)
				}
			}
			// The denied calls did not count against the user.
			ds, err = l.AllowAll(ctx, checks[1:])
			if err != nil || !ds[0].Allowed || ds[0].Remaining != 8 {
				t.Fatalf("user after: %+v, %v; want 8 remaining", ds, err)
			}
		})
	}
}

func TestRefundGivesBackOneEvent(t *testing.T) {
	srv := redistest.New(t)
	l := New(srv.Client(), srv.Prefix)
	ctx := context.Background()
	lim, _ := Parse("2/m")
	c := Check{Policy: "user", Key: "user:a", Limit: lim}
	for range 2 {
		if ds, _ := l.AllowAll(ctx, []Check{c}); !ds[0].Allowed {
			t.Fatal("denied within the limit")
		}
	}
	if err := l.Refund(ctx, c); err != nil {
		t.Fatal(err)
	}
	if ds, _ := l.AllowAll(ctx, []Check{c}); !ds[0].Allowed || ds[0].Remaining != 0 {
		t.Fatalf("after a refund: %+v, want allowed with 0 remaining", ds[0])
	}
	if err := l.Refund(ctx, Check{Policy: "user", Key: "user:none", Limit: lim}); err != nil {
		t.Fatalf("refund of a key never counted: %v", err)
	}
	if n, _ := srv.Client().Exists(ctx, l.key(Check{Key: "user:none"})).Result(); n != 0 {
		t.Fatal("a refund created a key")
	}
}

func TestDecisionsRefusesAMalformedReply(t *testing.T) {
	lim, _ := Parse("1/s")
	checks := []Check{{Policy: "ip", Limit: lim}}
	for _, reply := range [][]any{
		{int64(1), int64(0), "-1"},
		{int64(1), int64(0), "-1", "1", int64(1), int64(0), "-1", "1"},
		{"1", int64(0), "-1", "1"},
		{int64(1), int64(0), "x", "1"},
	} {
		t.Run(fmt.Sprint(reply), func(t *testing.T) {
			if _, err := Decisions(checks, reply); err == nil {
				t.Fatal("no error")
			}
		})
	}
}
