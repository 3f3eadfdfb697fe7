package pool

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
)

// TestTakeWithALostReply: the take runs in Redis but its reply is lost on
// the way back; go-redis retries it on a new connection and gets the same
// entry. Nothing is lost or handed out twice.
func TestTakeWithALostReply(t *testing.T) {
	ctx := context.Background()
	srv := redistest.New(t)
	direct := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
	for _, id := range []string{"a", "b", "c"} {
		putOne(t, direct, "p", id, time.Now().Add(time.Hour))
	}
	proxy := redistest.NewProxy(t, srv.Addr)
	rdb := redis.NewClient(&redis.Options{Addr: proxy.Addr, MaxRetries: 3, ReadTimeout: time.Second})
	defer rdb.Close()
	viaProxy := NewStore(rdb, StoreConfig{KeyPrefix: srv.Prefix})

	first, err := viaProxy.Take(ctx, "p", "req-1", 0) // loads the script, opens the connection
	if err != nil {
		t.Fatal(err)
	}
	proxy.DropNextReply()
	h, err := viaProxy.Take(ctx, "p", "req-2", 0)
	if err != nil {
		t.Fatalf("take with a lost reply: %v", err)
	}
	if proxy.Dropped() != 1 {
		t.Fatalf("%d replies dropped, want 1: the test did not lose a reply", proxy.Dropped())
	}
	if h.ID == first.ID {
		t.Fatal("the retried take returned the previous request's entry")
	}
	s := mustStats(t, direct, "p")
	if s.HandedOut != 2 || s.Ready != 1 {
		t.Fatalf("after a lost reply and its retry: %+v; want 2 handed out, 1 ready", s)
	}
	// The entry the lost reply carried is the one the retry got.
	claim := direct.keys("p").claim("req-2")
	if got := srv.Client().Get(ctx, claim).Val(); len(got) < len(h.ID) || got[:len(h.ID)] != h.ID {
		t.Fatalf("claim of req-2 holds %.40q, the retry returned %s", got, h.ID)
	}
	last, err := viaProxy.Take(ctx, "p", "req-3", 0)
	if err != nil || last.ID == h.ID || last.ID == first.ID {
		t.Fatalf("the third entry: %v %v", last.ID, err)
	}
}

// TestTakeWaitsForReplicas: with WaitReplicas, a take is acknowledged by
// that many replicas before it returns; one that isn't in time is still
// handed out, and counted.
func TestTakeWaitsForReplicas(t *testing.T) {
	ctx := context.Background()
	sen := redistest.StartSentinel(t) // a primary with one replica
	for _, tc := range []struct {
		name         string
		replicas     int
		unreplicated int64
	}{
		{"one replica acknowledges", 1, 0},
		{"a second replica that doesn't exist times out", 2, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := NewStore(sen.Primary.Client(), StoreConfig{KeyPrefix: sen.Primary.Prefix + tc.name[:3], WaitReplicas: tc.replicas, WaitTimeout: 30 * time.Millisecond})
			putOne(t, st, "p", "a", time.Now().Add(time.Hour))
			if _, err := st.Take(ctx, "p", "req-1", 0); err != nil {
				t.Fatal(err)
			}
			if s := mustStats(t, st, "p"); s.HandedOut != 1 || s.Unreplicated != tc.unreplicated {
				t.Fatalf("stats %+v; want 1 handed out, %d unreplicated", s, tc.unreplicated)
			}
			// The replica has the take's writes: the entry is gone there too.
			if tc.replicas == 1 {
				replica := sen.Replica.Client()
				if n := replica.ZCard(ctx, st.keys("p").ready()).Val(); n != 0 {
					t.Fatalf("the replica still holds %d entries after an acknowledged take", n)
				}
			}
		})
	}
}

// TestWaitWithNoReplicaDoesNotMakeEveryTakeWait: with WaitReplicas 1, a
// primary whose only replica is gone must not make each take pay the WAIT
// timeout. Takes keep their latency (far under the timeout), each counts
// as unreplicated, the state is logged once, and takes wait for the
// replica again once it is back.
func TestWaitWithNoReplicaDoesNotMakeEveryTakeWait(t *testing.T) {
	ctx := context.Background()
	primary := redistest.StartProcess(t)
	_, port, _ := strings.Cut(primary.Addr, ":")
	replica := redistest.StartProcess(t, "--replicaof", "127.0.0.1", port)
	// A long timeout, so a take that waits it cannot pass for one that didn't.
	const timeout = 2 * time.Second
	var logs syncBuffer
	st := NewStore(primary.Client(), StoreConfig{KeyPrefix: primary.Prefix, WaitReplicas: 1, WaitTimeout: timeout})
	st.log = slog.New(slog.NewJSONHandler(&logs, nil))
	for i := range 200 {
		putOne(t, st, "p", fmt.Sprintf("e%03d", i), time.Now().Add(time.Hour))
	}
	n := 0
	take := func() time.Duration {
		t.Helper()
		n++
		start := time.Now()
		if _, err := st.Take(ctx, "p", fmt.Sprintf("req-%d", n), 0); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	unreplicated := func() int64 { return mustStats(t, st, "p").Unreplicated }
	poll.Until(t, "the replica to be online", 10*time.Second, func() bool {
		k, err := onlineReplicas(ctx, primary.Client())
		return err == nil && k == 1
	})
	for range 10 {
		take()
	}
	if u := unreplicated(); u != 0 {
		t.Fatalf("%d unreplicated takes with the replica online", u)
	}

	replica.Stop()
	poll.Until(t, "the primary to see its replica gone", 10*time.Second, func() bool {
		k, err := onlineReplicas(ctx, primary.Client())
		return err == nil && k == 0
	})
	// The first take pays the timeout and shows the replica is missing;
	// the watch looks, and then no take waits.
	var slow int
	var took []time.Duration
	for range 40 {
		d := take()
		took = append(took, d)
		if d >= timeout/2 {
			slow++
		}
	}
	slices.Sort(took)
	t.Logf("40 takes with no replica: %d waited the timeout; p50 %v, max %v", slow, took[20], took[39])
	if slow > 2 {
		t.Fatalf("%d of 40 takes waited WAIT's %v timeout with no replica to wait for", slow, timeout)
	}
	if u := unreplicated(); u != 40 {
		t.Fatalf("%d takes counted as unreplicated, want all 40", u)
	}
	if c := strings.Count(logs.String(), "fewer replicas online"); c != 1 {
		t.Fatalf("the missing replica was logged %d times, want once:\n%s", c, logs.String())
	}

	replica.Start()
	poll.Until(t, "takes to wait for the replica again", 20*time.Second, func() bool {
		before := unreplicated()
		take()
		return unreplicated() == before
	})
	before := unreplicated()
	for range 10 {
		take()
	}
	if u := unreplicated(); u != before {
		t.Fatalf("%d more unreplicated takes with the replica back", u-before)
	}
	// Those takes waited for the replica: it has their writes.
	if got, want := replica.Client().ZCard(ctx, st.keys("p").ready()).Val(), primary.Client().ZCard(ctx, st.keys("p").ready()).Val(); got != want {
		t.Fatalf("the replica holds %d entries, the primary %d", got, want)
	}
	if c := strings.Count(logs.String(), "replicas back"); c != 1 {
		t.Fatalf("the replica's return was logged %d times, want once:\n%s", c, logs.String())
	}
}
