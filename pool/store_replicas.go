package pool

import (
	"log/slog"
	"sync"
)

// With WaitReplicas, a take waits for replicas to acknowledge its writes
// (WAIT). A primary with fewer replicas online than WAIT asks for (after
// a failover promoted one of them, say) would make every take wait the
// full timeout for nothing. The replica watch notices that from the first
// take that WAIT could not confirm; then takes wait only for the replicas
// that confirmed (none: no WAIT), are counted as unreplicated, and carry a
// ROLE in the same pipeline, whose list of online replicas tells the watch
// how many to wait for, and when enough are back: the take after that
// waits for all of them again. A shortage ROLE confirms is logged once,
// and so is its end.

// replicaWatch is what the Store knows of each primary's replicas, by the
// primary's address (one entry, "", outside a Cluster).
type replicaWatch struct {
	mu    sync.Mutex
	nodes map[string]*replicaState // guarded by mu
}

type replicaState struct {
	short  bool // fewer replicas online than waitN, or a WAIT fell short
	online int  // with short: the replicas to wait for, as the last take saw them
	logged bool // ROLE confirmed the shortage, and it was logged
}

// state is the state of node addr, made on first use.
func (w *replicaWatch) state(addr string) *replicaState {
	if w.nodes == nil {
		w.nodes = map[string]*replicaState{}
	}
	st := w.nodes[addr]
	if st == nil {
		st = &replicaState{}
		w.nodes[addr] = st
	}
	return st
}

// waitCount is how many replicas takes on node addr wait for: waitN, or,
// when fewer are online, those that are (short is then true, and the take
// asks ROLE).
func (s *Store) waitCount(addr string) (n int, short bool) {
	s.replicas.mu.Lock()
	defer s.replicas.mu.Unlock()
	st := s.replicas.state(addr)
	if !st.short {
		return s.waitN, false
	}
	return min(st.online, s.waitN), true
}

// sawReplicas records what a take learnt of node addr's replicas: WAIT
// confirmed only acked of them, or ROLE listed online replicas (-1: not
// learnt).
func (s *Store) sawReplicas(addr string, acked, online int) {
	s.replicas.mu.Lock()
	st := s.replicas.state(addr)
	var warn, back bool
	switch {
	case online >= 0 && online < s.waitN:
		st.short, st.online = true, online
		warn, st.logged = !st.logged, true
	case online >= 0:
		st.short = false
		back, st.logged = st.logged, false
	case acked >= 0 && acked < s.waitN && !st.short:
		st.short, st.online = true, acked // the next take's ROLE tells more
	}
	s.replicas.mu.Unlock()
	switch {
	case warn:
		s.logger().Warn("pool: the Redis primary has fewer replicas online than TOKENPOOL_REDIS_WAIT_REPLICAS: takes wait only for those online, and are counted as unreplicated, until enough replicas are back",
			"primary", addr, "replicas_online", online, "wait_replicas", s.waitN)
	case back:
		s.logger().Info("pool: the Redis primary has its replicas back: takes wait for them again",
			"primary", addr, "replicas_online", online, "wait_replicas", s.waitN)
	}
}

// roleReplicas counts the online replicas a primary's ROLE reply lists
// ("master", offset, [[ip, port, offset], …]); -1 when it is not one.
func roleReplicas(v any) int {
	r, ok := v.([]any)
	if !ok || len(r) < 3 || r[0] != "master" {
		return -1
	}
	list, ok := r[2].([]any)
	if !ok {
		return -1
	}
	return len(list)
}

func (s *Store) logger() *slog.Logger {
	if s.log == nil {
		return slog.Default()
	}
	return s.log
}
