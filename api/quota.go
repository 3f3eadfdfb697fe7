package api

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tokenpool/tokenpool/limiter"
)

// Quota caps the sessions a caller, or every caller of one tenant, is
// handed in a window: a profile's own, or the daemon's default, shared by
// every profile without quotas of its own. Windows are fixed: each starts
// at a whole multiple of Per since the Unix epoch by Redis's clock (a
// 24h quota resets at 00:00 UTC), the same on every replica.
type Quota struct {
	// Name names the quota in the RateLimit headers, the admin routes and
	// its Redis keys.
	Name     string
	Sessions int
	Per      time.Duration
	// By is what shares the quota: "" each caller (its issuer-qualified
	// subject), else a claim's name: every caller with the same value
	// (a tenant). A caller without the claim is not under the quota.
	By string
	// When limits the quota to callers whose claims all match, as
	// Access.Claims; nil: every caller.
	When map[string][]string
	// Scope is the profile the quota belongs to, or QuotaDefault.
	Scope string
}

// maxQuotaWindow bounds a quota's window.
const maxQuotaWindow = 366 * 24 * time.Hour

// ParseWindow reads a quota's window: a Go duration ("24h", "30m") or
// whole days ("7d"), from 1s to 366 days, in whole seconds.
func ParseWindow(raw string) (time.Duration, error) {
	var (
		d   time.Duration
		err error
	)
	if days, ok := strings.CutSuffix(raw, "d"); ok {
		var n int
		n, err = strconv.Atoi(days)
		d = time.Duration(n) * 24 * time.Hour
	} else {
		d, err = time.ParseDuration(raw)
	}
	if err != nil || d < time.Second || d > maxQuotaWindow || d%time.Second != 0 {
		return 0, fmt.Errorf("want a window such as 1h, 24h or 7d (whole seconds, 1s to 366d), got %q", raw)
	}
	return d, nil
}

// windowString writes a window as ParseWindow reads it, shortest first:
// "7d", "24h" stays "24h", "90m", "45s".
func windowString(d time.Duration) string {
	switch {
	case d%(24*time.Hour) == 0 && d > 24*time.Hour:
		return strconv.Itoa(int(d/(24*time.Hour))) + "d"
	case d%time.Hour == 0:
		return strconv.Itoa(int(d/time.Hour)) + "h"
	case d%time.Minute == 0:
		return strconv.Itoa(int(d/time.Minute)) + "m"
	}
	return strconv.Itoa(int(d/time.Second)) + "s"
}

// QuotaDefault scopes the daemon's default quotas.
const QuotaDefault = "*"

var quotaNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Validate checks a quota's settings.
func (q Quota) Validate() error {
	switch {
	case !quotaNameRE.MatchString(q.Name):
		return fmt.Errorf("name %q: want 1-64 of A-Z a-z 0-9 . _ -", q.Name)
	case q.Sessions <= 0:
		return fmt.Errorf("sessions: want a positive count, got %d", q.Sessions)
	case q.Per < time.Second || q.Per%time.Second != 0:
		return fmt.Errorf("per: want whole seconds, at least 1s, got %s", q.Per)
	case q.By != "" && strings.ContainsAny(q.By, " :"):
		return fmt.Errorf("by: a claim's name, got %q", q.By)
	}
	for claim, values := range q.When {
		if claim == "" || len(values) == 0 {
			return fmt.Errorf("when: claim %q: want a claim's name and at least one value", claim)
		}
	}
	return nil
}

// who is what shares q for caller c (its key's last part), and whether c
// is under q at all.
func (q Quota) who(c caller) (string, bool) {
	if q.When != nil && !(&Access{Claims: q.When}).allows(c) {
		return "", false
	}
	if q.By == "" {
		return c.subject, true
	}
	switch v := c.claims[q.By].(type) {
	case string:
		return v, v != ""
	case float64, bool:
		return fmt.Sprint(v), true
	}
	return "", false // missing, or not one value
}

// quotaKey is a quota's limiter key for who.
func quotaKey(scope, name, who string) string { return scope + ":" + name + ":" + who }

// check is q as a limiter check for who.
func (q Quota) check(who string) limiter.Check {
	return limiter.Check{Policy: q.Name, Key: quotaKey(q.Scope, q.Name, who), Quota: true,
		Limit: limiter.Limit{Rate: q.Sessions, Burst: q.Sessions, Period: q.Per}}
}

// quotas are the quotas a request of profile answers to: the profile's,
// or the daemon's default.
func (s *Server) quotas(profile string) []Quota {
	if qs := s.cfg.Profiles[profile].Quotas; qs != nil {
		return qs
	}
	return s.cfg.Quotas
}

// quotaChecks are the checks of the quotas caller c of profile is under.
func (s *Server) quotaChecks(c caller, profile string) []limiter.Check {
	var out []limiter.Check
	for _, q := range s.quotas(profile) {
		if who, ok := q.who(c); ok {
			out = append(out, q.check(who))
		}
	}
	return out
}

// scopeQuotas checks cfg's quotas and scopes them: the default's to
// QuotaDefault, a profile's to its name.
func scopeQuotas(cfg *Config) error {
	if err := validQuotas(cfg.Quotas); err != nil {
		return fmt.Errorf("api: config: default %w", err)
	}
	cfg.Quotas = scoped(cfg.Quotas, QuotaDefault)
	profiles := make(map[string]ProfileInfo, len(cfg.Profiles))
	for name, p := range cfg.Profiles {
		if err := validQuotas(p.Quotas); err != nil {
			return fmt.Errorf("api: config: profile %s: %w", name, err)
		}
		p.Quotas = scoped(p.Quotas, name)
		profiles[name] = p
	}
	cfg.Profiles = profiles
	if cfg.TenantClaim == "" {
		for _, q := range slices.Concat(cfg.Quotas, quotasOfProfiles(profiles)) {
			if q.By != "" {
				cfg.TenantClaim = q.By
				break
			}
		}
	}
	return nil
}

// quotasOfProfiles lists the profiles' quotas, by profile name.
func quotasOfProfiles(ps map[string]ProfileInfo) []Quota {
	names := slices.Sorted(maps.Keys(ps))
	var out []Quota
	for _, n := range names {
		out = append(out, ps[n].Quotas...)
	}
	return out
}

// scoped is a copy of qs in scope.
func scoped(qs []Quota, scope string) []Quota {
	if qs == nil {
		return nil
	}
	out := slices.Clone(qs)
	for i := range out {
		out[i].Scope = scope
	}
	return out
}

// validQuotas checks a list of quotas of one scope: each valid, names
// unique.
func validQuotas(qs []Quota) error {
	var names []string
	for _, q := range qs {
		if err := q.Validate(); err != nil {
			return fmt.Errorf("quota %s: %w", q.Name, err)
		}
		if slices.Contains(names, q.Name) {
			return fmt.Errorf("quota %s: listed twice", q.Name)
		}
		names = append(names, q.Name)
	}
	return nil
}
