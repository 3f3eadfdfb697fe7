package pool

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Sealer encrypts entry bodies at rest with AES-256-GCM: a random nonce
// per entry, and the profile and entry id as associated data, so a sealed
// body moved to another entry or profile does not open. The first key
// seals; every key opens, so keys rotate without losing the pool. A Sealer
// is safe for concurrent use.
type Sealer struct {
	keys []sealKey // keys[0] seals
}

type sealKey struct {
	id   [4]byte // first bytes of SHA-256(key): picks the key to open with
	aead cipher.AEAD
}

// sealVersion starts every sealed body; a JSON body starts with '{'.
const sealVersion = 0x01

// ErrSealed: an entry could not be opened (no configured key opens it, or
// it was tampered with, or it is not sealed while sealing is on).
var ErrSealed = errors.New("pool: entry cannot be opened")

// ParseSealKeys reads comma-separated base64 (standard or URL alphabet,
// padded or not) AES-256 keys of 32 bytes each.
func ParseSealKeys(s string) ([][]byte, error) {
	var keys [][]byte
	for i, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		var k []byte
		var err error
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			if k, err = enc.DecodeString(item); err == nil {
				break
			}
		}
		if err != nil {
			return nil, fmt.Errorf("key %d is not base64", i+1)
		}
		if len(k) != 32 {
			return nil, fmt.Errorf("key %d is %d bytes, want 32 (AES-256)", i+1, len(k))
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// NewSealer returns a Sealer that seals with keys[0] and opens with any.
func NewSealer(keys [][]byte) (*Sealer, error) {
	if len(keys) == 0 {
		return nil, errors.New("pool: sealer: no keys")
	}
	s := &Sealer{}
	for i, k := range keys {
		block, err := aes.NewCipher(k)
		if err != nil || len(k) != 32 {
			return nil, fmt.Errorf("pool: sealer: key %d: want 32 bytes", i+1)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("pool: sealer: key %d: %w", i+1, err)
		}
		sum := sha256.Sum256(k)
		sk := sealKey{aead: aead}
		copy(sk.id[:], sum[:4])
		s.keys = append(s.keys, sk)
	}
	return s, nil
}

func sealAD(profile, id string) []byte { return []byte(profile + "\x00" + id) }

// seal returns version | key id | nonce | ciphertext.
func (s *Sealer) seal(profile, id string, plain []byte) []byte {
	k := s.keys[0]
	out := make([]byte, 0, 1+4+k.aead.NonceSize()+len(plain)+k.aead.Overhead())
	out = append(out, sealVersion)
	out = append(out, k.id[:]...)
	nonce := make([]byte, k.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		panic("pool: no randomness for a nonce: " + err.Error())
	}
	out = append(out, nonce...)
	return k.aead.Seal(out, nonce, plain, sealAD(profile, id))
}

// prefixes are how bodies this Sealer can open start: the version and a
// key id, one per key.
func (s *Sealer) prefixes() []any {
	out := make([]any, len(s.keys))
	for i, k := range s.keys {
		out[i] = string(append([]byte{sealVersion}, k.id[:]...))
	}
	return out
}

// open reverses seal with whichever configured key sealed the body.
func (s *Sealer) open(profile, id string, sealed []byte) ([]byte, error) {
	if len(sealed) < 5 || sealed[0] != sealVersion {
		return nil, fmt.Errorf("%w: not sealed", ErrSealed)
	}
	for _, k := range s.keys {
		if !bytes.Equal(sealed[1:5], k.id[:]) {
			continue
		}
		rest := sealed[5:]
		if len(rest) < k.aead.NonceSize() {
			break
		}
		plain, err := k.aead.Open(nil, rest[:k.aead.NonceSize()], rest[k.aead.NonceSize():], sealAD(profile, id))
		if err == nil {
			return plain, nil
		}
	}
	return nil, fmt.Errorf("%w: no configured key opens it", ErrSealed)
}
