package pool

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/redistest"
)

func TestKeySlotIsRedisClusters(t *testing.T) {
	// The slots Redis itself gives (CLUSTER KEYSLOT), and the CRC's check
	// value.
	for key, want := range map[string]uint16{"foo": 12182, "bar": 5061, "hello": 866, "123456789": 0x31C3 % clusterSlots} {
		if got := keySlot(key); got != want {
			t.Fatalf("slot of %q = %d, want %d", key, got, want)
		}
	}
}

func TestShardTagsSpreadOverTheSlotSpace(t *testing.T) {
	if got := shardTags("p", 1); len(got) != 1 || got[0] != "p" {
		t.Fatalf("one shard: %v, want the profile's own tag", got)
	}
	for _, n := range []int{2, 3, 6, 16} {
		tags := shardTags("assistant", n)
		seen := map[string]bool{}
		for i, tag := range tags {
			if r := int(keySlot(tag)) * n / clusterSlots; r != i {
				t.Fatalf("%d shards: shard %d's tag %q is in range %d", n, i, tag, r)
			}
			if seen[tag] || profileOf(tag) != "assistant" {
				t.Fatalf("%d shards: tag %q repeated or of another profile", n, tag)
			}
			seen[tag] = true
		}
	}
	total := 0
	for i := range 3 {
		total += share(20, i, 3)
	}
	if total != 20 || share(20, 0, 3) != 7 || share(20, 2, 3) != 6 {
		t.Fatalf("shares of 20 over 3: %d %d %d", share(20, 0, 3), share(20, 1, 3), share(20, 2, 3))
	}
}

func TestKeySlotAgreesWithARealRedis(t *testing.T) {
	srv := redistest.StartProcess(t, "--cluster-enabled", "yes", "--cluster-config-file", t.TempDir()+"/nodes.conf")
	rdb := srv.Client()
	for _, tag := range shardTags("default", 6) {
		got, err := rdb.ClusterKeySlot(context.Background(), "tp:{"+tag+"}:ready").Result()
		if err != nil {
			t.Fatal(err)
		}
		if uint16(got) != keySlot(tag) {
			t.Fatalf("Redis puts {%s} in slot %d, keySlot says %d", tag, got, keySlot(tag))
		}
	}
}

func TestATakeFallsBackToAnotherShard(t *testing.T) {
	st := newTestStore(t)
	m := &fakeMinter{ttl: time.Hour}
	p := newTestPool(t, st, m, func(c *Config) {
		c.Profiles = []Profile{{Name: "default", Minter: m, Target: 6, MinRemaining: time.Second, Shards: 3}}
	}) // not opened: no refill
	tags := shardTags("default", 3)
	putOne(t, st, tags[2], "only", time.Now().Add(time.Hour))
	ctx := context.Background()
	for i := range 3 {
		h, err := p.Get(ctx, "default", fmt.Sprint("req-", i))
		if err != nil {
			t.Fatal(err)
		}
		want := SourceDirect
		if i == 0 {
			want = SourcePool
		}
		if h.Source != want || h.Profile != "default" || (i == 0 && h.ID != "only") {
			t.Fatalf("take %d: %s %q from %s, want %s", i+1, h.ID, h.Profile, h.Source, want)
		}
	}
	s, err := p.Stats(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	if s.HandedOut != 1 || s.Misses != 2 || s.Direct != 2 || s.Ready != 0 {
		t.Fatalf("stats %+v: want 1 handed out, 2 misses (one per request, not per shard), 2 direct", s)
	}
}
