package pool

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
)

func randomKey(tb testing.TB) []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		tb.Fatal(err)
	}
	return k
}

func sealedStore(tb testing.TB, srv *redistest.Server, keys ...[]byte) *Store {
	tb.Helper()
	s, err := NewSealer(keys)
	if err != nil {
		tb.Fatal(err)
	}
	return NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix, Sealer: s})
}

func TestSealing(t *testing.T) {
	ctx := context.Background()
	oldKey, newKey := randomKey(t), randomKey(t)

	t.Run("raw Redis values hold no token text", func(t *testing.T) {
		srv := redistest.New(t)
		st := sealedStore(t, srv, oldKey)
		putOne(t, st, "p", "a", time.Now().Add(time.Hour))
		putOne(t, st, "p", "b", time.Now().Add(time.Hour))
		if _, err := st.Take(ctx, "p", "req-1", 0); err != nil {
			t.Fatal(err)
		}
		rdb := srv.Client()
		keys, _ := rdb.Keys(ctx, srv.Prefix+":*").Result()
		var raw []byte
		for _, k := range keys {
			switch rdb.Type(ctx, k).Val() {
			case "hash":
				for _, v := range rdb.HGetAll(ctx, k).Val() {
					raw = append(raw, v...)
				}
			case "string":
				raw = append(raw, rdb.Get(ctx, k).Val()...)
			}
		}
		if !strings.Contains(strings.Join(keys, " "), ":claim:") || len(raw) == 0 {
			t.Fatalf("expected an entry and a claim key, got %v", keys)
		}
		if bytes.Contains(raw, []byte("tok-")) || bytes.Contains(raw, []byte(`"t":`)) {
			t.Fatalf("a token is readable in Redis: %q", raw)
		}
	})

	t.Run("rotating keys, new first, keeps serving the pool", func(t *testing.T) {
		srv := redistest.New(t)
		putOne(t, sealedStore(t, srv, oldKey), "p", "a", time.Now().Add(time.Hour))
		rotated := sealedStore(t, srv, newKey, oldKey)
		putOne(t, rotated, "p", "b", time.Now().Add(2*time.Hour))
		for _, want := range []string{"a", "b"} {
			h, err := rotated.Take(ctx, "p", "req-"+want, 0)
			if err != nil || h.ID != want || h.Token != "tok-"+want {
				t.Fatalf("take = %+v, %v; want %s", h, err, want)
			}
		}
	})

	t.Run("an entry no key opens is left for a replica that can, never handed out", func(t *testing.T) {
		srv := redistest.New(t)
		putOne(t, sealedStore(t, srv, oldKey), "p", "a", time.Now().Add(time.Hour))
		putOne(t, sealedStore(t, srv, oldKey), "p", "b", time.Now().Add(time.Hour))
		st := sealedStore(t, srv, newKey)
		if _, err := st.Take(ctx, "p", "req-1", 0); !errors.Is(err, ErrEmpty) {
			t.Fatalf("take: %v, want ErrEmpty", err)
		}
		if s := mustStats(t, st, "p"); s.Discarded != 0 || s.Ready != 2 {
			t.Fatalf("stats %+v, want both still pooled", s)
		}
	})

	t.Run("a tampered entry is discarded; the next good one is handed out", func(t *testing.T) {
		srv := redistest.New(t)
		st := sealedStore(t, srv, oldKey)
		putOne(t, st, "p", "a", time.Now().Add(time.Minute))
		putOne(t, st, "p", "b", time.Now().Add(time.Hour))
		k := st.keys("p")
		rdb := srv.Client()
		body := []byte(rdb.HGet(ctx, k.entries(), "a").Val())
		body[len(body)-1] ^= 1
		rdb.HSet(ctx, k.entries(), "a", body)
		h, err := st.Take(ctx, "p", "req-1", 0)
		if err != nil || h.ID != "b" {
			t.Fatalf("take = %+v, %v; want b", h.ID, err)
		}
		if s := mustStats(t, st, "p"); s.Discarded != 1 {
			t.Fatalf("discarded = %d, want 1", s.Discarded)
		}
	})

	t.Run("a sealed body moved to another entry id does not open", func(t *testing.T) {
		s, _ := NewSealer([][]byte{oldKey})
		sealed := s.seal("p", "a", []byte(`{"t":"x","x":1}`))
		if _, err := s.open("p", "b", sealed); !errors.Is(err, ErrSealed) {
			t.Fatalf("open under another id: %v", err)
		}
		if _, err := s.open("q", "a", sealed); !errors.Is(err, ErrSealed) {
			t.Fatalf("open under another profile: %v", err)
		}
	})
}

func TestParseSealKeys(t *testing.T) {
	k := randomKey(t)
	in := base64.StdEncoding.EncodeToString(k) + ", " + base64.RawURLEncoding.EncodeToString(k)
	keys, err := ParseSealKeys(in)
	if err != nil || len(keys) != 2 || !bytes.Equal(keys[1], k) {
		t.Fatalf("got %d keys, %v", len(keys), err)
	}
	for _, bad := range []string{"not base64!", base64.StdEncoding.EncodeToString(k[:16])} {
		if _, err := ParseSealKeys(bad); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

// TestMintsDuringAnOutageArePooledWhenRedisReturns: a credential minted
// while Redis is down is kept in memory and pooled when it comes back.
func TestMintsDuringAnOutageArePooledWhenRedisReturns(t *testing.T) {
	srv := redistest.StartProcess(t, "--appendonly", "yes", "--appendfsync", "always")
	st := NewStore(srv.Client(), StoreConfig{KeyPrefix: srv.Prefix})
	m := &fakeMinter{ttl: time.Hour, delay: 500 * time.Millisecond}
	p := newTestPool(t, st, m, func(c *Config) {
		c.Profiles[0].Target = 3
		c.RefillConcurrency = 2
	})
	p.Open()
	// The first mint probes alone; once it succeeds, two more start.
	poll.Until(t, "two mints in flight after the probe", 5*time.Second, func() bool { return m.started.Load() == 3 })
	srv.Stop()
	poll.Until(t, "the mints to finish", 5*time.Second, func() bool { return m.n.Load() == 3 })
	poll.Until(t, "both credentials to be parked", 10*time.Second, func() bool {
		p.refill.mu.Lock()
		defer p.refill.mu.Unlock()
		return len(p.refill.state["default"].parked) == 2
	})
	srv.Start()
	poll.Until(t, "the parked credentials to be pooled", 10*time.Second, func() bool {
		s, err := st.Stats(context.Background(), "default", 0)
		return err == nil && s.Ready == 3
	})
	if n := m.n.Load(); n != 3 {
		t.Fatalf("%d mints; the parked ones should have been pooled, not replaced", n)
	}
}
