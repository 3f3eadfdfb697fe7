package pool

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// lostReply runs the first command match accepts and loses its reply, as
// a connection that breaks after the write does (a NOSCRIPT refusal, which
// did not run, does not count). ran is called once it ran, before its
// reply is lost; later matching commands go through later (nil: sent as
// they are).
type lostReply struct {
	match func(args []any) bool
	ran   func()
	later func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error
	done  atomic.Bool
}

func (h *lostReply) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *lostReply) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		switch {
		case !h.match(cmd.Args()):
			return next(ctx, cmd)
		case h.done.Load() && h.later != nil:
			return h.later(ctx, cmd, next)
		case h.done.Load():
			return next(ctx, cmd)
		}
		if err := next(ctx, cmd); err != nil {
			return err // NOSCRIPT: it did not run
		}
		h.done.Store(true)
		if h.ran != nil {
			h.ran()
		}
		cmd.SetErr(io.ErrUnexpectedEOF)
		return io.ErrUnexpectedEOF
	}
}
func (h *lostReply) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// refused fails a command without sending it, as a refused connection does.
func refused(_ context.Context, cmd redis.Cmder, _ redis.ProcessHook) error {
	cmd.SetErr(errRefused)
	return errRefused
}

// scriptCall reports whether args call the script with hash, or with a
// source holding marker (EVAL after NOSCRIPT).
func scriptCall(args []any, hash, marker string) bool {
	if len(args) < 2 {
		return false
	}
	s, _ := args[1].(string)
	return s == hash || strings.Contains(s, marker)
}

func isPut(args []any) bool     { return scriptCall(args, putScript.Hash(), "'surplus'") }
func isRecover(args []any) bool { return scriptCall(args, recoverScript.Hash(), "'returned', 1)") }

// takeUnder matches a take under claim.
func takeUnder(claim string) func(args []any) bool {
	return func(args []any) bool {
		return len(args) > 6 && scriptCall(args, takeScript.Hash(), "TOO_LATE") && strings.HasSuffix(fmt.Sprint(args[6]), ":claim:"+claim)
	}
}
