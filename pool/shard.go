package pool

import (
	"strconv"
	"strings"
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
