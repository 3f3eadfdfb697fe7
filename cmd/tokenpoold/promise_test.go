package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/pool"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// The daemon-level replays of the pool review's findings (issue "Nothing
// lost, nothing doubled"); pool/promise_test.go has the rest.

// statsOf reads a profile's raw counters.
func statsOf(tb testing.TB, rs *redistest.Server, profile string) map[string]int64 {
	tb.Helper()
	m := rs.Client().HGetAll(context.Background(), pool.Keys("", profile).Stats()).Val()
	out := map[string]int64{}
	for k, v := range m {
		out[k], _ = strconv.ParseInt(v, 10, 64)
	}
	return out
}

// Finding 1: a caller that gives up while its take is on the way back from
// a slow Redis does not cost a credential: the entry is pooled again.
func TestPromiseACallerWhoLeavesCostsNoCredential(t *testing.T) {
	rs := redistest.New(t)
	proxy := redistest.NewProxy(t, rs.Addr)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, map[string]string{"REDIS_URL": "redis://" + proxy.Addr, "TOKENPOOL_POOL_TARGET": "3"})
	rdb := rs.Client()
	poll.Until(t, "the pool to fill", 10*time.Second, func() bool {
		return rdb.ZCard(context.Background(), pool.Keys("", "default").Ready()).Val() == 3 &&
			rdb.ZCard(context.Background(), pool.Keys("", "default").Minting()).Val() == 0
	})

	// Only replies that hand out an entry are slow ({1|2, id, body, …}: a
	// take, with the caller's limits in it, and go-redis's retry of it).
	// The caller gives up first, before go-redis's 500 ms read timeout.
	proxy.DelayRepliesMatching(time.Second, func(b []byte) bool {
		return bytes.HasPrefix(b, []byte("*7\r\n:1\r\n$")) || bytes.HasPrefix(b, []byte("*7\r\n:2\r\n$"))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, d.url+"/v1/session-config", nil)
	req.Header.Set("Authorization", "Bearer "+callerJWT(t, "leaver"))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("the request should have timed out on the client, got %d", resp.StatusCode)
	}
	cancel()
	poll.Until(t, "the take to be undone", 10*time.Second, func() bool { return statsOf(t, rs, "default")["returned"] == 1 })
	proxy.DelayReplies(0)
	st := statsOf(t, rs, "default")
	if st["handed_out"] != 0 || st["lost"] != 0 {
		t.Fatalf("after a caller left mid-take: %v; want nothing handed out, nothing lost", st)
	}
	if n := rdb.ZCard(context.Background(), pool.Keys("", "default").Ready()).Val(); n < 3 {
		t.Fatalf("%d pooled after the take was undone, want 3", n)
	}
}

// Finding 5: two replicas with the same host name and pid (pid 1 in every
// container) still get different replica ids.
func TestPromiseReplicaIDsDifferOnOneHostAndPid(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	var ids []string
	for range 2 { // two daemons in this one process: same host, same pid
		d := startDaemon(t, rs, sim, nil)
		lines := logLines(d.logsNow(), "listening")
		if len(lines) != 1 {
			t.Fatalf("want one listening line, got %v", lines)
		}
		ids = append(ids, lines[0]["replica"].(string))
	}
	if ids[0] == ids[1] {
		t.Fatalf("both replicas are %q: they end each other's leases", ids[0])
	}
}

