package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/tokenpool/tokenpool/ledger"
	"github.com/tokenpool/tokenpool/pool"
)

// ledgerAdmin serves the ledger's admin routes from its streams, with the
// fingerprint key for lookups.
type ledgerAdmin struct {
	*ledger.Reader
	key []byte
}

// Lookup finds the records of token.
func (l ledgerAdmin) Lookup(ctx context.Context, token string) ([]ledger.Record, error) {
	return l.Reader.Lookup(ctx, l.key, token)
}

// exportLag is how old a record is before the export writes it: older
// than a claim's life (pool.StoreConfig.ClaimTTL, 10 s) and the clock skew
// between Redis nodes, a record can no longer be undone (a take whose
// reply was lost is recovered within its claim's life), nor can a record
// with an earlier id still appear.
const exportLag = 15 * time.Second // the default of -settle

// ledgerCommand runs "tokenpoold ledger export": the records as JSON
// lines, oldest first, for a SIEM. It reads the daemon's configuration
// from the environment (the profiles name the streams). With -o FILE it
// resumes after the last whole line FILE holds; -follow keeps writing new
// records as they settle.
func ledgerCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "export" {
		fmt.Fprintln(stderr, "usage: tokenpoold ledger export [-since TIME|DURATION] [-after CURSOR] [-follow] [-o FILE] [-settle DURATION]")
		return 2
	}
	fs := flag.NewFlagSet("tokenpoold ledger export", flag.ContinueOnError)
	fs.SetOutput(stderr)
	since := fs.String("since", "", "the first records to write: an RFC 3339 time, or a duration ago (24h)")
	after := fs.String("after", "", "write the records after this cursor (a line's id@stream)")
	follow := fs.Bool("follow", false, "keep writing records as they are added")
	out := fs.String("o", "", "append to this file, resuming after its last whole line (default: standard output)")
	settle := fs.Duration("settle", exportLag, "how old a record must be before it is written: longer than a claim lives, so that no record written is undone later")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	cfg, err := LoadConfig(getenv, false)
	if err != nil {
		fmt.Fprintf(stderr, "tokenpoold: invalid configuration:\n%v\n", err)
		return 2
	}
	from, err := exportStart(*since, *after, time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "tokenpoold ledger export: %v\n", err)
		return 2
	}
	w := stdout
	if *out != "" {
		f, resumed, err := openExport(*out)
		if err != nil {
			fmt.Fprintf(stderr, "tokenpoold ledger export: %v\n", err)
			return 1
		}
		defer f.Close()
		if resumed.ID != "" {
			from = resumed
		}
		w = f
	}
	m := &Main{Config: cfg, Stderr: stderr}
	m.openLogs()
	if err := m.openRedis(ctx); err != nil {
		m.log.Error("ledger export: redis", "err", err)
		return 1
	}
	defer m.rdb.Close()
	var profiles []pool.Profile
	for _, p := range cfg.Profiles.List {
		profiles = append(profiles, p.Profile)
	}
	r := &ledger.Reader{RDB: m.rdb, Streams: pool.IssuedStreams("", profiles)}
	if err := export(ctx, r, from, *follow, *settle, w); err != nil && !errors.Is(err, context.Canceled) {
		m.log.Error("ledger export", "err", err, "resume_after", from.String())
		return 1
	}
	return 0
}

// exportStart is where an export starts: after the cursor, or at since.
func exportStart(since, after string, now time.Time) (ledger.Cursor, error) {
	if since != "" && after != "" {
		return ledger.Cursor{}, errors.New("-since and -after: give one")
	}
	if after != "" {
		return ledger.ParseCursor(after)
	}
	if since == "" {
		return ledger.Cursor{}, nil
	}
	if d, err := time.ParseDuration(since); err == nil && d > 0 {
		return ledger.Since(now.Add(-d)), nil
	}
	t, err := time.Parse(time.RFC3339, since)
	if err != nil {
		return ledger.Cursor{}, fmt.Errorf("-since %q: want an RFC 3339 time or a duration", since)
	}
	return ledger.Since(t), nil
}

// openExport opens path to append to, and reads the cursor of its last
// whole line. A last line without its newline (the export stopped while
// writing it) is cut off; a whole line that is not a record refuses the
// file: the export appends only to what it wrote.
func openExport(path string) (*os.File, ledger.Cursor, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, ledger.Cursor{}, err
	}
	last, end, err := lastRecord(f)
	if err == nil {
		err = f.Truncate(end)
	}
	if err == nil {
		_, err = f.Seek(end, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, ledger.Cursor{}, fmt.Errorf("%s: %w", path, err)
	}
	return f, last, nil
}

// lastRecord reads r's whole lines, each a record, and returns the last
// one's cursor and where the whole lines end.
func lastRecord(r io.Reader) (last ledger.Cursor, end int64, err error) {
	br := bufio.NewReader(r)
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			var rec ledger.Record
			if json.Unmarshal(line, &rec) != nil || rec.ID == "" || rec.Stream == "" {
				return last, end, fmt.Errorf("line %d is not a ledger record: the export appends only to a file it wrote", n)
			}
			last, end = ledger.Cursor{ID: rec.ID, Stream: rec.Stream}, end+int64(len(line))
		}
		switch {
		case errors.Is(err, io.EOF):
			return last, end, nil
		case err != nil:
			return last, end, err
		}
	}
}

// export writes the records after from to w, one JSON line each, until
// the ledger is read (or, with follow, until ctx ends). It writes a
// record only once it is settle old.
func export(ctx context.Context, r *ledger.Reader, from ledger.Cursor, follow bool, settle time.Duration, w io.Writer) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	for {
		p, err := r.Read(ctx, from, time.Now().Add(-settle), nil, 1000, 0)
		if err != nil {
			return err
		}
		for _, rec := range p.Records {
			if err := enc.Encode(rec); err != nil {
				return err
			}
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		from = p.Next
		if p.More {
			continue
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
