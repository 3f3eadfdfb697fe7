package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/api"
	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/pool"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// A pooled handout is one Redis round trip after auth: both limits and the
// take in one script (DESIGN.md, invariant 5).

// monitor records the top-level commands a Redis runs (MONITOR), until
// stop, which returns them: one line per command, lowercased name first.
type monitor struct {
	conn  net.Conn
	lines chan string
}

func startMonitor(tb testing.TB, addr string) *monitor {
	tb.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		tb.Fatal(err)
	}
	rd := bufio.NewReader(conn)
	if line, err := rd.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
		tb.Fatalf("MONITOR: %q, %v", line, err)
	}
	m := &monitor{conn: conn, lines: make(chan string, 1<<16)}
	go func() {
		defer close(m.lines)
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				return
			}
			m.lines <- line
		}
	}()
	return m
}

// stop sends a marker through rdb and returns every top-level command seen
// before it: commands a script runs ("[0 lua]") are not top-level.
func (m *monitor) stop(tb testing.TB, rdb *redis.Client) []string {
	tb.Helper()
	marker := "end-of-measure-" + strconv.Itoa(rand.IntN(1e9))
	if err := rdb.Echo(context.Background(), marker).Err(); err != nil {
		tb.Fatal(err)
	}
	var cmds []string
	timeout := time.After(10 * time.Second)
	for {
		select {
		case line, ok := <-m.lines:
			if !ok {
				tb.Fatal("MONITOR ended before the marker")
			}
			if strings.Contains(line, marker) {
				m.conn.Close()
				return cmds
			}
			if strings.Contains(line, " lua] ") {
				continue
			}
			// +1733333333.123456 [0 127.0.0.1:40000] "evalsha" "…" …
			_, rest, _ := strings.Cut(line, "] \"")
			name, _, _ := strings.Cut(rest, "\"")
			cmds = append(cmds, strings.ToLower(name))
		case <-timeout:
			tb.Fatal("MONITOR never saw the marker")
		}
	}
}

// fullPool starts a daemon on rs whose pool holds target entries, and
// stops its refiller (the pool keeps handing out), so that only requests
// talk to Redis from then on.
func fullPool(tb testing.TB, rs *redistest.Server, sim *upstreamtest.Server, target int, env map[string]string) *daemon {
	tb.Helper()
	full := map[string]string{"TOKENPOOL_POOL_TARGET": strconv.Itoa(target), "TOKENPOOL_POOL_MAX": strconv.Itoa(target)}
	for k, v := range env {
		full[k] = v
	}
	d := startDaemon(tb, rs, sim, full)
	ctx := context.Background()
	err := poll.Wait(ctx, 20*time.Second, func() bool {
		st, err := d.pool.Stats(ctx, "default")
		return err == nil && st.Usable == target && st.InFlight == 0
	})
	if err != nil {
		tb.Fatalf("the pool did not fill to %d: %v", target, err)
	}
	if err := d.pool.Drain(ctx); err != nil {
		tb.Fatal(err)
	}
	return d
}

