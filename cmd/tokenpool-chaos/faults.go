package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/pool"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// The keys of the one profile the run uses.
const (
	statsKey   = "tp:{default}:stats"
	entriesKey = "tp:{default}:e"
	mintingKey = "tp:{default}:minting"
	ledgerKey  = "tp:{default}:issued" // the issuance ledger's stream
)

// fault is one kind of failure the run injects. run returns once the
// world is whole again.
type fault struct {
	name   string
	weight int
	run    func(ctx context.Context, w *world, a *accounts) error
}

// accounts is what the run must remember across faults: the counters of
// Redis datasets a wipe threw away, the credentials that went with them,
// and when each replica was killed.
type accounts struct {
	mu       sync.Mutex
	epochs   []map[string]int64 // each wiped dataset's stats counters
	wiped    map[string]bool    // tokens pooled in a wiped dataset
	wipedRes int64              // mint reservations held in a wiped dataset
	records  []redis.XMessage   // the ledger's records in each wiped dataset
	kills    []kill
	crashes  []time.Time // kills -9 of the primary Redis, failed over
	delayed  int64       // takes' replies the delayTakes faults held back
	faults   map[string]int
}

// kill is one kill -9 of replica n.
type kill struct {
	n  int
	at time.Time
}

func newAccounts() *accounts {
	return &accounts{faults: map[string]int{}, wiped: map[string]bool{}}
}

// killFault names the fault that kills a replica: what it takes with the
// process is bounded, not counted.
const killFault = "kill -9 a replica, restart it"

// burst is how long a burst fault lasts.
const burst = 2 * time.Second

// outage outlasts the daemons' 10 s claim TTL, so takes whose replies it
// holds are recovered too late to tell and counted lost.
const outage = 12 * time.Second

var faults = []fault{
	{killFault, 3, killReplica},
	{"restart Redis (kill -9), AOF kept", 1, restartRedis(false)},
	{"kill -9 the primary Redis: Sentinel promotes its replica, the old primary rejoins as a replica", 1, crashPrimary},
	{"fail over (SENTINEL FAILOVER) with the primary drained first", 1, failover},
	{"restart Redis (kill -9) without persistence, writes paused first", 1, restartRedis(true)},
	{"wipe Redis under load (FLUSHALL, every connection cut, nothing paused)", 1, wipeRedis},
	{"hold every Redis reply 12 s (past the 10 s claim TTL)", 1, holdRedis},
	{"delay Redis replies 800 ms (past the 500 ms read timeout) for 2 s", 1, delayRedis},
	{"delay takes' replies 800 ms (each retry too) for 2 s", 2, delayTakes},
	{"provider answers 500 for 2 s", 2, providerFails},
	{"provider answers 429 (Retry-After 2 s)", 1, providerThrottles},
	{"provider hangs past the mint deadline for 2 s", 1, providerHangs},
	{"rotate seal keys in a rolling restart", 1, rotateKeys},
}

// inject runs a fault every gap on average until ctx is done: a random
// one by weight, or with cycle each in turn.
func inject(ctx context.Context, w *world, a *accounts, gap time.Duration, rng *rand.Rand, cycle bool, faults []fault) error {
	if len(faults) == 0 {
		<-ctx.Done()
		return nil
	}
	total := 0
	for _, f := range faults {
		total += f.weight
	}
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(gap/2 + time.Duration(rng.Int64N(int64(gap)))):
		}
		f := faults[i%len(faults)]
		if !cycle {
			n := rng.IntN(total)
			for _, c := range faults {
				if n < c.weight {
					f = c
					break
				}
				n -= c.weight
			}
		}
		// A fault runs to its end even when the run ends meanwhile, so
		// the world is whole for the accounting.
		if err := f.run(context.WithoutCancel(ctx), w, a); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
		a.mu.Lock()
		a.faults[f.name]++
		a.mu.Unlock()
	}
}

func killReplica(ctx context.Context, w *world, a *accounts) error {
	r := w.replicas[rand.IntN(len(w.replicas))]
	r.dying.Store(true)
	a.mu.Lock()
	a.kills = append(a.kills, kill{n: r.n, at: time.Now()})
	a.mu.Unlock()
	_ = w.stopReplica(r, syscall.SIGKILL)
	time.Sleep(100 * time.Millisecond) // requests cut by the kill fail by now
	r.dying.Store(false)
	time.Sleep(400 * time.Millisecond)
	return w.startReplica(ctx, r)
}

