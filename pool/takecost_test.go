package pool

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/ledger"
	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/mint"
)

// BenchmarkTakeScriptCost measures what a pooled handout costs Redis:
// the take script with what a request brings (the two rate limits with
// two quotas and the issuance record, the limits alone, nothing), the
// handwritten baseline's two calls (a redis_rate check and a Lua pop,
// BENCHMARKS.md (a)), and cut-down takes, each a take with the two limits
// without one of its parts, to see what each costs. One caller, on a
// redis-server of its own.
//
// With TOKENPOOL_BENCH_CALLGRIND=1 the redis-server runs under valgrind's
// callgrind, and the figure is the instructions Redis executed per
// handout, reading, parsing and answering included: the same for the same
// binary and calls, however loaded the machine. Otherwise it is INFO
// commandstats' µs per call (wall time inside the call).
// TOKENPOOL_BENCH_CALLGRIND_DIR keeps callgrind's dumps (cg.out.<n>, one
// per sub-benchmark run) for callgrind_annotate. Run it alone:
//
//	TOKENPOOL_BENCH_CALLGRIND=1 go test -run '^$' -bench BenchmarkTakeScriptCost -benchtime 2000x ./pool
func BenchmarkTakeScriptCost(b *testing.B) {
	rdb, meter := costMeter(b)
	ctx := context.Background()
	body, _ := encodeEntry(mint.Credential{
		Token:      "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + strings.Repeat("eyJpc3MiOiJvcmdhLXNpbSJ9", 9) + ".x9Q1h0c2d8aB4vN3mK7pL2sT6uW1yZ5cE0fG3hJ8kM",
		ICEServers: []byte(`[{"urls":"stun:stun1.l.google.com:19302"},{"urls":["turn:turn.orga-ai.com:3478"],"username":"1795341606:1ef348f1c624","credential":"+Id9T87DuLHMpwsdvQp6ChAnD6w="}]`),
		ExpiresAt:  time.Now().Add(time.Hour),
	})
	limits := []limiter.Check{
		{Policy: "ip", Key: "ip:127.0.0.1", Limit: limiter.Limit{Rate: 1e9, Burst: 1e9, Period: time.Minute}},
		{Policy: "user", Key: "user:alice", Limit: limiter.Limit{Rate: 1e9, Burst: 1e9, Period: time.Minute}},
	}
	quotas := append(limits,
		limiter.Check{Policy: "sessions-24h", Key: "quota:user:alice", Quota: true, Limit: limiter.Limit{Rate: 1e9, Period: 24 * time.Hour}},
		limiter.Check{Policy: "org-sessions-24h", Key: "quota:org:acme", Quota: true, Limit: limiter.Limit{Rate: 1e9, Period: 24 * time.Hour}},
	)
	// Each line starts on an empty Redis, so none pays for expiring what
	// another left (claims, undo records).
	flush := func(b *testing.B) {
		if err := rdb.FlushAll(ctx).Err(); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("handwritten: a redis_rate check and a Lua pop", func(b *testing.B) {
		flush(b)
		prefix := "hand" + uuid.NewString()[:8]
		fillCostPool(b, rdb, prefix+":ready", prefix+":e", body, b.N)
		rl := redis_rate.NewLimiter(rdb)
		meter.start(b)
		for range b.N {
			if _, err := rl.Allow(ctx, "ip:127.0.0.1", redis_rate.PerMinute(1e9)); err != nil {
				b.Fatal(err)
			}
			if err := handwrittenPop.Run(ctx, rdb, []string{prefix + ":ready", prefix + ":e"}).Err(); err != nil {
				b.Fatal(err)
			}
		}
		meter.stop(b, b.N)
	})
	for _, tc := range []struct {
		name   string
		checks []limiter.Check
		ledger bool
		cut    []string // pairs: a part of the script, and what stands in for it
	}{
		{"take: two rate limits, two quotas and the record", quotas, true, nil},
		{"take: two rate limits", limits, false, nil},
		{"take: one rate limit", limits[:1], false, nil},
		{"take alone", nil, false, nil},
		{"take: two rate limits, cut: the ledger's TTL and bound", limits, false, []string{
			"  ledgerKept(handed, stats, hit_retire, now, ledger_max, tonumber(t[2]))\n", ""}},
		{"take: two rate limits, cut: the demand rates", limits, false, []string{
			"if counts % 2 == 1 and not claimed then", "if false then"}},
		{"take: two rate limits, cut: the claim's body", limits, false, []string{
			"redis.call('SET', claim_key, hit .. ' ' .. fmt(hit_retire) .. ' ' .. hit_body, 'PX', claim_ttl)",
			"redis.call('SET', claim_key, hit .. ' ' .. fmt(hit_retire), 'PX', claim_ttl)"}},
		{"take: two rate limits, cut: the handout ledger", limits, false, []string{
			"if redis.call('ZADD', handed, 'NX', fmt(retire), id) == 0 then", "if false then",
			"  ledgerKept(handed, stats, hit_retire, now, ledger_max, tonumber(t[2]))\n", ""}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if tc.cut != nil {
				src := takeSource
				for i := 0; i < len(tc.cut); i += 2 {
					if !strings.Contains(src, tc.cut[i]) {
						b.Fatalf("the take script no longer has %q", tc.cut[i])
					}
					src = strings.Replace(src, tc.cut[i], tc.cut[i+1], 1)
				}
				savedSource, savedScript := takeSource, takeScript
				takeSource, takeScript = src, redis.NewScript(src)
				b.Cleanup(func() { takeSource, takeScript = savedSource, savedScript })
			}
			flush(b)
			cfg := StoreConfig{KeyPrefix: "bench" + uuid.NewString()[:8]}
			if tc.ledger {
				cfg.Ledger = ledger.Config{Key: []byte("0123456789abcdef0123456789abcdef")}
			}
			st := NewStore(rdb, cfg)
			k := st.keys("default")
			fillCostPool(b, rdb, k.ready(), k.entries(), body, b.N)
			var rec []any
			if tc.ledger {
				pr := &profile{Profile: Profile{Name: "default", ProviderName: "orga"}, tags: []string{"default"}}
				rec = st.recordArgs(pr, issuance{requestID: "r", who: &mint.Caller{Subject: "user:alice", Tenant: "acme"}}, SourcePool)
			}
			// The script is loaded before the count starts.
			if _, _, err := st.takeFrom(ctx, "default", "warm", 30*time.Second, tc.checks, countDemand|countMiss, rec); err != nil {
				b.Fatal(err)
			}
			meter.start(b)
			for i := range b.N - 1 {
				if _, _, err := st.takeFrom(ctx, "default", "req-"+strconv.Itoa(i), 30*time.Second, tc.checks, countDemand|countMiss, rec); err != nil {
					b.Fatal(err)
				}
			}
			meter.stop(b, b.N-1)
		})
	}
}

