package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/pool"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

func TestConfigErrorsExit2NamingTheVariable(t *testing.T) {
	base := map[string]string{"ORGA_API_KEY": "k", "TOKENPOOL_JWT_SECRET": testJWTSecret}
	tests := []struct {
		name, key, value, want string
	}{
		{"no provider key", "ORGA_API_KEY", "", "ORGA_API_KEY"},
		{"no caller auth", "TOKENPOOL_JWT_SECRET", "", "TOKENPOOL_JWT_SECRET"},
		{"a short JWT secret", "TOKENPOOL_JWT_SECRET", "short", "TOKENPOOL_JWT_SECRET"},
		{"a zero per-user limit", "TOKENPOOL_RATE_PER_USER", "0/m", "TOKENPOOL_RATE_PER_USER"},
		{"a malformed per-IP limit", "TOKENPOOL_RATE_PER_IP", "lots", "TOKENPOOL_RATE_PER_IP"},
		{"a negative pool target", "TOKENPOOL_POOL_TARGET", "-1", "TOKENPOOL_POOL_TARGET"},
		{"a bad minimum remaining", "TOKENPOOL_MIN_REMAINING", "soon", "TOKENPOOL_MIN_REMAINING"},
		{"a bad Redis URL", "REDIS_URL", "http://x", "REDIS_URL"},
		{"a bad API key list", "TOKENPOOL_API_KEYS", "a:b", "TOKENPOOL_API_KEYS"},
		{"a bad proxy", "TOKENPOOL_TRUSTED_PROXIES", "10.0.0.0/99", "TOKENPOOL_TRUSTED_PROXIES"},
		{"a wildcard origin", "TOKENPOOL_CORS_ORIGINS", "*", "TOKENPOOL_CORS_ORIGINS"},
		{"a bad provider URL", "ORGA_BASE_URL", "ftp://x", "ORGA_BASE_URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			env[tt.key] = tt.value
			var stderr bytes.Buffer
			if code := run(context.Background(), nil, envOf(env), io.Discard, &stderr); code != 2 {
				t.Fatalf("exit %d, want 2; stderr: %s", code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("stderr does not name %s: %s", tt.want, stderr.String())
			}
			if tt.value != "" && len(tt.value) > 3 && strings.Contains(tt.key, "SECRET") && strings.Contains(stderr.String(), tt.value) {
				t.Fatal("stderr echoes the secret")
			}
		})
	}
}

// TestDemo runs `tokenpoold -demo` as a user would and then the curl line
// it prints.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	outR, outW := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-demo", "-addr", "127.0.0.1:0"}, envOf(nil), outW, io.Discard)
		outW.Close()
	}()
	lines := make(chan string, 2)
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "curl ") {
				lines <- sc.Text()
			}
		}
	}()
	var line, credentialsLine string
	for _, l := range []*string{&line, &credentialsLine} {
		select {
		case *l = <-lines:
		case <-time.After(15 * time.Second):
			t.Fatal("no curl line within 15s")
		}
	}

	headerFile := filepath.Join(t.TempDir(), "headers")
	runLine := func(line string) reply {
		if _, err := exec.LookPath("curl"); err == nil {
			out, err := exec.Command("sh", "-c", line+` -D '`+headerFile+`' -w '\n%{http_code}'`).Output()
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			out = bytes.TrimSpace(out)
			body, code := "", string(out)
			if i := bytes.LastIndexByte(out, '\n'); i >= 0 {
				body, code = strings.TrimSpace(string(out[:i])), string(out[i+1:])
			}
			var status int
			fmt.Sscan(code, &status)
			raw, err := os.ReadFile(headerFile)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), nil)
			if err != nil {
				t.Fatalf("curl's headers: %v\n%s", err, raw)
			}
			return reply{status: status, header: resp.Header, body: []byte(body), received: time.Now()}
		}
		// No curl here: do what the line says.
		m := regexp.MustCompile(`-H 'Authorization: Bearer ([^']+)' (\S+)$`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("unexpected curl line %q", line)
		}
		return fetch(t, strings.TrimSuffix(m[2], "/v1/session-config"), m[1])
	}

	// The line is printed once the pool holds its floor: a new user's
	// first credential comes from it.
	answer := runLine(line)
	if src := answer.header.Get("X-Credential-Source"); src != "pool" {
		t.Fatalf("the first answer's X-Credential-Source is %q, want pool", src)
	}
	first := answer.credential(t)
	if first.EphemeralToken == "" || len(first.ICEServers) == 0 {
		t.Fatalf("empty token or ICE servers: %+v", first)
	}
	if left := time.Until(first.ExpiresAt); left < 30*time.Second {
		t.Fatalf("expiresAt %v is only %v ahead, want at least TOKENPOOL_MIN_REMAINING (30s)", first.ExpiresAt, left)
	}
	second := runLine(line).credential(t)
	if second.EphemeralToken == first.EphemeralToken {
		t.Fatal("a second run gave the same token")
	}

	// The second line fetches the Gemini profile's credential from the
	// route every profile has.
	if _, err := exec.LookPath("curl"); err == nil {
		out, err := exec.Command("sh", "-c", credentialsLine).Output()
		var a struct{ Provider, Profile, Token, URL string }
		if err != nil || json.Unmarshal(out, &a) != nil || a.Provider != "gemini" || !strings.HasPrefix(a.Token, "auth_tokens/") || a.URL == "" {
			t.Fatalf("%s: %v: %s", credentialsLine, err, out)
		}
	} else if !strings.Contains(credentialsLine, `-d '{"profile":"gemini"}'`) || !strings.HasSuffix(credentialsLine, "/v1/credentials") {
		t.Fatalf("unexpected curl line %q", credentialsLine)
	}

	url := regexp.MustCompile(`http://\S+`).FindString(line)
	resp, err := http.Post(url, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e struct {
		Error     struct{ Code, Message string }
		RequestID string
	}
	if resp.StatusCode != 401 || json.Unmarshal(body, &e) != nil || e.Error.Code == "" || e.RequestID == "" {
		t.Fatalf("without credentials: %d %s; want 401 with the JSON error shape", resp.StatusCode, body)
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d after SIGTERM-equivalent, want 0", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("demo did not stop")
	}
}

