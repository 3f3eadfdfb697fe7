package main

import (
	"testing"

	"github.com/tokenpool/tokenpool/pool"
)

// FuzzProfileFile feeds the TOKENPOOL_CONFIG parser arbitrary bytes: it
// never panics, and a file it accepts has well-named profiles, each a
// known provider, with a default among them.
func FuzzProfileFile(f *testing.F) {
	for _, s := range []string{
		twoProfiles, premiumVoice,
		"profiles:\n  default:\n    provider: orga\n    target: 5\n    min_remaining: 45s\n",
		"profiles:\n  a:\n    provider: openai\n    openai:\n      client_secret_ttl_seconds: 9000\n",
		"profiles:\n  a:\n    provider: openai\n    openai:\n      on_demand:\n        pooled_only: true\n        models: [x]\n",
		"auth:\n  issuers:\n    - name: shop\n      issuer: https://shop.example/\n      jwks_url: https://shop.example/.well-known/jwks.json\n      audiences: [app]\nprofiles:\n  default:\n    provider: orga\n",
		"profiles: [unclosed\n", "profiles: {}\n", "", "&a [*a]",
	} {
		f.Add([]byte(s))
	}
	env := envOf(map[string]string{"ORGA_API_KEY": "k", "OPENAI_API_KEY": "sk-k"})
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg := Config{PoolTarget: 20, PoolMax: 5000}
		ps, issuers, err := parseProfileFile(b, &cfg, env)
		if err != nil {
			return
		}
		if len(ps.List) == 0 {
			t.Fatalf("accepted a file with no profiles: %q", b)
		}
		if _, ok := ps.Get(ps.Default); !ok {
			t.Fatalf("default profile %q is not among the profiles: %q", ps.Default, b)
		}
		for _, p := range ps.List {
			if !pool.ValidProfileName(p.Name) || (p.Provider != "orga" && p.Provider != "openai") || p.Target < 0 {
				t.Fatalf("accepted profile %+v from %q", p, b)
			}
		}
		for _, is := range issuers {
			if is.URL == "" || checkJWKSURL(is.JWKSURL) != nil || len(is.Audiences)+len(is.AuthorizedParties) == 0 {
				t.Fatalf("accepted issuer %+v from %q", is, b)
			}
		}
	})
}
