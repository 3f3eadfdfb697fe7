package pool

import (
	"context"

	"github.com/tokenpool/tokenpool/limiter"
)

// Session quotas (limiter.Check.Quota) are spent by the take that applies
// a request's checks, whether it hands out an entry or finds none (the
// sessions are then held for the request's direct mint), and given back
// whenever the request ends without a credential: refused by a limit
// applied beside the take, failed, or its caller gone before the answer.
// A take script that spent them keeps an undo record beside its claim,
// which recovering the take refunds; otherwise the decisions say what to
// refund.

// quotaSpend is what a request spent of its quotas.
type quotaSpend struct {
	checks []limiter.Check
	ds     []limiter.Decision // the decisions of checks reached
	tag    string             // the shard whose take script spent them (its undo record refunds them); "": spent beside
	claim  string             // the claim of that take: its first, under the request's id
}

// inTake reports whether recovering h's take refunds what q spent: the
// take that spent them handed h out.
func (q quotaSpend) inTake(h Handout) bool {
	return h.Source == SourcePool && q.tag != "" && q.tag == h.tag && q.claim == h.claim
}

// refund gives back the sessions q spent, on a short context of its own
// (the request's has usually ended). Best effort: a failed refund costs
// the caller one session of the window, and is logged.
func (p *Pool) refund(q quotaSpend) {
	spent := false
	for _, d := range q.ds {
		spent = spent || d.Quota && d.Allowed
	}
	if !spent {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), recoverTimeout)
	defer cancel()
	if err := p.store.limits.RefundQuotas(ctx, q.checks, q.ds); err != nil {
		p.log.Warn("pool: giving back a quota's session", "err", err)
	}
}