func TestAPooledHandoutIsOneRedisCommand(t *testing.T) {
	rs := redistest.StartProcess(t)
	sim := startSim(t, upstreamtest.Config{})
	// Under a caller's quota and its tenant's, both spent in the take, and
	// with the issuance ledger on: its record is written by the take too.
	d := fullPool(t, rs, sim, 30, map[string]string{"TOKENPOOL_LEDGER_KEY": testLedgerKey, "TOKENPOOL_CONFIG": writeConfig(t, `
quotas:
  - sessions: 1000
    per: 24h
  - sessions: 1000
    per: 24h
    by: claim:org_id
profiles:
  default:
    provider: orga
`)})
	bearer := claimsJWT(t, map[string]any{"sub": "alice", "org_id": "acme"})
	fetch(t, d.url, bearer) // loads the script (EVALSHA, NOSCRIPT, EVAL once)
	rdb := rs.Client()
	if err := rdb.Ping(context.Background()).Err(); err != nil { // connected before MONITOR
		t.Fatal(err)
	}

	mon := startMonitor(t, rs.Addr)
	const handouts = 20 // half on /v1/session-config, half on /v1/credentials
	for i := range handouts {
		r := reply{}
		if i%2 == 0 {
			r = fetch(t, d.url, bearer)
		} else {
			r.status, r.header, r.body = post(t, d.url+"/v1/credentials", `{"profile":"default"}`, bearer)
		}
		if r.status != http.StatusOK || r.header.Get("X-Credential-Source") != "pool" {
			t.Fatalf("handout %d: %d %s %s", i+1, r.status, r.header.Get("X-Credential-Source"), r.body)
		}
		if want := fmt.Sprintf(`"org_id-sessions-24h";r=%d;`, 1000-2-i); !strings.Contains(strings.Join(r.header.Values("RateLimit"), ","), want) {
			t.Fatalf("handout %d: RateLimit %q, want the tenant's quota %s", i+1, r.header.Values("RateLimit"), want)
		}
	}
	cmds := mon.stop(t, rdb)
	t.Logf("%d handouts: %d top-level Redis commands (%.2f per handout): %v", handouts, len(cmds), float64(len(cmds))/handouts, cmds)
	if len(cmds) != handouts {
		t.Fatalf("%d commands for %d pooled handouts, want exactly one each: %v", len(cmds), handouts, cmds)
	}
	for _, c := range cmds {
		if c != "evalsha" {
			t.Fatalf("a handout ran %q, want only the take script: %v", c, cmds)
		}
	}
	recs, err := rdb.XRange(context.Background(), pool.Keys("", "default").Issued(), "-", "+").Result()
	if err != nil || len(recs) != handouts+1 {
		t.Fatalf("%d records (%v) of %d handouts", len(recs), err, handouts+1)
	}
}

// snapshot is every pool key of profile but the per-request claims: what
// a denied request must leave as it was.
func snapshot(tb testing.TB, rdb redis.UniversalClient, profile string) map[string]string {
	tb.Helper()
	ctx := context.Background()
	out := map[string]string{}
	k := pool.Keys("", profile)
	for name, key := range map[string]string{"ready": k.Ready(), "handed": k.Handed(), "minting": k.Minting()} {
		v, err := rdb.ZRangeWithScores(ctx, key, 0, -1).Result()
		if err != nil {
			tb.Fatal(err)
		}
		out[name] = fmt.Sprint(v)
	}
	for name, key := range map[string]string{"e": k.Entries(), "stats": k.Stats(), "prewarm": k.Prewarm()} {
		v, err := rdb.HGetAll(ctx, key).Result()
		if err != nil {
			tb.Fatal(err)
		}
		out[name] = fmt.Sprint(v)
	}
	return out
}

func TestADeniedRequestChangesNothing(t *testing.T) {
	rs := redistest.StartProcess(t)
	sim := startSim(t, upstreamtest.Config{})
	d := fullPool(t, rs, sim, 10, map[string]string{"TOKENPOOL_RATE_PER_USER": "2/m", "TOKENPOOL_RATE_PER_IP": "4/m"})
	rdb := rs.Client()
	ctx := context.Background()
	alice, bob := callerJWT(t, "alice"), callerJWT(t, "bob")
	for range 2 {
		if r := fetch(t, d.url, alice); r.status != http.StatusOK {
			t.Fatalf("within the limit: %d %s", r.status, r.body)
		}
	}
	before := snapshot(t, rdb, "default")
	minted := len(sim.Minted())
	// One refused by Redis (the per-user limit), then one by this
	// replica's memory of it.
	for i := range 2 {
		r := fetch(t, d.url, alice)
		if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") == "" {
			t.Fatalf("denied request %d: %d %s", i+1, r.status, r.body)
		}
	}
	if after := snapshot(t, rdb, "default"); !maps(before, after) {
		t.Fatalf("a denied request changed the pool:\nbefore %v\nafter  %v", before, after)
	}
	// The per-IP limit (4/m): 3 counted so far (the refusal from memory
	// asked nobody), so bob gets one and is then refused by it.
	if r := fetch(t, d.url, bob); r.status != http.StatusOK {
		t.Fatalf("bob: %d %s", r.status, r.body)
	}
	before = snapshot(t, rdb, "default")
	if r := fetch(t, d.url, bob); r.status != http.StatusTooManyRequests || !strings.Contains(strings.Join(r.header.Values("RateLimit-Policy"), ","), `"ip"`) {
		t.Fatalf("bob past the per-IP limit: %d %v %s", r.status, r.header, r.body)
	}
	if after := snapshot(t, rdb, "default"); !maps(before, after) {
		t.Fatalf("a request denied by the per-IP limit changed the pool:\nbefore %v\nafter  %v", before, after)
	}
	if n := len(sim.Minted()); n != minted {
		t.Fatalf("denied requests minted %d credentials", n-minted)
	}
	if n, _ := rdb.Exists(ctx, "rate:tp:rl:user:bob").Result(); n != 1 {
		t.Fatal("bob's per-user limit was not counted by his allowed request")
	}
}

