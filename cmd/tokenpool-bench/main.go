// Command tokenpool-bench load-tests tokenpool the way its users do before
// a launch: an open-loop load (requests leave on schedule whatever the
// answers do) of virtual users with their own JWTs, spread over several
// replicas, in scenarios steady, step, spike and ramp, or a closed loop
// (max) to find the most a server sustains. It checks that every
// credential is unique across all replicas and has the minimum life left,
// and writes a summary, result.json, vegeta.json (vegeta's JSON report,
// also on stdout with -format vegeta) and a self-contained report.html.
//
// It can start its own world (-local N: redis-server, the simulated
// provider, N tokenpoold replicas), the baselines (-baseline bare|redis|handwritten)
// and a per-request minting mode (-local N -direct).
//
//	go run ./cmd/tokenpool-bench -local 2 -scenario ramp -from 5 -to 200 -duration 60s -sim-latency 100ms -sim-quota 300
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/tokenpool/tokenpool/internal/poll"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// listFlag is a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// options are the command's flags.
type options struct {
	sf                          ScenarioFlags
	targets, route, profile     string
	jwtSecret, adminKey, outDir string
	users, maxInFlight, warm    int
	minRemaining, timeout       time.Duration
	local, simQuota, poolTarget int
	tokenpoold, baseline        string
	simLatency, simTTL          time.Duration
	direct, cold, pprof         bool
	prewarm, rounds             int
	prewarmBefore, prewarmHold  time.Duration
	env                         listFlag
	serve, listen, redisURL     string
	format                      string
}

