package redo

import (
	"bytes"
	"errors"
	"testing"
)

func FuzzDecode(f *testing.F) {
	for _, r := range []Record{diffRecord(), imageRecord(), {Page: 1, LSN: 1, Kind: KindDiff}} {
		enc := r.Encode()
		f.Add(enc)
		f.Add(enc[:len(enc)-1])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkDecode(t, b)
		// Random mutations almost never carry a valid CRC, so also decode the
		// input with its CRC fixed up; that is what reaches the parser.
		if len(b) >= MinEncodedSize {
			checkDecode(t, reseal(bytes.Clone(b)))
		}
	})
}

func checkDecode(t *testing.T, b []byte) {
	in := bytes.Clone(b)
	r, err := Decode(b)
	if !bytes.Equal(in, b) {
		t.Fatal("Decode modified its input")
	}
	hdr, herr := PeekHeader(b)
	if err != nil {
		if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrBadCRC) && !errors.Is(err, ErrMalformed) {
			t.Fatalf("Decode error %v wraps no sentinel", err)
		}
		return
	}
	if herr != nil {
		t.Fatalf("PeekHeader rejected what Decode accepted: %v", herr)
	}
	want := r
	want.Ranges, want.Image = nil, nil
	if !recordsEqual(hdr, want) {
		t.Fatalf("PeekHeader %+v disagrees with Decode %+v", hdr, r)
	}
	if err := r.Validate(); err != nil {
		t.Fatalf("Decode returned a record Validate rejects: %v", err)
	}
	if got := r.Encode(); !bytes.Equal(got, b) {
		t.Fatalf("re-encoding differs:\n in  %x\n out %x", b, got)
	}
	if r.EncodedSize() != len(b) {
		t.Fatalf("EncodedSize %d, input %d bytes", r.EncodedSize(), len(b))
	}
}

// FuzzDiffApply builds old from seed (repeated to a fixed page size) and new
// from old by the edits in edits: each 4 bytes are (offset lo, offset hi,
// length, value), writing a short run so pages differ sparsely, as real
// page modifications do.
func FuzzDiffApply(f *testing.F) {
	f.Add([]byte{}, []byte{})
	f.Add([]byte{1, 2, 3}, []byte{0, 0, 1, 9})
	f.Add([]byte("abcdefgh"), []byte{10, 0, 5, 1, 24, 0, 3, 2, 255, 1, 40, 0})
	const pageSize = 512
	f.Fuzz(func(t *testing.T, seed, edits []byte) {
		old := make([]byte, pageSize)
		if len(seed) > 0 {
			for i := range old {
				old[i] = seed[i%len(seed)]
			}
		}
		cur := bytes.Clone(old)
		for ; len(edits) >= 4; edits = edits[4:] {
			off := (int(edits[0]) | int(edits[1])<<8) % pageSize
			for n := int(edits[2]) % 64; n > 0 && off < pageSize; n, off = n-1, off+1 {
				cur[off] = edits[3] + byte(n&1)
			}
		}

		ranges := Diff(old, cur)
		checkDiff(t, old, cur, ranges)
		rec := Record{Volume: 3, PG: 1, Page: 8, LSN: 77, PrevLSN: 76, Epoch: 2, Kind: KindDiff, Ranges: ranges}
		if err := rec.Validate(); err != nil {
			t.Fatalf("Diff produced an invalid record: %v", err)
		}
		enc := rec.Encode()
		if len(enc) != rec.EncodedSize() {
			t.Fatalf("EncodedSize %d, encoded %d", rec.EncodedSize(), len(enc))
		}
		if len(enc) > MinEncodedSize+RangeOverhead+pageSize {
			t.Fatalf("diff record of %d bytes is larger than one covering the whole page", len(enc))
		}
		dec, err := Decode(enc)
		if err != nil {
			t.Fatalf("Decode: %v", err)
		}
		if !recordsEqual(dec, rec) {
			t.Fatalf("Decode = %+v, want %+v", dec, rec)
		}
		page := bytes.Clone(old)
		if err := Apply(page, &dec); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		if !bytes.Equal(page, cur) {
			t.Fatal("Apply(old, Diff(old, new)) != new")
		}
	})
}
