package pool

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/ledger"
	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/mint"
)

// A request that ends without a credential gives back the quota session
// its take spent: a handout returned (its caller gone), a take whose
// reply was lost (recovered), a miss whose direct mint failed. On one
// Redis the take's script spent it and recovering the take refunds it; on
// a Cluster it was spent beside the take and the pool refunds it.
func TestAnUndoneTakeGivesItsQuotaSessionBack(t *testing.T) {
	for _, topo := range redistest.Topologies {
		t.Run(topo, func(t *testing.T) {
			rdb, prefix := redistest.OnTopology(t, topo)
			lost := &lostReply{match: takeUnder("lost"), later: refused} // its retries never reach Redis
			rdb.AddHook(lost)
			st := NewStore(rdb, StoreConfig{KeyPrefix: prefix})
			m := &fakeMinter{ttl: time.Hour}
			p := newTestPool(t, st, m, nil) // not opened: only these takes touch the pool
			ctx := context.Background()
			for _, id := range []string{"e1", "e2"} {
				putOne(t, st, "default", id, time.Now().Add(time.Hour))
			}
			q := []limiter.Check{{Policy: "day", Key: "day:alice", Quota: true, Limit: limiter.Limit{Rate: 5, Burst: 5, Period: 1000 * time.Hour}}}
			used := func() int {
				t.Helper()
				us, _, err := limiter.New(rdb, prefix).QuotaUsage(ctx, "*", 0)
				if err != nil {
					t.Fatal(err)
				}
				n := 0
				for _, u := range us {
					n += u.Used
				}
				return n
			}

			h, ds, err := p.GetLimited(ctx, "default", "kept", nil, q)
			if err != nil || len(ds) != 1 || !ds[0].Allowed || ds[0].Remaining != 4 || used() != 1 {
				t.Fatalf("a handout: %v %+v, %d used", err, ds, used())
			}
			h2, _, err := p.GetLimited(ctx, "default", "returned", nil, q)
			if err != nil || used() != 2 {
				t.Fatalf("a second handout: %v, %d used", err, used())
			}
			p.Return(h2)
			if n := used(); n != 1 {
				t.Fatalf("a returned handout left %d sessions spent, want 1", n)
			}

			// The take runs, its reply is lost: recovered, nothing spent.
			if _, _, err := p.GetLimited(ctx, "default", "lost", nil, q); err == nil || !lost.done.Load() {
				t.Fatalf("a take whose reply was lost: %v (lost: %v)", err, lost.done.Load())
			}
			if n := used(); n != 1 {
				t.Fatalf("a take whose reply was lost left %d sessions spent, want 1", n)
			}

			// The pool holds e2 again (returned, then recovered): take it,
			// then miss and fail to mint.
			if _, _, err := p.GetLimited(ctx, "default", "last", nil, q); err != nil || used() != 2 {
				t.Fatalf("the last pooled entry: %v, %d used", err, used())
			}
			m.setErr(errors.New("provider down"))
			if _, _, err := p.GetLimited(ctx, "default", "miss", nil, q); err == nil {
				t.Fatal("a miss with a failing provider handed something out")
			}
			if n := used(); n != 2 {
				t.Fatalf("a failed direct mint left %d sessions spent, want 2", n)
			}
			_ = h
		})
	}
}

// A take sent again after its reply was lost keeps what its first send
// spent: here the first send found the pool empty (and held the quota's
// session for a direct mint), the retry found an entry pooled meanwhile
// and handed it out. Returning that handout gives the session back and
// deletes its record.
func TestARetriedTakeKeepsWhatItsFirstSendSpent(t *testing.T) {
	srv := redistest.New(t)
	rdb := srv.Client()
	var st *Store
	lost := &lostReply{match: takeUnder("retried"), ran: func() {
		putOne(t, st, "default", "late", time.Now().Add(time.Hour)) // pooled between the two sends
	}}
	rdb.AddHook(lost)
	st = NewStore(rdb, StoreConfig{KeyPrefix: srv.Prefix, Ledger: ledger.Config{Key: testLedgerKey}})
	p := newTestPool(t, st, &fakeMinter{ttl: time.Hour}, nil)
	ctx := context.Background()
	q := []limiter.Check{{Policy: "day", Key: "day:alice", Quota: true, Limit: limiter.Limit{Rate: 5, Burst: 5, Period: 1000 * time.Hour}}}
	h, _, err := p.GetLimited(ctx, "default", "retried", &mint.Caller{Subject: "user:alice"}, q)
	if err != nil || h.ID != "late" || !lost.done.Load() {
		t.Fatalf("the retried take: %+v %v (lost %v)", h, err, lost.done.Load())
	}
	r := &ledger.Reader{RDB: rdb, Streams: p.IssuedStreams()}
	count := func() (sessions, records int) {
		t.Helper()
		us, _, err := limiter.New(rdb, srv.Prefix).QuotaUsage(ctx, "*", 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range us {
			sessions += u.Used
		}
		page, err := r.Read(ctx, ledger.Cursor{}, time.Time{}, nil, 10, 0)
		if err != nil {
			t.Fatal(err)
		}
		return sessions, len(page.Records)
	}
	if s, n := count(); s != 1 || n != 1 {
		t.Fatalf("after the handout: %d sessions spent, %d records; want 1 and 1", s, n)
	}
	p.Return(h)
	if s, n := count(); s != 0 || n != 0 {
		t.Fatalf("after it was returned: %d sessions spent, %d records; want none", s, n)
	}
}
