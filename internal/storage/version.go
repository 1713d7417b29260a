package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// A stored page version (family 'p') is the page image followed by a
// CRC32C of the version's key and image, so that a read or the scrub tells
// a damaged version from a good one, and one stored under another key. A
// version written before the CRC was added is the image alone, exactly a
// page long; it is read as it is, and only Pebble's block checksums vouch
// for it.
const versionCRCBytes = 4

// errBadVersionCRC: a stored page version failed its CRC32C.
var errBadVersionCRC = errors.New("page version checksum mismatch")

func versionCRC(key, img []byte) uint32 {
	return crc32.Update(crc32.Checksum(key, castagnoli), castagnoli, img)
}

// encodeVersion is the stored value of the version of key with image img.
func encodeVersion(key, img []byte) []byte {
	out := make([]byte, len(img)+versionCRCBytes)
	copy(out, img)
	binary.BigEndian.PutUint32(out[len(img):], versionCRC(key, img))
	return out
}

// decodeVersion returns the image of the stored version v of key, in a
// segment of pageSize-byte pages; it aliases v.
func decodeVersion(key, v []byte, pageSize int) ([]byte, error) {
	switch len(v) {
	case pageSize:
		return v, nil
	case pageSize + versionCRCBytes:
		img := v[:pageSize]
		stored, computed := binary.BigEndian.Uint32(v[pageSize:]), versionCRC(key, img)
		if stored != computed {
			return nil, fmt.Errorf("stored CRC32C %#08x, computed %#08x: %w", stored, computed, errBadVersionCRC)
		}
		return img, nil
	}
	return nil, fmt.Errorf("%d bytes, neither a %d-byte page nor one with its CRC32C: %w", len(v), pageSize, errBadVersionCRC)
}
