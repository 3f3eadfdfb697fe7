package upstream

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tokenpool/tokenpool/mint"
)

// DefaultOrgaBaseURL is Orga AI's production API.
const DefaultOrgaBaseURL = "https://api.orga-ai.com"

// maxBody bounds what is read of any provider answer.
const maxBody = 1 << 20

// OrgaConfig configures an Orga minter. Zero values mean the default.
type OrgaConfig struct {
	// APIKey is the long-lived key (sk_orga_ai_…). Required.
	APIKey string
	// BaseURL of the Orga API. default: DefaultOrgaBaseURL
	BaseURL string
	// Client makes the calls. Deadlines come from the caller's context.
	// default: NewHTTPClient()
	Client *http.Client
	// Now is the clock, for the "ttl" answer. default: time.Now
	Now func() time.Time
	// PerCallerEmail mints for one caller, sending the caller's email
	// (mint.Request.Caller) as ?email=, as older Orga accounts that bind
	// tokens to an email need. Such credentials can't be pooled.
	PerCallerEmail bool
}

// Orga mints Orga AI session credentials: a client secret, then the ICE
// servers fetched with it, both under the caller's one deadline. It is
// safe for concurrent use.
type Orga struct {
	cfg OrgaConfig
}

// NewOrga checks cfg and returns an Orga minter.
func NewOrga(cfg OrgaConfig) (*Orga, error) {
	if cfg.APIKey == "" {
		return nil, errors.New("upstream: orga: API key is required")
	}
	var err error
	if cfg.BaseURL, err = baseURL("orga", cfg.BaseURL, DefaultOrgaBaseURL); err != nil {
		return nil, err
	}
	if cfg.Client == nil {
		cfg.Client = NewHTTPClient()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Orga{cfg: cfg}, nil
}

// baseURL fills in a provider's default base URL and checks it.
func baseURL(provider, u, def string) (string, error) {
	u = strings.TrimRight(cmp.Or(u, def), "/")
	if err := CheckBaseURL(u); err != nil {
		return "", fmt.Errorf("upstream: %s: %w", provider, err)
	}
	return u, nil
}

// CheckBaseURL checks a provider's base URL: http:// or https:// with a
// host.
func CheckBaseURL(u string) error {
	p, err := url.Parse(u)
	if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
		return fmt.Errorf("base URL %q: want an http:// or https:// URL with a host", u)
	}
	return nil
}

