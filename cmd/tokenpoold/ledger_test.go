package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tokenpool/tokenpool/internal/redistest"
	"github.com/tokenpool/tokenpool/ledger"
	"github.com/tokenpool/tokenpool/upstream/upstreamtest"
)

const testLedgerKey = "a ledger key for the daemon's tests"

// ledgerEnv turns the ledger on, with sealed entries (so that no token is
// in Redis in clear) and an admin key.
func ledgerEnv(extra map[string]string) map[string]string {
	env := map[string]string{
		"TOKENPOOL_LEDGER_KEY": testLedgerKey,
		"TOKENPOOL_SEAL_KEYS":  base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)),
		"TOKENPOOL_ADMIN_KEYS": "ops:" + sha256hex("admin-key"),
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// allRecords pages through GET /v1/admin/ledger of d.
func allRecords(t *testing.T, d *daemon, query string) []ledger.Record {
	t.Helper()
	var out []ledger.Record
	after := ""
	for {
		req, _ := http.NewRequest(http.MethodGet, d.url+"/v1/admin/ledger?limit=37&"+query+"&after="+after, nil)
		req.Header.Set("X-API-Key", "admin-key")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var page struct {
			Records []ledger.Record
			Next    string
			More    bool
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /v1/admin/ledger: %d %v", resp.StatusCode, err)
		}
		out = append(out, page.Records...)
		if !page.More {
			return out
		}
		after = page.Next
	}
}

// lookup asks d who received token.
func lookup(t *testing.T, d *daemon, token string) []ledger.Record {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"token": token})
	req, _ := http.NewRequest(http.MethodPost, d.url+"/v1/admin/ledger/lookup", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", "admin-key")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a struct{ Records []ledger.Record }
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("lookup: %d %v", resp.StatusCode, err)
	}
	return a.Records
}

