package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// The baselines: what a credential answer costs at the least. "bare" is a
// Gin handler answering the same bytes a real answer has; "redis" makes
// one Redis round trip (a GET) first; "handwritten" is what a user would
// write by hand: one redis_rate check on the client address and one Lua
// pop of a pooled answer, with no auth and no logs. Each runs as its own
// process, like a tokenpoold replica.

// baselineBody is a credential answer of the real size and shape.
func baselineBody() []byte {
	b, _ := json.Marshal(map[string]any{
		"ephemeralToken": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + strings.Repeat("eyJpc3MiOiJvcmdhLXNpbSJ9", 9) + ".x9Q1h0c2d8aB4vN3mK7pL2sT6uW1yZ5cE0fG3hJ8kM",
		"iceServers": []map[string]any{
			{"urls": "stun:stun1.l.google.com:19302"},
			{"urls": []string{"turn:turn.orga-ai.com:3478"}, "username": "1795341606:1ef348f1c624", "credential": "+Id9T87DuLHMpwsdvQp6ChAnD6w="},
		},
		"expiresAt": "2026-11-22T10:00:06Z", "expiresIn": 117, "profile": "default", "id": "1a76d813-3c66-4187-9463-69456fb847d9",
	})
	return b
}

// serveBaseline serves one baseline on addr until ctx ends.
func serveBaseline(ctx context.Context, kind, addr, redisURL string) error {
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	body := baselineBody()
	var rdb *redis.Client
	switch kind {
	case "bare":
	case "redis", "handwritten":
		opt, err := redis.ParseURL(redisURL)
		if err != nil {
			return fmt.Errorf("-redis-url: %w", err)
		}
		rdb = redis.NewClient(opt)
		defer rdb.Close()
	default:
		return fmt.Errorf("unknown baseline %q (bare, redis, handwritten)", kind)
	}
	h := func(c *gin.Context) {
		if rdb != nil {
			if err := rdb.Get(c.Request.Context(), "tp:bench:baseline").Err(); err != nil && !errors.Is(err, redis.Nil) {
				c.AbortWithStatus(http.StatusServiceUnavailable)
				return
			}
		}
		c.Header("Cache-Control", "no-store")
		c.Data(http.StatusOK, "application/json; charset=utf-8", body)
	}
	if kind == "handwritten" {
		var err error
		if h, err = handwritten(ctx, rdb, body); err != nil {
			return err
		}
	}
	e.POST("/v1/session-config", h)
	e.GET("/api/orga-client-secrets", h)
	e.POST("/navai/realtime/client-secret", h)
	e.GET("/readyz", func(c *gin.Context) { c.Status(http.StatusOK) })
	srv := &http.Server{Addr: addr, Handler: e, ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// startBaseline runs this binary as a baseline server and waits for it.
func startBaseline(ctx context.Context, kind, redisURL, dir string) (string, *exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(exe, "-serve-baseline", kind, "-listen", addr, "-redis-url", redisURL)
	logf, err := os.Create(filepath.Join(dir, "baseline-"+kind+".log"))
	if err != nil {
		return "", nil, err
	}
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	url := "http://" + addr
	if err := waitReady(ctx, url+"/readyz"); err != nil {
		_ = cmd.Process.Kill()
		return "", nil, err
	}
	return url, cmd, nil
}

// handwrittenEntries is how many answers the handwritten baseline pools
// before it serves: more than a 10 s saturation run takes.
const handwrittenEntries = 600_000

// popScript pops the pooled answer that expires soonest.
var popScript = redis.NewScript(`
local e = redis.call('ZPOPMIN', KEYS[1])
if #e == 0 then return false end
local body = redis.call('HGET', KEYS[2], e[1])
redis.call('HDEL', KEYS[2], e[1])
return body
`)

// The handwritten baseline's keys: pooled answers by expiry, and bodies.
const handwrittenReady, handwrittenBodies = "tp:bench:hand:ready", "tp:bench:hand:e"

// fillHandwritten adds n answers to the handwritten baseline's pool,
// under ids that start with prefix.
func fillHandwritten(ctx context.Context, rdb *redis.Client, body []byte, prefix string, n int) error {
	exp := time.Now().Add(2 * time.Minute).UnixMilli()
	for i := 0; i < n; i += 1000 {
		_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j := i; j < min(i+1000, n); j++ {
				id := prefix + strconv.Itoa(j)
				p.ZAdd(ctx, handwrittenReady, redis.Z{Score: float64(exp + int64(j)), Member: id})
				p.HSet(ctx, handwrittenBodies, id, body)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("handwritten baseline: filling the pool: %w", err)
		}
	}
	return nil
}

// handwritten pools handwrittenEntries answers and returns the handler a
// user would write: a per-address limit (set high enough not to refuse),
// then a pop.
func handwritten(ctx context.Context, rdb *redis.Client, body []byte) (gin.HandlerFunc, error) {
	if err := fillHandwritten(ctx, rdb, body, "", handwrittenEntries); err != nil {
		return nil, err
	}
	limiter := redis_rate.NewLimiter(rdb)
	limit := redis_rate.PerMinute(1_000_000_000)
	return func(c *gin.Context) {
		ctx := c.Request.Context()
		res, err := limiter.Allow(ctx, "ip:"+c.ClientIP(), limit)
		if err != nil {
			c.AbortWithStatus(http.StatusServiceUnavailable)
			return
		}
		if res.Allowed == 0 {
			c.AbortWithStatus(http.StatusTooManyRequests)
			return
		}
		b, err := popScript.Run(ctx, rdb, []string{handwrittenReady, handwrittenBodies}).Text()
		if err != nil {
			c.AbortWithStatus(http.StatusServiceUnavailable)
			return
		}
		c.Header("Cache-Control", "no-store")
		c.Data(http.StatusOK, "application/json; charset=utf-8", []byte(b))
	}, nil
}
