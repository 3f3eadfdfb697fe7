package redistest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// StartCluster starts n redis-server processes in cluster mode, with
// extraArgs, and joins them into one cluster of n masters with redis-cli
// --cluster create. It returns the nodes once every slot is served.
func StartCluster(tb testing.TB, n int, extraArgs ...string) []*Server {
	tb.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		tb.Skip("redistest: redis-cli not on PATH")
	}
	var nodes []*Server
	args := []string{"--cluster", "create"}
	for range n {
		s := StartProcess(tb, append([]string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000"}, extraArgs...)...)
		nodes = append(nodes, s)
		args = append(args, s.Addr)
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		tb.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	var clients []*redis.Client
	for _, s := range nodes {
		c := redis.NewClient(&redis.Options{Addr: s.Addr})
		defer c.Close()
		clients = append(clients, c)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok := true
		for _, c := range clients {
			info, err := c.ClusterInfo(context.Background()).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				ok = false
			}
		}
		if ok {
			return nodes
		}
		if time.Now().After(deadline) {
			tb.Fatal("redistest: the cluster did not reach cluster_state:ok")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Sentinel is a Sentinel-managed primary with one replica.
type Sentinel struct {
	Addr    string // the sentinel
	Master  string // the monitored name
	Primary *Server
	Replica *Server
}

// StartSentinel starts a primary, a replica of it and one sentinel that
// monitors them as "mymaster" (quorum 1, down after 1s).
func StartSentinel(tb testing.TB) *Sentinel {
	tb.Helper()
	primary := StartProcess(tb)
	_, pport, _ := strings.Cut(primary.Addr, ":")
	replica := StartProcess(tb, "--replicaof", "127.0.0.1", pport)

	port := FreePort(tb)
	dir := tb.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\n"+
		"sentinel monitor mymaster 127.0.0.1 %s 1\n"+
		"sentinel down-after-milliseconds mymaster 1000\n"+
		"sentinel failover-timeout mymaster 5000\n", port, dir, pport)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		tb.Fatal(err)
	}
	s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), Kind: "process", tb: tb, args: []string{conf, "--sentinel"}}
	s.Start()
	tb.Cleanup(s.Stop)

	sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addr})
	defer sc.Close()
	pc := primary.Client()
	deadline := time.Now().Add(15 * time.Second)
	for {
		addr, err := sc.GetMasterAddrByName(context.Background(), "mymaster").Result()
		replicas, _ := sc.Replicas(context.Background(), "mymaster").Result()
		info, _ := pc.Info(context.Background(), "replication").Result()
		if err == nil && len(addr) == 2 && len(replicas) == 1 && strings.Contains(info, "state=online") {
			return &Sentinel{Addr: s.Addr, Master: "mymaster", Primary: primary, Replica: replica}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("redistest: the sentinel does not know its primary and replica: %v %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Topologies names the two shapes a test of scripts runs on, for
// OnTopology.
var Topologies = []string{"one Redis", "a Cluster"}

// OnTopology starts a Redis of the named topology (one of Topologies)
// and returns a client, closed when the test ends, and the key prefix to
// use on it ("" on a Cluster, whose slots the default prefix spreads
// over).
func OnTopology(tb testing.TB, topo string) (redis.UniversalClient, string) {
	tb.Helper()
	if topo == "one Redis" {
		s := New(tb)
		return s.Client(), s.Prefix
	}
	var addrs []string
	for _, n := range StartCluster(tb, 3) {
		addrs = append(addrs, n.Addr)
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second})
	tb.Cleanup(func() { cc.Close() })
	return cc, ""
}
