package pool

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
)

// Issue 20, findings 4 and 6: WAIT waits for the replicas there are, and
// only once per take.

// waitRecorder records the replica count of every WAIT sent, in order.
type waitRecorder struct {
	mu    sync.Mutex
	waits []int64
}

func (w *waitRecorder) take() []int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.waits
	w.waits = nil
	return out
}

func (w *waitRecorder) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (w *waitRecorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (w *waitRecorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		w.mu.Lock()
		for _, c := range cmds {
			if a := c.Args(); len(a) == 3 && strings.EqualFold(fmt.Sprint(a[0]), "wait") {
				n, _ := a[1].(int)
				w.waits = append(w.waits, int64(n))
			}
		}
		w.mu.Unlock()
		return next(ctx, cmds)
	}
}

// Finding 6: the first take on a Redis that lacks the script (after a
// restart or a failover) sends WAIT once, not once more for the retry.
func TestATakeThatLoadsTheScriptWaitsOnce(t *testing.T) {
	ctx := context.Background()
	srv := redistest.StartProcess(t) // no replica: every WAIT times out
	rdb := srv.Client()
	rec := &waitRecorder{}
	rdb.AddHook(rec)
	st := NewStore(rdb, StoreConfig{KeyPrefix: srv.Prefix, WaitReplicas: 1, WaitTimeout: 400 * time.Millisecond})
	st.log = discardLog()
	putOne(t, st, "p", "a", time.Now().Add(time.Hour))
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	rec.take()
	if _, err := st.Take(ctx, "p", "req-1", 0); err != nil {
		t.Fatal(err)
	}
	if w := rec.take(); len(w) != 1 {
		t.Fatalf("the take sent WAIT %d times (%v), want once", len(w), w)
	}
	if s := mustStats(t, st, "p"); s.HandedOut != 1 || s.Unreplicated != 1 {
		t.Fatalf("stats %+v: want 1 handed out, unreplicated", s)
	}
}

// Finding 4: with WaitReplicas 2 and one replica down, takes wait for the
// one still online (a failover to it can't bring their entries back), and
// once the other is online again, the next take but one waits for both.
func TestWithAReplicaDownTakesWaitForTheOneOnline(t *testing.T) {
	ctx := context.Background()
	primary := redistest.StartProcess(t)
	_, port, _ := strings.Cut(primary.Addr, ":")
	a := redistest.StartProcess(t, "--replicaof", "127.0.0.1", port)
	b := redistest.StartProcess(t, "--replicaof", "127.0.0.1", port)
	online := func(n int) {
		t.Helper()
		poll.Until(t, fmt.Sprintf("%d replicas online", n), 20*time.Second, func() bool {
			k, err := onlineReplicas(ctx, primary.Client())
			return err == nil && k == n
		})
	}
	online(2)
	rdb := primary.Client()
	rec := &waitRecorder{}
	rdb.AddHook(rec)
	st := NewStore(rdb, StoreConfig{KeyPrefix: primary.Prefix, WaitReplicas: 2, WaitTimeout: 300 * time.Millisecond})
	st.log = discardLog()
	for i := range 20 {
		putOne(t, st, "p", fmt.Sprintf("e%02d", i), time.Now().Add(time.Hour))
	}
	n := 0
	take := func() string {
		t.Helper()
		n++
		h, err := st.Take(ctx, "p", fmt.Sprintf("req-%d", n), 0)
		if err != nil {
			t.Fatal(err)
		}
		return h.ID
	}
	take()
	rec.take()

	b.Stop()
	online(1)
	var ids []string
	for range 5 {
		ids = append(ids, take())
	}
	w := rec.take()
	t.Logf("WAITs of 5 takes with one replica of two down: %v", w)
	if len(w) != 5 || w[0] != 2 {
		t.Fatalf("WAITs %v: want one per take, the first for 2 replicas", w)
	}
	for _, k := range w[1:] {
		if k != 1 {
			t.Fatalf("WAITs %v: after the first, takes must wait for the replica still online", w)
		}
	}
	// The replica online has every take: promoted, it hands none out again.
	for _, id := range ids {
		if _, err := a.Client().ZScore(ctx, st.keys("p").ready(), id).Result(); err != redis.Nil {
			t.Fatalf("entry %s, handed out, is still pooled on the replica (%v)", id, err)
		}
	}

	b.Start()
	online(2)
	take() // sees both online
	take()
	if w := rec.take(); len(w) != 2 || w[1] != 2 {
		t.Fatalf("WAITs %v after the replica came back: the second take must wait for 2", w)
	}
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