// NewHTTPClient returns a client for provider calls: pooled keep-alive
// connections sized for concurrent mints, no overall timeout, since every
// call carries its context's deadline, and no redirect followed: Go drops
// only Authorization and cookies on a redirect to another host, and a
// provider key travels in headers such as xi-api-key or x-goog-api-key
// too. A redirect is answered as the provider's failure.
func NewHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 64
	return &http.Client{Transport: t, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// orgaSecret accepts both spellings of the mint answer (UPSTREAMS.md).
type orgaSecret struct {
	TokenSnake string          `json:"ephemeral_token"`
	TokenCamel string          `json:"ephemeralToken"`
	ExpiresAt  json.RawMessage `json:"expires_at"`
	TTL        *float64        `json:"ttl"`
}

// Mint asks Orga for a client secret, then for the ICE servers with it.
func (o *Orga) Mint(ctx context.Context, r mint.Request) (mint.Credential, error) {
	var email string
	if o.cfg.PerCallerEmail {
		if r.Caller == nil || r.Caller.Email == "" {
			return mint.Credential{}, &mint.Error{Code: mint.CodeForbidden,
				Message: "this profile mints for one caller and needs a verified email in the caller's JWT: an email claim with email_verified true"}
		}
		email = r.Caller.Email
	}
	sent := o.cfg.Now()
	body, err := o.call(ctx, http.MethodPost, "/v1/realtime/client-secrets", email, "mint", o.cfg.APIKey)
	if err != nil {
		return mint.Credential{}, err
	}
	token, exp, err := decodeOrgaSecret(body, sent)
	if err != nil {
		return mint.Credential{}, err
	}

	body, err = o.call(ctx, http.MethodGet, "/v1/realtime/ice-config", "", "ice", token)
	if err != nil {
		return mint.Credential{}, err
	}
	ice, err := parseICE(body)
	if err != nil {
		return mint.Credential{}, err
	}
	return mint.Credential{Token: token, ICEServers: ice, ExpiresAt: exp}, nil
}

// call makes one authorised request and returns the body of a 2xx answer.
// A non-empty email is sent as ?email=; it is personal data, so no error
// carries it (nor the URL it is in).
func (o *Orga) call(ctx context.Context, method, path, email, op, bearer string) ([]byte, error) {
	u := o.cfg.BaseURL + path
	if email != "" {
		u += "?" + url.Values{"email": {email}}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, http.NoBody)
	if err != nil {
		return nil, fmt.Errorf("orga: %s: building the request failed", op)
	}
	req.Header.Set("Authorization", "Bearer "+bearer)
	req.Header.Set("Accept", "application/json")
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	return roundTrip(o.cfg.Client, req, "orga", op, o.cfg.Now(), o.cfg.APIKey, bearer, email)
}

// decodeOrgaSecret reads a mint answer in either spelling: the token and
// when it expires.
func decodeOrgaSecret(body []byte, sent time.Time) (string, time.Time, error) {
	var sec orgaSecret
	if err := json.Unmarshal(body, &sec); err != nil {
		return "", time.Time{}, protocolErrorf("orga: mint: answer is not JSON: %v", err)
	}
	token := sec.TokenSnake
	if token == "" {
		token = sec.TokenCamel
	}
	if token == "" {
		return "", time.Time{}, protocolErrorf("orga: mint: answer has no ephemeral_token or ephemeralToken")
	}
	exp, err := orgaExpiry(sec, token, sent)
	return token, exp, err
}

// orgaExpiry takes the expiry from expires_at (ISO-8601, where zone-less
// means UTC, or Unix seconds), else ttl seconds from when the mint was
// sent, else the JWT's exp.
func orgaExpiry(sec orgaSecret, token string, sent time.Time) (time.Time, error) {
	if raw := bytes.TrimSpace(sec.ExpiresAt); len(raw) > 0 && string(raw) != "null" {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		var v any
		_ = dec.Decode(&v) // raw is valid JSON: the answer decoded
		return absoluteTime("orga", "expires_at", v)
	}
	if sec.TTL != nil && *sec.TTL > 0 {
		return sent.Add(time.Duration(*sec.TTL * float64(time.Second))), nil
	}
	if exp, ok := jwtExpiry(token); ok {
		return exp, nil
	}
	return time.Time{}, protocolErrorf("orga: mint: answer has no expires_at or ttl, and the token has no exp")
}

// parseICE checks the ice-config answer and returns its iceServers array
// as compact JSON.
func parseICE(body []byte) (json.RawMessage, error) {
	var a struct {
		ICEServers []json.RawMessage `json:"iceServers"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, protocolErrorf("orga: ice: answer is not JSON: %v", err)
	}
	if len(a.ICEServers) == 0 {
		return nil, protocolErrorf("orga: ice: answer has no iceServers")
	}
	for i, s := range a.ICEServers {
		var srv struct {
			URLs json.RawMessage `json:"urls"`
		}
		if err := json.Unmarshal(s, &srv); err != nil || !validURLs(srv.URLs) {
			return nil, protocolErrorf("orga: ice: iceServers[%d] has no urls string or list", i)
		}
	}
	out, err := json.Marshal(a.ICEServers)
	if err != nil {
		return nil, fmt.Errorf("orga: ice: %w", err)
	}
	return out, nil
}

// validURLs accepts a non-empty string or a non-empty list of them, as
// RTCIceServer.urls does.
func validURLs(raw json.RawMessage) bool {
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return one != ""
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil || len(many) == 0 {
		return false
	}
	for _, u := range many {
		if u == "" {
			return false
		}
	}
	return true
}
