package redo

// Wire layout of one encoded record. All integers are little-endian.
//
//	offset  size  field
//	     0     1  version      FormatVersion
//	     1     1  flags        bit 0 = CPL; all other bits must be zero
//	     2     1  kind         PayloadKind
//	     3     1  reserved     must be zero
//	     4     4  PG
//	     8     8  Volume
//	    16     8  Page
//	    24     8  LSN
//	    32     8  PrevLSN
//	    40     8  PrevPageLSN
//	    48     8  Epoch
//	    56        payload, by kind:
//	                KindDiff:  count u32, then count × (offset u32, length u32, data[length])
//	                KindImage: length u32, data[length]
//	   n-4     4  CRC32C (Castagnoli) of bytes [0, n-4)
//
// The header is 56 bytes so the 8-byte fields stay naturally aligned when the
// record itself is. The CRC is always the last four bytes, whatever the
// version, so a reader can reject a torn record before it trusts any length
// field. The format is canonical: fixed-width integers, reserved bits that
// must be zero, no trailing bytes, so Decode followed by Encode reproduces the
// input exactly and replicas can compare records byte for byte.

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"slices"
)

const (
	// FormatVersion is the value of the first byte of every record written by
	// this package; Decode rejects any other.
	FormatVersion = 1

	// HeaderSize is the size of the fixed header that precedes the payload.
	HeaderSize = 56

	// RangeOverhead is the encoded size of one diff range beyond its data
	// (offset u32 + length u32). Diff uses it to decide when merging two runs
	// is cheaper than keeping them apart.
	RangeOverhead = 8

	// MinEncodedSize is the size of the smallest valid record: the header, a
	// zero range count and the CRC. Shorter inputs are ErrTruncated.
	MinEncodedSize = HeaderSize + 4 + crcSize

	crcSize = 4
	flagCPL = 1 << 0
)

var (
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
	le         = binary.LittleEndian
)

// EncodedSize returns len(r.Encode()) without encoding.
func (r *Record) EncodedSize() int {
	n := HeaderSize + 4 + crcSize
	if r.Kind == KindImage {
		return n + len(r.Image)
	}
	for _, rg := range r.Ranges {
		n += RangeOverhead + len(rg.Data)
	}
	return n
}

// Encode returns the encoding of r. It is AppendEncode(nil).
func (r *Record) Encode() []byte { return r.AppendEncode(nil) }

