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
	// Replicated gives the primary a replica and a Sentinel that monitors
	// them, and the daemons wait for the replica on every take
	// (TOKENPOOL_REDIS_WAIT_REPLICAS=1).
	Replicated bool
}

// world is a redis-server primary (with Replicated, a replica of it and a
// Sentinel that fails over between them) behind a proxy that delays
// replies and follows the primary, as a load balancer in front of a
// Sentinel-managed Redis does; the simulated provider in this process (one
// endpoint per replica, so every mint is attributed to the replica that
// asked for it, whatever the daemons count); and tokenpoold replicas as
// processes, each of which can be killed and restarted.
type world struct {
	cfg          worldConfig
	jwtSecret    string
	adminKey     string
	sims         []*upstreamtest.Server // replica n mints from sims[n-1]
	proxy        *redistest.Proxy
	nodes        []*redisNode // the primary and, with Replicated, its replica; the daemons use the proxy
	sentinelAddr string       // with Replicated
	sentinel     *exec.Cmd
	aofDir       string

	replicas []*replica // fixed once started; each one's process comes and goes

	mu      sync.Mutex
	primary *redisNode // guarded by mu
	keys    [][]byte   // guarded by mu: every seal key ever used, oldest first
}

// redisNode is one redis-server of the world.
type redisNode struct {
	addr   string
	aofDir string
	cmd    *exec.Cmd // guarded by the world's mu; nil while down
}

// sentinelMaster is the name the Sentinel monitors the primary by.
const sentinelMaster = "chaos"

