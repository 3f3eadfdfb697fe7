package upstream

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/net/http/httpguts"

	"github.com/tokenpool/tokenpool/mint"
)

// Endpoint describes a provider's token endpoint as data: one HTTP call
// with the provider key in a header, whose JSON answer carries a token
// and, somewhere, when it expires. Most providers' endpoints are one
// (see Presets); an Endpoint minter speaks any of them.
type Endpoint struct {
	// Provider names the provider in errors, logs and metrics.
	Provider string
	// Method is GET or POST; URL is the whole URL, query included.
	Method, URL string
	// KeyHeader carries the key, after KeyScheme and a space when
	// KeyScheme is set: "Bearer", "Token", or "Basic", for which the key
	// is "<id>:<secret>" and is sent base64-encoded.
	KeyHeader, KeyScheme string
	// Header holds fixed headers (a version header, say).
	Header map[string]string
	// Body is the JSON body; nil sends none (unless Form is set). Times
	// are body fields (dot paths) set at each mint to now plus the
	// duration, as RFC 3339.
	Body  map[string]any
	Times map[string]time.Duration
	// Form is a form-encoded body, sent instead of Body.
	Form url.Values

	// Token is where the answer holds the token: a dot path through
	// objects ("data.token"; a number indexes a list).
	Token string
	// The expiry, read in this order: ExpiresAt, the answer's absolute
	// expiry (RFC 3339 text or Unix seconds); ExpiresIn, its relative
	// expiry in seconds from when the mint was sent; with JWTExpiry, the
	// token's own exp claim; else TTL from when the mint was sent.
	ExpiresAt, ExpiresIn string
	JWTExpiry            bool
	TTL                  time.Duration
	// Extra names what the answer carries beside the token that the
	// provider's client needs: the handout's field, and where the answer
	// holds it. Static adds fixed fields (a WebSocket URL).
	Extra  map[string]string
	Static map[string]string
	// SingleUse says the provider's page promises a token starts one
	// session at most (see Preset.SingleUse).
	SingleUse bool
}

// reservedField are the fields of every /v1/credentials answer, which an
// extra can't be named.
var reservedField = map[string]bool{
	"provider": true, "profile": true, "token": true, "expiresAt": true, "expiresIn": true, "id": true, "iceServers": true,
}

// Check reports what makes e unusable, before any call is made.
func (e Endpoint) Check() error {
	if e.Method != http.MethodGet && e.Method != http.MethodPost {
		return fmt.Errorf("method: want GET or POST, got %q", e.Method)
	}
	if err := CheckBaseURL(e.URL); err != nil {
		return fmt.Errorf("url: %w", err)
	}
	if !httpguts.ValidHeaderFieldName(e.KeyHeader) {
		return fmt.Errorf("key header: want a header name, got %q", e.KeyHeader)
	}
	if !httpguts.ValidHeaderFieldValue(e.KeyScheme) || strings.Contains(e.KeyScheme, " ") {
		return fmt.Errorf("key scheme: want one word such as Bearer, got %q", e.KeyScheme)
	}
	for k, v := range e.Header {
		if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
			return fmt.Errorf("header %q: not a valid header name and value", k)
		}
	}
	if e.Token == "" {
		return errors.New("token: say where the answer holds the token")
	}
	if e.ExpiresAt == "" && e.ExpiresIn == "" && !e.JWTExpiry && e.TTL <= 0 {
		return errors.New("expiry: say where the answer holds it (expires_at or expires_in), or how long a token lives (ttl_seconds)")
	}
	for k := range e.Extra {
		if _, ok := e.Static[k]; ok {
			return fmt.Errorf("extra %q: both read from the answer and fixed", k)
		}
	}
	for _, fields := range []map[string]string{e.Extra, e.Static} {
		for k := range fields {
			if reservedField[k] {
				return fmt.Errorf("extra %q: a field every answer has; name it otherwise", k)
			}
		}
	}
	return nil
}

// EndpointMinter mints with one Endpoint. It is safe for concurrent use.
type EndpointMinter struct {
	e      Endpoint
	key    string
	client *http.Client
	now    func() time.Time
}

// NewEndpointMinter checks e and returns its minter, calling with key
// through client (default: NewHTTPClient()).
func NewEndpointMinter(e Endpoint, key string, client *http.Client) (*EndpointMinter, error) {
	if strings.TrimSpace(key) == "" {
		return nil, fmt.Errorf("upstream: %s: API key is required", e.Provider)
	}
	if err := e.Check(); err != nil {
		return nil, fmt.Errorf("upstream: %s: %w", e.Provider, err)
	}
	if client == nil {
		client = NewHTTPClient()
	}
	return &EndpointMinter{e: e, key: key, client: client, now: time.Now}, nil
}

