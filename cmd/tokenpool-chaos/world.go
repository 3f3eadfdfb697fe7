package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// worldConfig describes the world a run starts.
type worldConfig struct {
	Replicas   int
	Tokenpoold string // the daemon's binary
	Dir        string // logs, and Redis's append-only file
	AOFDir     string // where Redis keeps its AOF; default: Dir/redis
	SimLatency time.Duration
	SimTTL     time.Duration
	Env        []string // on top of the defaults
}

// world is one redis-server behind a proxy (to delay its replies), the
// simulated provider in this process (one endpoint per replica, so every
// mint is attributed to the replica that asked for it, whatever the
// daemons count), and tokenpoold replicas as processes, each of which can
// be killed and restarted.
type world struct {
	cfg       worldConfig
	jwtSecret string
	adminKey  string
	sims      []*upstreamtest.Server // replica n mints from sims[n-1]
	proxy     *redistest.Proxy
	redisAddr string // the real one; replicas use the proxy
	aofDir    string

	replicas []*replica // fixed once started; each one's process comes and goes

	mu    sync.Mutex
	redis *exec.Cmd // guarded by mu
	keys  [][]byte  // guarded by mu: every seal key ever used, oldest first
}

// replica is one tokenpoold process.
type replica struct {
	n        int
	url      string
	addr     string
	sealKeys string
	cmd      *exec.Cmd    // guarded by the world's mu; nil while down
	inFlight atomic.Int64 // requests the callers have open to it
	dying    atomic.Bool  // it is being killed: requests failing now may have taken a credential
	log      *os.File
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startWorld starts Redis, the proxy, the simulator and the replicas, and
// returns once every replica is ready.
func startWorld(ctx context.Context, cfg worldConfig) (*world, error) {
	w := &world{cfg: cfg, jwtSecret: randomHex(32), adminKey: randomHex(16), aofDir: cfg.AOFDir}
	if w.aofDir == "" {
		w.aofDir = filepath.Join(cfg.Dir, "redis")
	}
	if err := os.MkdirAll(w.aofDir, 0o755); err != nil {
		return nil, err
	}
	var err error
	if w.redisAddr, err = freeAddr(); err != nil {
		return nil, err
	}
	if err := w.startRedis(ctx); err != nil {
		return nil, err
	}
	if w.proxy, err = redistest.StartProxy(w.redisAddr); err != nil {
		w.close()
		return nil, err
	}
	for range cfg.Replicas {
		sim, err := upstreamtest.Start(upstreamtest.Config{TTL: cfg.SimTTL, Latency: cfg.SimLatency})
		if err != nil {
			w.close()
			return nil, err
		}
		w.sims = append(w.sims, sim)
	}
	w.keys = [][]byte{newKey()}
	for i := range cfg.Replicas {
		r := &replica{n: i + 1, sealKeys: w.sealKeys(1)}
		if r.addr, err = freeAddr(); err != nil {
			w.close()
			return nil, err
		}
		r.url = "http://" + r.addr
		w.replicas = append(w.replicas, r)
		if err := w.startReplica(ctx, r); err != nil {
			w.close()
			return nil, err
		}
	}
	return w, nil
}

func newKey() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return k
}

// sealKeys is TOKENPOOL_SEAL_KEYS of the newest n keys, newest first.
func (w *world) sealKeys(n int) string {
	var out []string
	for i := len(w.keys) - 1; i >= 0 && len(out) < n; i-- {
		out = append(out, base64.StdEncoding.EncodeToString(w.keys[i]))
	}
	return strings.Join(out, ",")
}

// startRedis starts redis-server on its address with an append-only file
// fsynced every second, as most deployments run it (a process crash keeps
// what was written; a machine crash would lose up to a second); a restart
// "without persistence" deletes the file first.
func (w *world) startRedis(ctx context.Context) error {
	_, port, _ := net.SplitHostPort(w.redisAddr)
	cmd := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", w.aofDir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction")
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redis-server: %w", err)
	}
	w.mu.Lock()
	w.redis = cmd
	w.mu.Unlock()
	c := w.redisClient()
	defer c.Close()
	return poll.Wait(ctx, 20*time.Second, func() bool { return c.Ping(ctx).Err() == nil })
}

