package pool

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// With WaitReplicas, a take waits for replicas to acknowledge its writes
// (WAIT). A primary with fewer replicas online than WAIT asks for (after
// a failover promoted its only replica, say) would make every take wait
// the full timeout for nothing. The replica watch notices that from the
// first take that times out, then takes skip WAIT and are counted as
// unreplicated, and it looks again every replicaProbeEvery until enough
// replicas are back. Each change is logged once.

// replicaProbeEvery spaces the looks at a primary that lacks replicas.
const replicaProbeEvery = time.Second

// replicaWatch is what the Store knows of each primary's replicas, by the
// primary's address (one entry, "", outside a Cluster).
type replicaWatch struct {
	mu    sync.Mutex
	nodes map[string]*replicaState // guarded by mu
}

type replicaState struct {
	short   bool      // fewer replicas online than waitN: takes don't WAIT
	probing bool      // a look is under way
	probed  time.Time // the last look started
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

// skipWait reports whether takes on node addr should not WAIT, and starts
// a look at its replicas when one is due.
func (s *Store) skipWait(addr string, node redis.Cmdable) bool {
	s.replicas.mu.Lock()
	defer s.replicas.mu.Unlock()
	st := s.replicas.state(addr)
	if st.short {
		s.probeLocked(addr, node, st)
	}
	return st.short
}

// waitTimedOut is told of a take that WAIT could not confirm: it looks at
// the node's replicas, unless a look is under way.
func (s *Store) waitTimedOut(addr string, node redis.Cmdable) {
	s.replicas.mu.Lock()
	defer s.replicas.mu.Unlock()
	st := s.replicas.state(addr)
	st.probed = time.Time{} // due now
	s.probeLocked(addr, node, st)
}

// probeLocked starts a look at node's replicas in the background, if none
// is running and the last started replicaProbeEvery ago.
func (s *Store) probeLocked(addr string, node redis.Cmdable, st *replicaState) {
	now := time.Now()
	if st.probing || now.Sub(st.probed) < replicaProbeEvery {
		return
	}
	st.probing, st.probed = true, now
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		online, err := onlineReplicas(ctx, node)
		s.replicas.mu.Lock()
		st.probing = false
		was := st.short
		if err == nil {
			st.short = online < s.waitN
		}
		short := st.short
		s.replicas.mu.Unlock()
		switch {
		case err != nil:
			// Redis is failing: the takes say so themselves.
		case short == was:
		case short:
			s.logger().Warn("pool: the Redis primary has fewer replicas online than TOKENPOOL_REDIS_WAIT_REPLICAS: takes no longer wait for them, and are counted as unreplicated, until enough replicas are back",
				"primary", addr, "replicas_online", online, "wait_replicas", s.waitN)
		default:
			s.logger().Info("pool: the Redis primary has its replicas back: takes wait for them again",
				"primary", addr, "replicas_online", online, "wait_replicas", s.waitN)
		}
	}()
}

// onlineReplicas counts the replicas node reports online (INFO
// replication: a replica still syncing can't acknowledge a WAIT).
func onlineReplicas(ctx context.Context, node redis.Cmdable) (int, error) {
	info, err := node.Info(ctx, "replication").Result()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, line := range strings.Split(info, "\n") {
		if strings.HasPrefix(line, "slave") && strings.Contains(line, "state=online") {
			n++
		}
	}
	return n, nil
}

func (s *Store) logger() *slog.Logger {
	if s.log == nil {
		return slog.Default()
	}
	return s.log
}