// Mint makes the call and reads the token, its expiry and its extras.
func (m *EndpointMinter) Mint(ctx context.Context, _ mint.Request) (mint.Credential, error) {
	e := &m.e
	sent := m.now()
	req, err := m.request(ctx, sent)
	if err != nil {
		return mint.Credential{}, err
	}
	body, err := roundTrip(m.client, req, e.Provider, "mint", m.now(), m.secrets()...)
	if err != nil {
		return mint.Credential{}, err
	}
	return m.read(body, sent)
}

// secrets are what no error may carry: the key, and for a Basic pair
// each half of it.
func (m *EndpointMinter) secrets() []string {
	if m.e.KeyScheme == "Basic" {
		return append([]string{m.key}, strings.Split(m.key, ":")...)
	}
	return []string{m.key}
}

// request builds the call.
func (m *EndpointMinter) request(ctx context.Context, now time.Time) (*http.Request, error) {
	e := &m.e
	var body io.Reader = http.NoBody
	ctype := ""
	switch {
	case e.Form != nil:
		body, ctype = strings.NewReader(e.Form.Encode()), "application/x-www-form-urlencoded"
	case e.Body != nil || len(e.Times) > 0:
		doc := deepCopy(e.Body)
		for path, d := range e.Times {
			setPath(doc, path, now.Add(d).UTC().Format(time.RFC3339))
		}
		b, err := json.Marshal(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: mint: body: %w", e.Provider, err)
		}
		body, ctype = bytes.NewReader(b), "application/json"
	}
	req, err := http.NewRequestWithContext(ctx, e.Method, e.URL, body)
	if err != nil {
		return nil, fmt.Errorf("%s: mint: building the request failed", e.Provider)
	}
	for k, v := range e.Header {
		req.Header.Set(k, v)
	}
	key := m.key
	switch e.KeyScheme {
	case "":
	case "Basic":
		key = "Basic " + base64.StdEncoding.EncodeToString([]byte(key))
	default:
		key = e.KeyScheme + " " + key
	}
	req.Header.Set(e.KeyHeader, key)
	req.Header.Set("Accept", "application/json")
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	return req, nil
}

// read takes the credential out of a 2xx answer.
func (m *EndpointMinter) read(body []byte, sent time.Time) (mint.Credential, error) {
	e := &m.e
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return mint.Credential{}, protocolErrorf("%s: mint: answer is not JSON: %v", e.Provider, err)
	}
	token, _ := lookup(doc, e.Token).(string)
	if token == "" {
		return mint.Credential{}, protocolErrorf("%s: mint: answer has no token at %q", e.Provider, e.Token)
	}
	exp, err := m.expiry(doc, token, sent)
	if err != nil {
		return mint.Credential{}, err
	}
	c := mint.Credential{Token: token, ExpiresAt: exp}
	if len(e.Extra)+len(e.Static) > 0 {
		extra := make(map[string]any, len(e.Extra)+len(e.Static))
		for k, v := range e.Static {
			extra[k] = v
		}
		for k, path := range e.Extra {
			v := lookup(doc, path)
			if v == nil {
				return mint.Credential{}, protocolErrorf("%s: mint: answer has no %s at %q", e.Provider, k, path)
			}
			extra[k] = v
		}
		if c.Extra, err = json.Marshal(extra); err != nil {
			return mint.Credential{}, fmt.Errorf("%s: mint: %w", e.Provider, err)
		}
	}
	return c, nil
}

// expiry reads when the token expires, as Endpoint says.
func (m *EndpointMinter) expiry(doc any, token string, sent time.Time) (time.Time, error) {
	e := &m.e
	if e.ExpiresAt != "" {
		if v := lookup(doc, e.ExpiresAt); v != nil {
			return absoluteTime(e.Provider, e.ExpiresAt, v)
		}
	}
	if e.ExpiresIn != "" {
		if n, ok := lookup(doc, e.ExpiresIn).(json.Number); ok {
			s, err := n.Float64()
			if err != nil || s <= 0 {
				return time.Time{}, protocolErrorf("%s: mint: %s %s is not a positive number of seconds", e.Provider, e.ExpiresIn, n)
			}
			return sent.Add(time.Duration(s * float64(time.Second))), nil
		}
	}
	if e.JWTExpiry {
		if exp, ok := jwtExpiry(token); ok {
			return exp, nil
		}
	}
	if e.TTL > 0 {
		return sent.Add(e.TTL), nil
	}
	return time.Time{}, protocolErrorf("%s: mint: answer says nothing of when the token expires", e.Provider)
}