// parseFlags reads args into options.
func parseFlags(args []string, stderr io.Writer) (*options, *flag.FlagSet, error) {
	o := &options{}
	fs := flag.NewFlagSet("tokenpool-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.sf.Name, "scenario", "steady", "steady, step, spike, ramp, max (closed loop), memory or cpu (CPU per request of the handwritten baseline and tokenpoold, closed loop)")
	fs.Float64Var(&o.sf.Rate, "rate", 50, "requests per second: steady; the step's rate; spike: the base rate")
	fs.Float64Var(&o.sf.From, "from", 0, "ramp: first rate; step: rate before the step")
	fs.Float64Var(&o.sf.To, "to", 200, "ramp: last rate")
	fs.DurationVar(&o.sf.Duration, "duration", 30*time.Second, "how long the load runs")
	fs.DurationVar(&o.sf.StepAt, "step-at", 5*time.Second, "step: when the rate jumps")
	fs.DurationVar(&o.sf.SpikeAt, "spike-at", 10*time.Second, "spike: when it starts")
	fs.DurationVar(&o.sf.SpikeLength, "spike-duration", 5*time.Second, "spike: how long it lasts")
	fs.Float64Var(&o.sf.SpikeRate, "spike-rate", 500, "spike: its rate")
	fs.DurationVar(&o.sf.IdleAfter, "idle-after", 0, "steady: stop sending after this and stay idle to -duration")
	fs.IntVar(&o.sf.MaxConcurrency, "concurrency", 32, "max: concurrent callers")
	fs.StringVar(&o.targets, "targets", "", "comma-separated base URLs of running replicas")
	fs.StringVar(&o.route, "route", "session", "session (POST /v1/session-config), orga (GET /api/orga-client-secrets) or navai")
	fs.StringVar(&o.profile, "profile", "", "profile to ask for (default: the daemon's default)")
	fs.StringVar(&o.jwtSecret, "jwt-secret", os.Getenv("TOKENPOOL_JWT_SECRET"), "HS256 secret to sign the virtual users' JWTs (with -targets)")
	fs.StringVar(&o.adminKey, "admin-key", os.Getenv("TOKENPOOL_ADMIN_KEY"), "admin key, to chart the pool and prewarm (with -targets)")
	fs.IntVar(&o.users, "users", 100, "virtual users, each with its own JWT")
	fs.DurationVar(&o.minRemaining, "min-remaining", 30*time.Second, "least life a credential must have when received")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "client timeout of one request")
	fs.IntVar(&o.maxInFlight, "max-in-flight", 20000, "open loop: requests in flight before new ones are dropped")
	fs.IntVar(&o.warm, "warm", 10, "seconds at the start left out of the 'after warm-up' pool share")
	fs.StringVar(&o.format, "format", "text", "stdout: text (the summary) or vegeta (vegeta's JSON report, the summary on stderr)")
	fs.StringVar(&o.outDir, "out", "", "directory for result.json and report.html (default bench-results/<scenario>-<time>)")
	fs.IntVar(&o.local, "local", 0, "start N tokenpoold replicas, a redis-server and the simulated provider")
	fs.StringVar(&o.tokenpoold, "tokenpoold", "", "the daemon's binary for -local (default: go build ./cmd/tokenpoold)")
	fs.DurationVar(&o.simLatency, "sim-latency", 100*time.Millisecond, "-local: simulated provider latency per call")
	fs.DurationVar(&o.simTTL, "sim-ttl", 120*time.Second, "-local: credential TTL")
	fs.IntVar(&o.simQuota, "sim-quota", 0, "-local: provider mints per second, also the fleet's TOKENPOOL_UPSTREAM_RATE; 0: unlimited")
	fs.IntVar(&o.poolTarget, "pool-target", 20, "-local: TOKENPOOL_POOL_TARGET (the floor)")
	fs.BoolVar(&o.direct, "direct", false, "-local: no pool; every handout is minted for its request")
	fs.BoolVar(&o.cold, "cold", false, "-local: start the load at once instead of when the pool holds its floor")
	fs.Var(&o.env, "env", "-local: extra KEY=VALUE for the replicas (repeatable)")
	fs.StringVar(&o.baseline, "baseline", "", "start a baseline instead: bare (a Gin handler answering the same bytes), redis (plus one Redis GET) or handwritten (one redis_rate check and one Lua pop, no auth, no logs)")
	fs.IntVar(&o.prewarm, "prewarm", 0, "prewarm the profile to N ready before the load (needs an admin key); memory: credentials to measure; cpu: credentials pooled before each line (default 15,000 per second of -duration, at most 100,000)")
	fs.DurationVar(&o.prewarmBefore, "prewarm-before", time.Minute, "how long before the load the prewarm is set")
	fs.DurationVar(&o.prewarmHold, "prewarm-hold", -1, "how long into the load the prewarm lasts (default: the whole load; 0: it ends as the load starts)")
	fs.IntVar(&o.rounds, "rounds", 3, "cpu: how often every line runs; each figure is the median of its rounds")
	fs.BoolVar(&o.pprof, "pprof", false, "cpu: also take a CPU profile of tokenpoold during each line (cpu-*.pprof); it costs CPU itself, so keep it off for the table")
	fs.StringVar(&o.serve, "serve-baseline", "", "internal: serve a baseline")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:0", "internal: the baseline's address")
	fs.StringVar(&o.redisURL, "redis-url", "", "internal: the redis baseline's Redis")
	return o, fs, fs.Parse(args)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, fs, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fail := func(f string, a ...any) int {
		fmt.Fprintf(stderr, "tokenpool-bench: "+f+"\n", a...)
		return 1
	}
	if o.serve != "" {
		if err := serveBaseline(ctx, o.serve, o.listen, o.redisURL); err != nil {
			return fail("%v", err)
		}
		return 0
	}

	sc, err := o.scenario()
	if err != nil {
		fmt.Fprintln(stderr, "tokenpool-bench:", err)
		return 2
	}
	memory := sc.Name == "memory"
	report := stdout // the summary
	if o.format == "vegeta" {
		report = stderr
	}
	if o.outDir == "" {
		o.outDir = filepath.Join("bench-results", sc.Name+"-"+time.Now().Format("20060102-150405"))
	}
	if err := os.MkdirAll(o.outDir, 0o755); err != nil {
		return fail("%v", err)
	}
	if sc.Name == "cpu" {
		if err := o.runCPU(ctx, stdout); err != nil {
			return fail("cpu: %v", err)
		}
		fmt.Fprintf(stdout, "\nwrote %s\n", filepath.Join(o.outDir, "cpu.json"))
		return 0
	}
	cfg := map[string]string{}
	fs.Visit(func(f *flag.Flag) {
		if f.Name != "jwt-secret" && f.Name != "admin-key" {
			cfg[f.Name] = f.Value.String()
		}
	})

	w, err := o.startWorld(ctx)
	if err != nil {
		var usage usageError
		if errors.As(err, &usage) {
			fmt.Fprintln(stderr, "tokenpool-bench:", err)
			return 2
		}
		return fail("%v", err)
	}
	defer w.stop()
	world, mode, check, foreign := w.world, w.mode, w.check, w.foreign

	tokens, err := userTokens(o.jwtSecret, o.users, o.sf.Duration+o.prewarmBefore+time.Hour)
	if err != nil {
		return fail("%v", err)
	}
	ts := strings.Split(o.targets, ",")
	admin := &adminClient{base: ts[0], key: o.adminKey, profile: o.profile}
	if admin.profile == "" {
		admin.profile = "default"
	}

	if o.local > 0 && !o.direct && !o.cold {
		// A running daemon's pool sits at its floor; the load starts there.
		if err := poll.Wait(ctx, time.Minute, func() bool {
			s, err := admin.state(ctx)
			return err == nil && s.Usable >= o.poolTarget
		}); err != nil {
			return fail("the pool did not reach its floor of %d: %v", o.poolTarget, err)
		}
	}

	if memory {
		res, err := measureMemory(ctx, world, admin, o.prewarm)
		if err != nil {
			return fail("memory: %v", err)
		}
		res.Mode, res.Config, res.Describe = mode, cfg, sc.Describe
		res.summary(stdout)
		if err := res.write(o.outDir); err != nil {
			return fail("%v", err)
		}
		fmt.Fprintf(stdout, "\nwrote %s and %s\n", filepath.Join(o.outDir, "result.json"), filepath.Join(o.outDir, "report.html"))
		return 0
	}

	if o.prewarm > 0 {
		if err := o.prewarmFor(ctx, admin, sc); err != nil {
			return fail("%v", err)
		}
		mode += fmt.Sprintf("; prewarm %d set %v before", o.prewarm, o.prewarmBefore)
	}
	rec, start := o.load(ctx, sc, ts, tokens, admin, check, foreign)
	res := rec.result(sc, mode, cfg, start, o.warm)
	res.summary(report)
	if err := res.write(o.outDir); err != nil {
		return fail("%v", err)
	}
	if o.format == "vegeta" {
		if err := vegeta.NewJSONReporter(res.Vegeta).Report(stdout); err != nil {
			return fail("%v", err)
		}
	}
	fmt.Fprintf(report, "\nwrote %s, %s and %s\n", filepath.Join(o.outDir, "result.json"),
		filepath.Join(o.outDir, "vegeta.json"), filepath.Join(o.outDir, "report.html"))
	if res.Checks.Duplicates > 0 || res.Checks.ShortLived > 0 || res.Checks.Foreign > 0 {
		fmt.Fprintln(stderr, "tokenpool-bench: credential checks failed")
		return 3
	}
	return 0
}

