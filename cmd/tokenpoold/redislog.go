package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// redisLogEvery is the least time between two lines of the same go-redis
// message: during an outage go-redis reports every failed dial, and an
// operator reading the logs needs one line saying so, not hundreds.
const redisLogEvery = 10 * time.Second

// redisLogger routes go-redis's own log lines (redis.SetLogger) into the
// daemon's JSON logger, with "component": "redis". Each message, known by
// its format, is written at most once per redisLogEvery; the next line
// written says how many were suppressed meanwhile.
type redisLogger struct {
	log *slog.Logger
	now func() time.Time

	mu   sync.Mutex
	seen map[string]*redisLogState // by format: go-redis's constants, a bounded set
}

type redisLogState struct {
	last       time.Time
	suppressed int
}

func newRedisLogger(log *slog.Logger) *redisLogger {
	return &redisLogger{log: log, now: time.Now, seen: map[string]*redisLogState{}}
}

// Printf implements go-redis's internal.Logging.
func (l *redisLogger) Printf(ctx context.Context, format string, v ...any) {
	now := l.now()
	l.mu.Lock()
	st := l.seen[format]
	if st == nil {
		st = &redisLogState{}
		l.seen[format] = st
	}
	if !st.last.IsZero() && now.Sub(st.last) < redisLogEvery {
		st.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := st.suppressed
	st.last, st.suppressed = now, 0
	l.mu.Unlock()
	msg := strings.TrimSpace(strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
	l.log.LogAttrs(ctx, slog.LevelWarn, "redis: "+msg, slog.String("component", "redis"), slog.Int("suppressed", suppressed))
}