// jwtExpiry reads a token's exp claim, unverified: a provider's own JWT,
// whose expiry its answer did not say.
func jwtExpiry(token string) (time.Time, bool) {
	var claims jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(token, &claims); err != nil || claims.ExpiresAt == nil {
		return time.Time{}, false
	}
	return claims.ExpiresAt.Time, true
}

// absoluteTime reads an expiry: RFC 3339 text (a zone-less one is UTC) or
// Unix seconds.
func absoluteTime(provider, path string, v any) (time.Time, error) {
	switch v := v.(type) {
	case string:
		for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999"} {
			if t, err := time.Parse(layout, v); err == nil {
				return t, nil
			}
		}
	case json.Number:
		if s, err := v.Float64(); err == nil && s > 0 {
			return time.UnixMilli(int64(s * 1000)), nil
		}
	}
	return time.Time{}, protocolErrorf("%s: mint: %s is neither RFC 3339 nor Unix seconds", provider, path)
}

// retryAfterOf reads how long a provider asks us to wait: Retry-After,
// else Azure OpenAI's retry-after-ms
// (https://learn.microsoft.com/en-us/azure/foundry/openai/how-to/troubleshoot-errors),
// else a Google RetryInfo's retryDelay in the error body (g). Zero when
// none says.
func retryAfterOf(h http.Header, g googleError, now time.Time) time.Duration {
	if d := parseRetryAfter(h.Get("Retry-After"), now); d > 0 {
		return d
	}
	if ms, err := strconv.Atoi(strings.TrimSpace(h.Get("Retry-After-Ms"))); err == nil && ms > 0 {
		return time.Duration(ms) * time.Millisecond
	}
	return g.retryDelay
}

// googleError is what a Google error answer says beside its status
// (https://ai.google.dev/gemini-api/docs/troubleshooting): a 429's
// google.rpc.RetryInfo {"retryDelay": "37s"}, and a bad key's ErrorInfo
// reason API_KEY_INVALID (with 400 INVALID_ARGUMENT, not 401).
type googleError struct {
	retryDelay time.Duration
	keyInvalid bool
}

// readGoogleError reads body as a Google error answer; the zero value
// when it is none.
func readGoogleError(body []byte) googleError {
	var doc struct {
		Error struct {
			Details []struct {
				Type       string `json:"@type"`
				RetryDelay string `json:"retryDelay"`
				Reason     string `json:"reason"`
			} `json:"details"`
		} `json:"error"`
	}
	var g googleError
	if json.Unmarshal(body, &doc) != nil {
		return g
	}
	for _, d := range doc.Error.Details {
		if v, err := time.ParseDuration(d.RetryDelay); err == nil && v > 0 && strings.HasSuffix(d.Type, "google.rpc.RetryInfo") {
			g.retryDelay = v
		}
		g.keyInvalid = g.keyInvalid || d.Reason == "API_KEY_INVALID"
	}
	return g
}

// lookup follows a dot path through decoded JSON: keys through objects,
// numbers through lists. nil when nothing is there.
func lookup(doc any, path string) any {
	for _, seg := range strings.Split(path, ".") {
		switch v := doc.(type) {
		case map[string]any:
			doc = v[seg]
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(v) {
				return nil
			}
			doc = v[i]
		default:
			return nil
		}
	}
	return doc
}

// setPath sets a dot path of objects in doc, making the objects on the
// way.
func setPath(doc map[string]any, path string, v any) {
	segs := strings.Split(path, ".")
	for _, seg := range segs[:len(segs)-1] {
		next, ok := doc[seg].(map[string]any)
		if !ok {
			next = map[string]any{}
			doc[seg] = next
		}
		doc = next
	}
	doc[segs[len(segs)-1]] = v
}

// deepCopy copies the objects of a JSON document, so a mint's fields
// never write into the Endpoint's. Lists and scalars are shared: they are
// never written.
func deepCopy(m map[string]any) map[string]any {
	out := maps.Clone(m)
	if out == nil {
		out = map[string]any{}
	}
	for k, v := range out {
		if sub, ok := v.(map[string]any); ok {
			out[k] = deepCopy(sub)
		}
	}
	return out
}