// Finding 7: a request that holds the HTTP drain for the whole shutdown
// budget does not cancel the refiller's mints: they drain meanwhile and are
// pooled, and no new mint starts.
func TestPromiseShutdownDrainsMintsWhileRequestsDrain(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{Latency: 300 * time.Millisecond}) // a mint: 0.6 s
	d := startDaemon(t, rs, sim, map[string]string{"TOKENPOOL_POOL_TARGET": "2000"})
	// In flight: leased in Redis. (The simulator counts a call only once
	// it answers, so its counts can't tell.)
	poll.Until(t, "refill mints in flight after the probe", 10*time.Second, func() bool {
		return sim.Counts().Minted >= 1 && rs.Client().ZCard(context.Background(), pool.Keys("", "default").Minting()).Val() > 0
	})
	// A client that sent half a request: the drain waits for it (a
	// connection is waited for once it has sent a byte, or for its first
	// 5 s when it has sent none).
	conn, err := net.Dial("tcp", d.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("POST /v1/session-config HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = d.Close(ctx) // the drain runs out of time: an error, expected
	st := statsOf(t, rs, "default")
	if st["released"] != 0 {
		t.Fatalf("%d mints were cancelled at shutdown: %v", st["released"], st)
	}
	rdb := rs.Client()
	if n := rdb.ZCard(context.Background(), pool.Keys("", "default").Minting()).Val(); n != 0 {
		t.Fatalf("%d reservations left after shutdown", n)
	}
	if pooled, minted := rdb.ZCard(context.Background(), pool.Keys("", "default").Ready()).Val(), sim.Counts().Minted; pooled != int64(minted) {
		t.Fatalf("%d pooled of %d minted", pooled, minted)
	}
}

// Finding 8: a Redis that may evict keys gets a warning at start.
func TestPromiseWarnsWhenRedisCanEvict(t *testing.T) {
	const warning = "Redis may evict the pool's keys: set maxmemory-policy noeviction, or credentials can be lost or handed out twice"
	sim := startSim(t, upstreamtest.Config{})
	for _, tc := range []struct {
		policy string
		warns  bool
	}{{"allkeys-lru", true}, {"volatile-ttl", true}, {"noeviction", false}} {
		t.Run(tc.policy, func(t *testing.T) {
			rs := redistest.StartProcess(t, "--maxmemory-policy", tc.policy)
			d := startDaemon(t, rs, sim, nil)
			lines := logLines(d.logsNow(), warning)
			if got := len(lines) == 1; got != tc.warns {
				t.Fatalf("maxmemory-policy %s: warned %v, want %v", tc.policy, got, tc.warns)
			}
			if tc.warns && lines[0]["maxmemory_policy"] != tc.policy {
				t.Fatalf("the warning names %v, want %s", lines[0]["maxmemory_policy"], tc.policy)
			}
		})
	}
}

// Finding 9: the README's advice for split brain holds as it says: with
// min-replicas-to-write, a primary cut off from its replicas refuses the
// take, and the caller gets a 503 with Retry-After instead of a
// credential its replicas never see; nothing is taken or counted lost, and
// service resumes when the replica is back.
func TestPromiseAnIsolatedPrimaryRefusesTakes(t *testing.T) {
	ctx := context.Background()
	rs := redistest.StartProcess(t)
	// The refiller runs (fullPool would stop it): it is what would count
	// a take queued for recovery as lost.
	d := startDaemon(t, rs, startSim(t, upstreamtest.Config{}), map[string]string{"TOKENPOOL_POOL_TARGET": "2", "TOKENPOOL_POOL_MAX": "2"})
	poll.Until(t, "the pool to fill", 20*time.Second, func() bool {
		st, err := d.pool.Stats(ctx, "default")
		return err == nil && st.Usable == 2 && st.InFlight == 0
	})
	c := rs.Client()
	if err := c.ConfigSet(ctx, "min-replicas-to-write", "1").Err(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		r := fetch(t, d.url, callerJWT(t, fmt.Sprint("isolated-", i)))
		if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
			t.Fatalf("take on an isolated primary: %d (Retry-After %q) %s; want 503 with Retry-After", r.status, r.header.Get("Retry-After"), r.body)
		}
	}
	stats := pool.Keys("", "default").Stats()
	if n, _ := c.ZCard(ctx, pool.Keys("", "default").Ready()).Result(); n != 2 {
		t.Fatalf("pooled %d after the refused takes; want the 2 untouched", n)
	}
	// Isolated past the refused takes' claim TTL (10 s): a recovery queued
	// for them could run only after their claims may have expired, find
	// nothing, and count them lost.
	time.Sleep(11 * time.Second)
	if err := c.ConfigSet(ctx, "min-replicas-to-write", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if r := fetch(t, d.url, callerJWT(t, "back")); r.status != http.StatusOK {
		t.Fatalf("after the replica is back: %d %s", r.status, r.body)
	}
	// Draining runs every recovery still queued, and counts as lost what
	// it finds too late.
	if err := d.pool.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if lost, _ := c.HGet(ctx, stats, "lost").Int64(); lost != 0 {
		t.Fatalf("lost %d: takes refused before they ran hold nothing", lost)
	}
}

// A take that ran in Redis, whose reply never came and whose recovery
// could reach Redis only after the take's claim expired, is lost: nobody
// has its credential and nobody can tell it from a take that never ran.
// The admin report and /metrics count it, once.
func TestPromiseLostIsReported(t *testing.T) {
	ctx := context.Background()
	srv := redistest.StartProcess(t)
	proxy := redistest.NewProxy(t, srv.Addr)
	d := startDaemon(t, srv, startSim(t, upstreamtest.Config{}), map[string]string{
		"REDIS_URL":            "redis://" + proxy.Addr,
		"TOKENPOOL_ADMIN_KEYS": "ops:" + sha256hex("admin-key"), "TOKENPOOL_POOL_TARGET": "2",
	})
	rs := srv.Client()
	stats := pool.Keys("", "default").Stats()
	poll.Until(t, "the pool to fill", 10*time.Second, func() bool {
		n, _ := rs.ZCard(ctx, pool.Keys("", "default").Ready()).Result()
		return n == 2
	})
	// The take runs; its reply is held past the request's deadline.
	proxy.DelayRepliesMatching(15*time.Second, func(b []byte) bool { return bytes.HasPrefix(b, []byte("*7\r\n:1\r\n")) })
	done := make(chan reply, 1)
	alice := callerJWT(t, "alice")
	go func() { done <- fetch(t, d.url, alice) }()
	poll.Until(t, "the take to run", 5*time.Second, func() bool {
		n, _ := rs.HGet(ctx, stats, "handed_out").Int64()
		return n == 1
	})
	// Redis refuses writes until the take's claim (10 s) has expired: its
	// recovery runs only then, and finds nothing.
	if err := rs.Do(ctx, "CLIENT", "PAUSE", "11000", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	proxy.DelayReplies(0)
	<-done
	poll.Until(t, "the take to be counted lost", 20*time.Second, func() bool {
		n, _ := rs.HGet(ctx, stats, "lost").Int64()
		return n > 0
	})
	time.Sleep(time.Second) // nothing more is counted
	req, _ := http.NewRequest(http.MethodGet, d.url+"/v1/admin/profiles", nil)
	req.Header.Set("X-API-Key", "admin-key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var report struct {
		Profiles []map[string]any `json:"profiles"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&report); err != nil || len(report.Profiles) != 1 {
		t.Fatalf("admin report: %v %+v", err, report)
	}
	if got := report.Profiles[0]["lost"]; got != float64(1) {
		t.Fatalf("admin report lost = %v, want 1", got)
	}
	if got := scrape(t, d.metricsURL)[`tokenpool_pool_lost_total{profile=default}`]; got != 1 {
		t.Fatalf("tokenpool_pool_lost_total = %v, want 1", got)
	}
}
