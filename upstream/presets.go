package upstream

import (
	"fmt"
	"net/url"
	"time"
)

// Presets are the providers whose token endpoint is one call described
// as data, each from its documentation page (Doc). docs/providers.md
// says the same for operators. Orga (two calls) and OpenAI (Navai's
// session rules) have minters of their own.
var Presets = []Preset{
	{
		// Gemini Live API ephemeral tokens. The answer is the token's
		// resource name only: its expiry is what we asked for.
		// https://ai.google.dev/gemini-api/docs/ephemeral-tokens and the
		// AuthToken resource, https://ai.google.dev/api/live#ephemeral-auth-tokens
		Name: "gemini", Doc: "https://ai.google.dev/gemini-api/docs/ephemeral-tokens",
		BaseURL: "https://generativelanguage.googleapis.com", KeyEnv: "GEMINI_API_KEY",
		Method: "POST", Path: "/{api_version}/auth_tokens", KeyHeader: "x-goog-api-key",
		Settings: []Setting{
			{Name: "api_version", Kind: String, Default: "v1alpha", Enum: []string{"v1alpha", "v1beta"}, To: inPath + "api_version"},
			// uses 0 is unlimited; a pooled token starts one session.
			{Name: "uses", Kind: Int, Default: 1, Min: 0, Max: 1000, To: inBody + "uses"},
			// newSessionExpireTime: a token starts sessions until then (the
			// provider's default, 60 s, is too short to pool).
			{Name: "ttl_seconds", Kind: Int, Default: 600, Min: 60, Max: 36000, To: inTime + "newSessionExpireTime", TTL: true},
			// expireTime (set by Tune): a session started at the end of
			// the window still runs this long.
			{Name: MaxSessionSetting, Kind: Int, Default: 1800, Min: 60, Max: 36000},
			{Name: "setup", Kind: Object, To: inBody + "bidiGenerateContentSetup"},
			{Name: "field_mask", Kind: String, To: inBody + "fieldMask"},
		},
		Token:  "name",
		Static: map[string]string{"url": "{ws}/ws/google.ai.generativelanguage.{api_version}.GenerativeService.BidiGenerateContentConstrained"},
		Tune: func(e *Endpoint, v Values) error {
			// expireTime and newSessionExpireTime must each be under 20 h
			// ahead.
			end := v.Int("ttl_seconds") + v.Int(MaxSessionSetting)
			if end >= 20*3600 {
				return fmt.Errorf("ttl_seconds + %s: want under 72000 (Gemini's 20 h), got %d", MaxSessionSetting, end)
			}
			e.Times["expireTime"] = time.Duration(end) * time.Second
			return nil
		},
		SingleUse: func(v Values) bool { return v.Int("uses") == 1 },
	},
	{
		// Azure OpenAI Realtime (GA, /openai/v1): OpenAI's client secret
		// on the operator's resource, keyed by api-key, no api-version.
		// https://learn.microsoft.com/en-us/azure/foundry/openai/how-to/realtime-audio-webrtc
		Name: "azure-openai", Doc: "https://learn.microsoft.com/en-us/azure/foundry/openai/how-to/realtime-audio-webrtc",
		KeyEnv: "AZURE_OPENAI_API_KEY",
		Method: "POST", Path: "/openai/v1/realtime/client_secrets", KeyHeader: "api-key",
		Body: map[string]any{"session": map[string]any{"type": "realtime"}, "expires_after": map[string]any{"anchor": "created_at"}},
		Settings: []Setting{
			{Name: "deployment", Kind: String, Required: true, To: inBody + "session.model"},
			{Name: "voice", Kind: String, Default: "marin", To: inBody + "session.audio.output.voice"},
			{Name: "instructions", Kind: String, To: inBody + "session.instructions"},
			{Name: "ttl_seconds", Kind: Int, Default: 600, Min: 10, Max: 7200, To: inBody + "expires_after.seconds", TTL: true},
		},
		Token: "value", ExpiresAt: "expires_at",
		Static: map[string]string{"url": "{base}/openai/v1/realtime/calls"},
	},
	{
		// xAI Voice Agent API client secrets.
		// https://docs.x.ai/docs/guides/voice/agent and the REST reference,
		// https://docs.x.ai/developers/rest-api-reference/inference/voice
		Name: "xai", Doc: "https://docs.x.ai/docs/guides/voice/agent",
		BaseURL: "https://api.x.ai", KeyEnv: "XAI_API_KEY",
		Method: "POST", Path: "/v1/realtime/client_secrets", KeyHeader: "Authorization", KeyScheme: "Bearer",
		Settings: []Setting{
			{Name: "ttl_seconds", Kind: Int, Default: 600, Min: 1, Max: 3600, To: inBody + "expires_after.seconds", TTL: true},
		},
		Token: "value", ExpiresAt: "expires_at",
		Static: map[string]string{"url": "{ws}/v1/realtime"},
	},
	{
		// ElevenLabs Agents: a conversation token (WebRTC, a LiveKit JWT)
		// or a signed URL (WebSocket, valid 15 minutes; single-use with
		// include_conversation_id) for one agent.
		// https://elevenlabs.io/docs/eleven-agents/customization/authentication
		Name: "elevenlabs-agent", Doc: "https://elevenlabs.io/docs/eleven-agents/customization/authentication",
		BaseURL: "https://api.elevenlabs.io", KeyEnv: "ELEVENLABS_API_KEY",
		Method: "GET", Path: "/v1/convai/conversation/token", KeyHeader: "xi-api-key",
		Settings: []Setting{
			{Name: "agent_id", Kind: String, Required: true, To: inQuery + "agent_id"},
			{Name: "connection", Kind: String, Default: "webrtc", Enum: []string{"webrtc", "websocket"}},
			{Name: "branch_id", Kind: String, To: inQuery + "branch_id"},
			{Name: "environment", Kind: String, To: inQuery + "environment"},
		},
		Token: "token", JWTExpiry: true, TTL: 15 * time.Minute,
		Tune: func(e *Endpoint, v Values) error {
			if v["connection"] != "websocket" {
				return nil
			}
			u, err := url.Parse(e.URL)
			if err != nil {
				return err
			}
			u.Path = u.Path[:len(u.Path)-len("/token")] + "/get-signed-url"
			q := u.Query()
			q.Set("include_conversation_id", "true") // single-use: a pool hands each out once
			u.RawQuery = q.Encode()
			e.URL, e.Token, e.JWTExpiry = u.String(), "signed_url", false
			e.Extra = map[string]string{"signedUrl": "signed_url"}
			return nil
		},
		SingleUse: func(v Values) bool { return v["connection"] == "websocket" },
	},
	{
		// ElevenLabs single-use tokens: consumed on use, expire after 15
		// minutes. https://elevenlabs.io/docs/api-reference/tokens/create
		Name: "elevenlabs", Doc: "https://elevenlabs.io/docs/api-reference/tokens/create",
		BaseURL: "https://api.elevenlabs.io", KeyEnv: "ELEVENLABS_API_KEY",
		Method: "POST", Path: "/v1/single-use-token/{token_type}", KeyHeader: "xi-api-key",
		Settings: []Setting{
			{Name: "token_type", Kind: String, Required: true, Enum: []string{"realtime_scribe", "tts_websocket"}, To: inPath + "token_type"},
		},
		Token: "token", TTL: 15 * time.Minute,
		SingleUse: always,
	},
	{
		// AssemblyAI Universal Streaming temporary tokens: the raw key in
		// Authorization, one session each.
		// https://www.assemblyai.com/docs/api-reference/streaming-api/generate-streaming-token
		Name: "assemblyai", Doc: "https://www.assemblyai.com/docs/api-reference/streaming-api/generate-streaming-token",
		BaseURL: "https://streaming.assemblyai.com", KeyEnv: "ASSEMBLYAI_API_KEY",
		Method: "GET", Path: "/v3/token", KeyHeader: "Authorization",
		Settings: []Setting{
			// The window to open the WebSocket in.
			{Name: "ttl_seconds", Kind: Int, Default: 600, Min: 1, Max: 600, To: inQuery + "expires_in_seconds", TTL: true},
			{Name: MaxSessionSetting, Kind: Int, Min: 60, Max: 10800, To: inQuery + "max_session_duration_seconds"},
		},
		Token: "token", ExpiresIn: "expires_in_seconds",
		Static:    map[string]string{"url": "{ws}/v3/ws"},
		SingleUse: always,
	},
	{
		// Deepgram short-lived access tokens (a JWT; only the WebSocket's
		// opening needs it valid).
		// https://developers.deepgram.com/guides/fundamentals/token-based-authentication
		// and https://developers.deepgram.com/reference/auth/tokens/grant
		Name: "deepgram", Doc: "https://developers.deepgram.com/guides/fundamentals/token-based-authentication",
		BaseURL: "https://api.deepgram.com", KeyEnv: "DEEPGRAM_API_KEY",
		Method: "POST", Path: "/v1/auth/grant", KeyHeader: "Authorization", KeyScheme: "Token",
		Settings: []Setting{
			// The provider's default, 30 s, is too short to pool.
			{Name: "ttl_seconds", Kind: Int, Default: 300, Min: 1, Max: 3600, To: inBody + "ttl_seconds", TTL: true},
		},
		Token: "access_token", ExpiresIn: "expires_in",
		Static: map[string]string{"url": "{ws}/v1/listen"},
	},
	{
		// Cartesia access tokens with grants; the answer is the token only.
		// https://docs.cartesia.ai/get-started/authenticate-your-client-applications
		// and https://docs.cartesia.ai/api-reference/auth/access-token
		Name: "cartesia", Doc: "https://docs.cartesia.ai/api-reference/auth/access-token",
		BaseURL: "https://api.cartesia.ai", KeyEnv: "CARTESIA_API_KEY",
		Method: "POST", Path: "/access-token", KeyHeader: "Authorization", KeyScheme: "Bearer",
		Settings: []Setting{
			{Name: "grants", Kind: Strings, Required: true, Enum: []string{"tts", "stt", "agent"}, To: inFlags + "grants"},
			{Name: "ttl_seconds", Kind: Int, Default: 600, Min: 1, Max: 3600, To: inBody + "expires_in", TTL: true},
			{Name: "version", Kind: String, Default: "2026-03-01", To: inHeader + "Cartesia-Version"},
		},
		Token: "token",
	},
	{
		// Speechmatics temporary real-time keys (client_ref binds only
		// batch keys, so none is sent).
		// https://docs.speechmatics.com/get-started/authentication
		Name: "speechmatics", Doc: "https://docs.speechmatics.com/get-started/authentication",
		BaseURL: "https://mp.speechmatics.com", KeyEnv: "SPEECHMATICS_API_KEY",
		Method: "POST", Path: "/v1/api_keys?type=rt", KeyHeader: "Authorization", KeyScheme: "Bearer",
		Settings: []Setting{
			{Name: "ttl_seconds", Kind: Int, Default: 600, Min: 60, Max: 86400, To: inBody + "ttl", TTL: true},
			{Name: "rt_url", Kind: String, Default: "wss://eu2.rt.speechmatics.com/v2", To: inStatic + "url"},
		},
		Token: "key_value",
	},
	{
		// Soniox temporary API keys (client_reference_id only tags usage;
		// none is sent).
		// https://soniox.com/docs/stt/api-reference/auth/create_temporary_api_key
		Name: "soniox", Doc: "https://soniox.com/docs/stt/api-reference/auth/create_temporary_api_key",
		BaseURL: "https://api.soniox.com", KeyEnv: "SONIOX_API_KEY",
		Method: "POST", Path: "/v1/auth/temporary-api-key", KeyHeader: "Authorization", KeyScheme: "Bearer",
		Settings: []Setting{
			{Name: "usage_type", Kind: String, Default: "transcribe_websocket", Enum: []string{"transcribe_websocket", "tts_rt"}, To: inBody + "usage_type"},
			{Name: "ttl_seconds", Kind: Int, Default: 600, Min: 1, Max: 3600, To: inBody + "expires_in_seconds", TTL: true},
			{Name: MaxSessionSetting, Kind: Int, Min: 1, Max: 18000, To: inBody + "max_session_duration_seconds"},
			{Name: "single_use", Kind: Bool, Default: true, To: inBody + "single_use"},
		},
		Token: "api_key", ExpiresAt: "expires_at",
		SingleUse: func(v Values) bool { return v["single_use"] == true },
	},
	{
		// Fish Audio ephemeral tokens: always single-use; end_user_id
		// would bind one to a user, so none is sent.
		// https://docs.fish.audio/developer-guide/getting-started/ephemeral-tokens
		Name: "fish", Doc: "https://docs.fish.audio/developer-guide/getting-started/ephemeral-tokens",
		BaseURL: "https://api.fish.audio", KeyEnv: "FISH_API_KEY",
		Method: "POST", Path: "/v1/auth/tokens", KeyHeader: "Authorization", KeyScheme: "Bearer",
		Settings: []Setting{
			{Name: "scopes", Kind: Strings, Required: true, To: inBody + "scopes"},
			{Name: "ttl_seconds", Kind: Int, Default: 300, Min: 1, Max: 86400, To: inBody + "ttl_seconds", TTL: true},
			{Name: MaxSessionSetting, Kind: Int, Min: 1, Max: 86400, To: inBody + "max_session_duration_seconds"},
			{Name: "allowed_origins", Kind: Strings, To: inBody + "allowed_origins"},
		},
		Token: "token", ExpiresAt: "expires_at", ExpiresIn: "expires_in",
		SingleUse: always,
	},
	{
		// Hume access tokens: OAuth2 client credentials, Basic auth with
		// the API key and the secret key; they live 30 minutes.
		// https://dev.hume.ai/docs/introduction/api-key
		Name: "hume", Doc: "https://dev.hume.ai/docs/introduction/api-key",
		BaseURL: "https://api.hume.ai", KeyEnv: "HUME_API_KEY", SecretEnv: "HUME_SECRET_KEY",
		Method: "POST", Path: "/oauth2-cc/token", KeyHeader: "Authorization", KeyScheme: "Basic",
		Form:  url.Values{"grant_type": {"client_credentials"}},
		Token: "access_token", ExpiresIn: "expires_in", TTL: 30 * time.Minute,
		Static: map[string]string{"url": "{ws}/v0/evi/chat"},
	},
}
