package api

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tokenpool/tokenpool/ledger"
)

// Ledger is what the issuance ledger's admin routes need.
type Ledger interface {
	// Read pages through the records (see ledger.Reader.Read).
	Read(ctx context.Context, after ledger.Cursor, until time.Time, match func(ledger.Record) bool, limit, scan int) (ledger.Page, error)
	// Lookup finds the records of a token.
	Lookup(ctx context.Context, token string) ([]ledger.Record, error)
}

// maxLedgerScan bounds the records one page of GET /v1/admin/ledger
// examines: a filter that matches little answers with a cursor to go on
// from instead of reading the whole ledger at once.
const maxLedgerScan = 100_000

type ledgerPage struct {
	Records []ledger.Record `json:"records"`
	// Next is the cursor to pass as after for the next page; More says
	// there may be records after it.
	Next string `json:"next"`
	More bool   `json:"more"`
}

// getLedger answers GET /v1/admin/ledger: the records, oldest first,
// filtered by subject, tenant and profile, from since (RFC 3339) or after
// a page's cursor.
func (s *Server) getLedger(c *gin.Context) {
	after, err := ledger.ParseCursor(c.Query("after"))
	if err != nil {
		s.fail(c, errorf(http.StatusBadRequest, codeBadRequest, "after: want the next cursor of a page"))
		return
	}
	if raw := c.Query("since"); raw != "" {
		t, err := time.Parse(time.RFC3339, raw)
		if err != nil || c.Query("after") != "" {
			s.fail(c, errorf(http.StatusBadRequest, codeBadRequest, "since: want an RFC 3339 time, and not with after"))
			return
		}
		after = ledger.Since(t)
	}
	limit, ok := s.queryLimit(c, 100)
	if !ok {
		return
	}
	subject, tenant, profile := c.Query("subject"), c.Query("tenant"), c.Query("profile")
	match := func(r ledger.Record) bool {
		return (subject == "" || r.Subject == subject) && (tenant == "" || r.Tenant == tenant) && (profile == "" || r.Profile == profile)
	}
	p, err := s.cfg.Ledger.Read(c.Request.Context(), after, time.Time{}, match, limit, maxLedgerScan)
	if err != nil {
		s.fail(c, unavailable(err))
		return
	}
	if p.Records == nil {
		p.Records = []ledger.Record{}
	}
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusOK, ledgerPage{Records: p.Records, Next: p.Next.String(), More: p.More})
}

type lookupRequest struct {
	Token string `json:"token"`
}

// postLedgerLookup answers POST /v1/admin/ledger/lookup: who received a
// token (one found leaked, say), when, from which request and source. The
// token is read from the body, fingerprinted, and never logged.
func (s *Server) postLedgerLookup(c *gin.Context) {
	var req lookupRequest
	if err := readJSON(c, &req, true); err != nil {
		s.fail(c, err)
		return
	}
	if req.Token == "" {
		s.fail(c, errorf(http.StatusBadRequest, codeBadRequest, `want {"token": "…"}`))
		return
	}
	recs, err := s.cfg.Ledger.Lookup(c.Request.Context(), req.Token)
	if err != nil {
		s.fail(c, unavailable(err))
		return
	}
	if recs == nil {
		recs = []ledger.Record{}
	}
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusOK, gin.H{"records": recs})
}

// queryLimit reads the limit query parameter: 1 to 1000, def when absent.
// When it is invalid, it answers 400 and reports false.
func (s *Server) queryLimit(c *gin.Context, def int) (int, bool) {
	raw := c.Query("limit")
	if raw == "" {
		return def, true
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 1 || n > 1000 {
		s.fail(c, errorf(http.StatusBadRequest, codeBadRequest, "limit: want 1 to 1000"))
		return 0, false
	}
	return n, true
}
