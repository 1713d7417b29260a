// Package redo defines the redo log record that compute nodes ship to
// storage nodes: its checksummed binary encoding, and the page diffs it
// carries.
//
// Storage nodes materialise page versions by replaying records onto older
// images, so a record that is accepted but wrong silently corrupts data. For
// that reason every byte string handed to Decode is treated as hostile, the
// encoding is canonical (a record has exactly one encoding, which lets
// replicas compare records byte for byte), and Apply checks a record fully
// before touching the page.
package redo

import (
	"errors"
	"fmt"
	"math"
)

// PayloadKind says how a record's payload describes the new page.
type PayloadKind uint8

const (
	KindDiff  PayloadKind = 1 // list of byte ranges written into the page's previous image
	KindImage PayloadKind = 2 // full page image (for a page that is new)
)

func (k PayloadKind) String() string {
	switch k {
	case KindDiff:
		return "diff"
	case KindImage:
		return "image"
	}
	return fmt.Sprintf("PayloadKind(%d)", uint8(k))
}

// Range is a run of bytes written at Offset in the page.
type Range struct {
	Offset uint32
	Data   []byte
}

// Record is one redo log record: a modification of one page.
type Record struct {
	Volume      uint64 // volume id
	PG          uint32 // protection group index
	Page        uint64 // page number (pages are numbered from 1)
	LSN         uint64
	PrevLSN     uint64 // backlink: previous LSN in the same PG (0 = first record of the PG)
	PrevPageLSN uint64 // previous LSN that touched the same page (0 = none known)
	Epoch       uint64 // volume epoch of the writer that made it
	CPL         bool   // last record of a mini-transaction (consistency point)
	Kind        PayloadKind
	Ranges      []Range // when Kind == KindDiff
	Image       []byte  // when Kind == KindImage
}

// Every error returned by this package wraps exactly one of these, so callers
// can tell a torn or short read (ErrTruncated, ErrBadCRC: usually the tail of
// a log that was being written) from a record that was sealed with a valid
// checksum but breaks the format (ErrMalformed: a writer bug or a version
// mismatch, never something to silently skip).
var (
	// ErrTruncated: the input ends before the data it describes. Inputs
	// shorter than MinEncodedSize, and length fields (checksum-verified) that
	// run past the end of the input, report this.
	ErrTruncated = errors.New("record truncated")
	// ErrBadCRC: the trailing CRC32C does not match the bytes before it.
	ErrBadCRC = errors.New("checksum mismatch")
	// ErrMalformed: structurally invalid (unknown version, flags or kind,
	// nonzero reserved byte, Page==0, LSN==0, PrevLSN>=LSN,
	// PrevPageLSN>=LSN, empty/overlapping/unsorted ranges, payload that does
	// not match Kind, trailing bytes, or a payload that does not fit the page
	// in Apply).
	ErrMalformed = errors.New("malformed record")
)

// Validate reports whether r obeys the rules Decode enforces, so that a
// writer can refuse to log a record that every reader would reject. A record
// that passes Validate round-trips exactly through Encode and Decode.
func (r *Record) Validate() error {
	if err := r.validateHeader(); err != nil {
		return err
	}
	return r.validatePayload()
}

func (r *Record) validateHeader() error {
	switch {
	case r.Page == 0:
		return fmt.Errorf("redo: page number is 0 (pages are numbered from 1): %w", ErrMalformed)
	case r.LSN == 0:
		return fmt.Errorf("redo: LSN is 0: %w", ErrMalformed)
	case r.PrevLSN >= r.LSN:
		return fmt.Errorf("redo: PrevLSN %d is not below LSN %d: %w", r.PrevLSN, r.LSN, ErrMalformed)
	case r.PrevPageLSN >= r.LSN:
		return fmt.Errorf("redo: PrevPageLSN %d is not below LSN %d: %w", r.PrevPageLSN, r.LSN, ErrMalformed)
	case r.Kind != KindDiff && r.Kind != KindImage:
		return fmt.Errorf("redo: unknown payload kind %d: %w", uint8(r.Kind), ErrMalformed)
	}
	return nil
}

// validatePayload is separate from the header rules because Apply needs only
// it: replay does not care about LSNs, only that the payload is well formed.
func (r *Record) validatePayload() error {
	switch r.Kind {
	case KindDiff:
		if len(r.Image) != 0 {
			return fmt.Errorf("redo: diff record also carries a %d-byte image: %w", len(r.Image), ErrMalformed)
		}
		// end is exclusive and kept in 64 bits: offset and length are each
		// 32-bit on the wire, so their sum may not fit in 32.
		var end uint64
		for i, rg := range r.Ranges {
			n := uint64(len(rg.Data))
			off := uint64(rg.Offset)
			if n == 0 {
				return fmt.Errorf("redo: range %d at offset %d is empty: %w", i, off, ErrMalformed)
			}
			if n > math.MaxUint32 {
				return fmt.Errorf("redo: range %d at offset %d has length %d, over the 32-bit limit: %w", i, off, n, ErrMalformed)
			}
			if i > 0 && off < end {
				return fmt.Errorf("redo: range %d at offset %d starts before range %d ends at %d (ranges must be sorted and non-overlapping): %w",
					i, off, i-1, end, ErrMalformed)
			}
			end = off + n
			if end > 1<<32 {
				return fmt.Errorf("redo: range %d [%d, %d) ends beyond the 32-bit offset space: %w", i, off, end, ErrMalformed)
			}
		}
	case KindImage:
		if len(r.Ranges) != 0 {
			return fmt.Errorf("redo: image record also carries %d ranges: %w", len(r.Ranges), ErrMalformed)
		}
		if len(r.Image) == 0 {
			return fmt.Errorf("redo: image record has an empty image: %w", ErrMalformed)
		}
		if uint64(len(r.Image)) > math.MaxUint32 {
			return fmt.Errorf("redo: image length %d is over the 32-bit limit: %w", len(r.Image), ErrMalformed)
		}
	default:
		return fmt.Errorf("redo: unknown payload kind %d: %w", uint8(r.Kind), ErrMalformed)
	}
	return nil
}