// restartRedis crashes Redis and starts it again. Without persistence,
// the dataset is gone: its counters and pooled entries are recorded first,
// with writes paused so that nothing changes between the record and the
// crash.
func restartRedis(wipe bool) func(context.Context, *world, *accounts) error {
	return func(ctx context.Context, w *world, a *accounts) error {
		if wipe {
			c := w.redisClient()
			if err := c.Do(ctx, "CLIENT", "PAUSE", "30000", "WRITE").Err(); err != nil {
				c.Close()
				return err
			}
			var stats, entries *redis.MapStringStringCmd
			var held *redis.IntCmd
			var recs *redis.XMessageSliceCmd
			_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
				stats, entries, held = p.HGetAll(ctx, statsKey), p.HGetAll(ctx, entriesKey), p.ZCard(ctx, mintingKey)
				recs = p.XRange(ctx, ledgerKey, "-", "+")
				return nil
			})
			c.Close()
			if err != nil {
				return err
			}
			if err := a.wipedDataset(w, stats.Val(), entries.Val(), held.Val(), recs.Val()); err != nil {
				return err
			}
		}
		node := w.primaryNode()
		// A restart is not a failover: Sentinel waits for it however long
		// it takes (else the replica, holding the dataset just recorded
		// as wiped, could be promoted meanwhile).
		if err := w.sentinelDownAfter(ctx, time.Hour); err != nil {
			return err
		}
		w.killRedis(node)
		if wipe {
			if err := os.RemoveAll(node.aofDir); err != nil {
				return err
			}
		}
		time.Sleep(300 * time.Millisecond)
		if err := w.startRedis(ctx, node, ""); err != nil {
			return err
		}
		if err := w.whole(ctx); err != nil { // its replica, if any, has synced again (emptied, without persistence)
			return err
		}
		return w.sentinelDownAfter(ctx, downAfter)
	}
}

// crashPrimary kills the primary Redis and lets Sentinel fail over: the
// proxy sends the daemons to the dead primary until Sentinel promotes the
// replica (down after 3 s), then to the new primary; the old one comes back
// with its append-only file as the new one's replica. Writes the replica
// had not received when the primary died (a few milliseconds of
// replication) are gone: a refill's put among them. The daemons wait for
// the replica on every take (WAIT 1) and count a handout it did not
// acknowledge in time as unreplicated.
func crashPrimary(ctx context.Context, w *world, a *accounts) error {
	if !w.cfg.Replicated {
		return nil
	}
	old := w.primaryNode()
	a.mu.Lock()
	a.crashes = append(a.crashes, time.Now())
	a.mu.Unlock()
	w.killRedis(old)
	promoted, err := w.promoted(ctx, old)
	if err != nil {
		return err
	}
	if err := w.startRedis(ctx, old, promoted.addr); err != nil {
		return err
	}
	return w.whole(ctx)
}

// failover asks Sentinel to fail over, with the primary drained first as a
// load balancer does for a planned switch: the proxy refuses the daemons
// until the replica is promoted, then sends them to it, and the old
// primary becomes its replica.
func failover(ctx context.Context, w *world, _ *accounts) error {
	if !w.cfg.Replicated {
		return nil
	}
	old := w.primaryNode()
	w.proxy.Retarget("")
	sc := w.sentinelClient()
	defer sc.Close()
	var last error
	if err := poll.Wait(ctx, 30*time.Second, func() bool {
		// NOGOODSLAVE until the Sentinel has seen the replica since its
		// last sync, INPROG while an earlier failover ends.
		last = sc.Failover(ctx, sentinelMaster).Err()
		return last == nil
	}); err != nil {
		return fmt.Errorf("sentinel failover: %w (%v)", err, last)
	}
	if _, err := w.promoted(ctx, old); err != nil {
		return err
	}
	return w.whole(ctx)
}

// promoted waits until the Sentinel names a primary other than old, and
// sends the daemons to it.
func (w *world) promoted(ctx context.Context, old *redisNode) (*redisNode, error) {
	sc := w.sentinelClient()
	defer sc.Close()
	var next *redisNode
	if err := poll.Wait(ctx, 60*time.Second, func() bool {
		at, err := sentinelPrimary(ctx, sc)
		if err != nil || at == old.addr {
			return false
		}
		for _, n := range w.nodes {
			if n.addr == at {
				next = n
			}
		}
		return next != nil
	}); err != nil {
		return nil, fmt.Errorf("waiting for Sentinel to promote the replica: %w", err)
	}
	w.mu.Lock()
	w.primary = next
	w.mu.Unlock()
	w.proxy.Retarget(next.addr)
	return next, nil
}