// scenario checks -scenario and -format and builds the scenario.
func (o *options) scenario() (Scenario, error) {
	memory := o.sf.Name == "memory"
	switch {
	case o.format == "vegeta" && memory:
		return Scenario{}, errors.New("-format vegeta reports requests; the memory scenario sends none")
	case o.format != "text" && o.format != "vegeta":
		return Scenario{}, fmt.Errorf("-format %q: want text or vegeta", o.format)
	case memory && (o.prewarm <= 0 || o.local <= 0):
		return Scenario{}, errors.New("memory needs -local N and -prewarm N")
	case memory:
		return Scenario{Name: "memory", Describe: fmt.Sprintf("memory of %d pooled credentials", o.prewarm)}, nil
	case o.sf.Name == "cpu" && (o.local > 0 || o.baseline != "" || o.targets != ""):
		return Scenario{}, errors.New("cpu starts its own servers: no -local, -baseline or -targets")
	case o.sf.Name == "cpu" && (o.sf.Duration <= 0 || o.sf.MaxConcurrency <= 0):
		return Scenario{}, errors.New("cpu needs a positive -duration and -concurrency")
	case o.sf.Name == "cpu":
		return Scenario{Name: "cpu"}, nil
	}
	return o.sf.Build()
}

// started is what the load runs against: the world the command started
// (nil with -targets), how it is described, whether credentials are
// checked, which tokens the provider never minted, and how to stop it.
type started struct {
	world   *World
	mode    string
	check   bool
	foreign func(string) bool
	stop    func()
}

// usageError is a flag combination that can't run (exit status 2).
type usageError string

func (e usageError) Error() string { return string(e) }