// killRedis kills redis-server (SIGKILL, like a crash) and waits.
func (w *world) killRedis() {
	w.mu.Lock()
	cmd := w.redis
	w.redis = nil
	w.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

// simUpdate changes every simulator's configuration.
func (w *world) simUpdate(f func(*upstreamtest.Config)) {
	for _, sim := range w.sims {
		sim.Update(f)
	}
}

// redisClient talks to Redis directly, not through the proxy.
func (w *world) redisClient() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: w.redisAddr, MaxRetries: -1, DialTimeout: time.Second})
}

// env is a replica's environment.
func (w *world) env(r *replica) []string {
	sum := sha256.Sum256([]byte(w.adminKey))
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"TOKENPOOL_ADDR=" + r.addr,
		"REDIS_URL=redis://" + w.proxy.Addr,
		"ORGA_API_KEY=" + upstreamtest.DefaultAPIKey, "ORGA_BASE_URL=" + w.sims[r.n-1].URL(),
		"TOKENPOOL_JWT_SECRET=" + w.jwtSecret,
		"TOKENPOOL_ADMIN_KEYS=chaos:" + hex.EncodeToString(sum[:]),
		"TOKENPOOL_RATE_PER_USER=100000000/m", "TOKENPOOL_RATE_PER_IP=100000000/m",
		"TOKENPOOL_SEAL_KEYS=" + r.sealKeys,
		"TOKENPOOL_LOG_LEVEL=warn",
	}
	return append(env, w.cfg.Env...)
}

// startReplica starts r's process and waits until it is ready.
func (w *world) startReplica(ctx context.Context, r *replica) error {
	cmd := exec.Command(w.cfg.Tokenpoold)
	cmd.Env = w.env(r)
	if r.log == nil {
		f, err := os.Create(filepath.Join(w.cfg.Dir, fmt.Sprintf("replica-%d.log", r.n)))
		if err != nil {
			return err
		}
		r.log = f
	}
	cmd.Stderr = r.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", w.cfg.Tokenpoold, err)
	}
	w.mu.Lock()
	r.cmd = cmd
	w.mu.Unlock()
	return poll.Wait(ctx, 30*time.Second, func() bool {
		resp, err := http.Get(r.url + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// stopReplica ends r's process: SIGKILL (a crash) or SIGTERM (a graceful
// stop, which it must finish with exit status 0 within 30 s).
func (w *world) stopReplica(r *replica, sig syscall.Signal) error {
	w.mu.Lock()
	cmd := r.cmd
	r.cmd = nil
	w.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if sig == syscall.SIGTERM && err != nil {
			return fmt.Errorf("replica %d: graceful stop: %w", r.n, err)
		}
		return nil
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("replica %d did not stop on SIGTERM within 30s", r.n)
	}
}

// pid is r's process id, 0 when it is down.
func (w *world) pid(r *replica) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if r.cmd == nil || r.cmd.Process == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

// close stops everything, the replicas gracefully.
func (w *world) close() {
	for _, r := range w.replicas {
		_ = w.stopReplica(r, syscall.SIGTERM)
		if r.log != nil {
			r.log.Close()
		}
	}
	for _, sim := range w.sims {
		_ = sim.Close()
	}
	if w.proxy != nil {
		w.proxy.Close()
	}
	w.killRedis()
	if strings.HasPrefix(w.aofDir, "/dev/shm/") {
		_ = os.RemoveAll(w.aofDir)
	}
}

// procStat reads a process's resident memory (bytes) and open files.
func procStat(pid int) (rss int64, fds int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			rss = kb * 1024
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return rss, 0, err
	}
	return rss, len(ents), nil
}
