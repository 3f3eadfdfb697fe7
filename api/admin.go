package api

import (
	"context"
	"math"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tokenpool/tokenpool/pool"
)

// Admin is what the admin routes need of the pool.
type Admin interface {
	Stats(ctx context.Context, profile string) (pool.Stats, error)
	SetPrewarm(ctx context.Context, profile string, ready int, until time.Time) error
	Prewarm(ctx context.Context, profile string) (int, time.Time, error)
}

// Providers is what the admin route that lifts a provider's fleet-wide
// pause or open breaker needs.
type Providers interface {
	// Resume lets every replica mint from provider again and returns the
	// flags it lifted ("pause", "open").
	Resume(ctx context.Context, provider string) ([]string, error)
}

// maxPrewarmAhead bounds how long a prewarm lasts: it keeps its credentials
// minted from now until then, so a long one spends a lot. Its size is
// bounded by the profile's ceiling (pool.Pool.SetPrewarm).
const maxPrewarmAhead = 24 * time.Hour

// authenticateAdmin requires an admin key (TOKENPOOL_ADMIN_KEYS); caller
// credentials don't open the admin routes.
func (s *Server) authenticateAdmin(c *gin.Context) {
	if _, err := s.admins.authenticate(c.Request); err != nil {
		he := errorf(http.StatusUnauthorized, codeUnauthenticated, "an admin key is required: X-API-Key or Authorization: Bearer")
		he.header = http.Header{"Www-Authenticate": {`Bearer realm="tokenpool-admin"`}}
		s.fail(c, he)
		return
	}
	c.Next()
}

type prewarmRequest struct {
	Ready *int      `json:"ready"`
	Until time.Time `json:"until"`
}

type prewarmAnswer struct {
	Profile string    `json:"profile"`
	Ready   int       `json:"ready"`
	Until   time.Time `json:"until"`
}

// postPrewarm answers POST /v1/admin/profiles/:name/prewarm: raise the
// profile's floor to ready until the given time, for every replica.
// ready 0 ends a prewarm.
func (s *Server) postPrewarm(c *gin.Context) {
	name := c.Param("name")
	if _, ok := s.cfg.Profiles[name]; !ok {
		s.fail(c, pool.ErrUnknownProfile)
		return
	}
	var req prewarmRequest
	if err := readJSON(c, &req, true); err != nil {
		s.fail(c, err)
		return
	}
	now := s.now()
	switch {
	case req.Ready == nil:
		s.fail(c, errorf(http.StatusBadRequest, codeBadRequest, `"ready" is required: how many credentials to keep ready`))
		return
	case *req.Ready < 0:
		s.fail(c, errorf(http.StatusBadRequest, codeBadRequest, `"ready" must be 0 (to end a prewarm) or more`))
		return
	case *req.Ready == 0:
		req.Until = time.Time{} // ending a prewarm always works
	case !req.Until.After(now):
		s.fail(c, errorf(http.StatusBadRequest, codeBadRequest, `"until" must be an RFC 3339 time in the future`))
		return
	case req.Until.Sub(now) > maxPrewarmAhead:
		s.fail(c, errorf(http.StatusBadRequest, codeBadRequest, `"until" must be at most %s ahead`, maxPrewarmAhead))
		return
	}
	if err := s.cfg.Admin.SetPrewarm(c.Request.Context(), name, *req.Ready, req.Until); err != nil {
		s.fail(c, err)
		return
	}
	s.log.Info("prewarm set", "request_id", requestID(c), "profile", name, "ready", *req.Ready, "until", req.Until)
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusOK, prewarmAnswer{Profile: name, Ready: *req.Ready, Until: req.Until.UTC()})
}

