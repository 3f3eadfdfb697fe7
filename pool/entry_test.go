package pool

import (
	"bytes"
	"testing"
	"time"

	"github.com/tokenpool/tokenpool/mint"
)

// An entry keeps all of a credential: the token, the ICE servers, what
// else the provider's client needs, and the expiry to the millisecond.
func TestAnEntryKeepsTheWholeCredential(t *testing.T) {
	exp := time.UnixMilli(time.Now().Add(time.Hour).UnixMilli())
	in := mint.Credential{
		Token: "tok", ICEServers: []byte(`[{"urls":"stun:x"}]`),
		Extra: []byte(`{"signedUrl":"wss://x/?sig=1"}`), ExpiresAt: exp,
	}
	b, err := encodeEntry(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := decodeEntry(b)
	if err != nil {
		t.Fatal(err)
	}
	if out.Token != in.Token || !bytes.Equal(out.ICEServers, in.ICEServers) || !bytes.Equal(out.Extra, in.Extra) || !out.ExpiresAt.Equal(exp) {
		t.Fatalf("decoded %+v; want %+v", out, in)
	}
	// An entry pooled before extras existed reads as one without them.
	old, err := decodeEntry([]byte(`{"t":"tok","x":1}`))
	if err != nil || old.Extra != nil {
		t.Fatalf("an older entry: %+v, %v", old, err)
	}
}
