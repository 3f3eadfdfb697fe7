package mint

// NavaiRequest is the body Navai's client secret route takes. A nil field
// was not sent; a blank one counts as not sent.
type NavaiRequest struct {
	Model        *string `json:"model"`
	Voice        *string `json:"voice"`
	Instructions *string `json:"instructions"`
	Language     *string `json:"language"`
	VoiceAccent  *string `json:"voiceAccent"`
	VoiceTone    *string `json:"voiceTone"`
	APIKey       *string `json:"apiKey"`
}

// Plan is how one Navai request is served.
type Plan struct {
	// Needs are the profiles the caller must be allowed besides the
	// realtime profile (checked before the plan is made): the pooled
	// profile, or the restricted ones whose model or voice the session
	// uses.
	Needs []string
	// Pooled is the profile whose pool has the session; "" to mint it on
	// demand with Minter, counted under Label.
	Pooled string
	Minter Minter
	Label  string
	// Refused, when set, is why an on-demand mint is not offered; it
	// applies once the caller is allowed every profile of Needs.
	Refused error
}
