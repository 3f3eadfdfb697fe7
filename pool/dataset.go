package pool

import (
	"crypto/rand"
	"sync"
)

// Datasets. A Redis that restarts without persistence, or a FLUSHALL,
// wipes a profile's keys while replicas still hold what they sent there:
// a put whose reply was lost, a take being recovered. Replayed into the
// new, empty dataset, such a put could pool again a credential another
// replica already handed out (the ledger that would have refused it went
// with the wipe). So each shard's dataset carries an id, its epoch, in the
// stats hash; reserveScript writes one where there is none. Every put and
// recovery names the epoch it was first sent to, and a script refuses one
// whose epoch is gone. The replica whose reservation writes the new epoch
// reports the wipe: it counts the entries it last saw pooled as dropped.

// datasets is what this Store last saw of each shard's dataset.
type datasets struct {
	mu   sync.Mutex
	seen map[string]dataset // by shard tag
}

// dataset is one shard's dataset as a reservation last saw it.
type dataset struct {
	epoch string // "" until a reservation saw one
	ready int64  // entries pooled then
}

func (d *datasets) get(tag string) dataset {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.seen[tag]
}

func (d *datasets) set(tag string, s dataset) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.seen == nil {
		d.seen = map[string]dataset{}
	}
	d.seen[tag] = s
}

// seen reports whether a reservation has seen shard tag's dataset.
func (s *Store) seen(tag string) bool { return s.datasets.get(tag).epoch != "" }

// newEpoch is a fresh dataset id.
func newEpoch() string { return rand.Text() }
