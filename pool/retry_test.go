package pool

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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
