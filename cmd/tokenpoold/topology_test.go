package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// TestFleetOnRedisCluster: the handout test against a 3-master Redis
// Cluster. Every script touches keys of one hash tag, so one slot; Redis
// Cluster refuses a script that doesn't (CROSSSLOT).
func TestFleetOnRedisCluster(t *testing.T) {
	nodes := redistest.StartCluster(t, 3)
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.Addr)
	}
	fleetHandouts(t, map[string]string{"REDIS_URL": "", "REDIS_CLUSTER_ADDRS": strings.Join(addrs, ",")})
}

// TestFleetOnSentinel: the handout test against a Sentinel-managed primary.
func TestFleetOnSentinel(t *testing.T) {
	s := redistest.StartSentinel(t)
	fleetHandouts(t, map[string]string{"REDIS_URL": "", "REDIS_SENTINEL_ADDRS": s.Addr, "REDIS_SENTINEL_MASTER": s.Master})
}

// TestSentinelFailoverUnderLoad: kill -9 of the primary under load, with
// TOKENPOOL_REDIS_WAIT_REPLICAS=1. Sentinel promotes the replica, the fleet
// follows it, and no credential is handed out twice across the failover.
func TestSentinelFailoverUnderLoad(t *testing.T) {
	s := redistest.StartSentinel(t)
	sim := startSim(t, upstreamtest.Config{Latency: 5 * time.Millisecond})
	fleet := startFleet(t, 3, fleetEnv("", sim, map[string]string{
		"REDIS_URL": "", "REDIS_SENTINEL_ADDRS": s.Addr, "REDIS_SENTINEL_MASTER": s.Master,
		"TOKENPOOL_REDIS_WAIT_REPLICAS": "1",
		// Long, so that takes waiting it for a replica that is gone
		// can't pass for takes that don't.
		"TOKENPOOL_REDIS_WAIT_TIMEOUT": "1s",
		"TOKENPOOL_POOL_TARGET":        "20",
	}))
	urls := urlsOf(fleet)
	stop := make(chan struct{})
	done := make(chan struct{})
	var l load
	go func() { l.run(t, urls, 16, 0, stop); close(done) }()
	l.servedAfter(t, 200, time.Time{})

	killed := time.Now()
	s.Primary.Stop()
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addr})
	defer sc.Close()
	poll.Until(t, "sentinel to promote the replica", 30*time.Second, func() bool {
		addr, err := sc.GetMasterAddrByName(context.Background(), s.Master).Result()
		return err == nil && len(addr) == 2 && addr[0]+":"+addr[1] == s.Replica.Addr
	})
	promoted := time.Since(killed)
	poll.Until(t, "the fleet to hand out from the new primary", 15*time.Second, func() bool {
		for _, o := range l.snapshot() {
			if o.at.After(killed.Add(promoted)) && o.status == 200 {
				return true
			}
		}
		return false
	})
	served := time.Since(killed)
	l.servedAfter(t, 200, killed.Add(served))
	close(stop)
	<-done

	outs := l.snapshot()
	for _, o := range outs {
		if o.status != 200 && o.status != 503 {
			t.Fatalf("answer %d across a failover", o.status)
		}
	}
	got := checkTokens(t, sim, outs)
	// The new primary has no replica: its takes must not each wait the
	// WAIT timeout for one.
	var before, after []outcome
	for _, o := range outs {
		switch {
		case o.status != 200:
		case o.at.Before(killed):
			before = append(before, o)
		case o.at.After(killed.Add(served)):
			after = append(after, o)
		}
	}
	p50Before, p50After := percentile(before, 0.5), percentile(after, 0.5)
	t.Logf("answers %v, %d distinct credentials; promoted %v after the kill, serving again after %v; p50 of 200s %v before, %v after",
		statuses(outs), got, promoted.Round(100*time.Millisecond), served.Round(100*time.Millisecond),
		p50Before.Round(100*time.Microsecond), p50After.Round(100*time.Microsecond))
	if p50After >= 500*time.Millisecond {
		t.Fatalf("p50 %v after the failover: takes wait the 1s WAIT timeout for a replica the new primary does not have", p50After)
	}
}
