#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md, one after the other, from the
# repository root: about 45 minutes. Results go to bench-results/<name>/
# (result.json, report.html, replica logs); summaries to bench-results/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
go build -o bin/tokenpoold ./cmd/tokenpoold
go build -o bin/tokenpool-bench ./cmd/tokenpool-bench
B="bin/tokenpool-bench"
L="-tokenpoold bin/tokenpoold"
mkdir -p bench-results
run() { name=$1; shift; echo "=== $name: $B $*" | tee -a bench-results/summary.txt; "$B" -out "bench-results/$name" "$@" | tee -a bench-results/summary.txt; }

# (a) Most handouts per second, closed loop, 64 callers: the three
# baselines, then one tokenpoold replica (auth, both limits, metrics and
# the access log on) handing out from a pool prewarmed to 100,000, the
# prewarm over as the load starts.
for i in 1 2; do
  run a-bare-$i      -baseline bare  -scenario max -concurrency 64 -duration 10s
  run a-redis-$i     -baseline redis -scenario max -concurrency 64 -duration 10s
  run a-handwritten-$i -baseline handwritten -scenario max -concurrency 64 -duration 10s
  run a-tokenpoold-$i -local 1 $L -scenario max -concurrency 64 -duration 10s -sim-latency 2ms \
      -prewarm 100000 -prewarm-before 150s -prewarm-hold 0 -env TOKENPOOL_POOL_MAX=100000
done

# (b) Latency of a credential from the pool vs minting per request, the
# simulated provider at 100 ms per call.
run b-pool   -local 2 $L -scenario steady -rate 20 -duration 60s -sim-latency 100ms
run b-direct -local 2 $L -scenario steady -rate 20 -duration 60s -sim-latency 100ms -direct
# What the client and an idle VM cost at 20/s: the two baselines.
run b-bare-20  -baseline bare  -scenario steady -rate 20 -duration 60s
run b-redis-20 -baseline redis -scenario steady -rate 20 -duration 60s
# The same at 100/s: a busier machine wakes from idle less often.
run b-pool-100   -local 2 $L -scenario steady -rate 100 -duration 60s -sim-latency 100ms
run b-direct-100 -local 2 $L -scenario steady -rate 100 -duration 60s -sim-latency 100ms -direct

# (c) Bursts.
run c-ramp -local 2 $L -scenario ramp -from 5 -to 200 -duration 60s -sim-latency 100ms -sim-quota 300
run c-steady-idle -local 2 $L -scenario steady -rate 20 -idle-after 3m -duration 13m -sim-ttl 120s -sim-latency 100ms
run c-step -local 2 $L -scenario step -from 0 -rate 300 -step-at 0s -duration 20s -sim-latency 100ms -sim-quota 50 -warm 0
run c-step-prewarm-1m -local 2 $L -scenario step -from 0 -rate 300 -step-at 0s -duration 20s -sim-latency 100ms -sim-quota 50 -warm 0 \
    -prewarm 6000 -prewarm-before 60s -env TOKENPOOL_POOL_MAX=6000
run c-step-prewarm-2m-ttl600 -local 2 $L -scenario step -from 0 -rate 300 -step-at 0s -duration 20s -sim-latency 100ms -sim-quota 50 -warm 0 \
    -sim-ttl 600s -prewarm 6000 -prewarm-before 125s -env TOKENPOOL_POOL_MAX=6000
run c-spike -local 2 $L -scenario spike -rate 20 -spike-rate 300 -spike-at 20s -spike-duration 5s -duration 40s -sim-latency 100ms -sim-quota 300
run c-spike-floor90 -local 2 $L -scenario spike -rate 20 -spike-rate 300 -spike-at 20s -spike-duration 5s -duration 40s -sim-latency 100ms -sim-quota 300 \
    -env TOKENPOOL_POOL_TARGET=90
# Bursts that end: 8 s at 250/s and 1 min at 100/s, then idle until what
# the burst left has gone stale; and the floor alone over the same span.
run c-burst-8s -local 2 $L -scenario steady -rate 250 -idle-after 8s -duration 110s -sim-latency 30ms -sim-ttl 120s -warm 1
run c-burst-1m -local 2 $L -scenario steady -rate 100 -idle-after 60s -duration 160s -sim-latency 30ms -sim-ttl 120s -warm 1
run c-floor-idle -local 2 $L -scenario steady -rate 1 -idle-after 1s -duration 160s -sim-latency 30ms -sim-ttl 120s -warm 1

# (d) Redis memory and daemon RSS per 10,000 pooled credentials, plain and
# sealed.
run d-memory -local 1 $L -scenario memory -prewarm 10000 -sim-latency 5ms -env TOKENPOOL_POOL_MAX=10000
run d-memory-sealed -local 1 $L -scenario memory -prewarm 10000 -sim-latency 5ms -env TOKENPOOL_POOL_MAX=10000 \
    -env "TOKENPOOL_SEAL_KEYS=$(head -c 32 /dev/urandom | base64)"

# (g) CPU per handout of the server and Redis, tokenpoold's lines each
# paired with the handwritten baseline (needs wrk).
run g-cpu -scenario cpu $L -concurrency 32 -duration 3s -sim-latency 1ms -rounds 3