// AppendEncode appends the encoding of r to dst and returns the extended
// slice. Encoding does not validate: call Validate first if r is not known to
// be good, because Decode rejects what Validate rejects, and lengths over 32
// bits cannot be represented at all. Only the payload selected by Kind is
// written (Image for KindImage, Ranges otherwise); a stray value in the other
// field, which Validate reports, is silently dropped.
func (r *Record) AppendEncode(dst []byte) []byte {
	start := len(dst)
	dst = slices.Grow(dst, r.EncodedSize())

	var flags byte
	if r.CPL {
		flags |= flagCPL
	}
	dst = append(dst, FormatVersion, flags, byte(r.Kind), 0)
	dst = le.AppendUint32(dst, r.PG)
	dst = le.AppendUint64(dst, r.Volume)
	dst = le.AppendUint64(dst, r.Page)
	dst = le.AppendUint64(dst, r.LSN)
	dst = le.AppendUint64(dst, r.PrevLSN)
	dst = le.AppendUint64(dst, r.PrevPageLSN)
	dst = le.AppendUint64(dst, r.Epoch)

	if r.Kind == KindImage {
		dst = le.AppendUint32(dst, uint32(len(r.Image)))
		dst = append(dst, r.Image...)
	} else {
		dst = le.AppendUint32(dst, uint32(len(r.Ranges)))
		for _, rg := range r.Ranges {
			dst = le.AppendUint32(dst, rg.Offset)
			dst = le.AppendUint32(dst, uint32(len(rg.Data)))
			dst = append(dst, rg.Data...)
		}
	}
	return le.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// Decode parses one encoded record occupying the whole of b. The returned
// record's Range.Data and Image alias b (capacity-limited, so appending to
// them cannot overwrite b); copy them if b will be reused. A diff record with
// no ranges decodes with Ranges == nil.
//
// Decode never panics, and allocates at most one Range per RangeOverhead bytes
// of input, whatever the length fields claim.
func Decode(b []byte) (Record, error) {
	r, err := PeekHeader(b)
	if err != nil {
		return Record{}, err
	}
	payload := b[HeaderSize : len(b)-crcSize]
	switch r.Kind {
	case KindDiff:
		r.Ranges, err = decodeRanges(payload)
	case KindImage:
		r.Image, err = decodeImage(payload)
	}
	if err != nil {
		return Record{}, err
	}
	if err := r.validatePayload(); err != nil {
		return Record{}, err
	}
	return r, nil
}

// PeekHeader verifies b's length and CRC and decodes only the fixed header,
// returning a Record with no payload. It is the cheap path for a storage node
// that routes or indexes records without replaying them. It checks every
// header rule Decode checks, but not the payload's structure, so Decode can
// still reject a record PeekHeader accepted (only if its writer sealed a bad
// payload under a valid CRC).
func PeekHeader(b []byte) (Record, error) {
	if len(b) < MinEncodedSize {
		return Record{}, fmt.Errorf("redo: record is %d bytes, shorter than the %d-byte minimum: %w",
			len(b), MinEncodedSize, ErrTruncated)
	}
	body := b[:len(b)-crcSize]
	stored := le.Uint32(b[len(body):])
	if computed := crc32.Checksum(body, castagnoli); computed != stored {
		return Record{}, fmt.Errorf("redo: stored CRC32C %#08x, computed %#08x over %d bytes: %w",
			stored, computed, len(body), ErrBadCRC)
	}
	if b[0] != FormatVersion {
		return Record{}, fmt.Errorf("redo: format version %d at byte 0, want %d: %w", b[0], FormatVersion, ErrMalformed)
	}
	if b[1]&^flagCPL != 0 {
		return Record{}, fmt.Errorf("redo: unknown flag bits %#02x at byte 1: %w", b[1]&^flagCPL, ErrMalformed)
	}
	if b[3] != 0 {
		return Record{}, fmt.Errorf("redo: reserved byte 3 is %#02x, want 0: %w", b[3], ErrMalformed)
	}
	r := Record{
		CPL:         b[1]&flagCPL != 0,
		Kind:        PayloadKind(b[2]),
		PG:          le.Uint32(b[4:]),
		Volume:      le.Uint64(b[8:]),
		Page:        le.Uint64(b[16:]),
		LSN:         le.Uint64(b[24:]),
		PrevLSN:     le.Uint64(b[32:]),
		PrevPageLSN: le.Uint64(b[40:]),
		Epoch:       le.Uint64(b[48:]),
	}
	if err := r.validateHeader(); err != nil {
		return Record{}, err
	}
	return r, nil
}

// decodeRanges parses a diff payload p (which starts at byte HeaderSize of the
// record; error messages give record byte offsets). p holds at least the
// 4-byte count because of MinEncodedSize.
func decodeRanges(p []byte) ([]Range, error) {
	count := le.Uint32(p)
	pos := 4
	// Bound the allocation by what the input can actually hold, not by what
	// the (possibly hostile) count claims.
	if avail := uint64(len(p)-pos) / RangeOverhead; uint64(count) > avail {
		return nil, fmt.Errorf("redo: diff claims %d ranges but the %d payload bytes after the count hold at most %d: %w",
			count, len(p)-pos, avail, ErrTruncated)
	}
	var ranges []Range
	if count > 0 {
		ranges = make([]Range, count)
	}
	for i := range ranges {
		if len(p)-pos < RangeOverhead {
			return nil, fmt.Errorf("redo: range %d header at byte %d needs %d bytes, %d remain: %w",
				i, HeaderSize+pos, RangeOverhead, len(p)-pos, ErrTruncated)
		}
		off := le.Uint32(p[pos:])
		n := le.Uint32(p[pos+4:])
		pos += RangeOverhead
		if uint64(n) > uint64(len(p)-pos) {
			return nil, fmt.Errorf("redo: range %d (offset %d) claims %d data bytes at byte %d, %d remain: %w",
				i, off, n, HeaderSize+pos, len(p)-pos, ErrTruncated)
		}
		end := pos + int(n)
		ranges[i] = Range{Offset: off, Data: p[pos:end:end]}
		pos = end
	}
	if pos != len(p) {
		return nil, fmt.Errorf("redo: %d trailing bytes at byte %d after %d ranges: %w",
			len(p)-pos, HeaderSize+pos, count, ErrMalformed)
	}
	return ranges, nil
}

// decodeImage parses an image payload p; see decodeRanges.
func decodeImage(p []byte) ([]byte, error) {
	n := le.Uint32(p)
	rest := p[4:]
	if uint64(n) > uint64(len(rest)) {
		return nil, fmt.Errorf("redo: image claims %d bytes at byte %d, %d remain: %w",
			n, HeaderSize+4, len(rest), ErrTruncated)
	}
	if int(n) != len(rest) {
		return nil, fmt.Errorf("redo: %d trailing bytes at byte %d after %d-byte image: %w",
			len(rest)-int(n), HeaderSize+4+int(n), n, ErrMalformed)
	}
	return rest[:n:n], nil
}
