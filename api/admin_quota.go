package api

import (
	"cmp"
	"context"
	"net/http"
	"slices"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tokenpool/tokenpool/limiter"
)

// QuotaAdmin is what the quota admin routes need of the limiter.
type QuotaAdmin interface {
	QuotaUsage(ctx context.Context, pattern string, max int) ([]limiter.Usage, bool, error)
	ResetQuotas(ctx context.Context, keys []string) (int, error)
}

// maxUsageRead bounds the quota keys one usage report reads.
const maxUsageRead = 100_000

// usageRow is one subject's or tenant's state under one quota.
type usageRow struct {
	// Subject or Tenant: who shares the quota.
	Subject   string    `json:"subject,omitempty"`
	Tenant    string    `json:"tenant,omitempty"`
	Claim     string    `json:"claim,omitempty"` // the tenant's claim
	Quota     string    `json:"quota"`
	Profile   string    `json:"profile"` // "*": the default, shared by the profiles without their own
	Sessions  int       `json:"sessions"`
	Limit     int       `json:"limit"`
	Remaining int       `json:"remaining"`
	Window    string    `json:"window"`
	Resets    time.Time `json:"resets"`
	Exhausted bool      `json:"exhausted"`
}

// allQuotas is every configured quota: the default's, then each
// profile's.
func (s *Server) allQuotas() []Quota {
	qs := slices.Clone(s.cfg.Quotas)
	for _, name := range s.profileNames {
		qs = append(qs, s.cfg.Profiles[name].Quotas...)
	}
	return qs
}

// getUsage answers GET /v1/admin/usage?by=subject|tenant&window=24h&limit=20:
// the subjects (or tenants) with the most sessions in their quotas'
// current windows, most first.
func (s *Server) getUsage(c *gin.Context) {
	by := cmp.Or(c.Query("by"), "subject")
	if by != "subject" && by != "tenant" {
		s.fail(c, errorf(http.StatusBadRequest, codeBadRequest, "by: want subject or tenant"))
		return
	}
	var window time.Duration
	if raw := c.Query("window"); raw != "" {
		d, err := ParseWindow(raw)
		if err != nil {
			s.fail(c, errorf(http.StatusBadRequest, codeBadRequest, "window: %v", err))
			return
		}
		window = d
	}
	limit, ok := s.queryLimit(c, 20)
	if !ok {
		return
	}
	var (
		rows      []usageRow
		truncated bool
	)
	for _, q := range s.allQuotas() {
		if (by == "tenant") != (q.By != "") || window > 0 && q.Per != window {
			continue
		}
		prefix := quotaKey(q.Scope, q.Name, "")
		us, more, err := s.cfg.QuotaAdmin.QuotaUsage(c.Request.Context(), limiter.EscapeGlob(prefix)+"*", maxUsageRead)
		if err != nil {
			s.fail(c, unavailable(err))
			return
		}
		truncated = truncated || more
		for _, u := range us {
			if u.Missing {
				continue
			}
			r := usageRow{Quota: q.Name, Profile: q.Scope, Sessions: u.Used, Limit: q.Sessions,
				Remaining: max(q.Sessions-u.Used, 0), Window: windowString(q.Per), Resets: u.Resets.UTC(), Exhausted: u.Used >= q.Sessions}
			who := u.Key[len(prefix):]
			if q.By == "" {
				r.Subject = who
			} else {
				r.Tenant, r.Claim = who, q.By
			}
			rows = append(rows, r)
		}
	}
	slices.SortStableFunc(rows, func(a, b usageRow) int {
		return cmp.Or(cmp.Compare(b.Sessions, a.Sessions), cmp.Compare(a.Subject+a.Tenant, b.Subject+b.Tenant))
	})
	if len(rows) > limit {
		rows = rows[:limit]
	}
	if rows == nil {
		rows = []usageRow{}
	}
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusOK, gin.H{"by": by, "usage": rows, "truncated": truncated})
}

type resetRequest struct {
	Subject string `json:"subject"`
	Tenant  string `json:"tenant"`
	// Quota names one quota; "": all of them.
	Quota string `json:"quota"`
}

// postQuotaReset answers POST /v1/admin/quotas/reset: the current windows
// of one subject's (or one tenant's) quotas start over empty, on every
// replica at once (the counts live in Redis).
func (s *Server) postQuotaReset(c *gin.Context) {
	var req resetRequest
	if err := readJSON(c, &req, true); err != nil {
		s.fail(c, err)
		return
	}
	if (req.Subject == "") == (req.Tenant == "") {
		s.fail(c, errorf(http.StatusBadRequest, codeBadRequest, `want one of "subject" or "tenant"`))
		return
	}
	var keys, names []string
	for _, q := range s.allQuotas() {
		if (req.Tenant != "") != (q.By != "") || req.Quota != "" && q.Name != req.Quota {
			continue
		}
		keys = append(keys, quotaKey(q.Scope, q.Name, req.Subject+req.Tenant))
		names = append(names, q.Scope+"/"+q.Name)
	}
	if len(keys) == 0 {
		s.fail(c, errorf(http.StatusNotFound, codeNotFound, "no quota of that kind (or name) is configured"))
		return
	}
	n, err := s.cfg.QuotaAdmin.ResetQuotas(c.Request.Context(), keys)
	if err != nil {
		s.fail(c, unavailable(err))
		return
	}
	s.log.Info("quotas reset", "request_id", requestID(c), "quotas", names, "windows_cleared", n)
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusOK, gin.H{"quotas": names, "cleared": n})
}