// profileReport is one profile in GET /v1/admin/profiles. Pool numbers are
// fleet-wide.
type profileReport struct {
	Name     string `json:"name"`
	Provider string `json:"provider"`
	// Ready are pooled credentials; Usable those with enough life left.
	Ready     int   `json:"ready"`
	Usable    int   `json:"usable"`
	Target    int   `json:"target"`
	InFlight  int   `json:"inFlight"`
	Minted    int64 `json:"minted"`
	HandedOut int64 `json:"handedOut"`
	Direct    int64 `json:"direct"`
	Wasted    int64 `json:"wasted"`
	Discarded int64 `json:"discarded"`
	Lost      int64 `json:"lost"`
	Returned  int64 `json:"returned"`
	Lapsed    int64 `json:"lapsed"`
	Orphaned  int64 `json:"orphaned"`
	Misses    int64 `json:"misses"`
	// Fallbacks are callers served by a fallback profile instead.
	Fallbacks int64 `json:"fallbacks"`
	// Unreplicated takes were handed out before a replica had them.
	Unreplicated int64 `json:"unreplicated"`
	// Wipes are Redis datasets found wiped; Dropped the credentials gone
	// with them.
	Wipes   int64 `json:"wipes"`
	Dropped int64 `json:"dropped"`
	// UnreachableShards are shards whose Redis did not answer: the
	// figures above leave them out.
	UnreachableShards int                `json:"unreachableShards"`
	Breaker           string             `json:"breaker"`
	Demand            map[string]float64 `json:"demandPerSecond"`
	// Cost is what handouts cost over the last minute and hour.
	Cost    map[string]costReport `json:"cost"`
	Prewarm *prewarmAnswer        `json:"prewarm,omitempty"`
}

// costReport is pool.Cost in the report.
type costReport struct {
	SpanSeconds     float64 `json:"spanSeconds"`
	Mints           int64   `json:"mints"`
	Handouts        int64   `json:"handouts"`
	Wasted          int64   `json:"wasted"`
	MintsPerHandout float64 `json:"mintsPerHandout"`
}

func costOf(c pool.Cost) costReport {
	return costReport{SpanSeconds: math.Round(c.Span.Seconds()), Mints: c.Mints, Handouts: c.Handouts, Wasted: c.Wasted,
		MintsPerHandout: math.Round(c.MintsPerHandout()*1000) / 1000}
}

// getProfiles answers GET /v1/admin/profiles.
func (s *Server) getProfiles(c *gin.Context) {
	ctx := c.Request.Context()
	out := []profileReport{}
	for _, name := range s.profileNames {
		st, err := s.cfg.Admin.Stats(ctx, name)
		if err != nil {
			s.fail(c, err)
			return
		}
		r := profileReport{
			Name: name, Provider: s.cfg.Profiles[name].Provider,
			Ready: st.Ready, Usable: st.Usable, Target: st.Target, InFlight: st.InFlight,
			Minted: st.Minted, HandedOut: st.HandedOut, Direct: st.Direct, Wasted: st.Wasted, Misses: st.Misses, Fallbacks: st.Fallbacks,
			Discarded: st.Discarded, Lost: st.Lost, Returned: st.Returned, Lapsed: st.Lapsed, Orphaned: st.Orphaned, Unreplicated: st.Unreplicated,
			UnreachableShards: st.Unreachable, Wipes: st.Wipes, Dropped: st.Dropped,
			Breaker: "closed", Demand: map[string]float64{"fast": st.Demand.Rounded().Fast, "slow": st.Demand.Rounded().Slow},
			Cost: map[string]costReport{"lastMinute": costOf(st.LastMinute), "lastHour": costOf(st.LastHour)},
		}
		if s.cfg.Breaker != nil {
			r.Breaker = s.cfg.Breaker(name)
		}
		if ready, until, err := s.cfg.Admin.Prewarm(ctx, name); err == nil && ready > 0 {
			r.Prewarm = &prewarmAnswer{Profile: name, Ready: ready, Until: until.UTC()}
		}
		out = append(out, r)
	}
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusOK, gin.H{"profiles": out})
}

type resumeAnswer struct {
	Provider string   `json:"provider"`
	Lifted   []string `json:"lifted"`
}

// postResume answers POST /v1/admin/providers/:provider/resume: lift the
// fleet-wide pause (a provider's Retry-After) and open-breaker flag of one
// provider, so every replica mints again. Each replica's own breaker still
// closes after its cool-down.
func (s *Server) postResume(c *gin.Context) {
	provider := c.Param("provider")
	known := false
	for _, p := range s.cfg.Profiles {
		known = known || p.Provider == provider
	}
	if !known {
		s.fail(c, errorf(http.StatusNotFound, codeNotFound, "no profile uses that provider"))
		return
	}
	lifted, err := s.cfg.Providers.Resume(c.Request.Context(), provider)
	if err != nil {
		s.fail(c, unavailable(err))
		return
	}
	s.log.Info("provider resumed by an admin", "request_id", requestID(c), "provider", provider, "lifted", lifted)
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusOK, resumeAnswer{Provider: provider, Lifted: append([]string{}, lifted...)})
}
