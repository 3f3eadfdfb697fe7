package pool

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/ledger"
	"github.com/tokenpool/tokenpool/mint"
)

var testLedgerKey = []byte("a ledger key of 32 bytes, for tests")

// filledPool is a pool of profile "default" (shards, target) on st,
// filled by its refiller, which is then stopped.
func filledPool(t *testing.T, st *Store, m mint.Minter, shards, target int) *Pool {
	t.Helper()
	p := newTestPool(t, st, m, func(c *Config) {
		c.Profiles[0].Shards, c.Profiles[0].Target, c.Profiles[0].ProviderName = shards, target, "orga"
	})
	p.Open()
	ctx := context.Background()
	poll.Until(t, "the pool fills", 20*time.Second, func() bool {
		s, err := p.Stats(ctx, "default")
		return err == nil && s.Usable >= target && s.InFlight == 0
	})
	if err := p.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	return p
}

// Every credential handed out has one record, in the stream of the shard
// it came from, naming its caller, request, source, expiry and the
// token's fingerprint; a handout nobody received (returned, or a take
// whose reply was lost) has none.
func TestEveryHandoutIsRecordedOnce(t *testing.T) {
	for _, topo := range redistest.Topologies {
		t.Run(topo, func(t *testing.T) {
			rdb, prefix := redistest.OnTopology(t, topo)
			lost := &lostReply{match: takeUnder("lost"), later: refused}
			rdb.AddHook(lost)
			st := NewStore(rdb, StoreConfig{KeyPrefix: prefix, Ledger: ledger.Config{Key: testLedgerKey}})
			m := &fakeMinter{ttl: time.Hour}
			p := filledPool(t, st, m, 3, 6)
			ctx := context.Background()
			who := &mint.Caller{Subject: "user:alice", Tenant: "acme"}
			delivered := map[string]Handout{} // by request id
			for i := range 4 {
				rid := fmt.Sprint("r", i)
				h, _, err := p.GetLimited(ctx, "default", rid, who, nil)
				if err != nil {
					t.Fatal(err)
				}
				delivered[rid] = h
			}
			h, _, err := p.GetLimited(ctx, "default", "returned", who, nil)
			if err != nil {
				t.Fatal(err)
			}
			p.Return(h)
			if _, _, err := p.GetLimited(ctx, "default", "lost", who, nil); err == nil || !lost.done.Load() {
				t.Fatalf("a take whose reply was lost: %v", err)
			}
			// Two left and the returned one: take them, then mint directly.
			for i := 4; i < 8; i++ {
				rid := fmt.Sprint("r", i)
				h, _, err := p.GetLimited(ctx, "default", rid, who, nil)
				if err != nil {
					t.Fatal(err)
				}
				delivered[rid] = h
			}
			if delivered["r7"].Source != SourceDirect {
				t.Fatalf("the eighth handout came from %s, want a direct mint", delivered["r7"].Source)
			}
			h, _, err = p.GetLimited(ctx, "default", "direct-returned", who, nil)
			if err != nil || h.Source != SourceDirect {
				t.Fatalf("a direct mint: %v %s", err, h.Source)
			}
			p.Return(h)

			leaked := delivered["r3"]
			r := &ledger.Reader{RDB: rdb, Streams: p.IssuedStreams(), Batch: 2} // small batches: the merge across streams is exercised
			page, err := r.Read(ctx, ledger.Cursor{}, time.Time{}, nil, 100, 0)
			if err != nil || page.More {
				t.Fatal(err, page.More)
			}
			if len(page.Records) != len(delivered) {
				t.Fatalf("%d records for %d handouts: %+v", len(page.Records), len(delivered), page.Records)
			}
			for i, rec := range page.Records {
				h, ok := delivered[rec.RequestID]
				if !ok {
					t.Fatalf("a record of request %q, which received nothing", rec.RequestID)
				}
				delete(delivered, rec.RequestID)
				want := ledger.Record{ID: rec.ID, Stream: rec.Stream, Time: rec.Time, RequestID: rec.RequestID,
					Subject: "user:alice", Tenant: "acme", Profile: "default", Provider: "orga", Source: string(h.Source),
					ExpiresAt: h.ExpiresAt.Truncate(time.Millisecond).UTC(), Fingerprint: ledger.Fingerprint(testLedgerKey, h.Token)}
				if fmt.Sprint(rec) != fmt.Sprint(want) {
					t.Fatalf("record %d:\n got %+v\nwant %+v", i, rec, want)
				}
				if h.Source == SourcePool && rec.Stream != st.streamOf(h.tag) {
					t.Fatalf("a record in %s of a handout from shard %s", rec.Stream, h.tag)
				}
				if i > 0 && !page.Records[i-1].Time.Before(rec.Time.Add(time.Millisecond)) {
					t.Fatalf("records out of order: %v then %v", page.Records[i-1].Time, rec.Time)
				}
			}
			// A leaked token names its caller and request.
			found, err := r.Lookup(ctx, testLedgerKey, leaked.Token)
			if err != nil || len(found) != 1 || found[0].RequestID != "r3" || found[0].Subject != "user:alice" {
				t.Fatalf("the records of a leaked token: %+v %v", found, err)
			}
			if found, err := r.Lookup(ctx, []byte("another key, of 32 bytes as well"), leaked.Token); err != nil || len(found) != 0 {
				t.Fatalf("a lookup under another key found %+v %v", found, err)
			}
		})
	}
}

// Records older than the retention go as records are added.
func TestTheLedgerKeepsRecordsForItsRetention(t *testing.T) {
	srv := redistest.New(t)
	rdb := srv.Client()
	st := NewStore(rdb, StoreConfig{KeyPrefix: srv.Prefix, Ledger: ledger.Config{Key: testLedgerKey, Retention: 300 * time.Millisecond}})
	p := filledPool(t, st, &fakeMinter{ttl: time.Hour}, 1, 5)
	ctx := context.Background()
	r := &ledger.Reader{RDB: rdb, Streams: p.IssuedStreams()}
	count := func() int {
		t.Helper()
		page, err := r.Read(ctx, ledger.Cursor{}, time.Time{}, nil, 100, 0)
		if err != nil {
			t.Fatal(err)
		}
		return len(page.Records)
	}
	first := time.Now()
	for i := range 3 {
		if _, _, err := p.GetLimited(ctx, "default", fmt.Sprint("old-", i), nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(); n != 3 {
		t.Fatalf("%d records of 3 handouts", n)
	}
	poll.Until(t, "the first records outlive the retention", 5*time.Second, func() bool { return time.Since(first) > 400*time.Millisecond })
	if _, _, err := p.GetLimited(ctx, "default", "new", nil, nil); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Fatalf("after the retention, %d records; want only the newest", n)
	}
}
