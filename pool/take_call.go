package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/backoff"
	"github.com/tokenpool/tokenpool/limiter"
)

// Sending a take to Redis. go-redis would retry a failed command by
// itself, but it reports only the last attempt's error, and a take that
// failed must be told apart by whether it may have run: one that ran holds
// an entry under its claim that must be recovered (or counted lost), one
// that never ran (the connection refused, Redis loading, too few replicas
// for a write) holds nothing. So the take is sent as a command go-redis
// does not retry, and sendTake retries it as go-redis would, knowing each
// attempt: whether its bytes were written (sendMark) and whether Redis
// refused it before running it (refusedByRedis).

// takeRetry is how the Store's client retries a command (its MaxRetries
// and retry backoffs, as go-redis normalised them), which sendTake follows
// for takes. A client of another type (a ring, say) gets no retries.
type takeRetry struct {
	max      int
	min, cap time.Duration
}

// sendMark is an argument of the take that counts how often the command
// was written to a connection: go-redis marshals each argument as it
// writes the command.
type sendMark struct {
	v    []byte
	sent atomic.Int32
}

// MarshalBinary returns the argument's bytes, and counts a send.
func (m *sendMark) MarshalBinary() ([]byte, error) {
	m.sent.Add(1)
	return m.v, nil
}

// noRetry is a command go-redis sends once: sendTake retries it.
type noRetry struct{ *redis.Cmd }

func (noRetry) NoRetry() bool { return true }

// takeResult is a take's reply, and what callTake knows of the call.
type takeResult struct {
	takeReply
	decisions []limiter.Decision // of the checks reached; nil when none were applied
	atOnce    bool               // the checks ran beside the take (a Cluster), not in it
	limitsErr error              // with atOnce: the checks failed
	sentAt    time.Time          // this host's clock when the take was sent
	epoch     string             // the dataset it was sent to, as last seen
	deadline  int64              // by Redis's clock, ms: after it, its claim may have expired; 0: unknown
	ran       bool               // a failed take may have run in Redis (else it holds nothing)
}

// refusedAtOnce reports whether checks, applied beside the take, denied
// it or failed: the take must be undone.
func (t takeResult) refusedAtOnce(checks []limiter.Check) bool {
	return t.atOnce && (t.limitsErr != nil || !limiter.Allowed(checks, t.decisions))
}

// callTake runs c with checks: in the script where every key may share a
// slot (a single Redis), else at the same time as the take. The take is
// followed by WAIT when the Store waits for replicas, and a failed attempt
// is retried as go-redis would. Its error is ErrEmpty (nothing usable, or
// the claim was recovered), limiter.ErrDenied, errTooLate, or the last
// attempt's failure; t.ran says whether a failed take may have run.
func (s *Store) callTake(ctx context.Context, c *takeCall, checks []limiter.Check) (t takeResult, err error) {
	t.sentAt, t.epoch = s.hostNow(), s.datasets.get(c.tag).epoch
	t.deadline = s.redisDeadline(c.tag, t.sentAt)
	c.deadline = t.deadline
	if len(checks) > 0 && s.cluster != nil {
		t.atOnce = true
		var (
			ds   []limiter.Decision
			lerr error
			done = make(chan struct{})
		)
		go func() {
			defer close(done)
			ds, lerr = s.limits.AllowAtOnce(ctx, checks)
		}()
		defer func() { // into the result, once the take is done
			<-done
			t.decisions, t.limitsErr = ds, lerr
		}()
	} else if len(checks) > 0 {
		c.limitKeys, c.limitArgs = s.limits.ScriptArgs(checks)
	}
	var (
		node  redis.UniversalClient = s.rdb
		addr  string
		wait  int
		short bool
	)
	if s.waitN > 0 {
		if s.cluster != nil {
			m, err := s.cluster.MasterForKey(ctx, c.k.ready())
			if err != nil {
				return t, storeError("take", err)
			}
			node, addr = m, m.Options().Addr
		}
		if wait, short = s.waitCount(addr); short {
			// Fewer replicas online than asked for: wait for those there
			// are, count the handout as unreplicated, and ask ROLE
			// whether more are back.
			c.counts |= countUnreplicated
		}
	}
	eval := false // EVAL the source: Redis lacks the script (NOSCRIPT)
	for attempt := 0; ; attempt++ {
		// A resend names the dataset the take was first sent to, which
		// refuses it if it was wiped since (an earlier attempt's claim
		// went with it). A first send takes from whatever dataset it
		// finds: after a wipe, before this Store's reservations have seen
		// the new one, it serves from it.
		c.epoch = ""
		if t.ran {
			c.epoch = t.epoch
		}
		before := c.claimTTL.sent.Load()
		keys, args := c.keysArgs()
		v, acked, online, err := s.takeOnce(ctx, node, keys, args, wait, short, eval)
		sent := c.claimTTL.sent.Load() > before
		if s.waitN > 0 {
			s.sawReplicas(addr, acked, online)
		}
		if err == nil {
			if handedOut(v) && (c.counts&countUnreplicated != 0 || wait > 0 && acked < wait) {
				s.unreplicated(ctx, c)
			}
			return s.takeAnswer(c, t, v, checks)
		}
		if !eval && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			// Not run. The WAIT sent with it has already waited for the
			// replicas: wait again only for those it saw (a take after a
			// restart must not wait twice for a replica that is gone).
			eval = true
			if wait > 0 && acked >= 0 && acked < wait {
				wait = acked
				c.counts |= countUnreplicated
			}
			attempt--
			continue
		}
		if sent && !refusedByRedis(err) {
			t.ran = true
		}
		if attempt >= s.retry.max || !retryable(err) || ctx.Err() != nil {
			return t, storeError("take", err)
		}
		timer := time.NewTimer(backoff.Jittered(s.retry.min, s.retry.cap, attempt+1))
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return t, storeError("take", err)
		}
	}
}

