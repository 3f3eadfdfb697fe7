// Command tokenpool-chaos runs the real thing under faults and accounts
// for every credential the provider minted: tokenpoold replicas as
// processes, a real redis-server primary with a replica and a Sentinel,
// behind a proxy that follows the primary and can delay its replies, the
// simulated provider keeping a ledger of what it minted, and callers that
// record what they received. Meanwhile it kills and restarts replicas
// (kill -9), restarts and wipes Redis, crashes the primary and fails
// over, delays Redis past request deadlines and past the claim TTL, makes
// the provider fail (500, 429, hangs) in bursts, and rotates seal keys
// across rolling restarts. At the end every minted credential must be
// delivered exactly once, still pooled, or counted (wasted, discarded,
// lost, dropped). See RELIABILITY.md.
//
//	tokenpool-chaos -handouts 1000000          the chaos run of RELIABILITY.md
//	tokenpool-chaos -duration 30s              a short run
//	tokenpool-chaos -soak 30m -rate 200        the soak: no faults, 2 replicas, samples every minute
//	tokenpool-chaos -duration 75s -inject drop-take   with a bug injected: the run must fail
//
// Run it from the repository root (it builds ./cmd/tokenpoold unless given
// -tokenpoold). It exits 1 when a credential was delivered twice or is
// unaccounted for.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// options are the command's flags.
type options struct {
	tokenpoold string
	dir        string
	replicas   int
	callers    int
	handouts   int64
	duration   time.Duration
	faultEvery time.Duration
	cycle      bool
	without    string
	seed       uint64
	soak       time.Duration
	rate       float64
	sample     time.Duration
	inject     string
	waitFor    time.Duration
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("tokenpool-chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.tokenpoold, "tokenpoold", "", "the daemon's binary (default: go build ./cmd/tokenpoold)")
	fs.StringVar(&o.dir, "dir", "", "where logs and Redis's files go (default: a new temporary directory)")
	fs.IntVar(&o.replicas, "replicas", 3, "tokenpoold replicas (the soak uses 2)")
	fs.IntVar(&o.callers, "callers", 32, "concurrent callers")
	fs.Int64Var(&o.handouts, "handouts", 0, "stop after this many handouts")
	fs.DurationVar(&o.duration, "duration", 0, "stop after this long (with -handouts: whichever comes first)")
	fs.DurationVar(&o.faultEvery, "fault-every", 3*time.Second, "mean time between faults")
	fs.BoolVar(&o.cycle, "cycle", false, "inject every kind of fault in turn instead of at random")
	fs.StringVar(&o.without, "without", "", "leave out the faults whose names contain this (e.g. \"kill -9\")")
	fs.Uint64Var(&o.seed, "seed", 0, "seed of the fault schedule (default: random)")
	fs.DurationVar(&o.soak, "soak", 0, "run the soak for this long instead: no faults, steady -rate")
	fs.Float64Var(&o.rate, "rate", 200, "handouts per second during the soak")
	fs.DurationVar(&o.sample, "sample", time.Minute, "how often the soak samples the processes")
	fs.DurationVar(&o.waitFor, "wait-timeout", 0, "the daemons' TOKENPOOL_REDIS_WAIT_TIMEOUT, how long a take waits for the replica (default: the daemon's, 50ms)")
	fs.StringVar(&o.inject, "inject", "", "run daemons with this bug injected (leave-pooled, drop-take, drop-recovery, skip-record; built with -tags chaosbug): the run must fail")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if o.soak == 0 && o.handouts <= 0 && o.duration <= 0 {
		fmt.Fprintln(stderr, "tokenpool-chaos: give -handouts, -duration or -soak")
		return 2
	}
	if o.dir == "" {
		d, err := os.MkdirTemp("", "tokenpool-chaos")
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		o.dir = d
	} else if err := os.MkdirAll(o.dir, 0o755); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if o.tokenpoold == "" {
		o.tokenpoold = filepath.Join(o.dir, "tokenpoold")
		build := []string{"build", "-o", o.tokenpoold}
		if o.inject != "" {
			build = append(build, "-tags", "chaosbug")
		}
		if out, err := exec.Command("go", append(build, "./cmd/tokenpoold")...).CombinedOutput(); err != nil {
			fmt.Fprintf(stderr, "go build ./cmd/tokenpoold (run from the repository root, or give -tokenpoold): %v\n%s", err, out)
			return 1
		}
	}
	if o.seed == 0 {
		o.seed = rand.Uint64()
	}
	var err error
	var ok bool
	if o.soak > 0 {
		ok, err = soak(ctx, o, stdout)
	} else {
		ok, err = chaos(ctx, o, stdout, stderr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "tokenpool-chaos: %v (logs in %s)\n", err, o.dir)
		return 1
	}
	if !ok {
		fmt.Fprintf(stderr, "tokenpool-chaos: the promise did not hold (logs in %s)\n", o.dir)
		return 1
	}
	return 0
}

// daemonEnv is the replicas' settings for a run: short deadlines, so that
// faults cross them, and a breaker that closes soon after a burst.
var daemonEnv = []string{
	"TOKENPOOL_REQUEST_TIMEOUT=2s",
	"TOKENPOOL_MINT_TIMEOUT=3s",
	"TOKENPOOL_BREAKER_COOLDOWN=2s",
	"TOKENPOOL_SHUTDOWN_TIMEOUT=10s",
	"TOKENPOOL_POOL_TARGET=200",
}

// chaos runs the chaos run and prints its report. ok is false when the
// promise did not hold.
func chaos(ctx context.Context, o options, stdout, progress io.Writer) (ok bool, err error) {
	env := append([]string{}, daemonEnv...)
	if o.inject != "" {
		env = append(env, "TOKENPOOL_CHAOSBUG="+o.inject)
	}
	if o.waitFor > 0 {
		env = append(env, "TOKENPOOL_REDIS_WAIT_TIMEOUT="+o.waitFor.String())
	}
	w, err := startWorld(ctx, worldConfig{
		Replicas: o.replicas, Tokenpoold: o.tokenpoold, Dir: o.dir,
		AOFDir:     aofDir(o.dir),
		SimLatency: 20 * time.Millisecond, Env: env, Replicated: true,
	})
	if err != nil {
		return false, err
	}
	defer w.close()

	started := time.Now()
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	if o.duration > 0 {
		runCtx, stopRun = context.WithTimeout(ctx, o.duration)
		defer stopRun()
	}
	got := newReceived()
	acc := newAccounts()
	rng := rand.New(rand.NewPCG(o.seed, o.seed^0x9e3779b97f4a7c15))

	faultsDone := make(chan error, 1)
	go func() { faultsDone <- inject(runCtx, w, acc, o.faultEvery, rng, o.cycle, chosen(o.without)) }()
	callersDone := make(chan struct{})
	go func() { (&callers{w: w, got: got, n: o.callers}).run(runCtx); close(callersDone) }()
	go func() { // stop at -handouts, and say how far the run is every 30 s
		last := time.Now()
		for runCtx.Err() == nil && (o.handouts <= 0 || got.handouts.Load() < o.handouts) {
			pause(runCtx, 100*time.Millisecond)
			if time.Since(last) >= 30*time.Second {
				last = time.Now()
				acc.mu.Lock()
				n := 0
				for _, c := range acc.faults {
					n += c
				}
				acc.mu.Unlock()
				fmt.Fprintf(progress, "tokenpool-chaos: %s: %d handouts, %d faults\n",
					time.Since(started).Round(time.Second), got.handouts.Load(), n)
			}
		}
		stopRun()
	}()
	<-runCtx.Done()
	ferr := <-faultsDone // the fault under way has finished: the world is whole
	<-callersDone
	elapsed := time.Since(started)
	if ferr != nil {
		return false, ferr
	}
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	r, err := settle(ctx, w, acc, got)
	if err != nil {
		return false, err
	}
	r.elapsed, r.seed, r.replicas, r.callers = elapsed, o.seed, o.replicas, o.callers
	r.print(stdout)
	return r.holds(), nil
}

// chosen is every fault but those whose names contain without.
func chosen(without string) []fault {
	var out []fault
	for _, f := range faults {
		if without == "" || !strings.Contains(f.name, without) {
			out = append(out, f)
		}
	}
	return out
}

// aofDir puts Redis's append-only file on tmpfs when there is one, so the
// run measures what persistence keeps, not the disk's fsync speed.
func aofDir(dir string) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if d, err := os.MkdirTemp("/dev/shm", "tokenpool-chaos-aof"); err == nil {
			return d
		}
	}
	return filepath.Join(dir, "redis")
}
