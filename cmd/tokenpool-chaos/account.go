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

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/ledger"
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

	minted      int64 // by the provider, complete (token and ICE servers)
	handouts    int64 // 200 answers
	delivered   int64 // distinct credentials callers received
	duplicates  int64 // credentials received more than once, counted once per extra time
	forged      int64 // received but never minted
	pooled      int64 // still pooled at the end (drained and checked)
	dropped     int64 // pooled in a Redis dataset a wipe threw away (recorded as it went)
	resurrected int64 // pooled in a wiped dataset, and delivered or pooled after all
	wasted      int64
	discarded   int64
	stale       int64 // resent after their dataset was wiped, refused by the new one (counted by the daemons)
	unanswered  int64 // taken from the pool and never answered: lost, or cut by a kill -9
	lost        int64 // counted lost by the daemons (taken, not recovered)
	statuses    map[int]int64
	transport   int64 // requests with no answer
	atKill      int64 // of those, cut by a kill -9
	lapsed      int64 // mint reservations that lapsed (a killed replica's mints)
	wipedRes    int64 // reservations thrown away with a dataset
	returned    int64 // takes undone and pooled again
	direct      int64 // answers minted for their request
	unrepl      int64 // handouts no replica acknowledged in time (counted by the daemons)
	delayed     int64 // takes' replies held back by the delayTakes faults
	prevented   int64 // ids popped again after being handed out, dropped (duplicates_prevented)
	orphaned    int64 // ids pooled without a body
	perReplica  []replicaReport
	ledger      ledgerReport
}

// ledgerReport is the issuance ledger's accounting: one record per
// credential delivered, naming its caller, and none for anything else but
// takes never answered.
type ledgerReport struct {
	records     int64 // in the ledger at the end and in the wiped datasets
	named       int64 // credentials delivered whose one record names their caller
	missing     int64 // credentials delivered that no record names
	twice       int64 // records beyond the first of one credential
	wrongCaller int64 // records of a credential naming another caller than the one that received it
	undelivered int64 // records of credentials no caller received
	looked      int64 // credentials delivered looked up (ledger.Reader.Lookup, as the admin route does)
	lookupMiss  int64 // of those, found without their one record naming their caller
}

// holds reports whether the ledger's promise held: every credential
// delivered has exactly one record, naming its caller, and the records of
// credentials nobody received are at most the takes never answered.
func (l ledgerReport) holds(unanswered int64) bool {
	return l.missing == 0 && l.twice == 0 && l.wrongCaller == 0 && l.lookupMiss == 0 && l.undelivered <= max(unanswered, 0)
}

// replicaReport is what one replica's simulator minted, and where it went.
type replicaReport struct {
	n        int
	kills    int
	minted   int64
	orphans  int64 // not delivered, pooled or wiped: counted (wasted, lost, …) or gone with a kill
	inFlight int64 // of those, minted in the killWindow before one of its kills
	atCrash  int64 // of the others, minted in the killWindow before a crash of the primary Redis
}

// killWindow is how long before a kill -9 a mint the provider answered can
// still be in flight in the killed process, not yet pooled or answered:
// the 2 s its put may take, and its ICE call.
const killWindow = 2500 * time.Millisecond

// unaccounted is what the provider minted that no one can say where it
// went: not delivered, pooled, wiped or counted.
func (r *report) unaccounted() int64 {
	return r.minted - r.delivered - r.pooled - r.dropped - r.wasted - r.discarded - r.stale - r.unanswered
}

// killBound bounds what the kills -9 took with the processes: mints a
// killed replica's simulator answered in the killWindow before a kill and
// that went nowhere anyone can see, and mints any simulator answered in
// the killWindow before the primary Redis crashed (a put its replica had
// not received is gone with the failover). Every other credential must be
// accounted for.
func (r *report) killBound() int64 {
	var n int64
	for _, p := range r.perReplica {
		n += p.inFlight + p.atCrash
	}
	return n
}

// holds reports whether the promise held: nothing delivered twice or
// forged, no 200 without a credential, nothing back from a wiped dataset,
// no more takes gone with kills than requests the kills cut, and nothing
// unaccounted beyond what the kills took (a resend refused after a wipe
// may also have been pooled in the wiped dataset: counted twice at most).
func (r *report) holds() bool {
	cut := r.unanswered - r.lost
	return r.duplicates == 0 && r.forged == 0 && r.statuses[-1] == 0 && r.resurrected == 0 &&
		cut <= r.atKill && r.unaccounted() >= -r.stale && r.unaccounted() <= r.killBound() && r.ledger.holds(r.unanswered)
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
	records, err := rdb.XRange(ctx, ledgerKey, "-", "+").Result()
	if err != nil {
		return nil, err
	}
	store := pool.NewStore(rdb, pool.StoreConfig{Sealer: sealer}) // no ledger: draining records nothing
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
	r.handouts = got.handouts.Load()
	minted := map[string]bool{}
	for i, sim := range w.sims {
		pr := replicaReport{n: i + 1}
		for _, k := range acc.kills {
			if k.n == pr.n {
				pr.kills++
			}
		}
		for _, m := range sim.Minted() {
			if !m.ICEFetched {
				continue
			}
			minted[m.Token] = true
			pr.minted++
			if got.tokens[m.Token] > 0 || drained[m.Token] || acc.wiped[m.Token] {
				continue
			}
			pr.orphans++
			within := func(at time.Time) bool { return !m.MintedAt.Before(at.Add(-killWindow)) && !m.MintedAt.After(at) }
			killed := false
			for _, k := range acc.kills {
				if k.n == pr.n && within(k.at) {
					killed = true
					break
				}
			}
			if killed {
				pr.inFlight++
				continue
			}
			for _, at := range acc.crashes {
				if within(at) {
					pr.atCrash++
					break
				}
			}
		}
		r.perReplica = append(r.perReplica, pr)
	}
	r.minted = int64(len(minted))
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
	for tok := range acc.wiped {
		if got.tokens[tok] > 0 || drained[tok] {
			r.resurrected++
		} else {
			r.dropped++
		}
	}
	r.wasted, r.discarded, r.lost = sum("wasted"), sum("discarded"), sum("lost")
	r.stale, r.wipedRes = sum("stale_replays"), acc.wipedRes
	r.lapsed, r.returned, r.direct = sum("lapsed"), sum("returned"), sum("direct")
	r.prevented, r.orphaned, r.unrepl = sum("duplicates_prevented"), sum("orphaned"), sum("unreplicated")
	r.delayed = acc.delayed
	// Every take the pool counted as handed out reached a caller, or was
	// drained here, or was never answered: lost, or cut by a kill -9.
	r.unanswered = sum("handed_out") - got.fromPool - r.pooled
	r.ledger, err = accountLedger(ctx, rdb, append(acc.records, records...), got)
	return r, err
}

