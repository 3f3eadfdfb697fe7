package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/procfs"
	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/idptest"
	"github.com/tokenpool/tokenpool/internal/poll"
)

// The cpu scenario: what one handout costs the machine, in CPU time per
// request, for the server's process and for Redis's, read from
// /proc/<pid>/stat before and after a closed-loop load (wrk). It runs, in
// one invocation, tokenpoold with HS256, RS256 and ES256 callers (the last
// two from an identity provider's JWKS, each virtual user repeating its
// token), once plain and once with quotas and the issuance ledger on, each
// line right after a line of the handwritten baseline, -rounds times.
// Each tokenpoold line hands out of a pool filled before it, and fails if
// more than one credential per 1,000 handouts was minted during it.

// cpuAlgs are the callers' algorithms, in the order the lines run.
var cpuAlgs = []string{"HS256", "RS256", "ES256"}

// cpuAudience is the aud of every caller JWT of the cpu scenario.
const cpuAudience = "tokenpool-bench"

// CPULine is one line of the cpu scenario.
type CPULine struct {
	Name      string  `json:"name"`
	Requests  int     `json:"requests"` // answered 2xx or 3xx (wrk's count)
	Failed    int     `json:"failed"`   // other answers, and wrk's socket errors; a line with any fails
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"perSecond"`
	// ServerMicros and RedisMicros are CPU time per 200, in µs: the
	// server's process (user + system) and redis-server's.
	ServerMicros float64 `json:"serverMicros"`
	RedisMicros  float64 `json:"redisMicros"`
	// ScriptMicros is the time Redis spent in scripts (EVAL, EVALSHA) per
	// 200, from INFO commandstats: every call the baseline and tokenpoold
	// make is one. It is wall time inside the call, so on a loaded machine
	// it can exceed RedisMicros; the rest of RedisMicros is reading,
	// parsing and answering.
	ScriptMicros float64 `json:"scriptMicros"`
	// Commands is how many commands each 200 cost Redis, by name (the
	// scripts' own calls included).
	Commands map[string]float64 `json:"commands"`
	// ServerRatio and RedisRatio are ServerMicros and RedisMicros over
	// those of the baseline line run just before this one (0 for the
	// baseline itself); a median line has the median of its ratios.
	ServerRatio float64 `json:"serverRatio,omitempty"`
	RedisRatio  float64 `json:"redisRatio,omitempty"`
	// PairedServerMicros and PairedRedisMicros are that baseline line's
	// figures (a median line: their medians), so that a reader sees what
	// each ratio was taken against.
	PairedServerMicros float64 `json:"pairedServerMicros,omitempty"`
	PairedRedisMicros  float64 `json:"pairedRedisMicros,omitempty"`
	// Minted is how many credentials the provider minted during the line:
	// at most one per 1,000 handouts, or the line measured minting too.
	Minted int64 `json:"minted"`
}

// CPUResult is the cpu scenario's cpu.json.
type CPUResult struct {
	Started     time.Time `json:"started"`
	Machine     Machine   `json:"machine"`
	Concurrency int       `json:"concurrency"`
	Duration    string    `json:"duration"`
	// Lines are the medians of Rounds, line by line.
	Lines  []CPULine   `json:"lines"`
	Rounds [][]CPULine `json:"rounds"`
}

// cpuSeconds is a process's user + system CPU time so far, from
// /proc/<pid>/stat.
func cpuSeconds(pid int) (float64, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, err
	}
	return st.CPUTime(), nil
}

// cpuTarget is a server under measurement: where to send requests, and
// the pids whose CPU is counted.
type cpuTarget struct {
	url               string
	server, redis     int
	redisURL          string
	admin             *adminClient // nil for the baseline
	route, profile    string
	concurrency       int
	duration, timeout time.Duration
	// debug is the daemon's pprof address (with -pprof): a CPU profile
	// of the line is written to pprofPath.
	debug, pprofPath string
}

// measure runs wrk's closed loop against t with tokens and returns its
// line. wrk, not this command's own client, makes the load: a client in
// C that parses nothing costs the shared cores a fraction of what a Go
// client does, so the servers' figures are theirs.
func (t cpuTarget) measure(ctx context.Context, name string, tokens []string) (CPULine, error) {
	line := CPULine{Name: name}
	script, err := wrkScript(t, tokens)
	if err != nil {
		return line, err
	}
	defer os.Remove(script)
	var before poolState
	if t.admin != nil {
		if before, err = t.admin.state(ctx); err != nil {
			return line, err
		}
	}
	c0, err := commandStats(ctx, t.redisURL)
	if err != nil {
		return line, err
	}
	s0, err1 := cpuSeconds(t.server)
	r0, err2 := cpuSeconds(t.redis)
	if err := errors.Join(err1, err2); err != nil {
		return line, err
	}
	start := time.Now()
	profiled := profileDuring(ctx, t.debug, t.pprofPath, t.duration)
	out, err := exec.CommandContext(ctx, "wrk", "-t2", "-c"+strconv.Itoa(t.concurrency),
		"-d"+strconv.Itoa(max(int(t.duration.Seconds()), 1))+"s", "--timeout", t.timeout.String(), "-s", script, t.url).CombinedOutput()
	line.Seconds = time.Since(start).Seconds()
	s1, err1 := cpuSeconds(t.server)
	r1, err2 := cpuSeconds(t.redis)
	profiled()
	if err != nil {
		return line, fmt.Errorf("%s: wrk: %v\n%s", name, err, out)
	}
	if err := errors.Join(err1, err2); err != nil {
		return line, err
	}
	var sum struct {
		Requests, Status, Socket int
		Micros                   float64
	}
	_, js, ok := strings.Cut(string(out), "WRK ")
	if !ok || json.Unmarshal([]byte(strings.TrimSpace(js)), &sum) != nil {
		return line, fmt.Errorf("%s: wrk's summary is missing:\n%s", name, out)
	}
	// summary.requests counts answers, of any status; socket errors are
	// requests without one.
	line.Requests, line.Failed = sum.Requests-sum.Status, sum.Status+sum.Socket
	if line.Requests == 0 || line.Failed > 0 {
		return line, fmt.Errorf("%s: %d requests failed, %d succeeded:\n%s", name, line.Failed, line.Requests, out)
	}
	line.PerSecond = float64(line.Requests) / (sum.Micros / 1e6)
	us := func(seconds float64) float64 { return seconds * 1e6 / float64(line.Requests) }
	line.ServerMicros, line.RedisMicros = us(s1-s0), us(r1-r0)
	c1, err := commandStats(ctx, t.redisURL)
	if err != nil {
		return line, err
	}
	line.Commands = map[string]float64{}
	for name, c := range c1 {
		if n := c.calls - c0[name].calls; n > 0 && name != "info" {
			line.Commands[name] = float64(n) / float64(line.Requests)
			if name == "eval" || name == "evalsha" {
				line.ScriptMicros += float64(c.usec-c0[name].usec) / float64(line.Requests)
			}
		}
	}
	if t.admin != nil {
		after, err := t.admin.state(ctx)
		if err != nil {
			return line, err
		}
		line.Minted = after.Minted - before.Minted + after.Direct - before.Direct
		// Every 200 is one handout out of the pool; wrk stops with up to
		// one request per connection unanswered, which may have been too.
		if got := after.HandedOut - before.HandedOut; got < int64(line.Requests) || got > int64(line.Requests+t.concurrency) {
			return line, fmt.Errorf("%s: %d answers of 200 but %d handouts counted", name, line.Requests, got)
		}
	}
	return line, nil
}

// commandStat is one command's line of INFO commandstats.
type commandStat struct{ calls, usec int64 }

// commandStats reads Redis's INFO commandstats, by command.
func commandStats(ctx context.Context, url string) (map[string]commandStat, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	c := redis.NewClient(opt)
	defer c.Close()
	info, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, err
	}
	out := map[string]commandStat{}
	for _, l := range strings.Split(info, "\n") {
		// cmdstat_evalsha:calls=10,usec=200,usec_per_call=20.00,...
		name, rest, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(l), "cmdstat_"), ":")
		if !ok || strings.HasPrefix(l, "#") {
			continue
		}
		var st commandStat
		for _, kv := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "calls":
				st.calls, _ = strconv.ParseInt(v, 10, 64)
			case "usec":
				st.usec, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		out[name] = st
	}
	return out, nil
}

// wrkScript writes the Lua script that makes wrk send t's route as the
// virtual users, one after the other, and print its summary as JSON.
func wrkScript(t cpuTarget, tokens []string) (string, error) {
	var b strings.Builder
	b.WriteString("local tokens = {\n")
	for _, tok := range tokens {
		fmt.Fprintf(&b, "  %q,\n", "Bearer "+tok)
	}
	method, path, body := http.MethodPost, "/v1/session-config", ""
	switch t.route {
	case "orga":
		method, path = http.MethodGet, "/api/orga-client-secrets"
		if t.profile != "" {
			path += "?profile=" + t.profile
		}
	case "navai":
		path, body = "/navai/realtime/client-secret", "{}"
	default:
		if t.profile != "" {
			body = `{"profile":"` + t.profile + `"}`
		}
	}
	ctype := ""
	if body != "" {
		ctype = `["Content-Type"] = "application/json", `
	}
	fmt.Fprintf(&b, `}
