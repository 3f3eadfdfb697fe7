package ledger

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cursor is a place in the ledger: records are ordered by their stream
// id, then by their stream's name (two streams can hold the same id).
// The zero Cursor is before every record.
type Cursor struct{ ID, Stream string }

// String is the cursor as "<id>@<stream>", which ParseCursor reads.
func (c Cursor) String() string {
	if c.ID == "" {
		return ""
	}
	return c.ID + "@" + c.Stream
}

// ParseCursor reads a Cursor's String; "" is the zero Cursor.
func ParseCursor(s string) (Cursor, error) {
	if s == "" {
		return Cursor{}, nil
	}
	id, stream, ok := strings.Cut(s, "@")
	if _, err := parseID(id); !ok || err != nil || stream == "" {
		return Cursor{}, fmt.Errorf("ledger: cursor %q: want <id>@<stream>, as a record's id and stream", s)
	}
	return Cursor{ID: id, Stream: stream}, nil
}

// Since is the cursor just before the first record at or after t.
func Since(t time.Time) Cursor {
	if t.IsZero() {
		return Cursor{}
	}
	return Cursor{ID: strconv.FormatInt(t.UnixMilli(), 10) + "-0"} // Stream "" sorts before every stream
}

// streamID is a stream entry id, "<ms>-<seq>".
type streamID struct{ ms, seq uint64 }

func parseID(s string) (streamID, error) {
	a, b, ok := strings.Cut(s, "-")
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return streamID{}, fmt.Errorf("ledger: %q is not a stream id", s)
	}
	return streamID{ms, seq}, nil
}

func (a streamID) compare(b streamID) int {
	return cmp.Or(cmp.Compare(a.ms, b.ms), cmp.Compare(a.seq, b.seq))
}

// compareAt orders records (and cursors) by id, then stream.
func compareAt(aID, aStream, bID, bStream string) int {
	a, _ := parseID(aID)
	b, _ := parseID(bID)
	return cmp.Or(a.compare(b), strings.Compare(aStream, bStream))
}

// Reader reads the ledger's streams.
type Reader struct {
	RDB redis.UniversalClient
	// Streams are every stream to read (the pool's, see
	// pool.IssuedStreams).
	Streams []string
	// Batch is how many records one read of a stream asks for.
	// default: 1000
	Batch int
}

// Page is what Read found.
type Page struct {
	Records []Record
	// Next is where the read stopped: the last record it returned, or
	// past the last record it examined.
	Next Cursor
	// More says records after Next were left unread (the limit or the
	// scan bound was reached); false: every stream was read to its end
	// (or to until).
	More bool
}

// Read returns, in order, up to limit records after cursor from that
// match (nil: all), examining at most scan records (0: no bound), and
// none at or after until (zero: no bound).
func (r *Reader) Read(ctx context.Context, after Cursor, until time.Time, match func(Record) bool, limit, scan int) (Page, error) {
	batch := cmp.Or(r.Batch, 1000)
	p := Page{Next: after}
	examined := 0
	for {
		// One record list per stream, from the cursor on.
		var all []Record
		horizon := Cursor{} // the least "last read" of the streams that may hold more
		for _, s := range r.Streams {
			start := after.ID
			switch {
			case after.ID == "":
				start = "-"
			case s <= after.Stream:
				start = "(" + after.ID
			}
			msgs, err := r.RDB.XRangeN(ctx, s, start, "+", int64(batch)).Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				return p, fmt.Errorf("ledger: read %s: %w", s, err)
			}
			for _, m := range msgs {
				all = append(all, FromStream(s, m.ID, m.Values))
			}
			if len(msgs) == batch {
				last := Cursor{ID: msgs[len(msgs)-1].ID, Stream: s}
				if horizon.ID == "" || compareAt(last.ID, last.Stream, horizon.ID, horizon.Stream) < 0 {
					horizon = last
				}
			}
		}
		slices.SortFunc(all, func(a, b Record) int { return compareAt(a.ID, a.Stream, b.ID, b.Stream) })
		for _, rec := range all {
			if horizon.ID != "" && compareAt(rec.ID, rec.Stream, horizon.ID, horizon.Stream) > 0 {
				break // a stream read to its batch's end may hold records before this one
			}
			if !until.IsZero() && !rec.Time.Before(until) {
				p.More = false
				return p, nil // all later records are later still
			}
			if len(p.Records) >= limit || scan > 0 && examined >= scan {
				p.More = true
				return p, nil
			}
			examined++
			p.Next = Cursor{ID: rec.ID, Stream: rec.Stream}
			if match == nil || match(rec) {
				p.Records = append(p.Records, rec)
			}
		}
		if horizon.ID == "" {
			return p, nil // every stream was read to its end
		}
		after = p.Next
	}
}

// Lookup finds the records of a token: those whose fingerprint under key
// is the token's. It reads every record kept.
func (r *Reader) Lookup(ctx context.Context, key []byte, token string) ([]Record, error) {
	fp := Fingerprint(key, token)
	p, err := r.Read(ctx, Cursor{}, time.Time{}, func(rec Record) bool { return rec.Fingerprint == fp }, 1<<30, 0)
	return p.Records, err
}