// TestHandoutsAreDistinctGenuineAndFresh: 2,000 handouts by 32 concurrent
// callers, for each answer shape of the provider.
func TestHandoutsAreDistinctGenuineAndFresh(t *testing.T) {
	const (
		handouts     = 2000
		callers      = 32
		minRemaining = 30 * time.Second
	)
	for _, shape := range []upstreamtest.Shape{upstreamtest.ShapeReference, upstreamtest.ShapeGuide, upstreamtest.ShapeTokenOnly} {
		t.Run(shape.String(), func(t *testing.T) {
			rs := redistest.New(t)
			sim := startSim(t, upstreamtest.Config{Shape: shape, Latency: 2 * time.Millisecond})
			d := startDaemon(t, rs, sim, map[string]string{"TOKENPOOL_MIN_REMAINING": minRemaining.String()})

			var (
				mu          sync.Mutex
				unavailable atomic.Int64
				got         = map[string]int{}
				wg          sync.WaitGroup
				next        = make(chan int, handouts)
			)
			for i := range handouts {
				next <- i
			}
			close(next)
			bearers := callerJWTs(t, callers)
			for c := range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					bearer := bearers[c]
					for range next {
						r := fetchServed(t, d.url, bearer, func(r reply) {
							if r.status == http.StatusServiceUnavailable {
								unavailable.Add(1)
							}
						})
						if r.status != 200 {
							t.Errorf("status %d: %s", r.status, r.body)
							return
						}
						cred, err := r.decode()
						if err != nil {
							t.Error(err)
							return
						}
						m, ok := sim.Lookup(cred.EphemeralToken)
						if !ok {
							t.Errorf("token not minted by the provider")
							return
						}
						if left := m.ExpiresAt.Sub(r.received); left < minRemaining {
							t.Errorf("handed out with %v left, want at least %v", left, minRemaining)
						}
						// Never later than the provider's expiry; a little
						// earlier is the conservative rounding of RFC 3339
						// seconds and of a ttl counted from when we asked.
						if early := m.ExpiresAt.Sub(cred.ExpiresAt); early < 0 || early > 2*time.Second {
							t.Errorf("expiresAt %v, provider says %v", cred.ExpiresAt, m.ExpiresAt)
						}
						if err := sim.Consume(cred.EphemeralToken); err != nil {
							t.Errorf("the provider refuses the token: %v", err)
						}
						mu.Lock()
						got[cred.EphemeralToken]++
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			if len(got) != handouts {
				t.Fatalf("%d distinct tokens for %d handouts", len(got), handouts)
			}
			st, err := d.pool.Stats(context.Background(), "default")
			if err != nil {
				t.Fatal(err)
			}
			if st.HandedOut+st.Direct != handouts {
				t.Fatalf("stats %+v do not add up to %d handouts", st, handouts)
			}
			t.Logf("%s: %d from the pool, %d minted directly, %d minted in all; %d fast 503s seen and retried",
				shape, st.HandedOut, st.Direct, sim.Counts().Minted, unavailable.Load())
		})
	}
}

// TestPoolIsTimedAgainstTTL idles a pool of short-lived credentials for
// several TTLs: it must stay at target, hand out nothing short-lived, and
// count what expired unused as waste.
func TestPoolIsTimedAgainstTTL(t *testing.T) {
	const (
		ttl          = 8 * time.Second
		minRemaining = 2 * time.Second
		target       = 5
	)
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{TTL: ttl, Latency: 20 * time.Millisecond})
	d := startDaemon(t, rs, sim, map[string]string{
		"TOKENPOOL_MIN_REMAINING": minRemaining.String(),
		"TOKENPOOL_POOL_TARGET":   fmt.Sprint(target),
	})
	ctx := context.Background()
	stats := func() (usable int, wasted, handedOut, direct int64) {
		st, err := d.pool.Stats(ctx, "default")
		if err != nil {
			t.Fatal(err)
		}
		return st.Usable, st.Wasted, st.HandedOut, st.Direct
	}
	poll.Until(t, "the pool to fill", 10*time.Second, func() bool { u, _, _, _ := stats(); return u >= target })

	// Idle for three TTLs, sampling how many usable credentials are ready.
	samples, short := 0, 0
	lowest := target
	for end := time.Now().Add(3 * ttl); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		u, _, _, _ := stats()
		samples++
		if u < target {
			short++
		}
		lowest = min(lowest, u)
	}
	t.Logf("%d samples over %v idle: %d below target, lowest %d; provider minted %d", samples, 3*ttl, short, lowest, sim.Counts().Minted)
	if lowest < target-1 || short > samples/20 {
		t.Fatalf("the pool fell below its target of %d usable: lowest %d, %d of %d samples short", target, lowest, short, samples)
	}

	// Every credential the pool now holds is handed out with enough life.
	_, wasted, before, directBefore := stats()
	bearer := callerJWT(t, "alice")
	for range target {
		r := fetch(t, d.url, bearer)
		c := r.credential(t)
		m, _ := sim.Lookup(c.EphemeralToken)
		if left := m.ExpiresAt.Sub(r.received); left < minRemaining {
			t.Fatalf("handed out with %v left, want at least %v", left, minRemaining)
		}
	}
	_, _, after, directAfter := stats()
	if after-before != target || directAfter != directBefore {
		t.Fatalf("%d of %d handouts came from the pool (direct %d→%d)", after-before, target, directBefore, directAfter)
	}
	if wasted == 0 {
		t.Fatal("credentials that expired unused were not counted as waste")
	}
	t.Logf("wasted %d of %d minted", wasted, sim.Counts().Minted)
}