// handwrittenPop is the handwritten baseline's pop (cmd/tokenpool-bench).
var handwrittenPop = redis.NewScript(`
local e = redis.call('ZPOPMIN', KEYS[1])
if #e == 0 then return false end
local body = redis.call('HGET', KEYS[2], e[1])
redis.call('HDEL', KEYS[2], e[1])
return body
`)

// fillCostPool pools n entries of body under the ready and entries keys.
func fillCostPool(b *testing.B, rdb *redis.Client, ready, entries string, body []byte, n int) {
	b.Helper()
	ctx := context.Background()
	retire := float64(time.Now().Add(time.Hour).UnixMilli())
	for i := 0; i < n; i += 1000 {
		if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j := i; j < min(i+1000, n); j++ {
				id := fmt.Sprintf("e%d", j)
				p.ZAdd(ctx, ready, redis.Z{Score: retire, Member: id})
				p.HSet(ctx, entries, id, body)
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
}

// meter counts what Redis spent between start and stop, per operation.
type meter struct {
	start func(*testing.B)
	stop  func(b *testing.B, ops int)
}

// costMeter starts the redis-server the cost is measured on: under
// callgrind with TOKENPOOL_BENCH_CALLGRIND=1 (instructions per op), else
// a plain one (commandstats µs per script call).
func costMeter(b *testing.B) (*redis.Client, meter) {
	b.Helper()
	if os.Getenv("TOKENPOOL_BENCH_CALLGRIND") == "" {
		rdb := redistest.StartProcess(b).Client()
		var before commandStat
		return rdb, meter{
			start: func(b *testing.B) { before = evalStats(b, rdb); b.ResetTimer() },
			stop: func(b *testing.B, ops int) {
				b.StopTimer()
				after := evalStats(b, rdb)
				b.ReportMetric(float64(after.usec-before.usec)/float64(max(ops, 1)), "redis-µs/op")
			},
		}
	}
	for _, bin := range []string{"valgrind", "callgrind_control", "redis-server"} {
		if _, err := exec.LookPath(bin); err != nil {
			b.Skipf("%s not on PATH", bin)
		}
	}
	dir := os.Getenv("TOKENPOOL_BENCH_CALLGRIND_DIR") // keeps the dumps, for callgrind_annotate
	if dir == "" {
		dir = b.TempDir()
	}
	port := strconv.Itoa(redistest.FreePort(b))
	cmd := exec.Command("valgrind", "--tool=callgrind", "--callgrind-out-file="+filepath.Join(dir, "cg.out"),
		"redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	rdb := redis.NewClient(&redis.Options{Addr: net.JoinHostPort("127.0.0.1", port), ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
	b.Cleanup(func() { _ = rdb.Close() })
	poll.Until(b, "redis-server under callgrind to answer", time.Minute, func() bool { return rdb.Ping(context.Background()).Err() == nil })
	pid := strconv.Itoa(cmd.Process.Pid)
	control := func(b *testing.B, arg string) {
		if out, err := exec.Command("callgrind_control", arg, pid).CombinedOutput(); err != nil {
			b.Fatalf("callgrind_control %s: %v\n%s", arg, err, out)
		}
	}
	dumps := 0
	return rdb, meter{
		start: func(b *testing.B) { control(b, "-z"); b.ResetTimer() },
		stop: func(b *testing.B, ops int) {
			b.StopTimer()
			control(b, "-d")
			dumps++
			out, err := os.ReadFile(filepath.Join(dir, "cg.out."+strconv.Itoa(dumps)))
			if err != nil {
				b.Fatal(err)
			}
			for _, l := range strings.Split(string(out), "\n") {
				if v, ok := strings.CutPrefix(l, "summary: "); ok {
					ir, _ := strconv.ParseFloat(strings.Fields(v)[0], 64)
					b.ReportMetric(ir/float64(max(ops, 1)), "redis-instructions/op")
					return
				}
			}
			b.Fatal("no summary in the callgrind dump")
		},
	}
}

// evalStats is INFO commandstats' line of EVALSHA and EVAL together.
func evalStats(tb testing.TB, rdb *redis.Client) commandStat {
	tb.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		tb.Fatal(err)
	}
	var out commandStat
	for _, l := range strings.Split(info, "\n") {
		l = strings.TrimSpace(l)
		rest, ok := strings.CutPrefix(l, "cmdstat_evalsha:")
		if !ok {
			rest, ok = strings.CutPrefix(l, "cmdstat_eval:")
		}
		if !ok {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			n, _ := strconv.ParseInt(v, 10, 64)
			switch k {
			case "calls":
				out.calls += n
			case "usec":
				out.usec += n
			}
		}
	}
	return out
}

// commandStat is one command's calls and µs in INFO commandstats.
type commandStat struct{ calls, usec int64 }
