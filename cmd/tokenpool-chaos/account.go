package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"syscall"
	"time"

	"github.com/tokenpool/tokenpool/pool"
)

// report is the accounting of one chaos run: where every credential the
// provider minted went.
type report struct {
	elapsed  time.Duration
	seed     uint64
	replicas int
	callers  int
	faults   map[string]int

	minted     int64 // by the provider, complete (token and ICE servers)
	handouts   int64 // 200 answers
	delivered  int64 // distinct credentials callers received
	duplicates int64 // credentials received more than once, counted once per extra time
	forged     int64 // received but never minted
	pooled     int64 // still pooled at the end (drained and checked)
	wasted     int64
	discarded  int64
	lost       int64
	dropped    int64 // pooled in a Redis dataset a restart without persistence threw away
	killed     int64 // taken from the pool by a replica killed before it answered
	statuses   map[int]int64
	transport  int64 // requests with no answer
	atKill     int64 // of those, cut by a kill -9
	lapsed     int64 // mint reservations that lapsed (a killed replica's mints)
	leftover   int64 // reservations still held once every replica stopped: killed ones' not yet lapsed
	wipedRes   int64 // reservations thrown away with a dataset (a killed replica's among them)
	returned   int64 // takes undone and pooled again
	direct     int64 // answers minted for their request
}

// unaccounted is what the provider minted that no one can say where it
// went: not delivered, pooled or counted.
func (r *report) unaccounted() int64 {
	return r.minted - r.delivered - r.pooled - r.wasted - r.discarded - r.lost - r.dropped - r.killed
}

// killBound bounds the credentials a kill -9 can take with the process
// beyond the takes it cut (counted in killed): a request's mint on a miss
// that the provider answered just before the kill (at most the requests
// the kills cut, less those takes), and a refill mint that landed before
// the kill but was not pooled yet (at most the reservations the killed
// processes held: lapsed, still held, or thrown away with a dataset by a
// restart without persistence; the last count every replica's, so the
// bound is loose).
func (r *report) killBound() int64 {
	if r.faults[killFault] == 0 {
		return 0
	}
	return r.atKill - r.killed + r.lapsed + r.leftover + r.wipedRes
}

// holds reports whether the promise held: nothing delivered twice, nothing
// forged, no 200 without a credential, no more taken by killed replicas than requests the kills cut,
// and nothing unaccounted beyond what a kill -9 can take with a process
// (none at all in a run without kills).
func (r *report) holds() bool {
	return r.duplicates == 0 && r.forged == 0 && r.statuses[-1] == 0 && r.killed >= 0 && r.killed <= r.atKill &&
		r.unaccounted() >= 0 && r.unaccounted() <= r.killBound()
}

// settle stops the replicas gracefully (they drain and pool what they
// hold), drains what is left in the pool, and adds it all up.
func settle(ctx context.Context, w *world, acc *accounts, got *received) (*report, error) {
	for _, rep := range w.replicas {
		if err := w.stopReplica(rep, syscall.SIGTERM); err != nil {
			return nil, err
		}
	}
	rdb := w.redisClient()
	defer rdb.Close()
	w.mu.Lock()
	sealer, err := pool.NewSealer(w.keys)
	w.mu.Unlock()
	if err != nil {
		return nil, err
	}
	store := pool.NewStore(rdb, pool.StoreConfig{Sealer: sealer})
	drained := map[string]bool{}
	for i := 0; ; i++ {
		h, err := store.Take(ctx, "default", "chaos-drain-"+strconv.Itoa(i), 0)
		if errors.Is(err, pool.ErrEmpty) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("draining the pool: %w", err)
		}
		drained[h.Token] = true
	}
	st, err := rdb.HGetAll(ctx, statsKey).Result()
	if err != nil {
		return nil, err
	}
	epochs := append(append([]map[string]int64{}, acc.epochs...), counters(st))
	sum := func(name string) int64 {
		var n int64
		for _, e := range epochs {
			n += e[name]
		}
		return n
	}

	r := &report{faults: acc.faults, statuses: got.statuses, transport: got.transport.Load(), atKill: got.atKill.Load()}
	minted := map[string]bool{}
	for _, m := range w.sim.Minted() {
		if m.ICEFetched {
			minted[m.Token] = true
		}
	}
	r.minted = int64(len(minted))
	r.handouts = got.handouts.Load()
	for tok, n := range got.tokens {
		r.delivered++
		r.duplicates += int64(n - 1)
		if drained[tok] {
			r.duplicates++
		}
		if !minted[tok] {
			r.forged++
		}
	}
	r.pooled = int64(len(drained))
	r.wasted, r.discarded, r.lost = sum("wasted"), sum("discarded"), sum("lost")
	r.dropped, r.wipedRes = acc.dropped, acc.wipedRes
	r.lapsed, r.returned, r.direct = sum("lapsed"), sum("returned"), sum("direct")
	r.leftover = rdb.ZCard(ctx, "tp:{default}:minting").Val()
	// Every take the pool counted as handed out reached a caller, or was
	// drained here, or was taken by a replica that died before answering.
	r.killed = sum("handed_out") - got.fromPool - r.pooled
	return r, nil
}

// print writes the report as Markdown.
func (r *report) print(out io.Writer) {
	fmt.Fprintf(out, "## Chaos run\n\n")
	fmt.Fprintf(out, "%d replicas, %d callers, %s, seed %d: %d handouts, %.0f/s.\n\n",
		r.replicas, r.callers, r.elapsed.Round(time.Second), r.seed, r.handouts, float64(r.handouts)/r.elapsed.Seconds())
	fmt.Fprintf(out, "| fault | times |\n|---|---|\n")
	names := make([]string, 0, len(r.faults))
	for n := range r.faults {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(out, "| %s | %d |\n", n, r.faults[n])
	}
	fmt.Fprintf(out, "\n| credentials | count |\n|---|---|\n")
	rows := []struct {
		name string
		n    int64
	}{
		{"minted by the provider (token and ICE servers)", r.minted},
		{"delivered to a caller, once", r.delivered},
		{"still pooled at the end", r.pooled},
		{"wasted (expired unused, stale, or minted with no room)", r.wasted},
		{"discarded (could not be opened)", r.discarded},
		{"lost (counted by the daemons)", r.lost},
		{"dropped with a Redis restart without persistence", r.dropped},
		{"taken by a replica killed before it answered", r.killed},
		{"**unaccounted**", r.unaccounted()},
		{"bound on what the kills -9 took with the processes (see RELIABILITY.md)", r.killBound()},
		{"**delivered twice**", r.duplicates},
		{"delivered but never minted", r.forged},
	}
	for _, row := range rows {
		fmt.Fprintf(out, "| %s | %d |\n", row.name, row.n)
	}
	fmt.Fprintf(out, "\nAlso: %d takes undone and pooled again (`returned`), %d answers minted for their request, "+
		"%d mint reservations lapsed, %d were still held at the end and %d were thrown away with a dataset, %d requests got no answer (%d of them cut by a kill -9); other answers by status (-1: a 200 without a credential): %v.\n",
		r.returned, r.direct, r.lapsed, r.leftover, r.wipedRes, r.transport, r.atKill, r.statuses)
	verdict := "The promise held."
	if !r.holds() {
		verdict = "The promise did NOT hold."
	}
	fmt.Fprintf(out, "\n%s\n", verdict)
}