func TestGracefulShutdownPoolsMintsInFlight(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{Latency: 300 * time.Millisecond})
	d := startDaemon(t, rs, sim, map[string]string{"TOKENPOOL_POOL_TARGET": "10"})
	poll.Until(t, "mints in flight", 5*time.Second, func() bool { return sim.Counts().MintCalls > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	rdb := rs.Client()
	if n := rdb.ZCard(ctx, pool.Keys("", "default").Minting()).Val(); n != 0 {
		t.Fatalf("%d reservations left after shutdown", n)
	}
	if pooled, minted := rdb.ZCard(ctx, pool.Keys("", "default").Ready()).Val(), sim.Counts().Minted; pooled != int64(minted) {
		t.Fatalf("%d pooled of %d minted: a minted credential was lost at shutdown", pooled, minted)
	}
}

func TestConfigReadsEverySizingVariable(t *testing.T) {
	cfg, err := LoadConfig(envOf(map[string]string{
		"ORGA_API_KEY": "k", "TOKENPOOL_JWT_SECRET": testJWTSecret,
		"TOKENPOOL_POOL_TARGET": "7", "TOKENPOOL_POOL_MAX": "70", "TOKENPOOL_REFILL_CONCURRENCY": "5",
		"TOKENPOOL_ADMIN_KEYS": "ops:" + sha256hex("k"),
	}), false)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := cfg.Profiles.Get("default")
	if cfg.PoolTarget != 7 || cfg.PoolMax != 70 || p.Target != 7 || p.MaxTarget != 70 || cfg.RefillConcurrency != 5 || len(cfg.AdminKeys) != 1 {
		t.Fatalf("config %+v, profile %+v", cfg, p)
	}
}