// wipeRedis throws the dataset away under load, as a restart without
// persistence does, without pausing anything: one transaction records it,
// flushes it and cuts every connection, so commands that ran just before
// lose their replies and the daemons' retries meet the empty dataset.
func wipeRedis(ctx context.Context, w *world, a *accounts) error {
	c := w.redisClient()
	defer c.Close()
	var stats, entries *redis.MapStringStringCmd
	var held *redis.IntCmd
	var recs *redis.XMessageSliceCmd
	_, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		stats, entries, held = p.HGetAll(ctx, statsKey), p.HGetAll(ctx, entriesKey), p.ZCard(ctx, mintingKey)
		recs = p.XRange(ctx, ledgerKey, "-", "+")
		p.FlushAll(ctx)
		p.Do(ctx, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
		return nil
	})
	if err != nil {
		return err
	}
	return a.wipedDataset(w, stats.Val(), entries.Val(), held.Val(), recs.Val())
}

// wipedDataset records a dataset about to be thrown away: its counters,
// the tokens pooled in it, the reservations it held and its ledger's
// records.
func (a *accounts) wipedDataset(w *world, stats, entries map[string]string, held int64, records []redis.XMessage) error {
	w.mu.Lock()
	sealer, err := pool.NewSealer(w.keys)
	w.mu.Unlock()
	if err != nil {
		return err
	}
	rdb := w.redisClient()
	defer rdb.Close()
	store := pool.NewStore(rdb, pool.StoreConfig{Sealer: sealer})
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, body := range entries {
		c, err := store.OpenEntry("default", id, body)
		if err != nil {
			return fmt.Errorf("a pooled entry the run cannot open: %w", err)
		}
		a.wiped[c.Token] = true
	}
	a.epochs = append(a.epochs, counters(stats))
	a.wipedRes += held
	a.records = append(a.records, records...)
	return nil
}

// holdRedis holds every Redis reply for longer than a claim lives:
// commands run, their replies come too late for anyone, and takes are
// recovered only after their claims expired.
func holdRedis(_ context.Context, w *world, _ *accounts) error {
	w.proxy.DelayReplies(outage)
	time.Sleep(outage)
	w.proxy.DelayReplies(0)
	return nil
}

func counters(m map[string]string) map[string]int64 {
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[k], _ = strconv.ParseInt(v, 10, 64)
	}
	return out
}

func delayRedis(_ context.Context, w *world, _ *accounts) error {
	w.proxy.DelayReplies(800 * time.Millisecond)
	time.Sleep(burst)
	w.proxy.DelayReplies(0)
	return nil
}

// delayTakes holds back only the replies of takes that hand out an entry
// ({1|2, id, body, …}, seven elements), so requests get past the limits
// and lose the take's reply: go-redis retries it under the same claim, the
// retries' replies are late too, and the take must be undone. The report
// says how many it delayed (none over a run: the take's reply has changed
// shape, and TestChaosShortRun fails).
func delayTakes(_ context.Context, w *world, a *accounts) error {
	before := w.proxy.Delayed()
	w.proxy.DelayRepliesMatching(800*time.Millisecond, func(b []byte) bool {
		return bytes.HasPrefix(b, []byte("*7\r\n:1\r\n$")) || bytes.HasPrefix(b, []byte("*7\r\n:2\r\n$"))
	})
	time.Sleep(burst)
	w.proxy.DelayReplies(0)
	a.mu.Lock()
	a.delayed += w.proxy.Delayed() - before
	a.mu.Unlock()
	return nil
}

func providerFails(_ context.Context, w *world, _ *accounts) error {
	w.simUpdate(func(c *upstreamtest.Config) { c.FailureRate = 1 })
	time.Sleep(burst)
	w.simUpdate(func(c *upstreamtest.Config) { c.FailureRate = 0 })
	return nil
}

func providerThrottles(_ context.Context, w *world, _ *accounts) error {
	for _, sim := range w.sims {
		sim.ThrottleNext(burst)
	}
	time.Sleep(burst)
	return nil
}

func providerHangs(_ context.Context, w *world, _ *accounts) error {
	was := w.cfg.SimLatency
	w.simUpdate(func(c *upstreamtest.Config) { c.Latency = time.Minute })
	time.Sleep(burst)
	w.simUpdate(func(c *upstreamtest.Config) { c.Latency = was })
	return nil
}

// rotateKeys adds a seal key and restarts the replicas one by one
// (SIGTERM, so each drains) with it first and the last key second: during
// the roll, replicas that lack the new key meet entries sealed with it. The
// key before the last is dropped, so entries still sealed with it can no
// longer be opened by anyone and expire as waste.
func rotateKeys(ctx context.Context, w *world, _ *accounts) error {
	w.mu.Lock()
	w.keys = append(w.keys, newKey())
	keys := w.sealKeys(2)
	w.mu.Unlock()
	for _, r := range w.replicas {
		if err := w.stopReplica(r, syscall.SIGTERM); err != nil {
			return err
		}
		r.sealKeys = keys
		if err := w.startReplica(ctx, r); err != nil {
			return err
		}
	}
	return nil
}
