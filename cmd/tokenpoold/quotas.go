package main

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/tokenpool/tokenpool/api"
	"github.com/tokenpool/tokenpool/pool"
)

// quotaSpec is one entry of a quotas: list, the file's (the default for
// every profile without its own) or a profile's.
type quotaSpec struct {
	Name     string              `yaml:"name"`
	Sessions int                 `yaml:"sessions"`
	Per      string              `yaml:"per"`
	By       string              `yaml:"by"`
	When     map[string][]string `yaml:"when"`
}

// quotasOf checks a quotas: list. A quota without a name is named after
// what it counts: "sessions-24h", "org_id-sessions-24h".
func quotasOf(specs []quotaSpec) ([]api.Quota, error) {
	out := make([]api.Quota, 0, len(specs))
	for i, s := range specs {
		q, err := quotaOf(s)
		if err != nil {
			return nil, fmt.Errorf("quotas[%d]: %w", i, err)
		}
		for _, o := range out {
			if o.Name == q.Name {
				return nil, fmt.Errorf("quotas[%d]: name %q: listed twice (give each its own name:)", i, q.Name)
			}
		}
		out = append(out, q)
	}
	return out, nil
}

func quotaOf(s quotaSpec) (api.Quota, error) {
	q := api.Quota{Name: s.Name, Sessions: s.Sessions, When: s.When}
	if s.Sessions <= 0 {
		return q, fmt.Errorf("sessions: want a positive count, got %d", s.Sessions)
	}
	per, err := api.ParseWindow(s.Per)
	if err != nil {
		return q, fmt.Errorf("per: %w", err)
	}
	q.Per = per
	switch by, claim, _ := strings.Cut(s.By, ":"); {
	case s.By == "" || s.By == "subject":
	case by == "claim" && claim != "" && !strings.ContainsAny(claim, " :"):
		q.By = claim
	default:
		return q, fmt.Errorf("by: want subject (the default: each caller) or claim:<name> (every caller with the same value), got %q", s.By)
	}
	if q.Name == "" {
		q.Name = "sessions-" + s.Per
		if q.By != "" {
			q.Name = q.By + "-" + q.Name
		}
	}
	return q, q.Validate()
}

// reuseWindow is how long after a handout one credential of p can still
// start sessions beyond its first: 0 for a credential its provider's page
// says starts one session (Orga's, a single-use preset's).
func reuseWindow(p Profile) time.Duration {
	switch p.Provider {
	case "orga":
		return 0
	case "openai":
		// "A secret can be used to create multiple sessions until it
		// expires": expires_after in
		// https://platform.openai.com/docs/api-reference/realtime-sessions/create-realtime-client-secret
		if p.Navai.TTLSeconds == 0 {
			return 600 * time.Second
		}
		return time.Duration(p.Navai.TTLSeconds) * time.Second
	}
	if p.Endpoint.SingleUse {
		return 0
	}
	if p.Endpoint.TTL > 0 {
		return p.Endpoint.TTL
	}
	return pool.MaxLife // the answer's expiry decides: unknown here
}

// warnQuotaReuse logs, at start, each profile under a quota whose
// credentials can start sessions for more than a minute after handout: a
// quota counts handouts, and such a credential is more than one session.
func warnQuotaReuse(log *slog.Logger, ps Profiles) {
	for _, p := range ps.List {
		if len(p.Quotas) == 0 && len(ps.Quotas) == 0 {
			continue
		}
		if w := reuseWindow(p); w > time.Minute {
			log.Warn("a quota counts handouts, and this profile's credential can start sessions for longer than a minute after it is handed out: use the shortest TTL the pool can serve, or a single-use setting (docs/quotas.md)",
				"profile", p.Name, "provider", p.Provider, "for_up_to", w.String())
		}
	}
}
