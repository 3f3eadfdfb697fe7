package pool

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
)

// TestAFailoverCanBringBackATakenEntry pins down the limit the docs state
// (finding 9 of the pool review): a take's ledger write replicates in one
// unit with its pop, so a replica promoted before it received the take has
// neither, and hands the entry out again; the ledger cannot see it. WAIT
// says so: the take counts as unreplicated, which is the operator's signal.
func TestAFailoverCanBringBackATakenEntry(t *testing.T) {
	ctx := context.Background()
	primary := redistest.StartProcess(t)
	_, port, _ := strings.Cut(primary.Addr, ":")
	replica := redistest.StartProcess(t, "--replicaof", "127.0.0.1", port)
	st := NewStore(primary.Client(), StoreConfig{KeyPrefix: primary.Prefix, WaitReplicas: 1, WaitTimeout: 50 * time.Millisecond})
	putOne(t, st, "p", "a", time.Now().Add(time.Hour))
	poll.Until(t, "the replica to hold the entry", 10*time.Second, func() bool {
		return replica.Client().ZCard(ctx, st.keys("p").ready()).Val() == 1
	})

	// The replica is cut off and promoted before the take reaches it.
	if err := replica.Client().Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	first, err := st.Take(ctx, "p", "req-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if s := mustStats(t, st, "p"); s.Unreplicated != 1 {
		t.Fatalf("a take no replica acknowledged: %+v; want it counted as unreplicated", s)
	}
	promoted := NewStore(replica.Client(), StoreConfig{KeyPrefix: primary.Prefix})
	second, err := promoted.Take(ctx, "p", "req-2", 0)
	if err != nil || second.ID != first.ID {
		t.Fatalf("take on the promoted replica: %v, %v; the documented limit is that %s comes back", second.ID, err, first.ID)
	}
}
