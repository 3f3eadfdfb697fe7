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

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tokenpool-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		sf                          ScenarioFlags
		targets, route, profile     string
		jwtSecret, adminKey, outDir string
		users, maxInFlight, warm    int
		minRemaining, timeout       time.Duration
		local, simQuota, poolTarget int
		tokenpoold, baseline        string
		simLatency, simTTL          time.Duration
		direct, cold                bool
		prewarm                     int
		prewarmBefore, prewarmHold  time.Duration
		env                         listFlag
		serve, listen, redisURL     string
		format                      string
	)
	fs.StringVar(&sf.Name, "scenario", "steady", "steady, step, spike, ramp, max (closed loop) or memory")
	fs.Float64Var(&sf.Rate, "rate", 50, "requests per second: steady; the step's rate; spike: the base rate")
	fs.Float64Var(&sf.From, "from", 0, "ramp: first rate; step: rate before the step")
	fs.Float64Var(&sf.To, "to", 200, "ramp: last rate")
	fs.DurationVar(&sf.Duration, "duration", 30*time.Second, "how long the load runs")
	fs.DurationVar(&sf.StepAt, "step-at", 5*time.Second, "step: when the rate jumps")
	fs.DurationVar(&sf.SpikeAt, "spike-at", 10*time.Second, "spike: when it starts")
	fs.DurationVar(&sf.SpikeLength, "spike-duration", 5*time.Second, "spike: how long it lasts")
	fs.Float64Var(&sf.SpikeRate, "spike-rate", 500, "spike: its rate")
	fs.DurationVar(&sf.IdleAfter, "idle-after", 0, "steady: stop sending after this and stay idle to -duration")
	fs.IntVar(&sf.MaxConcurrency, "concurrency", 32, "max: concurrent callers")
	fs.StringVar(&targets, "targets", "", "comma-separated base URLs of running replicas")
	fs.StringVar(&route, "route", "session", "session (POST /v1/session-config), orga (GET /api/orga-client-secrets) or navai")
	fs.StringVar(&profile, "profile", "", "profile to ask for (default: the daemon's default)")
	fs.StringVar(&jwtSecret, "jwt-secret", os.Getenv("TOKENPOOL_JWT_SECRET"), "HS256 secret to sign the virtual users' JWTs (with -targets)")
	fs.StringVar(&adminKey, "admin-key", os.Getenv("TOKENPOOL_ADMIN_KEY"), "admin key, to chart the pool and prewarm (with -targets)")
	fs.IntVar(&users, "users", 100, "virtual users, each with its own JWT")
	fs.DurationVar(&minRemaining, "min-remaining", 30*time.Second, "least life a credential must have when received")
	fs.DurationVar(&timeout, "timeout", 10*time.Second, "client timeout of one request")
	fs.IntVar(&maxInFlight, "max-in-flight", 20000, "open loop: requests in flight before new ones are dropped")
	fs.IntVar(&warm, "warm", 10, "seconds at the start left out of the 'after warm-up' pool share")
	fs.StringVar(&format, "format", "text", "stdout: text (the summary) or vegeta (vegeta's JSON report, the summary on stderr)")
	fs.StringVar(&outDir, "out", "", "directory for result.json and report.html (default bench-results/<scenario>-<time>)")
	fs.IntVar(&local, "local", 0, "start N tokenpoold replicas, a redis-server and the simulated provider")
	fs.StringVar(&tokenpoold, "tokenpoold", "", "the daemon's binary for -local (default: go build ./cmd/tokenpoold)")
	fs.DurationVar(&simLatency, "sim-latency", 100*time.Millisecond, "-local: simulated provider latency per call")
	fs.DurationVar(&simTTL, "sim-ttl", 120*time.Second, "-local: credential TTL")
	fs.IntVar(&simQuota, "sim-quota", 0, "-local: provider mints per second, also the fleet's TOKENPOOL_UPSTREAM_RATE; 0: unlimited")
	fs.IntVar(&poolTarget, "pool-target", 20, "-local: TOKENPOOL_POOL_TARGET (the floor)")
	fs.BoolVar(&direct, "direct", false, "-local: no pool; every handout is minted for its request")
	fs.BoolVar(&cold, "cold", false, "-local: start the load at once instead of when the pool holds its floor")
	fs.Var(&env, "env", "-local: extra KEY=VALUE for the replicas (repeatable)")
	fs.StringVar(&baseline, "baseline", "", "start a baseline instead: bare (a Gin handler answering the same bytes), redis (plus one Redis GET) or handwritten (one redis_rate check and one Lua pop, no auth, no logs)")
	fs.IntVar(&prewarm, "prewarm", 0, "prewarm the profile to N ready before the load (needs an admin key); memory: credentials to measure")
	fs.DurationVar(&prewarmBefore, "prewarm-before", time.Minute, "how long before the load the prewarm is set")
	fs.DurationVar(&prewarmHold, "prewarm-hold", -1, "how long into the load the prewarm lasts (default: the whole load; 0: it ends as the load starts)")
	fs.StringVar(&serve, "serve-baseline", "", "internal: serve a baseline")
	fs.StringVar(&listen, "listen", "127.0.0.1:0", "internal: the baseline's address")
	fs.StringVar(&redisURL, "redis-url", "", "internal: the redis baseline's Redis")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "tokenpool-bench: "+format+"\n", a...)
		return 1
	}
	if serve != "" {
		if err := serveBaseline(ctx, serve, listen, redisURL); err != nil {
			return fail("%v", err)
		}
		return 0
	}

	memory := sf.Name == "memory"
	report := stdout // the summary
	switch {
	case format == "vegeta" && memory:
		fmt.Fprintln(stderr, "tokenpool-bench: -format vegeta reports requests; the memory scenario sends none")
		return 2
	case format == "vegeta":
		report = stderr
	case format != "text":
		fmt.Fprintf(stderr, "tokenpool-bench: -format %q: want text or vegeta\n", format)
		return 2
	}
	sc := Scenario{Name: "memory", Describe: fmt.Sprintf("memory of %d pooled credentials", prewarm)}
	if !memory {
		var err error
		if sc, err = sf.Build(); err != nil {
			fmt.Fprintln(stderr, "tokenpool-bench:", err)
			return 2
		}
	} else if prewarm <= 0 || local <= 0 {
		fmt.Fprintln(stderr, "tokenpool-bench: memory needs -local N and -prewarm N")
		return 2
	}
	if outDir == "" {
		outDir = filepath.Join("bench-results", sc.Name+"-"+time.Now().Format("20060102-150405"))
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fail("%v", err)
	}
	cfg := map[string]string{}
	fs.Visit(func(f *flag.Flag) {
		if f.Name != "jwt-secret" && f.Name != "admin-key" {
			cfg[f.Name] = f.Value.String()
		}
	})

	var (
		world   *World
		mode    string
		check   = true
		foreign func(string) bool
	)
	switch {
	case baseline != "":
		w, err := StartWorld(ctx, WorldConfig{Dir: outDir, SimTTL: simTTL})
		if err != nil {
			return fail("%v", err)
		}
		world = w
		url, cmd, err := startBaseline(ctx, baseline, w.RedisURL, outDir)
		if err != nil {
			w.Close()
			return fail("baseline: %v", err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		targets, check, mode = url, false, "baseline "+baseline
		jwtSecret = randomHex(32)
	case local > 0:
		if tokenpoold == "" {
			tokenpoold = filepath.Join(outDir, "tokenpoold")
			if out, err := exec.Command("go", "build", "-o", tokenpoold, "./cmd/tokenpoold").CombinedOutput(); err != nil {
				return fail("go build ./cmd/tokenpoold (run from the repository root, or give -tokenpoold): %v\n%s", err, out)
			}
		}
		w, err := StartWorld(ctx, WorldConfig{
			Replicas: local, Tokenpoold: tokenpoold, Dir: outDir, SimLatency: simLatency, SimTTL: simTTL,
			SimQuota: simQuota, PoolTarget: poolTarget, Direct: direct, Env: env,
		})
		if err != nil {
			return fail("%v", err)
		}
		world = w
		targets, jwtSecret, adminKey = strings.Join(w.Targets, ","), w.JWTSecret, w.AdminKey
		foreign = func(t string) bool { _, ok := w.Sim.Lookup(t); return !ok }
		pool := "pool (floor " + fmt.Sprint(poolTarget) + ")"
		if direct {
			pool = "no pool (minting per request)"
		}
		quota := "unlimited"
		if simQuota > 0 {
			quota = fmt.Sprintf("%d mints/s", simQuota)
		}
		mode = fmt.Sprintf("%d local tokenpoold replicas, %s; simulated provider: %v per call, TTL %v, quota %s", local, pool, simLatency, simTTL, quota)
		if cold && !direct {
			mode += "; cold start"
		}
	default:
		if targets == "" || jwtSecret == "" {
			fmt.Fprintln(stderr, "tokenpool-bench: give -local N, -baseline, or -targets with -jwt-secret")
			return 2
		}
		mode = "targets " + targets
	}
	if world != nil {
		defer world.Close()
	}

	tokens, err := userTokens(jwtSecret, users, sf.Duration+prewarmBefore+time.Hour)
	if err != nil {
		return fail("%v", err)
	}
	ts := strings.Split(targets, ",")
	admin := &adminClient{base: ts[0], key: adminKey, profile: profile}
	if admin.profile == "" {
		admin.profile = "default"
	}

	if local > 0 && !direct && !cold {
		// A running daemon's pool sits at its floor; the load starts there.
		if err := poll.Wait(ctx, time.Minute, func() bool {
			s, err := admin.state(ctx)
			return err == nil && s.Usable >= poolTarget
		}); err != nil {
			return fail("the pool did not reach its floor of %d: %v", poolTarget, err)
		}
	}

	if memory {
		res, err := measureMemory(ctx, world, admin, prewarm)
		if err != nil {
			return fail("memory: %v", err)
		}
		res.Mode, res.Config, res.Describe = mode, cfg, sc.Describe
		res.summary(stdout)
		if err := res.write(outDir); err != nil {
			return fail("%v", err)
		}
		fmt.Fprintf(stdout, "\nwrote %s and %s\n", filepath.Join(outDir, "result.json"), filepath.Join(outDir, "report.html"))
		return 0
	}

	if prewarm > 0 {
		if adminKey == "" {
			return fail("-prewarm needs an admin key")
		}
		hold := prewarmHold
		if hold < 0 {
			hold = sc.Duration + 10*time.Second
		}
		until := time.Now().Add(prewarmBefore + hold)
		if err := admin.prewarm(ctx, prewarm, until); err != nil {
			return fail("prewarm: %v", err)
		}
		mode += fmt.Sprintf("; prewarm %d set %v before", prewarm, prewarmBefore)
		select {
		case <-time.After(prewarmBefore):
		case <-ctx.Done():
			return 1
		}
	}

	start := time.Now().Add(20 * time.Millisecond)
	rec := NewRecorder(start, minRemaining, foreign)
	load := &Load{
		Targets: ts, Route: route, Profile: profile, Users: tokens, MinRemaining: minRemaining, Check: check,
		MaxInFlight: maxInFlight, Foreign: foreign, rec: rec,
		Client: &http.Client{Timeout: timeout, Transport: &http.Transport{
			MaxIdleConns: 4096, MaxIdleConnsPerHost: 2048, IdleConnTimeout: time.Minute,
		}},
	}
	pollCtx, stopPoll := context.WithCancel(ctx)
	polled := make(chan struct{})
	go func() { defer close(polled); admin.poll(pollCtx, rec) }()
	if sc.Name == "max" {
		load.Closed(ctx, sf.MaxConcurrency, sc.Duration)
	} else {
		load.Open(ctx, sc, start)
	}
	stopPoll()
	<-polled

	res := rec.result(sc, mode, cfg, start, warm)
	res.summary(report)
	if err := res.write(outDir); err != nil {
		return fail("%v", err)
	}
	if format == "vegeta" {
		if err := vegeta.NewJSONReporter(res.Vegeta).Report(stdout); err != nil {
			return fail("%v", err)
		}
	}
	fmt.Fprintf(report, "\nwrote %s, %s and %s\n", filepath.Join(outDir, "result.json"),
		filepath.Join(outDir, "vegeta.json"), filepath.Join(outDir, "report.html"))
	if res.Checks.Duplicates > 0 || res.Checks.ShortLived > 0 || res.Checks.Foreign > 0 {
		fmt.Fprintln(stderr, "tokenpool-bench: credential checks failed")
		return 3
	}
	return 0
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