local i = 0
request = function()
  i = i + 1
  return wrk.format(%q, %q, {%s["Authorization"] = tokens[i %% #tokens + 1]}, %q)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK {\"requests\": %%d, \"status\": %%d, \"socket\": %%d, \"micros\": %%d}\n",
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout, summary.duration))
end
`, method, path, ctype, body)
	f, err := os.CreateTemp("", "tokenpool-bench-*.lua")
	if err != nil {
		return "", err
	}
	_, err = f.WriteString(b.String())
	return f.Name(), errors.Join(err, f.Close())
}

// cpuLineSpec is a line to measure: its target and callers, and how to
// refill its pool before it.
type cpuLineSpec struct {
	name   string
	target cpuTarget
	tokens []string
	refill func(context.Context) error
}

// runCPU runs the cpu scenario and writes cpu.json to o.outDir. Every
// server runs from the start, each with its own redis-server; the lines
// run one after the other, -rounds times, and each figure is the median
// of its rounds, so that a slow minute of a shared machine moves one
// round, not one line.
func (o *options) runCPU(ctx context.Context, stdout io.Writer) error {
	if _, err := exec.LookPath("wrk"); err != nil {
		return errors.New("the cpu scenario loads the servers with wrk: install it (apt-get install wrk)")
	}
	if o.rounds <= 0 {
		return errors.New("-rounds must be positive")
	}
	if err := o.buildDaemon(); err != nil {
		return err
	}
	idp, err := idptest.New()
	if err != nil {
		return err
	}
	defer idp.Close()
	base := cpuTarget{
		route: o.route, profile: o.profile, concurrency: o.sf.MaxConcurrency, duration: o.sf.Duration, timeout: o.timeout,
	}

	// The baseline reads no token, but gets the same headers.
	w, err := StartWorld(ctx, WorldConfig{Dir: o.outDir, SimTTL: o.simTTL})
	if err != nil {
		return err
	}
	defer w.Close()
	url, cmd, err := startBaseline(ctx, "handwritten", w.RedisURL, o.outDir)
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	tokens, err := cpuTokens(idp, "HS256", w.JWTSecret, o.users)
	if err != nil {
		return err
	}
	t := base
	t.url, t.server, t.redis, t.redisURL = url, cmd.Process.Pid, w.redis.Process.Pid, w.RedisURL
	opt, err := redis.ParseURL(w.RedisURL)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	fills, need := 0, o.cpuPoolSize()
	// The baseline's pool holds what the daemons' do before each line
	// (a larger sorted set would cost its pops more).
	if err := rdb.Del(ctx, handwrittenReady, handwrittenBodies).Err(); err != nil {
		return err
	}
	topUp := func(ctx context.Context) error {
		n, err := rdb.ZCard(ctx, handwrittenReady).Result()
		if err != nil || int(n) == need {
			return err
		}
		fills++
		return fillHandwritten(ctx, rdb, baselineBody(), fmt.Sprintf("fill%d-", fills), need-int(n))
	}
	specs := []cpuLineSpec{{name: "handwritten", target: t, tokens: tokens, refill: topUp}}
	for _, extras := range []bool{false, true} {
		more, stop, err := o.cpuDaemon(ctx, base, idp, extras)
		defer stop()
		if err != nil {
			return err
		}
		specs = append(specs, more...)
	}

	res := &CPUResult{
		Started: time.Now(), Machine: machine(), Concurrency: o.sf.MaxConcurrency, Duration: o.sf.Duration.String(),
		Rounds: make([][]CPULine, o.rounds),
	}
	measure := func(r int, sp cpuLineSpec) (CPULine, error) {
		line, err := sp.target.measure(ctx, sp.name, sp.tokens)
		if err != nil {
			return line, err
		}
		// A line measures handouts from the pool: a few mints (the
		// refiller following the demand down the pool) cost nothing that
		// shows, more would be counted in.
		if line.Minted*1000 > int64(line.Requests) {
			return line, fmt.Errorf("%s: the provider minted %d credentials during the line; raise -prewarm", sp.name, line.Minted)
		}
		fmt.Fprintf(stdout, "round %d: %-36s %6.0f/s  server %6.1f µs  Redis %6.1f µs\n", r+1, sp.name, line.PerSecond, line.ServerMicros, line.RedisMicros)
		res.Rounds[r] = append(res.Rounds[r], line)
		return line, nil
	}
	// Each tokenpoold line runs right after a baseline line, and its
	// ratios are to that one: the machine's speed drifts over minutes.
	for r := range o.rounds {
		for _, sp := range specs[1:] {
			if err := errors.Join(sp.refill(ctx), specs[0].refill(ctx)); err != nil {
				return fmt.Errorf("%s: %w", sp.name, err)
			}
			b, err := measure(r, specs[0])
			if err != nil {
				return err
			}
			line, err := measure(r, sp)
			if err != nil {
				return err
			}
			l := &res.Rounds[r][len(res.Rounds[r])-1]
			l.ServerRatio, l.RedisRatio = line.ServerMicros/b.ServerMicros, line.RedisMicros/b.RedisMicros
			l.PairedServerMicros, l.PairedRedisMicros = b.ServerMicros, b.RedisMicros
		}
	}
	res.Lines = medianLines(res.Rounds)
	fmt.Fprintln(stdout)
	res.summary(stdout)
	b, _ := json.MarshalIndent(res, "", "  ")
	return os.WriteFile(filepath.Join(o.outDir, "cpu.json"), b, 0o644)
}

// medianLines is each line's median over every time it ran, figure by
// figure, in the order the lines first ran.
func medianLines(rounds [][]CPULine) []CPULine {
	var names []string
	runs := map[string][]CPULine{}
	for _, round := range rounds {
		for _, l := range round {
			if runs[l.Name] == nil {
				names = append(names, l.Name)
			}
			runs[l.Name] = append(runs[l.Name], l)
		}
	}
	out := make([]CPULine, len(names))
	for i, name := range names {
		ls := runs[name]
		median := func(f func(CPULine) float64) float64 {
			v := make([]float64, len(ls))
			for j, l := range ls {
				v[j] = f(l)
			}
			sort.Float64s(v)
			if n := len(v); n%2 == 0 {
				return (v[n/2-1] + v[n/2]) / 2
			}
			return v[len(v)/2]
		}
		l := CPULine{Name: name, Commands: ls[0].Commands} // the commands of its first run
		for _, x := range ls {
			l.Requests += x.Requests
			l.Failed += x.Failed
			l.Seconds += x.Seconds
			l.Minted += x.Minted
		}
		l.PerSecond = median(func(l CPULine) float64 { return l.PerSecond })
		l.ServerMicros = median(func(l CPULine) float64 { return l.ServerMicros })
		l.RedisMicros = median(func(l CPULine) float64 { return l.RedisMicros })
		l.ScriptMicros = median(func(l CPULine) float64 { return l.ScriptMicros })
		l.ServerRatio = median(func(l CPULine) float64 { return l.ServerRatio })
		l.RedisRatio = median(func(l CPULine) float64 { return l.RedisRatio })
		l.PairedServerMicros = median(func(l CPULine) float64 { return l.PairedServerMicros })
		l.PairedRedisMicros = median(func(l CPULine) float64 { return l.PairedRedisMicros })
		out[i] = l
	}
	return out
}

// cpuDaemon starts one tokenpoold (with quotas and the ledger when
// extras) and returns a line per caller algorithm, each refilling the
// pool before it runs, and how to stop it.
func (o *options) cpuDaemon(ctx context.Context, base cpuTarget, idp *idptest.Server, extras bool) ([]cpuLineSpec, func(), error) {
	need := o.cpuPoolSize()
	var err error
	env := append([]string{
		"TOKENPOOL_JWKS_URL=" + idp.JWKSURL(), "TOKENPOOL_JWT_ISSUER=" + idp.URL(), "TOKENPOOL_JWT_AUDIENCE=" + cpuAudience,
		"TOKENPOOL_POOL_MAX=" + strconv.Itoa(need), "TOKENPOOL_REFILL_CONCURRENCY=64",
	}, o.env...)
	suffix := ""
	if extras {
		suffix = ", quotas + ledger"
		cfg := filepath.Join(o.outDir, "cpu-quotas.yaml")
		// Never refusing: a caller's and a tenant's quota, both spent on
		// every handout.
		yaml := fmt.Sprintf("quotas:\n  - sessions: 100000000\n    per: 24h\n  - sessions: 100000000\n    per: 24h\n    by: claim:org_id\n"+
			"profiles:\n  default:\n    provider: orga\n    target: %d\n    max_target: %d\n", o.poolTarget, need)
		if err = os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
			return nil, func() {}, err
		}
		env = append(env, "TOKENPOOL_CONFIG="+cfg, "TOKENPOOL_LEDGER_KEY="+randomHex(32))
	}
	debug := ""
	if o.pprof {
		if debug, err = freeAddr(); err != nil {
			return nil, func() {}, err
		}
		env = append(env, "TOKENPOOL_DEBUG_ADDR="+debug)
	}
	w, err := StartWorld(ctx, WorldConfig{
		Replicas: 1, Tokenpoold: o.tokenpoold, Dir: o.outDir, SimLatency: o.simLatency, SimTTL: o.simTTL,
		PoolTarget: o.poolTarget, Env: env,
	})
	if err != nil {
		return nil, func() {}, err
	}
	admin := &adminClient{base: w.Targets[0], key: w.AdminKey, profile: o.profile}
	if admin.profile == "" {
		admin.profile = "default"
	}
	// refill fills the pool to need, then ends the prewarm: a line takes
	// far less than the pool holds, so the refiller has nothing to mint.
	refill := func(ctx context.Context) error {
		if err := admin.prewarm(ctx, need, time.Now().Add(time.Hour)); err != nil {
			return fmt.Errorf("prewarm: %w", err)
		}
		if err := poll.Wait(ctx, 20*time.Minute, func() bool {
			s, err := admin.state(ctx)
			return err == nil && s.Usable >= need && s.InFlight == 0
		}); err != nil {
			return fmt.Errorf("the pool did not reach %d: %w", need, err)
		}
		if err := admin.prewarm(ctx, 0, time.Time{}); err != nil {
			return fmt.Errorf("ending the prewarm: %w", err)
		}
		return nil
	}
	t := base
	t.url, t.server, t.redis, t.redisURL, t.admin = w.Targets[0], w.procs[0].Process.Pid, w.redis.Process.Pid, w.RedisURL, admin
	var specs []cpuLineSpec
	for _, alg := range cpuAlgs {
		tokens, err := cpuTokens(idp, alg, w.JWTSecret, o.users)
		if err != nil {
			w.Close()
			return nil, func() {}, err
		}
		name := "tokenpoold, " + alg + suffix
		sp := cpuLineSpec{name: name, target: t, tokens: tokens, refill: refill}
		if debug != "" {
			sp.target.debug = debug
			sp.target.pprofPath = filepath.Join(o.outDir, "cpu-"+strings.NewReplacer(", ", "-", " + ", "-", " ", "-").Replace(name)+".pprof")
		}
		specs = append(specs, sp)
	}
	return specs, w.Close, nil
}

// cpuPoolSize is what a pool holds before each line: -prewarm, or enough
// for a line at the highest rate seen here, with room, up to the most a
// pool may hold.
func (o *options) cpuPoolSize() int {
	if o.prewarm > 0 {
		return o.prewarm
	}
	return min(int(o.sf.Duration.Seconds()*15000), 100_000)
}

// cpuTokens signs one JWT per virtual user: HS256 with secret, or alg
// with the identity provider's key. Every token has the same claims but
// its subject, and an org_id for the tenant quota.
func cpuTokens(idp *idptest.Server, alg, secret string, n int) ([]string, error) {
	out := make([]string, n)
	for i := range out {
		claims := jwt.MapClaims{
			"iss": idp.URL(), "aud": cpuAudience, "sub": fmt.Sprintf("bench-user-%d", i), "org_id": "bench-org",
			"exp": time.Now().Add(2 * time.Hour).Unix(), "iat": time.Now().Unix(),
		}
		var err error
		if alg == "HS256" {
			out[i], err = jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
		} else {
			out[i], err = idp.Token(alg, claims)
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// summary writes the lines as a table; each ratio is the median of the
// line's ratios to the baseline run just before it (so not the ratio of
// the medians), beside the medians of those baseline runs.
func (r *CPUResult) summary(w io.Writer) {
	fmt.Fprintf(w, "CPU per request: closed loop, %d concurrent callers, %s per line\n\n", r.Concurrency, r.Duration)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "line\t200s/s\tserver µs\tRedis µs\tin scripts\tpaired baseline µs\tserver ×\tRedis ×\t")
	for _, l := range r.Lines {
		sr, rr, paired := l.ServerRatio, l.RedisRatio, fmt.Sprintf("%.1f / %.1f", l.PairedServerMicros, l.PairedRedisMicros)
		if sr == 0 {
			sr, rr, paired = 1, 1, "" // the baseline
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.1f\t%.1f\t%.1f\t%s\t%.2f\t%.2f\t\n", l.Name, l.PerSecond, l.ServerMicros, l.RedisMicros,
			l.ScriptMicros, paired, sr, rr)
	}
	_ = tw.Flush()
}

// profileDuring takes a CPU profile of the daemon whose debug address is
// debug (with -pprof) for a second less than d, into path; the returned
// func waits for it.
func profileDuring(ctx context.Context, debug, path string, d time.Duration) func() {
	if debug == "" {
		return func() {}
	}
	secs := max(int(d.Seconds())-1, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", debug, secs)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Fprintf(os.Stderr, "tokenpool-bench: profile: %v\n", err)
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(path)
		if err == nil {
			_, err = io.Copy(f, resp.Body)
			err = errors.Join(err, f.Close())
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "tokenpool-bench: profile: %v\n", err)
		}
	}()
	return func() { <-done }
}