// takeAnswer reads the reply v of c into t, and says what it means.
func (s *Store) takeAnswer(c *takeCall, t takeResult, v any, checks []limiter.Check) (takeResult, error) {
	var err error
	if t.takeReply, err = parseTakeReply(v); err != nil {
		return t, err
	}
	s.sawRedisClock(c.tag, t.now)
	s.metrics.waste(profileOf(c.tag), t.evicted)
	if len(checks) > 0 && !t.atOnce && t.status != takeAbandoned && t.status != takeTooLate {
		if t.decisions, err = limiter.Decisions(checks, t.limits); err != nil {
			return t, fmt.Errorf("pool: take: %w", err)
		}
	}
	switch t.status {
	case takeNothing:
		return t, ErrEmpty
	case takeAbandoned:
		return t, fmt.Errorf("%w: the claim was abandoned", ErrEmpty)
	case takeDenied:
		return t, fmt.Errorf("pool: take: %w", limiter.ErrDenied)
	case takeTooLate:
		return t, errTooLate // t.ran: an earlier attempt's entry may be gone with its claim
	}
	return t, nil
}

// handedOut reports whether a takeScript reply handed out a new entry
// (status 1): only those count as unreplicated.
func handedOut(v any) bool {
	reply, ok := v.([]any)
	return ok && len(reply) > 0 && reply[0] == int64(takeHanded)
}

// takeOnce sends the take once: alone, or in one pipeline on node with
// WAIT for wait replicas (so WAIT covers the take's writes and the take
// stays one round trip) and, with role, ROLE. acked is what WAIT answered
// and online the replicas ROLE listed; -1 for what was not asked or not
// answered.
func (s *Store) takeOnce(ctx context.Context, node redis.UniversalClient, keys []string, args []any, wait int, role, eval bool) (v any, acked, online int, err error) {
	cmdArgs := make([]any, 0, 3+len(keys)+len(args))
	if eval {
		cmdArgs = append(cmdArgs, "eval", takeSource)
	} else {
		cmdArgs = append(cmdArgs, "evalsha", takeScript.Hash())
	}
	cmdArgs = append(cmdArgs, len(keys))
	for _, k := range keys {
		cmdArgs = append(cmdArgs, k)
	}
	cmdArgs = append(cmdArgs, args...)
	cmd := noRetry{redis.NewCmd(ctx, cmdArgs...)}
	if wait == 0 && !role {
		_ = node.Process(ctx, cmd)
		v, err = cmd.Result()
		return v, -1, -1, err
	}
	pipe := node.Pipeline()
	_ = pipe.Process(ctx, cmd)
	var w, r *redis.Cmd
	if wait > 0 {
		w = pipe.Do(ctx, "WAIT", wait, s.waitFor.Milliseconds())
	}
	if role {
		r = pipe.Do(ctx, "ROLE")
	}
	_, _ = pipe.Exec(ctx)
	acked, online = -1, -1
	if w != nil {
		if n, err := w.Int64(); err == nil {
			acked = int(n)
		}
	}
	if r != nil {
		if rv, err := r.Result(); err == nil {
			online = roleReplicas(rv)
		}
	}
	v, err = cmd.Result()
	var ne net.Error
	if w != nil && acked < 0 && (err == nil || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()) {
		// Unconfirmed: the caller's deadline, or the read timeout, came
		// first (a WAIT timeout longer than the read timeout). The watch
		// then asks ROLE on the next take.
		acked = 0
	}
	return v, acked, online, err
}

// unreplicated counts a handout fewer replicas than asked acknowledged in
// time, whether WAIT timed out, the caller's deadline came first or too
// few were online to ask (then the script counted it in Redis already).
func (s *Store) unreplicated(ctx context.Context, c *takeCall) {
	if c.counts&countUnreplicated == 0 {
		// Best effort: failing the take for its counter would lose the
		// entry it holds.
		_ = s.count(ctx, c.tag, "unreplicated", 1)
	}
	s.metrics.unreplicate(profileOf(c.tag))
}

// Error replies with which Redis refuses a command without running it:
// those go-redis retries (Redis is between states), then the others.
var (
	passingRefusals = []string{"LOADING", "NOREPLICAS", "MASTERDOWN", "READONLY", "CLUSTERDOWN", "TRYAGAIN"}
	otherRefusals   = []string{"NOSCRIPT", "BUSY", "MOVED", "ASK", "NOAUTH", "NOPERM", "WRONGPASS", "MISCONF"}
)

// refusedWith reports whether err is a Redis error reply starting with
// one of prefixes.
func refusedWith(err error, prefixes []string) bool {
	var re redis.Error
	if !errors.As(err, &re) {
		return false
	}
	for _, p := range prefixes {
		if strings.HasPrefix(re.Error(), p+" ") {
			return true
		}
	}
	return false
}

// refusedByRedis reports whether err is Redis refusing a command without
// running it.
func refusedByRedis(err error) bool {
	return refusedWith(err, passingRefusals) || refusedWith(err, otherRefusals)
}

// retryable reports whether a failed take is worth sending again, as
// go-redis judges it: the connection failed, or Redis is between states.
// A read timeout is not: Redis may be slow, and a retry only adds load.
func retryable(err error) bool {
	var op *net.OpError
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.Is(err, redis.ErrPoolTimeout):
		return true
	case errors.As(err, &op) && op.Op == "dial":
		return true
	}
	return refusedWith(err, passingRefusals)
}
