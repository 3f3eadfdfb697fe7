package main

import (
	"os"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/internal/poll"
	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

// TestHandoutPathProbe is a probe for counting the files a pooled handout
// runs code in (scripts/handout-files.sh): it fills a pool, stops its
// refiller, makes one handout to warm every path, and, when
// TOKENPOOL_PROBE_HANDOUT=1, one more. Two coverage profiles, without and
// with that last handout, differ by exactly what it ran. It skips unless
// TOKENPOOL_PROBE is set.
func TestHandoutPathProbe(t *testing.T) {
	if os.Getenv("TOKENPOOL_PROBE") == "" {
		t.Skip("a probe for scripts/handout-files.sh")
	}
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	d := startDaemon(t, rs, sim, map[string]string{"TOKENPOOL_POOL_TARGET": "3"})
	poll.Until(t, "the pool to fill", 10*time.Second, func() bool {
		st, err := d.pool.Stats(t.Context(), "default")
		return err == nil && st.Usable >= 3
	})
	if err := d.pool.Drain(t.Context()); err != nil { // no refill from here on
		t.Fatal(err)
	}
	jwt := callerJWT(t, "probe")
	handout := func() {
		if r := fetch(t, d.url, jwt); r.status != 200 || r.header.Get("X-Credential-Source") != "pool" {
			t.Fatalf("%d %q %s", r.status, r.header.Get("X-Credential-Source"), r.body)
		}
	}
	handout() // warm: every first-time path runs here, in both profiles
	if os.Getenv("TOKENPOOL_PROBE_HANDOUT") == "1" {
		handout()
	}
}
