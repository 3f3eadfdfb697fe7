package pool

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/redistest"
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
