package limiter

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/redistest"
)

// A long window, so that no test run crosses a window's end.
var thousandHours = Limit{Rate: 5, Burst: 5, Period: 1000 * time.Hour}

func quota(key string, n int) Check {
	return Check{Policy: "q-" + key, Key: key, Limit: Limit{Rate: n, Burst: n, Period: thousandHours.Period}, Quota: true}
}

// allowConcurrently asks checks calls times at once and counts the calls
// every check allowed.
func allowConcurrently(t *testing.T, l *Limiter, calls int, checks []Check) int {
	t.Helper()
	var (
		mu      sync.Mutex
		allowed int
		wg      sync.WaitGroup
		errs    = make(chan error, calls)
	)
	for range calls {
		wg.Go(func() {
			ds, err := l.AllowAll(context.Background(), checks)
			if err != nil {
				errs <- err
				return
			}
			if Allowed(checks, ds) {
				mu.Lock()
				allowed++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return allowed
}

// spent is the count q's key holds ("<count> <window end>").
func spent(t *testing.T, rdb redis.UniversalClient, l *Limiter, q Check) int {
	t.Helper()
	v, err := rdb.Get(context.Background(), l.key(q)).Result()
	if err != nil {
		t.Fatal(err)
	}
	c, _, _ := strings.Cut(v, " ")
	n, err := strconv.Atoi(c)
	if err != nil {
		t.Fatalf("quota key %s holds %q", l.key(q), v)
	}
	return n
}

func TestAQuotaAllowsExactlyNPerWindow(t *testing.T) {
	srv := redistest.New(t)
	l := New(srv.Client(), srv.Prefix)
	q := quota("user:alice", 5)
	if got := allowConcurrently(t, l, 40, []Check{q}); got != 5 {
		t.Fatalf("40 calls at once under a quota of 5: %d allowed", got)
	}
	ds, err := l.AllowAll(context.Background(), []Check{q})
	if err != nil || len(ds) != 1 || ds[0].Allowed || !ds[0].Quota {
		t.Fatalf("past the quota: %+v %v", ds, err)
	}
	// The window is a whole multiple of the period since the epoch: the
	// wait is to its end.
	now, period := time.Now().UnixMilli(), thousandHours.Period.Milliseconds()
	left := time.Duration(now/period*period+period-now) * time.Millisecond
	if d := ds[0].RetryAfter - left; d < -5*time.Second || d > 5*time.Second {
		t.Fatalf("retry after %v, want about %v (the window's end)", ds[0].RetryAfter, left)
	}
}

func TestQuotasAreSpentTogetherOrNotAtAll(t *testing.T) {
	ctx := context.Background()
	for _, topo := range redistest.Topologies {
		t.Run(topo, func(t *testing.T) {
			rdb, prefix := redistest.OnTopology(t, topo)
			l := New(rdb, prefix)
			rate, _ := Parse("100/m")
			user, org := quota("user:alice", 10), quota("org:acme", 2)
			checks := []Check{{Policy: "user", Key: "user:alice", Limit: rate}, user, org}
			got := allowConcurrently(t, l, 12, checks)
			// On one Redis the quotas are decided in one script: exactly
			// the org's two. On a Cluster each key is decided on its own
			// master at once, and a call one quota refuses holds the
			// other's session until its refund: calls at the same time may
			// be refused for it (the two that got the org's sessions may
			// be the two the user's refused), so it is at most two.
			if got > 2 || topo == "one Redis" && got != 2 {
				t.Fatalf("12 calls under quotas of 10 and 2: %d allowed", got)
			}
			// Either way, a refused call spent neither: each quota counts
			// the calls allowed.
			for _, q := range []Check{user, org} {
				if n := spent(t, rdb, l, q); n != got {
					t.Fatalf("%s counts %d, want the %d allowed", q.Key, n, got)
				}
			}
			// A refusal's decisions refund nothing more: the user's
			// session a Cluster gave back at once is not given back twice.
			full := quota("org:full", 1)
			if ds, err := l.AllowAll(ctx, []Check{full}); err != nil || !ds[0].Allowed {
				t.Fatalf("the full org's one session: %+v %v", ds, err)
			}
			refused := []Check{user, full}
			ds, err := l.AllowAll(ctx, refused)
			if err != nil || Allowed(refused, ds) {
				t.Fatalf("past the full org's quota: %+v %v", ds, err)
			}
			if err := l.RefundQuotas(ctx, refused, ds); err != nil {
				t.Fatal(err)
			}
			if n := spent(t, rdb, l, user); n != got {
				t.Fatalf("after a refusal and its refund the user's quota counts %d, want %d", n, got)
			}
			ds, err = l.AllowAll(ctx, []Check{user})
			if err != nil || !ds[0].Allowed || ds[0].Remaining != 10-got-1 {
				t.Fatalf("the user's own quota after: %+v %v, want allowed with %d left", ds, err, 10-got-1)
			}
		})
	}
}

func TestARefundFreesOnlyTheWindowItSpentIn(t *testing.T) {
	// The embedded Redis too: its clock moves only when the daemon moves
	// it, and a refund must not depend on it.
	for _, embedded := range []bool{false, true} {
		t.Run(fmt.Sprint("embedded=", embedded), func(t *testing.T) {
			var rdb *redis.Client
			if embedded {
				rdb = redis.NewClient(&redis.Options{Addr: miniredis.RunT(t).Addr()})
			} else {
				rdb = redistest.New(t).Client()
			}
			refundOnlyItsWindow(t, New(rdb, "tp"), rdb)
		})
	}
}

func refundOnlyItsWindow(t *testing.T, l *Limiter, rdb redis.UniversalClient) {
	ctx := context.Background()
	q := quota("user:bob", 2)
	var ds []Decision
	for range 2 {
		var err error
		if ds, err = l.AllowAll(ctx, []Check{q}); err != nil || !ds[0].Allowed {
			t.Fatalf("within the quota: %+v %v", ds, err)
		}
	}
	// A refund naming another window (one that ended) frees nothing.
	if err := l.RefundQuota(ctx, q, ds[0].Window-thousandHours.Period.Milliseconds()); err != nil {
		t.Fatal(err)
	}
	if n := spent(t, rdb, l, q); n != 2 {
		t.Fatalf("a refund for an earlier window changed the count to %d", n)
	}
	if err := l.RefundQuotas(ctx, []Check{q}, ds); err != nil {
		t.Fatal(err)
	}
	if n := spent(t, rdb, l, q); n != 1 {
		t.Fatalf("after a refund the quota counts %d, want 1", n)
	}
	if got := allowConcurrently(t, l, 5, []Check{q}); got != 1 {
		t.Fatalf("after a refund %d more were allowed, want 1", got)
	}
}
