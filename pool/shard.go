package pool

import (
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Sharded profiles. A profile's keys share one hash tag, so on a Redis
// Cluster a profile lives on one master. A profile with Shards n > 1
// spreads its pool over n hash tags instead, each a pool of its own
// (entries, reservations, ledger, counters) holding its share of the
// target: every invariant holds per shard, so it holds for their sum.
// Shard i's tag is the first of "<profile>#0", "<profile>#1", … whose
// Cluster slot lies in the i-th n-th of the slot space, so that with
// masters owning equal ranges of slots (what redis-cli --cluster create
// makes) n shards spread evenly over n masters, or a multiple of them.

// clusterSlots is the number of Redis Cluster hash slots.
const clusterSlots = 16384

// shardTags returns the hash tags of profile's n shards: the profile's
// own name when n is 1.
func shardTags(profile string, n int) []string {
	if n <= 1 {
		return []string{profile}
	}
	tags := make([]string, n)
	found := 0
	for k := 0; found < n; k++ {
		tag := profile + "#" + strconv.Itoa(k)
		i := int(keySlot(tag)) * n / clusterSlots
		if tags[i] == "" {
			tags[i] = tag
			found++
		}
	}
	return tags
}

// profileOf is the profile a shard's tag belongs to: profile names have
// no '#'.
func profileOf(tag string) string {
	if i := strings.IndexByte(tag, '#'); i >= 0 {
		return tag[:i]
	}
	return tag
}

// share is shard i's part of total over n shards: they add up to total.
func share(total, i, n int) int {
	s := total / n
	if i < total%n {
		s++
	}
	return s
}

// keySlot is the Redis Cluster slot of a key with no hash tag (or of the
// tag itself): CRC16-CCITT (XMODEM) modulo 16384.
func keySlot(key string) uint16 {
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % clusterSlots
}

// A shard whose Redis fails (a dead Cluster master) must not take its
// profile down: takes pass over it for shardRetry and try the other
// shards (or mint directly), and the refiller backs off that shard alone
// while the others keep refilling. A success on the shard, a take's or the
// refiller's, makes it a shard like the others again.

// shardRetry is how long takes pass over a shard after its Redis failed;
// the first take after that tries it again.
const shardRetry = time.Second

// shardHealth is what takes know of one shard. It is safe for concurrent
// use.
type shardHealth struct {
	downUntil atomic.Int64 // this host's clock, Unix ns: takes pass over the shard until then; 0: up
}

// down reports whether takes pass over the shard at now.
func (h *shardHealth) down(now time.Time) bool {
	u := h.downUntil.Load()
	return u != 0 && now.UnixNano() < u
}

// fail marks the shard down until until, unless it is down longer already.
func (h *shardHealth) fail(until time.Time) {
	for {
		u := h.downUntil.Load()
		if u >= until.UnixNano() || h.downUntil.CompareAndSwap(u, until.UnixNano()) {
			return
		}
	}
}

// ok marks the shard up.
func (h *shardHealth) ok() {
	if h.downUntil.Load() != 0 {
		h.downUntil.Store(0)
	}
}

// takeOrder calls try with pr's shards in the order a take visits them:
// those up, from one picked at random, then, if every shard is down, all
// of them. It stops when try returns false.
func (p *Pool) takeOrder(pr *profile, try func(i int) bool) {
	n := len(pr.tags)
	first := 0
	if n > 1 {
		first = rand.N(n)
	}
	now, tried := p.now(), 0
	for k := range n {
		i := (first + k) % n
		if pr.health[i].down(now) {
			continue
		}
		tried++
		if !try(i) {
			return
		}
	}
	if tried > 0 {
		return
	}
	for k := range n {
		if !try((first + k) % n) {
			return
		}
	}
}