func maps(a, b map[string]string) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return len(a) == len(b)
}

const twoOrgaProfiles = `
profiles:
  default:
    provider: orga
    target: 6
  other:
    provider: orga
    target: 6
`

// beforeFusion answers a request as the daemon did when each limit was a
// redis_rate call of its own, in this order: per-IP, auth, per-user, then
// the handler (here: a known profile or not).
type beforeFusion struct {
	lim           *limiter.Limiter
	perIP, perUse limiter.Limit
}

func (b beforeFusion) answer(tb testing.TB, ip, subject, profile string) (int, http.Header) {
	tb.Helper()
	ctx := context.Background()
	h := http.Header{}
	d, err := b.lim.Allow(ctx, "ip:"+ip, b.perIP)
	if err != nil {
		tb.Fatal(err)
	}
	d.SetHeaders(h, "ip")
	switch {
	case !d.Allowed:
		return http.StatusTooManyRequests, h
	case subject == "":
		return http.StatusUnauthorized, h
	}
	if d, err = b.lim.Allow(ctx, "user:"+subject, b.perUse); err != nil {
		tb.Fatal(err)
	}
	d.SetHeaders(h, "user")
	switch {
	case !d.Allowed:
		return http.StatusTooManyRequests, h
	case profile != "" && profile != "default" && profile != "other":
		return http.StatusBadRequest, h
	}
	return http.StatusOK, h
}

// sameHeader compares RateLimit-style values: equal but for the whole
// seconds of t= or Retry-After, which may differ by one (the two are asked
// a few microseconds apart).
func sameHeader(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		g, w := strings.Split(got[i], "="), strings.Split(want[i], "=")
		if len(g) != len(w) {
			return false
		}
		for j := range g {
			if g[j] == w[j] {
				continue
			}
			gn, err1 := strconv.Atoi(g[j])
			wn, err2 := strconv.Atoi(w[j])
			if err1 != nil || err2 != nil || j != len(g)-1 || gn-wn > 1 || wn-gn > 1 {
				return false
			}
		}
	}
	return true
}

