//go:build chaosbug

package pool

import (
	"fmt"
	"os"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Bugs injected on purpose, to show that the chaos run fails when the
// promise breaks (RELIABILITY.md, "The run can fail"). Built only with
// -tags chaosbug; TOKENPOOL_CHAOSBUG names the bug. Each patches a
// script's source, so the product carries no hook for them.
func init() {
	switch bug := os.Getenv("TOKENPOOL_CHAOSBUG"); bug {
	case "":
	case "leave-pooled":
		// A take leaves its entry pooled, and out of the ledger, 1 time in
		// 500: the next take hands it out again.
		takeSource = patch(takeSource, `      redis.call('HDEL', entries, id)
      if redis.call('ZADD', handed, 'NX', fmt(retire), id) == 0 then`, `      local bug = tonumber(t[2]) % 500 == 0
      if bug then redis.call('ZADD', ready, fmt(retire), id) else redis.call('HDEL', entries, id) end
      if not bug and redis.call('ZADD', handed, 'NX', fmt(retire), id) == 0 then`)
		takeScript = redis.NewScript(takeSource)
	case "drop-take":
		// A take drops the entry it took, silently, 1 time in 1,000: it is
		// out of the pool, in no count, and the caller gets a miss.
		takeSource = patch(takeSource, "\nif hit then\n", "\nif hit and tonumber(t[2]) % 1000 == 0 then hit = nil end\nif hit then\n")
		takeScript = redis.NewScript(takeSource)
	case "skip-record":
		// A take hands its entry out without the ledger's record 1 time
		// in 500.
		takeSource = patch(takeSource, "if m > 0 then xid = issued(issued_key, 12, 11 + m, hit, t) end",
			"if m > 0 and tonumber(t[2]) % 500 ~= 0 then xid = issued(issued_key, 12, 11 + m, hit, t) end")
		takeScript = redis.NewScript(takeSource)
	case "drop-recovery":
		// A recovery counts the entry returned but drops it.
		recoverSource = patch(recoverSource, "if r == 1 then redis.call('HINCRBY', KEYS[3], 'returned', 1) end",
			"if r == 1 then\n  redis.call('HINCRBY', KEYS[3], 'returned', 1)\n  local id = claim(claimed)\n  redis.call('ZREM', KEYS[1], id)\n  redis.call('HDEL', KEYS[2], id)\nend")
		recoverScript = redis.NewScript(recoverSource)
	default:
		panic(fmt.Sprintf("TOKENPOOL_CHAOSBUG=%q: no such bug", bug))
	}
}

// patch replaces old, which must occur exactly once, in src.
func patch(src, old, new string) string {
	if strings.Count(src, old) != 1 {
		panic(fmt.Sprintf("chaosbug: the source to patch has changed: %q", old))
	}
	return strings.Replace(src, old, new, 1)
}
