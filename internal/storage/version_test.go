package storage

import (
	"bytes"
	"errors"
	"testing"
)

func TestVersionEncoding(t *testing.T) {
	key := pageKey(famVersion, 1, 0, 5, 42)
	img := bytes.Repeat([]byte{7, 1, 9}, 1000)[:2048]
	v := encodeVersion(key, img)
	if got, err := decodeVersion(key, v, len(img)); err != nil || !bytes.Equal(got, img) {
		t.Fatalf("round trip: %v", err)
	}
	// A version from before the CRC is read as it is.
	if got, err := decodeVersion(key, img, len(img)); err != nil || !bytes.Equal(got, img) {
		t.Fatalf("version without a CRC: %v", err)
	}
	flipped := bytes.Clone(v)
	flipped[100] ^= 0x10
	otherKey := pageKey(famVersion, 1, 0, 6, 42)
	for name, c := range map[string]struct {
		key, v []byte
	}{
		"flipped byte": {key, flipped},
		"flipped crc":  {key, append(bytes.Clone(v[:len(v)-1]), v[len(v)-1]^1)},
		"another key":  {otherKey, v},
		"short":        {key, v[:len(v)-1]},
		"long":         {key, append(bytes.Clone(v), 0)},
	} {
		if _, err := decodeVersion(c.key, c.v, len(img)); !errors.Is(err, errBadVersionCRC) {
			t.Errorf("%s: %v, want a CRC mismatch", name, err)
		}
	}
}