// redisHolds reports the first key of rdb whose value holds any of
// needles, by a dump of every key.
func redisHolds(t *testing.T, rdb *redis.Client, needles map[string]string) (string, bool) {
	t.Helper()
	ctx := context.Background()
	it := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for it.Next(ctx) {
		k := it.Val()
		var v any
		var err error
		switch typ, _ := rdb.Type(ctx, k).Result(); typ {
		case "string":
			v, err = rdb.Get(ctx, k).Result()
		case "hash":
			v, err = rdb.HGetAll(ctx, k).Result()
		case "zset":
			v, err = rdb.ZRangeWithScores(ctx, k, 0, -1).Result()
		case "stream":
			v, err = rdb.XRange(ctx, k, "-", "+").Result()
		case "set":
			v, err = rdb.SMembers(ctx, k).Result()
		case "list":
			v, err = rdb.LRange(ctx, k, 0, -1).Result()
		}
		if err != nil {
			t.Fatal(err)
		}
		dump := k + fmt.Sprint(v)
		for tok := range needles {
			if strings.Contains(dump, tok) {
				return k, true
			}
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return "", false
}

// Three replicas on one Redis hand out from the pool and mint directly
// when it runs dry: the ledger holds one record per credential handed
// out, naming its caller, and nothing else; the lookup of every token
// finds its caller; no token is in Redis or in any log.
func TestTheLedgerRecordsEveryHandoutOfAFleetOnce(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	env := ledgerEnv(map[string]string{"TOKENPOOL_POOL_TARGET": "10", "TOKENPOOL_POOL_MAX": "10"})
	var fleet []*daemon
	for range 3 {
		fleet = append(fleet, startDaemon(t, rs, sim, env))
	}
	const callers, each = 6, 25
	type got struct{ subject, token, source string }
	var (
		mu   sync.Mutex
		gots []got
		errs []error
		wg   sync.WaitGroup
	)
	for c := range callers {
		bearer := callerJWT(t, fmt.Sprint("caller-", c))
		wg.Go(func() {
			for i := range each {
				a, err := ask(fleet[(c+i)%3].url, bearer, "default")
				var v struct{ Token string }
				if err == nil {
					err = json.Unmarshal([]byte(a.body), &v)
				}
				if err == nil && (a.status != http.StatusOK || v.Token == "") {
					err = fmt.Errorf("%d %s", a.status, a.body)
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					gots = append(gots, got{fmt.Sprint("user:caller-", c), v.Token, a.header.Get("X-Credential-Source")})
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d requests failed, the first: %v", len(errs), errs[0])
	}
	sources := map[string]int{}
	for _, g := range gots {
		sources[g.source]++
	}
	if sources["pool"] == 0 || sources["direct"] == 0 {
		t.Fatalf("handouts by source %v: want both pooled and direct ones", sources)
	}

	recs := allRecords(t, fleet[1], "")
	byFP := map[string][]ledger.Record{}
	for _, r := range recs {
		byFP[r.Fingerprint] = append(byFP[r.Fingerprint], r)
	}
	if len(recs) != len(gots) {
		t.Fatalf("%d records for %d handouts", len(recs), len(gots))
	}
	tokens := map[string]string{}
	for _, g := range gots {
		tokens[g.token] = g.subject
		rs := byFP[ledger.Fingerprint([]byte(testLedgerKey), g.token)]
		if len(rs) != 1 || rs[0].Subject != g.subject || rs[0].Source != g.source || rs[0].Profile != "default" || rs[0].Provider != "orga" {
			t.Fatalf("the records of a token %s handed to %s: %+v", g.source, g.subject, rs)
		}
	}
	for i, g := range gots[:5] {
		if found := lookup(t, fleet[i%3], g.token); len(found) != 1 || found[0].Subject != g.subject {
			t.Fatalf("lookup of a token handed to %s: %+v", g.subject, found)
		}
	}
	if mine := allRecords(t, fleet[0], "subject=user:caller-2"); len(mine) != each {
		t.Fatalf("caller-2's records: %d, want %d", len(mine), each)
	}
	if k, ok := redisHolds(t, rs.Client(), tokens); ok {
		t.Fatalf("Redis key %s holds a token handed out", k)
	}
	for i, d := range fleet {
		logs := d.logsNow()
		for tok := range tokens {
			if strings.Contains(logs, tok) {
				t.Fatalf("replica %d's log holds a token handed out", i+1)
			}
		}
	}
}

// The export writes every record once, in order, and resumes after the
// last whole line of its file: a run stopped in the middle of a line
// leaves neither a gap nor a duplicate.
func TestTheLedgerExportResumesWithoutAGapOrADuplicate(t *testing.T) {
	rs := redistest.New(t)
	sim := startSim(t, upstreamtest.Config{})
	env := ledgerEnv(map[string]string{"TOKENPOOL_POOL_TARGET": "5"})
	d := startDaemon(t, rs, sim, env)
	bearer := callerJWT(t, "exporter")
	handOut := func(n int) {
		t.Helper()
		for range n {
			if a, err := ask(d.url, bearer, "default"); err != nil || a.status != http.StatusOK {
				t.Fatalf("%v %+v", err, a)
			}
		}
	}
	full := testEnv(rs.URL(), sim, env)
	exportTo := func(path string) {
		t.Helper()
		var stderr bytes.Buffer
		if code := run(context.Background(), []string{"ledger", "export", "-o", path, "-settle", "0s"}, envOf(full), &bytes.Buffer{}, &stderr); code != 0 {
			t.Fatalf("export: exit %d: %s", code, stderr.String())
		}
	}
	lines := func(path string) []ledger.Record {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var out []ledger.Record
		for _, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
			var r ledger.Record
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatalf("a line that is not a record: %q", l)
			}
			out = append(out, r)
		}
		return out
	}
	path := filepath.Join(t.TempDir(), "ledger.jsonl")
	handOut(12)
	exportTo(path)
	if n := len(lines(path)); n != 12 {
		t.Fatalf("the first export wrote %d records of 12", n)
	}
	// Stopped while writing its last line: cut it in the middle.
	b, _ := os.ReadFile(path)
	if err := os.WriteFile(path, b[:len(b)-20], 0o600); err != nil {
		t.Fatal(err)
	}
	handOut(8)
	want := allRecords(t, d, "")
	// The oldest records go (as the retention would take them): a resumed
	// export keeps the lines it wrote, an export from the start would lose
	// them.
	for _, r := range want[:5] {
		if err := rs.Client().XDel(context.Background(), r.Stream, r.ID).Err(); err != nil {
			t.Fatal(err)
		}
	}
	exportTo(path)
	got := lines(path)
	if len(got) != 20 || len(want) != 20 {
		t.Fatalf("after the resumed export: %d lines, %d records; want 20 each", len(got), len(want))
	}
	for i := range want {
		if got[i].ID != want[i].ID || got[i].Stream != want[i].Stream || got[i].Fingerprint != want[i].Fingerprint {
			t.Fatalf("line %d is %s@%s, the ledger's record %d is %s@%s", i+1, got[i].ID, got[i].Stream, i+1, want[i].ID, want[i].Stream)
		}
	}
}

// The export resumes after the last line that ends with its newline (a
// line cut short, even one that parses, is written again) and refuses a
// file holding anything but records.
func TestTheExportResumesOnlyAfterAWholeLine(t *testing.T) {
	rec := `{"id":"1-0","stream":"tp:{a}:issued"}`
	for _, tt := range []struct {
		file, cursor string
		end          int
		err          string
	}{
		{"", "", 0, ""},
		{rec + "\n", "1-0@tp:{a}:issued", len(rec) + 1, ""},
		{rec + "\n" + rec[:10], "1-0@tp:{a}:issued", len(rec) + 1, ""},
		{rec + "\n" + strings.Replace(rec, "1-0", "2-0", 1), "1-0@tp:{a}:issued", len(rec) + 1, ""}, // whole, but no newline
		{"hello\n" + rec + "\n", "", 0, "line 1 is not a ledger record"},
	} {
		last, end, err := lastRecord(strings.NewReader(tt.file))
		if last.String() != tt.cursor || end != int64(tt.end) || (err == nil) != (tt.err == "") || err != nil && !strings.Contains(err.Error(), tt.err) {
			t.Fatalf("%q: %q %d %v; want %q %d %q", tt.file, last, end, err, tt.cursor, tt.end, tt.err)
		}
	}
}
