package redo

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/bits"
)

// Diff returns the ranges that turn oldPage into newPage, sorted and
// non-overlapping, ready to be a KindDiff payload. Identical pages give no
// ranges (nil). The returned data is copied into one fresh allocation and
// does not alias either argument, so the caller may keep modifying its page
// buffers while the record waits to be logged.
//
// Two changed runs separated by g unchanged bytes are merged when
// g <= RangeOverhead: copying the gap costs g bytes, a separate range costs
// RangeOverhead. Because each gap's choice is independent of the others, this
// gives the smallest possible encoding, preferring fewer ranges on a tie.
//
// The pages must have equal length. A mismatch is a programming error; rather
// than panic on the write path, Diff then returns a single range holding all
// of newPage (nil if newPage is empty). Offsets are 32-bit, so pages must be
// smaller than 4 GiB.
func Diff(oldPage, newPage []byte) []Range {
	if len(oldPage) != len(newPage) {
		if len(newPage) == 0 {
			return nil
		}
		return []Range{{Offset: 0, Data: bytes.Clone(newPage)}}
	}

	type span struct{ start, end int }
	// Sized so that typical pages with few changes need no heap allocation.
	spans := make([]span, 0, 16)
	total := 0
	for i := nextDiff(oldPage, newPage, 0); i < len(newPage); i = nextDiff(oldPage, newPage, i) {
		start := i
		for i < len(newPage) && oldPage[i] != newPage[i] {
			i++
		}
		if n := len(spans); n > 0 && start-spans[n-1].end <= RangeOverhead {
			total += i - spans[n-1].end
			spans[n-1].end = i
		} else {
			total += i - start
			spans = append(spans, span{start, i})
		}
	}
	if len(spans) == 0 {
		return nil
	}

	buf := make([]byte, 0, total)
	ranges := make([]Range, len(spans))
	for k, s := range spans {
		at := len(buf)
		buf = append(buf, newPage[s.start:s.end]...)
		ranges[k] = Range{Offset: uint32(s.start), Data: buf[at:len(buf):len(buf)]}
	}
	return ranges
}

// nextDiff returns the first index >= i where a and b differ, or len(a).
// Pages are mostly unchanged, so it compares eight bytes at a time.
func nextDiff(a, b []byte, i int) int {
	for ; i+8 <= len(a); i += 8 {
		if x := binary.LittleEndian.Uint64(a[i:]) ^ binary.LittleEndian.Uint64(b[i:]); x != 0 {
			return i + bits.TrailingZeros64(x)/8
		}
	}
	for ; i < len(a); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

// Apply applies r's payload to page in place; page has the page size. A
// KindImage must be exactly len(page) bytes; every diff range must lie within
// page. Only the payload is checked, not the header (LSNs are the caller's
// concern). The whole record is checked before page is touched, so on error
// page is unchanged. Errors wrap ErrMalformed. Apply never panics.
func Apply(page []byte, r *Record) error {
	if r == nil {
		return fmt.Errorf("redo: apply of a nil record: %w", ErrMalformed)
	}
	if err := r.validatePayload(); err != nil {
		return err
	}
	switch r.Kind {
	case KindImage:
		if len(r.Image) != len(page) {
			return fmt.Errorf("redo: image is %d bytes, page is %d: %w", len(r.Image), len(page), ErrMalformed)
		}
		copy(page, r.Image)
	case KindDiff:
		// validatePayload established that ranges are sorted and disjoint, so
		// the last one bounds them all.
		if n := len(r.Ranges); n > 0 {
			last := r.Ranges[n-1]
			if end := uint64(last.Offset) + uint64(len(last.Data)); end > uint64(len(page)) {
				return fmt.Errorf("redo: range %d [%d, %d) extends past page size %d: %w",
					n-1, last.Offset, end, len(page), ErrMalformed)
			}
		}
		for _, rg := range r.Ranges {
			copy(page[rg.Offset:], rg.Data)
		}
	}
	return nil
}
