package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/tokenpool/tokenpool/mint"
)

// DefaultOpenAIBaseURL is OpenAI's API.
const DefaultOpenAIBaseURL = "https://api.openai.com"

// RealtimeSession is what an OpenAI Realtime client secret is bound to at
// mint. Secrets minted with different sessions are not interchangeable, so
// each distinct session is its own pool profile. It is comparable.
type RealtimeSession struct {
	Model        string
	Voice        string
	Instructions string
	TTLSeconds   int // expires_after.seconds, 10–7200
}

// OpenAIConfig configures an OpenAI minter. Zero values mean the default.
type OpenAIConfig struct {
	// APIKey is the OpenAI key (sk-…). Required.
	APIKey string
	// BaseURL of the OpenAI API. default: DefaultOpenAIBaseURL
	BaseURL string
	// Session the secrets are bound to. Required: a model, a voice and a TTL
	// of 10–7200 seconds (see NavaiOptions.Session for Navai's defaults).
	Session RealtimeSession
	// Client makes the calls; deadlines come from the caller's context.
	// default: NewHTTPClient()
	Client *http.Client
}

// OpenAI mints OpenAI Realtime client secrets for one session. It is safe
// for concurrent use.
type OpenAI struct {
	cfg  OpenAIConfig
	body []byte // the request body: the same for every mint
}

// NewOpenAI checks cfg and returns an OpenAI minter.
func NewOpenAI(cfg OpenAIConfig) (*OpenAI, error) {
	if strings.TrimSpace(cfg.APIKey) == "" {
		return nil, errors.New("upstream: openai: API key is required")
	}
	if err := checkTTL(cfg.Session.TTLSeconds); err != nil {
		return nil, err
	}
	if cfg.Session.Model == "" || cfg.Session.Voice == "" {
		return nil, errors.New("upstream: openai: session model and voice are required")
	}
	var err error
	if cfg.BaseURL, err = baseURL("openai", cfg.BaseURL, DefaultOpenAIBaseURL); err != nil {
		return nil, err
	}
	if cfg.Client == nil {
		cfg.Client = NewHTTPClient()
	}
	body, err := json.Marshal(clientSecretRequest(cfg.Session))
	if err != nil {
		return nil, fmt.Errorf("upstream: openai: %w", err)
	}
	return &OpenAI{cfg: cfg, body: body}, nil
}

// The request body, exactly as UPSTREAMS.md and Navai's backend send it:
// expires_after is an object, type and model are inside session, and the
// voice is at session.audio.output.voice.
type (
	openaiRequest struct {
		ExpiresAfter openaiExpiresAfter `json:"expires_after"`
		Session      openaiSession      `json:"session"`
	}
	openaiExpiresAfter struct {
		Anchor  string `json:"anchor"`
		Seconds int    `json:"seconds"`
	}
	openaiSession struct {
		Type         string      `json:"type"`
		Model        string      `json:"model"`
		Instructions string      `json:"instructions"`
		Audio        openaiAudio `json:"audio"`
	}
	openaiAudio struct {
		Output struct {
			Voice string `json:"voice"`
		} `json:"output"`
	}
)

func clientSecretRequest(s RealtimeSession) openaiRequest {
	r := openaiRequest{
		ExpiresAfter: openaiExpiresAfter{Anchor: "created_at", Seconds: s.TTLSeconds},
		Session:      openaiSession{Type: "realtime", Model: s.Model, Instructions: s.Instructions},
	}
	r.Session.Audio.Output.Voice = s.Voice
	return r
}

// Mint asks OpenAI for a client secret bound to the session.
func (o *OpenAI) Mint(ctx context.Context, r mint.Request) (mint.Credential, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.cfg.BaseURL+"/v1/realtime/client_secrets", bytes.NewReader(o.body))
	if err != nil {
		return mint.Credential{}, fmt.Errorf("openai: mint: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+o.cfg.APIKey)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	body, err := roundTrip(o.cfg.Client, req, "openai", "mint", time.Now(), o.cfg.APIKey)
	if err != nil {
		return mint.Credential{}, err
	}
	return decodeOpenAISecret(body)
}

// decodeOpenAISecret reads a client secret answer: a string value and
// expires_at in Unix seconds.
func decodeOpenAISecret(body []byte) (mint.Credential, error) {
	var a struct {
		Value     string  `json:"value"`
		ExpiresAt float64 `json:"expires_at"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return mint.Credential{}, protocolErrorf("openai: mint: answer is not JSON: %v", err)
	}
	if a.Value == "" || a.ExpiresAt <= 0 {
		return mint.Credential{}, protocolErrorf("openai: mint: answer has no value or expires_at")
	}
	return mint.Credential{Token: a.Value, ExpiresAt: time.UnixMilli(int64(a.ExpiresAt * 1000))}, nil
}
