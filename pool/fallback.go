package pool

import (
	"context"
	"fmt"

	"github.com/tokenpool/tokenpool/limiter"
	"github.com/tokenpool/tokenpool/mint"
)

// Fallback hands a caller of profile from, whose take found nothing and
// whose provider could not mint, one credential of profile to instead:
// as GetLimited, behind quotas alone (the caller's limits counted the
// take of from, whose quotas' sessions went back when it failed), and
// counted as a fallback of from. It never goes further: to's own
// fallbacks are not tried.
func (p *Pool) Fallback(ctx context.Context, from, to, requestID string, who *mint.Caller, quotas []limiter.Check) (Handout, []limiter.Decision, error) {
	pr, ok := p.profiles[from]
	if !ok {
		return Handout{}, nil, fmt.Errorf("%w %q", ErrUnknownProfile, from)
	}
	tp, ok := p.profiles[to]
	if !ok {
		return Handout{}, nil, fmt.Errorf("%w %q", ErrUnknownProfile, to)
	}
	h, ds, err := p.handOut(ctx, tp, issuance{requestID: requestID, who: who, fallbackFor: from}, quotas)
	if err != nil {
		return Handout{}, ds, err
	}
	h.FallbackFor = from
	p.metrics.fellBack(from, to)
	if err := p.countInAny(ctx, pr, "fallbacks", 1); err != nil {
		p.log.Warn("pool: counting a fallback", "profile", from, "err", err)
	}
	return h, ds, nil
}