// startWorld starts what -baseline or -local asks for, or takes -targets.
func (o *options) startWorld(ctx context.Context) (*started, error) {
	r := &started{check: true, stop: func() {}}
	switch {
	case o.baseline != "":
		w, err := StartWorld(ctx, WorldConfig{Dir: o.outDir, SimTTL: o.simTTL})
		if err != nil {
			return nil, err
		}
		url, cmd, err := startBaseline(ctx, o.baseline, w.RedisURL, o.outDir)
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("baseline: %w", err)
		}
		r.world, r.stop = w, func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); w.Close() }
		o.targets, r.check, r.mode = url, false, "baseline "+o.baseline
		o.jwtSecret = randomHex(32)
	case o.local > 0:
		if err := o.buildDaemon(); err != nil {
			return nil, err
		}
		w, err := StartWorld(ctx, WorldConfig{
			Replicas: o.local, Tokenpoold: o.tokenpoold, Dir: o.outDir, SimLatency: o.simLatency, SimTTL: o.simTTL,
			SimQuota: o.simQuota, PoolTarget: o.poolTarget, Direct: o.direct, Env: o.env,
		})
		if err != nil {
			return nil, err
		}
		r.world, r.stop = w, w.Close
		o.targets, o.jwtSecret, o.adminKey = strings.Join(w.Targets, ","), w.JWTSecret, w.AdminKey
		r.foreign = func(t string) bool { _, ok := w.Sim.Lookup(t); return !ok }
		pool := "pool (floor " + fmt.Sprint(o.poolTarget) + ")"
		if o.direct {
			pool = "no pool (minting per request)"
		}
		quota := "unlimited"
		if o.simQuota > 0 {
			quota = fmt.Sprintf("%d mints/s", o.simQuota)
		}
		r.mode = fmt.Sprintf("%d local tokenpoold replicas, %s; simulated provider: %v per call, TTL %v, quota %s", o.local, pool, o.simLatency, o.simTTL, quota)
		if o.cold && !o.direct {
			r.mode += "; cold start"
		}
	default:
		if o.targets == "" || o.jwtSecret == "" {
			return nil, usageError("give -local N, -baseline, or -targets with -jwt-secret")
		}
		r.mode = "targets " + o.targets
	}
	return r, nil
}

// buildDaemon builds tokenpoold into the output directory unless
// -tokenpoold names a binary.
func (o *options) buildDaemon() error {
	if o.tokenpoold != "" {
		return nil
	}
	o.tokenpoold = filepath.Join(o.outDir, "tokenpoold")
	if out, err := exec.Command("go", "build", "-o", o.tokenpoold, "./cmd/tokenpoold").CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/tokenpoold (run from the repository root, or give -tokenpoold): %v\n%s", err, out)
	}
	return nil
}

// prewarmFor sets the prewarm -prewarm asks for, held -prewarm-hold into
// the load, and waits -prewarm-before.
func (o *options) prewarmFor(ctx context.Context, admin *adminClient, sc Scenario) error {
	if o.adminKey == "" {
		return errors.New("-prewarm needs an admin key")
	}
	hold := o.prewarmHold
	if hold < 0 {
		hold = sc.Duration + 10*time.Second
	}
	until := time.Now().Add(o.prewarmBefore + hold)
	if err := admin.prewarm(ctx, o.prewarm, until); err != nil {
		return fmt.Errorf("prewarm: %w", err)
	}
	select {
	case <-time.After(o.prewarmBefore):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// load runs the scenario against targets, charting the pool meanwhile,
// and returns what it recorded and when it started.
func (o *options) load(ctx context.Context, sc Scenario, targets, tokens []string, admin *adminClient, check bool, foreign func(string) bool) (*Recorder, time.Time) {
	start := time.Now().Add(20 * time.Millisecond)
	rec := NewRecorder(start, o.minRemaining, foreign)
	load := &Load{
		Targets: targets, Route: o.route, Profile: o.profile, Users: tokens, MinRemaining: o.minRemaining, Check: check,
		MaxInFlight: o.maxInFlight, Foreign: foreign, rec: rec,
		Client: &http.Client{Timeout: o.timeout, Transport: &http.Transport{
			MaxIdleConns: 4096, MaxIdleConnsPerHost: 2048, IdleConnTimeout: time.Minute,
		}},
	}
	pollCtx, stopPoll := context.WithCancel(ctx)
	polled := make(chan struct{})
	go func() { defer close(polled); admin.poll(pollCtx, rec) }()
	if sc.Name == "max" {
		load.Closed(ctx, o.sf.MaxConcurrency, sc.Duration)
	} else {
		load.Open(ctx, sc, start)
	}
	stopPoll()
	<-polled
	// The counters once more when the load is over, so that even a run
	// of a few seconds sees them move.
	if admin.key != "" {
		if s, err := admin.state(ctx); err == nil {
			rec.pool(time.Now(), s)
		}
	}

	return rec, start
}

// userTokens signs one JWT per virtual user.
func userTokens(secret string, n int, valid time.Duration) ([]string, error) {
	out := make([]string, n)
	exp := jwt.NewNumericDate(time.Now().Add(valid))
	for i := range out {
		t, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
			Subject: fmt.Sprintf("bench-user-%d", i), ExpiresAt: exp,
		}).SignedString([]byte(secret))
		if err != nil {
			return nil, err
		}
		out[i] = t
	}
	return out, nil
}