func TestLimitsAndHeadersAnswerAsBeforeFusion(t *testing.T) {
	rs := redistest.StartProcess(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, map[string]string{"TOKENPOOL_CONFIG": writeConfig(t, twoOrgaProfiles)})
	perIP, _ := limiter.Parse("25/m")
	perUser, _ := limiter.Parse("8/m")
	// The daemon's pool behind an API without the deny cache, which
	// answers later refusals from memory (tested on its own below).
	srv, err := api.New(api.Config{
		Pool: d.pool, Limiter: limiter.New(d.rdb, ""), JWTSecret: []byte(testJWTSecret),
		Profiles: map[string]api.ProfileInfo{"default": {Provider: "orga", ICE: true}, "other": {Provider: "orga", ICE: true}},
		PerIP:    perIP, PerUser: perUser, TrustedProxies: []string{"127.0.0.1"}, DenyCache: -1,
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	ref := beforeFusion{lim: limiter.New(rs.Client(), "before"), perIP: perIP, perUse: perUser}

	rng := rand.New(rand.NewPCG(10, 20))
	ips := []string{"192.0.2.1", "192.0.2.2"}
	subjects := []string{"alice", "bob", "carol", ""}
	profiles := []string{"", "other", "nope"}
	seen := map[int]int{}
	for i := range 80 {
		ip, sub, prof := ips[rng.IntN(2)], subjects[rng.IntN(4)], profiles[rng.IntN(3)]
		wantStatus, want := ref.answer(t, ip, sub, prof)
		req, _ := http.NewRequest(http.MethodPost, hs.URL+"/v1/session-config", strings.NewReader(`{"profile":"`+prof+`"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Forwarded-For", ip)
		if sub != "" {
			req.Header.Set("Authorization", "Bearer "+callerJWT(t, sub))
		} else {
			req.Header.Set("Authorization", "Bearer not-a-valid-token")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		what := fmt.Sprintf("request %d (ip %s, caller %q, profile %q)", i+1, ip, sub, prof)
		if resp.StatusCode != wantStatus {
			t.Fatalf("%s: status %d, before fusion %d", what, resp.StatusCode, wantStatus)
		}
		for _, name := range []string{"RateLimit-Policy", "RateLimit", "Retry-After"} {
			if !sameHeader(resp.Header.Values(name), want.Values(name)) {
				t.Fatalf("%s: %s %q, before fusion %q", what, name, resp.Header.Values(name), want.Values(name))
			}
		}
		seen[resp.StatusCode]++
	}
	t.Logf("statuses: %v", seen)
	for _, s := range []int{200, 400, 401, 429} {
		if seen[s] == 0 {
			t.Fatalf("the sequence never produced a %d: %v", s, seen)
		}
	}
}

func TestThePerUserLimitHoldsAcrossProfilesAndReplicas(t *testing.T) {
	rs := redistest.StartProcess(t)
	sim := startSim(t, upstreamtest.Config{})
	env := map[string]string{"TOKENPOOL_CONFIG": writeConfig(t, twoOrgaProfiles), "TOKENPOOL_RATE_PER_USER": "9/m"}
	var urls []string
	for range 3 {
		urls = append(urls, startDaemon(t, rs, sim, env).url)
	}
	bearer := callerJWT(t, "alice")
	var ok, denied int
	for i := range 15 {
		code, _ := call(t, http.MethodPost, urls[i%3]+"/v1/session-config", `{"profile":"`+[]string{"default", "other"}[i/3%2]+`"}`,
			"Authorization", "Bearer "+bearer)
		switch code {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			denied++
		default:
			t.Fatalf("request %d: %d", i+1, code)
		}
	}
	if ok != 9 || denied != 6 {
		t.Fatalf("%d handed out, %d refused; want 9 and 6: one allowance of 9/m over 3 replicas and 2 profiles", ok, denied)
	}
	if code, _ := call(t, http.MethodPost, urls[0]+"/v1/session-config", "", "Authorization", "Bearer "+callerJWT(t, "bob")); code != http.StatusOK {
		t.Fatalf("another user: %d", code)
	}
}

// behindProxy starts a daemon with env whose Redis is reached through a
// proxy the test can close.
func behindProxy(tb testing.TB, env map[string]string) (*daemon, *redistest.Proxy) {
	tb.Helper()
	rs := redistest.StartProcess(tb)
	sim := startSim(tb, upstreamtest.Config{})
	proxy := redistest.NewProxy(tb, rs.Addr)
	env["REDIS_URL"] = "redis://" + proxy.Addr
	return startDaemon(tb, rs, sim, env), proxy
}

func TestARefusedCallerIsRefusedWithoutRedisUntilItsRetryTime(t *testing.T) {
	d, proxy := behindProxy(t, map[string]string{"TOKENPOOL_RATE_PER_USER": "1/2s", "TOKENPOOL_RATE_PER_IP": "1000/m"})
	alice := callerJWT(t, "alice")
	if r := fetch(t, d.url, alice); r.status != http.StatusOK {
		t.Fatalf("first: %d %s", r.status, r.body)
	}
	refused := fetch(t, d.url, alice)
	if refused.status != http.StatusTooManyRequests || refused.header.Get("Retry-After") != "2" {
		t.Fatalf("second: %d Retry-After %q, want 429 and 2", refused.status, refused.header.Get("Retry-After"))
	}
	proxy.Close() // Redis is gone: only this replica's memory can refuse now
	var last reply
	for {
		last = fetch(t, d.url, alice)
		if last.status != http.StatusTooManyRequests {
			break
		}
		if last.received.Sub(refused.received) > 5*time.Second {
			t.Fatal("still refused 5 s after a 2 s retry time")
		}
		if ra := last.header.Get("Retry-After"); ra != "1" && ra != "2" {
			t.Fatalf("a refusal from memory says Retry-After %q, want the time left (1 or 2)", ra)
		}
		if p := last.header.Values("RateLimit-Policy"); len(p) != 1 || !strings.HasPrefix(p[0], `"user"`) {
			t.Fatalf("a refusal from memory has RateLimit-Policy %q, want the user's", p)
		}
	}
	// Past the retry time the daemon asks Redis again, which is gone.
	if last.status != http.StatusServiceUnavailable {
		t.Fatalf("after the retry time: %d %s, want 503 (Redis asked, and down)", last.status, last.body)
	}
	if held := last.sent.Sub(refused.received); held < 1500*time.Millisecond {
		t.Fatalf("the refusal ended %v after Redis gave 2 s (less 1 request)", held)
	}
}

func TestAnUnauthenticatedFloodCostsNoRedisCallAfterItsRefusal(t *testing.T) {
	d, proxy := behindProxy(t, map[string]string{"TOKENPOOL_RATE_PER_IP": "3/m"})
	for i := range 3 {
		if r := fetch(t, d.url, "not-a-token"); r.status != http.StatusUnauthorized {
			t.Fatalf("bad token %d: %d", i+1, r.status)
		}
	}
	if r := fetch(t, d.url, "not-a-token"); r.status != http.StatusTooManyRequests {
		t.Fatalf("past the per-IP limit: %d", r.status)
	}
	proxy.Close()
	for i := range 200 {
		// Valid or not, a credential from a refused address is not
		// looked at, and Redis is not asked.
		bearer := "not-a-token"
		if i%2 == 1 {
			bearer = callerJWT(t, "alice")
		}
		if r := fetch(t, d.url, bearer); r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") == "" {
			t.Fatalf("flood request %d: %d %s, want 429 from memory", i+1, r.status, r.body)
		}
	}
}

func TestAShardedProfileServesThroughTheDaemon(t *testing.T) {
	rs := redistest.StartProcess(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, map[string]string{"TOKENPOOL_CONFIG": writeConfig(t, "profiles:\n  default:\n    provider: orga\n    target: 9\n    shards: 3\n")})
	ctx := context.Background()
	poll.Until(t, "every shard to fill", 20*time.Second, func() bool {
		st, err := d.pool.Stats(ctx, "default")
		return err == nil && st.Usable == 9
	})
	rdb := rs.Client()
	shards := 0
	keys, _ := rdb.Keys(ctx, pool.Keys("", "default#*").Ready()).Result()
	for _, k := range keys {
		if n, _ := rdb.ZCard(ctx, k).Result(); n == 3 {
			shards++
		}
	}
	if shards != 3 {
		t.Fatalf("%d shards hold their share of 3 (keys %v)", shards, keys)
	}
	for i := range 9 {
		if r := fetch(t, d.url, callerJWT(t, "alice")); r.status != http.StatusOK || r.header.Get("X-Credential-Source") != "pool" {
			t.Fatalf("handout %d: %d %s", i+1, r.status, r.header.Get("X-Credential-Source"))
		}
	}
}
