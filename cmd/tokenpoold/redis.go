package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
)

// Redis timeouts: explicit and short, so a request's deadline reaches the
// socket and a dead Redis costs a request tens of milliseconds, not the
// go-redis defaults (DESIGN.md invariant 7).
const (
	redisDialTimeout  = time.Second
	redisReadTimeout  = 500 * time.Millisecond
	redisWriteTimeout = 500 * time.Millisecond
	redisPoolTimeout  = time.Second
	redisMaxRetries   = 2
	// RESP2: tokenpool uses nothing of RESP3, and go-redis peeks for RESP3
	// push notifications around every command (about a tenth of the
	// daemon's CPU under load, measured).
	redisProtocol = 2
)

// openRedis connects to the configured topology (REDIS_URL, Cluster or
// Sentinel), or starts the embedded Redis. Redis that does not answer yet
// is not fatal: /readyz reports it until it does.
func (m *Main) openRedis(ctx context.Context) error {
	cfg := &m.Config
	// go-redis logs through one process-wide logger: into this daemon's
	// JSON stream, rate-limited, instead of plain lines on stderr.
	redis.SetLogger(newRedisLogger(m.log))
	var tlsConfig *tls.Config
	if cfg.RedisTLS {
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	switch {
	case len(cfg.RedisClusterAddrs) > 0:
		m.rdb = redis.NewClusterClient(&redis.ClusterOptions{
			Protocol: redisProtocol,
			Addrs:    cfg.RedisClusterAddrs, Username: cfg.RedisUsername, Password: cfg.RedisPassword, TLSConfig: tlsConfig,
			DialTimeout: redisDialTimeout, ReadTimeout: redisReadTimeout, WriteTimeout: redisWriteTimeout,
			PoolTimeout: redisPoolTimeout, MaxRetries: redisMaxRetries, ContextTimeoutEnabled: true,
		})
	case len(cfg.RedisSentinelAddrs) > 0:
		m.rdb = redis.NewFailoverClient(&redis.FailoverOptions{
			Protocol:   redisProtocol,
			MasterName: cfg.RedisSentinelMaster, SentinelAddrs: cfg.RedisSentinelAddrs,
			SentinelPassword: cfg.RedisSentinelPass,
			Username:         cfg.RedisUsername, Password: cfg.RedisPassword, TLSConfig: tlsConfig,
			DialTimeout: redisDialTimeout, ReadTimeout: redisReadTimeout, WriteTimeout: redisWriteTimeout,
			PoolTimeout: redisPoolTimeout, MaxRetries: redisMaxRetries, ContextTimeoutEnabled: true,
		})
	default:
		url := cfg.RedisURL
		if url == "" {
			if !cfg.Demo {
				m.log.Warn("REDIS_URL is unset: using embedded Redis. Only this one replica can use it, and the pool and limits are lost on restart; set REDIS_URL in production")
			}
			e, err := startEmbedded()
			if err != nil {
				return err
			}
			m.embedded = e
			url = "redis://" + e.Addr()
		}
		opt, err := redis.ParseURL(url)
		if err != nil {
			return fmt.Errorf("REDIS_URL: %w", err)
		}
		opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = redisDialTimeout, redisReadTimeout, redisWriteTimeout
		opt.PoolTimeout, opt.MaxRetries, opt.ContextTimeoutEnabled = redisPoolTimeout, redisMaxRetries, true
		opt.Protocol = redisProtocol
		m.rdb = redis.NewClient(opt)
	}
	if m.tracer != nil {
		// A span per command, named after it; never its arguments, which
		// carry credentials.
		if err := redisotel.InstrumentTracing(m.rdb, redisotel.WithTracerProvider(m.tracer),
			redisotel.WithDBStatement(false), redisotel.WithCallerEnabled(false)); err != nil {
			return fmt.Errorf("tracing Redis: %w", err)
		}
	}

	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := m.rdb.Ping(pctx).Err(); err != nil {
		// No address: a URL may hold a password.
		m.log.Warn("redis does not answer yet; not ready until it does", "redis", m.redisKind(), "err", err)
		return nil
	}
	if m.embedded == nil {
		m.checkEviction(pctx)
	}
	return nil
}

// checkEviction warns when Redis may evict keys under memory pressure:
// the pool's promise needs maxmemory-policy noeviction, since an evicted
// ledger, reservation set or entry loses or doubles credentials. A Redis
// that refuses CONFIG (managed services often do) is logged, not fatal.
func (m *Main) checkEviction(ctx context.Context) {
	check := func(ctx context.Context, c *redis.Client) error {
		v, err := c.ConfigGet(ctx, "maxmemory-policy").Result()
		if err != nil {
			m.log.Info("could not read Redis's maxmemory-policy; the pool needs noeviction", "err", err)
			return nil
		}
		if p := v["maxmemory-policy"]; p != "" && p != "noeviction" {
			m.log.Warn("Redis may evict the pool's keys: set maxmemory-policy noeviction, or credentials can be lost or handed out twice",
				"maxmemory_policy", p)
		}
		return nil
	}
	switch c := m.rdb.(type) {
	case *redis.ClusterClient:
		_ = c.ForEachMaster(ctx, check)
	case *redis.Client:
		_ = check(ctx, c)
	}
}

// redisKind names the topology, for logs.
func (m *Main) redisKind() string {
	switch {
	case m.embedded != nil:
		return "embedded"
	case len(m.Config.RedisClusterAddrs) > 0:
		return "cluster"
	case len(m.Config.RedisSentinelAddrs) > 0:
		return "sentinel"
	}
	return "single"
}

// embeddedRedis is an in-process miniredis for the demo and single-replica
// runs. miniredis only expires keys when told time has passed, so a
// goroutine advances it once a second.
type embeddedRedis struct {
	*miniredis.Miniredis
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

func startEmbedded() (*embeddedRedis, error) {
	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("embedded redis: %w", err)
	}
	e := &embeddedRedis{Miniredis: mr, stop: make(chan struct{})}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case <-e.stop:
				return
			case now := <-t.C:
				mr.FastForward(now.Sub(last))
				last = now
			}
		}
	}()
	return e, nil
}

// Close stops the clock goroutine and the server. It is idempotent.
func (e *embeddedRedis) Close() {
	e.once.Do(func() {
		close(e.stop)
		e.wg.Wait()
		e.Miniredis.Close()
	})
}