// adminClient talks to one replica's admin routes.
type adminClient struct {
	base, key, profile string
}

func (a *adminClient) do(ctx context.Context, method, path, body string, v any) error {
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("X-API-Key", a.key)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if v != nil {
		return json.NewDecoder(resp.Body).Decode(v)
	}
	return nil
}

func (a *adminClient) prewarm(ctx context.Context, ready int, until time.Time) error {
	return a.do(ctx, http.MethodPost, "/v1/admin/profiles/"+a.profile+"/prewarm",
		fmt.Sprintf(`{"ready":%d,"until":%q}`, ready, until.UTC().Format(time.RFC3339)), nil)
}

// poolState is a profile in the admin report.
type poolState struct {
	Name                              string
	Ready, Usable, Target, InFlight   int
	Minted, Wasted, HandedOut, Direct int64
	Cost                              map[string]WindowCost // lastMinute, lastHour
}

// WindowCost is one of the admin report's cost windows.
type WindowCost struct {
	SpanSeconds             float64 `json:"spanSeconds"`
	Mints, Handouts, Wasted int64
	MintsPerHandout         float64 `json:"mintsPerHandout"`
}

func (a *adminClient) state(ctx context.Context) (poolState, error) {
	var r struct{ Profiles []poolState }
	if err := a.do(ctx, http.MethodGet, "/v1/admin/profiles", "", &r); err != nil {
		return poolState{}, err
	}
	for _, p := range r.Profiles {
		if p.Name == a.profile {
			return p, nil
		}
	}
	return poolState{}, fmt.Errorf("no profile %q", a.profile)
}

// poll records the pool's state each second until ctx ends.
func (a *adminClient) poll(ctx context.Context, rec *Recorder) {
	if a.key == "" {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if s, err := a.state(ctx); err == nil {
			rec.pool(time.Now(), s)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// measureMemory prewarms n credentials and measures what Redis and the
// daemons hold for them.
func measureMemory(ctx context.Context, w *World, a *adminClient, n int) (*Result, error) {
	redis0, err := w.RedisMemory(ctx)
	if err != nil {
		return nil, err
	}
	rss0, err := w.RSS()
	if err != nil {
		return nil, err
	}
	if err := a.prewarm(ctx, n, time.Now().Add(20*time.Minute)); err != nil {
		return nil, err
	}
	start := time.Now()
	if err := poll.Wait(ctx, 15*time.Minute, func() bool {
		s, err := a.state(ctx)
		return err == nil && s.Usable >= n && s.InFlight == 0
	}); err != nil {
		return nil, fmt.Errorf("the pool did not reach %d: %w", n, err)
	}
	redis1, _ := w.RedisMemory(ctx)
	rss1, _ := w.RSS()
	const mib = 1 << 20
	per10k := func(b int64) float64 { return float64(b) / float64(n) * 10000 / mib }
	return &Result{
		Scenario: "memory", Started: start, Seconds: time.Since(start).Seconds(), Status: map[string]int{},
		Memory: &Memory{
			Credentials: n, RedisBytes: redis1 - redis0, DaemonRSSBytes: rss1 - rss0,
			RedisPer10k: per10k(redis1 - redis0), DaemonRSSPer10k: per10k(rss1 - rss0),
		},
	}, nil
}
