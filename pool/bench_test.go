package pool

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/ledger"
	"github.com/tokenpool/tokenpool/mint"
)

// BenchmarkTake measures one handout from the pool: one script call to a
// real redis-server over loopback.
func BenchmarkTake(b *testing.B) {
	srv := redistest.New(b)
	rdb := srv.Client()
	st := NewStore(rdb, StoreConfig{KeyPrefix: srv.Prefix})
	ctx := context.Background()
	body, _ := encodeEntry(mint.Credential{Token: "eyJ.token.sig", ICEServers: []byte(`[{"urls":"stun:x"}]`), ExpiresAt: time.Now().Add(time.Hour)})
	fill := func(n, from int) {
		k := st.keys("default")
		retire := float64(time.Now().Add(time.Hour).UnixMilli())
		_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := from; i < from+n; i++ {
				id := fmt.Sprintf("e%d", i)
				p.ZAdd(ctx, k.ready(), redis.Z{Score: retire, Member: id})
				p.HSet(ctx, k.entries(), id, body)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	const batch = 10000
	fill(batch, 0)
	left, filled := batch, batch
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if left == 0 {
			b.StopTimer()
			fill(batch, filled)
			filled += batch
			left = batch
			b.StartTimer()
		}
		if _, err := st.Take(ctx, "default", fmt.Sprintf("req-%d", i), 30*time.Second); err != nil {
			b.Fatal(err)
		}
		left--
	}
}

// BenchmarkRoundTrip is the baseline for BenchmarkTake: one PING to the
// same kind of server, the least a take can cost.
func BenchmarkRoundTrip(b *testing.B) {
	rdb := redistest.New(b).Client()
	ctx := context.Background()
	for b.Loop() {
		if err := rdb.Ping(ctx).Err(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLedgerMemory measures the Redis memory of the issuance
// ledger's records: a million records of the shape a take writes (a
// request id, an issuer-qualified subject, a tenant, the profile, the
// provider, the source and the entry's fingerprint and expiry), appended
// with the scripts' own issued() (by the script that records minted
// handouts, with its trims), then the stream's MEMORY USAGE, every node
// counted (the per-request markers that script also writes, which pooled
// handouts don't, are other keys). Run it once: -benchtime 1x.
func BenchmarkLedgerMemory(b *testing.B) {
	const records = 1_000_000
	srv := redistest.StartProcess(b)
	rdb := srv.Client()
	ctx := context.Background()
	st := NewStore(rdb, StoreConfig{Ledger: ledger.Config{Key: []byte("a ledger key of 32 bytes, for the bench"), MaxRecords: 2 * records}})
	pr := &profile{Profile: Profile{Name: "default", ProviderName: "orga"}, tags: []string{"default"}}
	if err := issuedScript.Load(ctx, rdb).Err(); err != nil {
		b.Fatal(err)
	}
	k := st.keys("default")
	for b.Loop() {
		exp := time.Now().Add(10 * time.Minute)
		until := markUntil(exp)
		for from := 0; from < records; from += 1000 {
			_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for i := from; i < from+1000; i++ {
					rid := uuid.NewString()
					who := &mint.Caller{Subject: fmt.Sprintf("idp:auth0:user-%06d", i%50_000), Tenant: fmt.Sprintf("tenant-%04d", i%2000)}
					args := append([]any{"", until}, st.recordArgs(pr, issuance{requestID: rid, who: who}, SourcePool)...)
					id := ledger.EntryID(ledger.Fingerprint(st.ledgerCfg.Key, fmt.Sprint("token-", i)), exp)
					p.EvalSha(ctx, issuedScript.Hash(), []string{k.stats(), k.issued(), k.issuedMark(rid)}, append(args, id)...)
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		if n, err := rdb.XLen(ctx, k.issued()).Result(); err != nil || n != records {
			b.Fatalf("%d records (%v), want %d", n, err, records)
		}
		size, err := rdb.MemoryUsage(ctx, k.issued(), 0).Result()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(size)/records, "B/record")
		b.ReportMetric(float64(size)/(1<<20), "MiB/million")
	}
	b.ReportMetric(0, "ns/op")
}
