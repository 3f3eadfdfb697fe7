package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// WorldConfig describes a local world: one redis-server, the simulated
// provider in this process, and replicas of tokenpoold as processes.
type WorldConfig struct {
	Replicas   int
	Tokenpoold string // the daemon's binary
	Dir        string // for the replicas' logs
	SimLatency time.Duration
	SimTTL     time.Duration
	SimQuota   int  // provider mints per second (also the fleet's TOKENPOOL_UPSTREAM_RATE); 0: unlimited
	PoolTarget int  // TOKENPOOL_POOL_TARGET
	Direct     bool // no pool: every handout minted for its request
	Env        []string
}

// World is a running local world.
type World struct {
	RedisURL  string
	Sim       *upstreamtest.Server
	Targets   []string
	JWTSecret string
	AdminKey  string

	redis *exec.Cmd
	procs []*exec.Cmd
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// StartWorld starts everything and returns once every replica is ready.
func StartWorld(ctx context.Context, cfg WorldConfig) (*World, error) {
	w := &World{JWTSecret: randomHex(32), AdminKey: randomHex(16)}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	w.redis = exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := w.redis.Start(); err != nil {
		return nil, fmt.Errorf("redis-server: %w", err)
	}
	w.RedisURL = "redis://" + addr
	if err := poll.Wait(ctx, 10*time.Second, func() bool {
		c := redis.NewClient(&redis.Options{Addr: addr})
		defer c.Close()
		return c.Ping(ctx).Err() == nil
	}); err != nil {
		w.Close()
		return nil, fmt.Errorf("redis-server did not answer: %w", err)
	}

	w.Sim, err = upstreamtest.Start(upstreamtest.Config{TTL: cfg.SimTTL, Latency: cfg.SimLatency, Quota: cfg.SimQuota})
	if err != nil {
		w.Close()
		return nil, err
	}
	sum := sha256.Sum256([]byte(w.AdminKey))
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"REDIS_URL=" + w.RedisURL,
		"ORGA_API_KEY=" + upstreamtest.DefaultAPIKey, "ORGA_BASE_URL=" + w.Sim.URL(),
		"OPENAI_API_KEY=" + upstreamtest.DefaultOpenAIKey, "OPENAI_BASE_URL=" + w.Sim.URL(),
		"TOKENPOOL_JWT_SECRET=" + w.JWTSecret,
		"TOKENPOOL_ADMIN_KEYS=bench:" + hex.EncodeToString(sum[:]),
		"TOKENPOOL_RATE_PER_USER=100000/m", "TOKENPOOL_RATE_PER_IP=10000000/m",
		"TOKENPOOL_POOL_TARGET=" + strconv.Itoa(cfg.PoolTarget),
	}
	if cfg.Direct {
		env = append(env, "TOKENPOOL_POOL_TARGET=0")
	}
	if cfg.SimQuota > 0 {
		env = append(env, fmt.Sprintf("TOKENPOOL_UPSTREAM_RATE=%d/s", cfg.SimQuota))
	}
	env = append(env, cfg.Env...)
	for i := range cfg.Replicas {
		addr, err := freeAddr()
		if err != nil {
			w.Close()
			return nil, err
		}
		cmd := exec.Command(cfg.Tokenpoold)
		// Nothing here scrapes; several replicas can't share the default.
		cmd.Env = append(append([]string{"TOKENPOOL_METRICS_ADDR=off"}, env...), "TOKENPOOL_ADDR="+addr)
		logf, err := os.Create(filepath.Join(cfg.Dir, fmt.Sprintf("replica-%d.log", i+1)))
		if err != nil {
			w.Close()
			return nil, err
		}
		cmd.Stderr = logf
		if err := cmd.Start(); err != nil {
			w.Close()
			return nil, fmt.Errorf("start %s: %w", cfg.Tokenpoold, err)
		}
		w.procs = append(w.procs, cmd)
		w.Targets = append(w.Targets, "http://"+addr)
	}
	for _, t := range w.Targets {
		if err := waitReady(ctx, t+"/readyz"); err != nil {
			w.Close()
			return nil, fmt.Errorf("replica %s: %w", t, err)
		}
	}
	return w, nil
}

func waitReady(ctx context.Context, url string) error {
	return poll.Wait(ctx, 30*time.Second, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// Close stops the replicas (SIGTERM, then kill), the simulator and Redis.
func (w *World) Close() {
	for _, p := range w.procs {
		if p.Process != nil {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, p := range w.procs {
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = p.Process.Kill()
			<-done
		}
	}
	if w.Sim != nil {
		_ = w.Sim.Close()
	}
	if w.redis != nil && w.redis.Process != nil {
		_ = w.redis.Process.Kill()
		_ = w.redis.Wait()
	}
}

// RSS is the summed resident memory of the replicas, in bytes.
func (w *World) RSS() (int64, error) {
	var total int64
	for _, p := range w.procs {
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.Process.Pid))
		if err != nil {
			return 0, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
				total += kb * 1024
			}
		}
		f.Close()
	}
	return total, nil
}

// RedisMemory is Redis's used_memory, in bytes.
func (w *World) RedisMemory(ctx context.Context) (int64, error) {
	opt, _ := redis.ParseURL(w.RedisURL)
	c := redis.NewClient(opt)
	defer c.Close()
	info, err := c.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("no used_memory in INFO")
}
