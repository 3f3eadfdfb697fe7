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
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/redis/go-redis/v9"
)

// The baselines: what a credential answer costs at the least. "bare" is a
// Gin handler answering the same bytes a real answer has; "redis" makes
// one Redis round trip first. Each runs as its own process, like a
// tokenpoold replica.

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
	if kind == "redis" {
		opt, err := redis.ParseURL(redisURL)
		if err != nil {
			return fmt.Errorf("-redis-url: %w", err)
		}
		rdb = redis.NewClient(opt)
		defer rdb.Close()
	} else if kind != "bare" {
		return fmt.Errorf("unknown baseline %q (bare, redis)", kind)
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