// accountLedger matches the ledger's records with the credentials callers
// received, by fingerprint.
func accountLedger(ctx context.Context, rdb redis.UniversalClient, msgs []redis.XMessage, got *received) (ledgerReport, error) {
	key := []byte(ledgerKeyOfRun)
	l := ledgerReport{records: int64(len(msgs))}
	byFP := map[string][]ledger.Record{}
	for _, m := range msgs {
		rec := ledger.FromStream(ledgerKey, m.ID, m.Values)
		byFP[rec.Fingerprint] = append(byFP[rec.Fingerprint], rec)
	}
	delivered := map[string]bool{}
	var sample []string
	for tok := range got.tokens {
		fp := ledger.Fingerprint(key, tok)
		delivered[fp] = true
		recs := byFP[fp]
		switch {
		case len(recs) == 0:
			l.missing++
			continue
		case len(recs) > 1:
			l.twice += int64(len(recs) - 1)
		}
		if recs[0].Subject != got.subjects[tok] {
			l.wrongCaller++
			continue
		}
		l.named++
		if len(sample) < 20 {
			sample = append(sample, tok)
		}
	}
	for fp, recs := range byFP {
		if !delivered[fp] {
			l.undelivered += int64(len(recs))
		}
	}
	// The admin route's lookup, on the records still in Redis.
	reader := &ledger.Reader{RDB: rdb, Streams: []string{ledgerKey}}
	for _, tok := range sample {
		found, err := reader.Lookup(ctx, key, tok)
		if err != nil {
			return l, err
		}
		l.looked++
		if len(found) > 1 || len(found) == 1 && found[0].Subject != got.subjects[tok] {
			l.lookupMiss++
		}
	}
	return l, nil
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
		{"pooled in a Redis dataset a wipe threw away", r.dropped},
		{"wasted (expired unused, stale, or minted with no room)", r.wasted},
		{"discarded (could not be opened)", r.discarded},
		{"resent to a Redis dataset wiped since, and refused (counted by the daemons)", r.stale},
		{"taken from the pool and never answered", r.unanswered},
		{"counted lost by the daemons (may include takes in flight that never ran)", r.lost},
		{"**unaccounted**", r.unaccounted()},
		{"bound: mints the killed replicas had in flight when they died, and mints answered just before the primary Redis crashed (see RELIABILITY.md)", r.killBound()},
		{"**delivered twice**", r.duplicates},
		{"pooled in a wiped dataset and seen again", r.resurrected},
		{"delivered but never minted", r.forged},
	}
	for _, row := range rows {
		fmt.Fprintf(out, "| %s | %d |\n", row.name, row.n)
	}
	fmt.Fprintf(out, "\n| replica | kills -9 | minted for it | not delivered, pooled or wiped | of those, minted in the %s before its kill | … before a crash of the primary Redis |\n|---|---|---|---|---|---|\n", killWindow)
	for _, p := range r.perReplica {
		fmt.Fprintf(out, "| %d | %d | %d | %d | %d | %d |\n", p.n, p.kills, p.minted, p.orphans, p.inFlight, p.atCrash)
	}
	fmt.Fprintf(out, "\nAlso: %d takes' replies delayed by the faults that delay them, %d takes undone and pooled again (`returned`), %d answers minted for their request, "+
		"%d mint reservations lapsed and %d were thrown away with a dataset, %d duplicates prevented, %d ids pooled without a body, "+
		"%d handouts no Redis replica acknowledged in time (`unreplicated`), "+
		"%d requests got no answer (%d of them cut by a kill -9); other answers by status (-1: a 200 without a credential): %v.\n",
		r.delayed, r.returned, r.direct, r.lapsed, r.wipedRes, r.prevented, r.orphaned, r.unrepl, r.transport, r.atKill, r.statuses)
	l := r.ledger
	fmt.Fprintf(out, "\n| the issuance ledger | count |\n|---|---|\n")
	for _, row := range []struct {
		name string
		n    int64
	}{
		{"records (those of wiped datasets included)", l.records},
		{"credentials delivered whose one record names their caller", l.named},
		{"**credentials delivered without a record**", l.missing},
		{"**records beyond one per credential**", l.twice},
		{"**records naming another caller**", l.wrongCaller},
		{"records of credentials nobody received (at most the takes never answered)", l.undelivered},
		{"credentials looked up as the admin route does", l.looked},
		{"**of those, not found with their caller**", l.lookupMiss},
	} {
		fmt.Fprintf(out, "| %s | %d |\n", row.name, row.n)
	}
	verdict := "The promise held."
	if !r.holds() {
		verdict = "The promise did NOT hold."
	}
	fmt.Fprintf(out, "\n%s\n", verdict)
}