// replica is one tokenpoold process.
type replica struct {
	n          int
	url        string
	addr       string
	metricsURL string // its TOKENPOOL_METRICS_ADDR, for the soak's scrapes
	metrics    string
	sealKeys   string
	cmd        *exec.Cmd    // guarded by the world's mu; nil while down
	inFlight   atomic.Int64 // requests the callers have open to it
	dying      atomic.Bool  // it is being killed: requests failing now may have taken a credential
	log        *os.File
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
	n := 1
	if cfg.Replicated {
		n = 2
	}
	for i := range n {
		node := &redisNode{aofDir: filepath.Join(w.aofDir, strconv.Itoa(i))}
		addr, err := freeAddr()
		if err != nil {
			w.close()
			return nil, err
		}
		node.addr = addr
		w.nodes = append(w.nodes, node)
		replicaOf := ""
		if i > 0 {
			replicaOf = w.nodes[0].addr
		}
		if err := w.startRedis(ctx, node, replicaOf); err != nil {
			w.close()
			return nil, err
		}
	}
	w.primary = w.nodes[0]
	if cfg.Replicated {
		if err := w.startSentinel(ctx); err != nil {
			w.close()
			return nil, err
		}
		w.cfg.Env = append([]string{"TOKENPOOL_REDIS_WAIT_REPLICAS=1"}, cfg.Env...)
	}
	var err error
	if w.proxy, err = redistest.StartProxy(w.nodes[0].addr); err != nil {
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
		if r.metrics, err = freeAddr(); err != nil {
			w.close()
			return nil, err
		}
		r.url, r.metricsURL = "http://"+r.addr, "http://"+r.metrics
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

// startRedis starts node's redis-server, a replica of replicaOf unless
// that is empty, with an append-only file fsynced every second, as most
// deployments run it (a process crash keeps what was written; a machine
// crash would lose up to a second); a restart "without persistence"
// deletes the file first.
func (w *world) startRedis(ctx context.Context, node *redisNode, replicaOf string) error {
	if err := os.MkdirAll(node.aofDir, 0o755); err != nil {
		return err
	}
	_, port, _ := net.SplitHostPort(node.addr)
	args := []string{"--port", port, "--bind", "127.0.0.1", "--dir", node.aofDir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction",
		"--repl-diskless-sync-delay", "0"}
	if replicaOf != "" {
		host, port, _ := net.SplitHostPort(replicaOf)
		args = append(args, "--replicaof", host, port)
	}
	cmd := exec.Command("redis-server", args...)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redis-server: %w", err)
	}
	w.mu.Lock()
	node.cmd = cmd
	w.mu.Unlock()
	c := nodeClient(node.addr)
	defer c.Close()
	return poll.Wait(ctx, 20*time.Second, func() bool { return c.Ping(ctx).Err() == nil })
}

// killRedis kills node's redis-server (SIGKILL, like a crash) and waits.
func (w *world) killRedis(node *redisNode) {
	w.mu.Lock()
	cmd := node.cmd
	node.cmd = nil
	w.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

// primaryNode is the node the proxy sends the daemons to.
func (w *world) primaryNode() *redisNode {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.primary
}

// startSentinel starts a Sentinel that monitors the primary (quorum 1,
// down after downAfter; the faults that restart Redis lengthen it while
// they do, so only a primary that crashes for good is failed over) and
// waits until it knows the replica.
func (w *world) startSentinel(ctx context.Context) error {
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	w.sentinelAddr = addr
	_, port, _ := net.SplitHostPort(addr)
	host, pport, _ := net.SplitHostPort(w.nodes[0].addr)
	dir := filepath.Join(w.cfg.Dir, "sentinel")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	conf := filepath.Join(dir, "sentinel.conf")
	body := fmt.Sprintf("port %s\nbind 127.0.0.1\ndir %s\n"+
		"sentinel monitor %s %s %s 1\n"+
		"sentinel down-after-milliseconds %[3]s %[6]d\n"+
		"sentinel failover-timeout %[3]s 3000\n", port, dir, sentinelMaster, host, pport, downAfter.Milliseconds())
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return err
	}
	w.sentinel = exec.Command("redis-server", conf, "--sentinel")
	if err := w.sentinel.Start(); err != nil {
		return fmt.Errorf("redis-server --sentinel: %w", err)
	}
	return w.whole(ctx)
}

// downAfter is how long the Sentinel waits for a primary that does not
// answer before it fails over.
const downAfter = 3 * time.Second

// sentinelDownAfter sets how long the Sentinel waits for the primary
// before it fails over; without Replicated, nothing.
func (w *world) sentinelDownAfter(ctx context.Context, d time.Duration) error {
	if !w.cfg.Replicated {
		return nil
	}
	sc := w.sentinelClient()
	defer sc.Close()
	return sc.Set(ctx, sentinelMaster, "down-after-milliseconds", strconv.FormatInt(d.Milliseconds(), 10)).Err()
}

// sentinelPrimary is the primary's address as the Sentinel sc names it.
func sentinelPrimary(ctx context.Context, sc *redis.SentinelClient) (string, error) {
	a, err := sc.GetMasterAddrByName(ctx, sentinelMaster).Result()
	if err != nil {
		return "", err
	}
	if len(a) != 2 {
		return "", fmt.Errorf("sentinel get-master-addr-by-name: %v", a)
	}
	return net.JoinHostPort(a[0], a[1]), nil
}

// whole waits, with Replicated, until the primary has its replica online
// and the Sentinel names it the primary and knows the replica: a failover
// can then promote the replica.
func (w *world) whole(ctx context.Context) error {
	if !w.cfg.Replicated {
		return nil
	}
	pc := w.redisClient()
	defer pc.Close()
	sc := w.sentinelClient()
	defer sc.Close()
	primary := w.primaryNode().addr
	var last string
	err := poll.Wait(ctx, 60*time.Second, func() bool {
		info, err := pc.Info(ctx, "replication").Result()
		if err != nil || !strings.Contains(info, "role:master") || !strings.Contains(info, "state=online") {
			last = fmt.Sprintf("the primary's replication: %q, %v", info, err)
			return false
		}
		at, err := sentinelPrimary(ctx, sc)
		if err != nil || at != primary {
			last = fmt.Sprintf("the sentinel names %q as the primary (%v), not %s", at, err, primary)
			return false
		}
		rs, err := sc.Replicas(ctx, sentinelMaster).Result()
		if err != nil || len(rs) != 1 || rs[0]["flags"] != "slave" || rs[0]["master-link-status"] != "ok" {
			last = fmt.Sprintf("the sentinel's replicas: %v, %v", rs, err)
			return false
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("Redis with its replica and Sentinel: %w (%s)", err, last)
	}
	return nil
}

// simUpdate changes every simulator's configuration.
func (w *world) simUpdate(f func(*upstreamtest.Config)) {
	for _, sim := range w.sims {
		sim.Update(f)
	}
}

// redisClient talks to the primary directly, not through the proxy.
func (w *world) redisClient() *redis.Client { return nodeClient(w.primaryNode().addr) }

// nodeClient talks to the redis-server at addr directly, with no retries.
func nodeClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
}

// sentinelClient talks to the Sentinel, with no retries.
func (w *world) sentinelClient() *redis.SentinelClient {
	return redis.NewSentinelClient(&redis.Options{Addr: w.sentinelAddr, MaxRetries: -1, DialTimeout: time.Second})
}

// ledgerKeyOfRun is the replicas' TOKENPOOL_LEDGER_KEY: the run checks
// that the ledger names every credential delivered, once.
const ledgerKeyOfRun = "the chaos run's ledger key, 32 bytes"

// env is a replica's environment.
func (w *world) env(r *replica) []string {
	sum := sha256.Sum256([]byte(w.adminKey))
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"TOKENPOOL_ADDR=" + r.addr,
		"TOKENPOOL_METRICS_ADDR=" + r.metrics,
		"REDIS_URL=redis://" + w.proxy.Addr,
		"ORGA_API_KEY=" + upstreamtest.DefaultAPIKey, "ORGA_BASE_URL=" + w.sims[r.n-1].URL(),
		"TOKENPOOL_JWT_SECRET=" + w.jwtSecret,
		"TOKENPOOL_ADMIN_KEYS=chaos:" + hex.EncodeToString(sum[:]),
		"TOKENPOOL_RATE_PER_USER=100000000/m", "TOKENPOOL_RATE_PER_IP=100000000/m",
		"TOKENPOOL_SEAL_KEYS=" + r.sealKeys,
		"TOKENPOOL_LEDGER_KEY=" + ledgerKeyOfRun,
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
	for _, node := range w.nodes {
		w.killRedis(node)
	}
	if w.sentinel != nil && w.sentinel.Process != nil {
		_ = w.sentinel.Process.Kill()
		_ = w.sentinel.Wait()
	}
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
