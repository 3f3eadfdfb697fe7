// Command upstream-sim runs the simulated providers of
// upstream/upstreamtest as a standalone server, for docker-compose, load
// tests and trying tokenpool without a provider account: Orga AI, OpenAI
// Realtime and every preset (gemini, xai, deepgram, …) at their own paths,
// each preset accepting the key upstreamtest.PresetKey gives
// ("sim-<provider>-key").
//
//	upstream-sim -addr :8081 -ttl 120s -latency 100ms -failure-rate 0.01 -quota 50 -shape reference
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

func run(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("upstream-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8081", "listen address")
	ttl := fs.Duration("ttl", 0, "token life (default 120s)")
	latency := fs.Duration("latency", 0, "delay added to every call")
	failure := fs.Float64("failure-rate", 0, "share of mints answered 500, 0 to 1")
	quota := fs.Int("quota", 0, "mints per second before answering 429; 0: unlimited")
	retryAfter := fs.Duration("retry-after", 0, "Retry-After of a 429 (default 1s)")
	shape := fs.String("shape", "reference", "mint answer spelling: reference, guide or token-only")
	apiKey := fs.String("api-key", upstreamtest.DefaultAPIKey, "the provider key it accepts")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	sh, err := upstreamtest.ParseShape(*shape)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if *failure < 0 || *failure > 1 || *quota < 0 {
		fmt.Fprintln(stderr, "upstream-sim: -failure-rate must be 0–1 and -quota ≥ 0")
		return 2
	}
	sim, err := upstreamtest.StartOn(*addr, upstreamtest.Config{
		APIKey: *apiKey, TTL: *ttl, Latency: *latency, FailureRate: *failure,
		Shape: sh, Quota: *quota, RetryAfter: *retryAfter,
	})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	log.Info("simulated provider listening", "url", sim.URL(), "shape", sh.String(),
		"latency", latency.String(), "failure_rate", *failure, "quota", *quota,
		"presets", upstreamtest.PresetNames(), "preset_keys", "sim-<provider>-key")
	<-ctx.Done()
	c := sim.Counts()
	log.Info("stopping", "mint_calls", c.MintCalls, "minted", c.Minted, "rate_limited", c.RateLimited, "failed", c.Failed)
	if err := sim.Close(); err != nil {
		return 1
	}
	return 0
}
