package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

const testJWTSecret = "test-secret-test-secret-test-secret!"

// syncBuffer collects a daemon's logs; safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// daemon is one in-process tokenpoold for a test.
type daemon struct {
	*Main
	url        string
	metricsURL string // "": metrics are off
	logs       *syncBuffer
}

func envOf(env map[string]string) func(string) string {
	return func(k string) string { return env[k] }
}

// startDaemon runs a daemon on 127.0.0.1:0 with env on top of defaults
// pointing at rs and sim; each of with may set a field of Main before it
// opens. It is closed when the test ends.
func startDaemon(tb testing.TB, rs *redistest.Server, sim *upstreamtest.Server, env map[string]string, with ...func(*Main)) *daemon {
	tb.Helper()
	full := testEnv(rs.URL(), sim, map[string]string{"TOKENPOOL_ADDR": "127.0.0.1:0", "TOKENPOOL_METRICS_ADDR": "127.0.0.1:0"})
	for k, v := range env {
		full[k] = v
	}
	cfg, err := LoadConfig(envOf(full), false)
	if err != nil {
		tb.Fatal(err)
	}
	logs := &syncBuffer{}
	m := &Main{Config: cfg, Stderr: logs}
	for _, f := range with {
		f(m)
	}
	if err := m.Open(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			tb.Errorf("close: %v", err)
		}
	})
	d := &daemon{Main: m, url: "http://" + m.Addr(), logs: logs}
	if a := m.MetricsAddr(); a != "" {
		d.metricsURL = "http://" + a
	}
	return d
}

// testEnv is a daemon's environment in a test: Redis at redisURL, the
// simulated provider sim, the test JWT secret and limits out of the way,
// with extra on top (an empty value removes a variable).
func testEnv(redisURL string, sim *upstreamtest.Server, extra map[string]string) map[string]string {
	env := map[string]string{
		"REDIS_URL":               redisURL,
		"ORGA_API_KEY":            upstreamtest.DefaultAPIKey,
		"ORGA_BASE_URL":           sim.URL(),
		"TOKENPOOL_JWT_SECRET":    testJWTSecret,
		"TOKENPOOL_RATE_PER_IP":   "1000000/m",
		"TOKENPOOL_RATE_PER_USER": "1000000/m",
	}
	for k, v := range extra {
		if v == "" {
			delete(env, k)
		} else {
			env[k] = v
		}
	}
	return env
}

func startSim(tb testing.TB, cfg upstreamtest.Config) *upstreamtest.Server {
	tb.Helper()
	sim, err := upstreamtest.Start(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sim.Close() })
	return sim
}

func callerJWT(tb testing.TB, sub string) string {
	tb.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject: sub, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour)),
	}).SignedString([]byte(testJWTSecret))
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// claimsJWT signs claims with the test secret; exp is an hour ahead
// unless claims set it.
func claimsJWT(tb testing.TB, claims map[string]any) string {
	tb.Helper()
	c := jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix()}
	for k, v := range claims {
		c[k] = v
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(testJWTSecret))
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func itoa(n int) string { return strconv.Itoa(n) }

// credential is the answer of the credential routes.
type credential struct {
	EphemeralToken string            `json:"ephemeralToken"`
	ICEServers     []json.RawMessage `json:"iceServers"`
	ExpiresAt      time.Time         `json:"expiresAt"`
	ExpiresIn      int               `json:"expiresIn"`
	Profile        string            `json:"profile"`
	ID             string            `json:"id"`
}

type reply struct {
	status   int
	header   http.Header
	body     []byte
	sent     time.Time
	received time.Time
}

var client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 128}}

// fetch POSTs /v1/session-config with a bearer token ("" for none).
func fetch(tb testing.TB, base, bearer string) reply {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/session-config", nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	sent := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		tb.Error(err)
		return reply{sent: sent, received: time.Now()}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: b, sent: sent, received: time.Now()}
}

// maxAttempts bounds how often a test caller asks for one handout.
const maxAttempts = 10

// fetchServed is fetch by a client that, on a 503 with Retry-After, waits
// as told and asks again, up to maxAttempts times. answered sees every
// reply, the retried ones too.
func fetchServed(tb testing.TB, base, bearer string, answered func(reply)) reply {
	tb.Helper()
	for attempt := 1; ; attempt++ {
		r := fetch(tb, base, bearer)
		answered(r)
		wait := retryAfter(r.header)
		if r.status != http.StatusServiceUnavailable || wait == 0 || attempt == maxAttempts {
			return r
		}
		time.Sleep(wait)
	}
}

// retryAfter is a Retry-After header in seconds, capped at a second for
// tests; 0 when absent or malformed.
func retryAfter(h http.Header) time.Duration {
	s, err := strconv.Atoi(h.Get("Retry-After"))
	if err != nil || s <= 0 {
		return 0
	}
	return min(time.Duration(s)*time.Second, time.Second)
}

// credential decodes a 200's credential, failing tb otherwise; on the
// test's goroutine only (see decode).
func (r reply) credential(tb testing.TB) credential {
	tb.Helper()
	c, err := r.decode()
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// decode decodes a 200's credential; any goroutine may call it.
func (r reply) decode() (credential, error) {
	var c credential
	if r.status != 200 {
		return c, fmt.Errorf("status %d: %s", r.status, r.body)
	}
	if err := json.Unmarshal(r.body, &c); err != nil {
		return c, fmt.Errorf("%v: %s", err, r.body)
	}
	return c, nil
}

// callerJWTs signs one JWT per caller, user-0 to user-(n-1), on the
// test's goroutine (callerJWT may fail it), for callers run in goroutines.
func callerJWTs(tb testing.TB, n int) []string {
	tb.Helper()
	out := make([]string, n)
	for i := range out {
		out[i] = callerJWT(tb, fmt.Sprintf("user-%d", i))
	}
	return out
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds tokenpoold once per test run, for tests that need real
// processes.
func binary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tokenpoold-test")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "tokenpoold")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = &buildError{err: err, out: string(out)}
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return binPath
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return "go build: " + e.err.Error() + "\n" + e.out }

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// logLines returns the JSON log lines whose msg is msg.
func logLines(logs, msg string) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func sha256hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// process is a tokenpoold started as its own process.
type process struct {
	url    string
	cmd    *exec.Cmd
	stderr *syncBuffer
}

// startProcess runs the built binary with env (and nothing else from the
// test's environment) on a free port, and waits for /healthz.
func startProcess(tb testing.TB, env map[string]string) *process {
	tb.Helper()
	port := redistest.FreePort(tb)
	cmd := exec.Command(binary(tb))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), fmt.Sprintf("TOKENPOOL_ADDR=127.0.0.1:%d", port), "TOKENPOOL_METRICS_ADDR=127.0.0.1:0"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &process{url: fmt.Sprintf("http://127.0.0.1:%d", port), cmd: cmd, stderr: &syncBuffer{}}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.stop(tb) })
	poll.Until(tb, "the daemon to answer /healthz", 15*time.Second, func() bool {
		resp, err := http.Get(p.url + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	})
	return p
}

// stop sends SIGTERM and waits; the daemon must exit 0.
func (p *process) stop(tb testing.TB) {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			tb.Errorf("daemon exit: %v\n%s", err, p.stderr.String())
		}
	case <-time.After(25 * time.Second):
		_ = p.cmd.Process.Kill()
		tb.Errorf("daemon did not stop on SIGTERM")
	}
}

// logsNow flushes the daemon's log buffer (later lines write through) and
// returns everything logged so far.
func (d *daemon) logsNow() string {
	d.Main.logs.Stop()
	return d.logs.String()
}
