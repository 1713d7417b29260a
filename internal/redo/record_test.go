package redo

import (
	"bytes"
	"errors"
	"hash/crc32"
	"math"
	"strings"
	"testing"
)

func diffRecord() Record {
	return Record{
		Volume: 7, PG: 3, Page: 42, LSN: 1000, PrevLSN: 990, PrevPageLSN: 900, Epoch: 5,
		Kind: KindDiff,
		Ranges: []Range{
			{Offset: 0, Data: []byte{1, 2, 3}},
			{Offset: 100, Data: []byte("hello")},
			{Offset: 4095, Data: []byte{9}},
		},
	}
}

func imageRecord() Record {
	img := make([]byte, 64)
	for i := range img {
		img[i] = byte(i * 7)
	}
	return Record{Volume: 1, PG: 0, Page: 1, LSN: 1, Epoch: 1, CPL: true, Kind: KindImage, Image: img}
}

// recordsEqual treats nil and empty payloads alike: both encode identically.
func recordsEqual(a, b Record) bool {
	if a.Volume != b.Volume || a.PG != b.PG || a.Page != b.Page || a.LSN != b.LSN ||
		a.PrevLSN != b.PrevLSN || a.PrevPageLSN != b.PrevPageLSN || a.Epoch != b.Epoch ||
		a.CPL != b.CPL || a.Kind != b.Kind || !bytes.Equal(a.Image, b.Image) || len(a.Ranges) != len(b.Ranges) {
		return false
	}
	for i := range a.Ranges {
		if a.Ranges[i].Offset != b.Ranges[i].Offset || !bytes.Equal(a.Ranges[i].Data, b.Ranges[i].Data) {
			return false
		}
	}
	return true
}

// reseal recomputes the trailing CRC so a test can reach the checks behind it.
func reseal(b []byte) []byte {
	n := len(b) - crcSize
	le.PutUint32(b[n:], crc32.Checksum(b[:n], castagnoli))
	return b
}

func TestRoundTrip(t *testing.T) {
	maxed := Record{
		Volume: math.MaxUint64, PG: math.MaxUint32, Page: math.MaxUint64,
		LSN: math.MaxUint64, PrevLSN: math.MaxUint64 - 1, PrevPageLSN: math.MaxUint64 - 1, Epoch: math.MaxUint64,
		CPL: true, Kind: KindDiff,
		Ranges: []Range{{Offset: math.MaxUint32, Data: []byte{0xff}}},
	}
	cpl := diffRecord()
	cpl.CPL = true
	adjacent := diffRecord()
	adjacent.Ranges = []Range{{Offset: 10, Data: []byte{1}}, {Offset: 11, Data: []byte{2}}}

	tests := []struct {
		name string
		rec  Record
	}{
		{"diff", diffRecord()},
		{"diff CPL", cpl},
		{"diff nil ranges", Record{Page: 1, LSN: 2, PrevLSN: 1, Kind: KindDiff}},
		{"diff empty ranges", Record{Page: 1, LSN: 2, Kind: KindDiff, Ranges: []Range{}}},
		{"diff adjacent ranges", adjacent},
		{"image CPL", imageRecord()},
		{"image one byte", Record{Page: 9, LSN: 3, Kind: KindImage, Image: []byte{0}}},
		{"max fields", maxed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.rec.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			enc := tc.rec.Encode()
			if got := tc.rec.EncodedSize(); got != len(enc) {
				t.Errorf("EncodedSize = %d, len(Encode()) = %d", got, len(enc))
			}
			prefix := []byte("prefix")
			app := tc.rec.AppendEncode(bytes.Clone(prefix))
			if !bytes.Equal(app[:len(prefix)], prefix) || !bytes.Equal(app[len(prefix):], enc) {
				t.Errorf("AppendEncode differs from prefix+Encode")
			}
			got, err := Decode(enc)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !recordsEqual(got, tc.rec) {
				t.Errorf("Decode = %+v, want %+v", got, tc.rec)
			}
			if !bytes.Equal(got.Encode(), enc) {
				t.Errorf("re-encoding differs")
			}
			hdr, err := PeekHeader(enc)
			if err != nil {
				t.Fatalf("PeekHeader: %v", err)
			}
			want := tc.rec
			want.Ranges, want.Image = nil, nil
			if hdr.Ranges != nil || hdr.Image != nil || !recordsEqual(hdr, want) {
				t.Errorf("PeekHeader = %+v, want %+v", hdr, want)
			}
		})
	}
}

func TestDecodeNilRangesForEmptyDiff(t *testing.T) {
	r := Record{Page: 1, LSN: 1, Kind: KindDiff}
	got, err := Decode(r.Encode())
	if err != nil || got.Ranges != nil {
		t.Fatalf("Decode = %+v, %v; want nil Ranges", got, err)
	}
	if len(r.Encode()) != MinEncodedSize {
		t.Errorf("empty diff is %d bytes, MinEncodedSize is %d", len(r.Encode()), MinEncodedSize)
	}
}

func TestDecodeAliasIsCapacityLimited(t *testing.T) {
	r := diffRecord()
	enc := r.Encode()
	orig := bytes.Clone(enc)
	got, err := Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	for _, rg := range got.Ranges {
		_ = append(rg.Data, 0xAA, 0xBB, 0xCC)
	}
	if !bytes.Equal(enc, orig) {
		t.Fatal("appending to decoded range data overwrote the input")
	}
}

func TestDecodeErrors(t *testing.T) {
	const payload = HeaderSize // offset of the payload's first u32
	// diffRecord layout after the count: range 0 header at payload+4.
	r0 := payload + 4
	r1 := r0 + RangeOverhead + 3
	r2 := r1 + RangeOverhead + 5

	tests := []struct {
		name   string
		base   func() Record
		mutate func(b []byte) []byte // result is resealed unless noReseal
		keep   bool                  // don't reseal: the test targets the CRC itself
		want   error
		substr string
	}{
		{"empty input", diffRecord, func(b []byte) []byte { return nil }, true, ErrTruncated, "0 bytes"},
		{"one short of minimum", diffRecord, func(b []byte) []byte { return b[:MinEncodedSize-1] }, true, ErrTruncated, "minimum"},
		{"crc flipped", diffRecord, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }, true, ErrBadCRC, "CRC32C"},
		{"payload flipped", diffRecord, func(b []byte) []byte { b[r1+8] ^= 0x80; return b }, true, ErrBadCRC, "CRC32C"},
		{"bad version", diffRecord, func(b []byte) []byte { b[0] = 2; return b }, false, ErrMalformed, "version 2"},
		{"unknown flag", diffRecord, func(b []byte) []byte { b[1] |= 0x40; return b }, false, ErrMalformed, "flag"},
		{"reserved byte", diffRecord, func(b []byte) []byte { b[3] = 1; return b }, false, ErrMalformed, "reserved"},
		{"kind 0", diffRecord, func(b []byte) []byte { b[2] = 0; return b }, false, ErrMalformed, "kind 0"},
		{"kind 3", diffRecord, func(b []byte) []byte { b[2] = 3; return b }, false, ErrMalformed, "kind 3"},
		{"page 0", diffRecord, func(b []byte) []byte { le.PutUint64(b[16:], 0); return b }, false, ErrMalformed, "page number"},
		{"LSN 0", diffRecord, func(b []byte) []byte { le.PutUint64(b[24:], 0); return b }, false, ErrMalformed, "LSN is 0"},
		{"PrevLSN == LSN", diffRecord, func(b []byte) []byte { le.PutUint64(b[32:], 1000); return b }, false, ErrMalformed, "PrevLSN 1000"},
		{"PrevPageLSN > LSN", diffRecord, func(b []byte) []byte { le.PutUint64(b[40:], 2000); return b }, false, ErrMalformed, "PrevPageLSN 2000"},
		{"range count too large", diffRecord, func(b []byte) []byte { le.PutUint32(b[payload:], 1<<31); return b }, false, ErrTruncated, "claims 2147483648 ranges"},
		{"range count one too many", diffRecord, func(b []byte) []byte { le.PutUint32(b[payload:], 4); return b }, false, ErrTruncated, "range 3"},
		{"range count one too few", diffRecord, func(b []byte) []byte { le.PutUint32(b[payload:], 2); return b }, false, ErrMalformed, "trailing"},
		{"range length past end", diffRecord, func(b []byte) []byte { le.PutUint32(b[r2+4:], 2); return b }, false, ErrTruncated, "range 2"},
		{"range length huge", diffRecord, func(b []byte) []byte { le.PutUint32(b[r0+4:], math.MaxUint32); return b }, false, ErrTruncated, "range 0"},
		{"empty range", diffRecord, func(b []byte) []byte {
			// Shrink range 2 to zero bytes and drop its data byte.
			le.PutUint32(b[r2+4:], 0)
			return append(b[:r2+RangeOverhead], 0, 0, 0, 0)
		}, false, ErrMalformed, "range 2 at offset 4095 is empty"},
		{"ranges overlap", diffRecord, func(b []byte) []byte { le.PutUint32(b[r1:], 2); return b }, false, ErrMalformed, "range 1 at offset 2"},
		{"ranges out of order", diffRecord, func(b []byte) []byte { le.PutUint32(b[r2:], 50); return b }, false, ErrMalformed, "range 2 at offset 50"},
		{"range beyond 32-bit space", diffRecord, func(b []byte) []byte { le.PutUint32(b[r1:], math.MaxUint32); return b }, false, ErrMalformed, "32-bit"},
		{"diff trailing bytes", diffRecord, func(b []byte) []byte { return append(b, 0, 0, 0, 0, 0) }, false, ErrMalformed, "5 trailing bytes"},
		{"image length past end", imageRecord, func(b []byte) []byte { le.PutUint32(b[payload:], 65); return b }, false, ErrTruncated, "image claims 65"},
		{"image length short", imageRecord, func(b []byte) []byte { le.PutUint32(b[payload:], 60); return b }, false, ErrMalformed, "4 trailing bytes"},
		{"image empty", imageRecord, func(b []byte) []byte {
			le.PutUint32(b[payload:], 0)
			return append(b[:payload+4], 0, 0, 0, 0)
		}, false, ErrMalformed, "empty image"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.base()
			b := tc.mutate(r.Encode())
			if !tc.keep {
				b = reseal(b)
			}
			got, err := Decode(b)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Decode error = %v, want %v (record %+v)", err, tc.want, got)
			}
			if !strings.HasPrefix(err.Error(), "redo: ") || !strings.Contains(err.Error(), tc.substr) {
				t.Errorf("error %q does not start with \"redo: \" or lacks %q", err, tc.substr)
			}
			if !recordsEqual(got, Record{}) {
				t.Errorf("Decode returned non-zero record %+v with error", got)
			}
		})
	}
}

// Every proper prefix and every single-bit or single-byte corruption must be
// rejected with a sentinel, never decoded as some other record.
func TestDecodeRejectsTruncationAndCorruption(t *testing.T) {
	for _, r := range []Record{diffRecord(), imageRecord(), {Page: 1, LSN: 1, Kind: KindDiff}} {
		enc := r.Encode()
		for n := 0; n < len(enc); n++ {
			_, err := Decode(enc[:n])
			if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrBadCRC) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode(prefix %d of %d) error = %v", n, len(enc), err)
			}
		}
		for i := range enc {
			for _, mask := range []byte{1, 2, 4, 8, 16, 32, 64, 128, 0xff} {
				b := bytes.Clone(enc)
				b[i] ^= mask
				if _, err := Decode(b); !errors.Is(err, ErrBadCRC) {
					t.Fatalf("byte %d ^ %#x: Decode error = %v, want ErrBadCRC", i, mask, err)
				}
			}
		}
	}
}

func TestValidate(t *testing.T) {
	withDiff := func(f func(*Record)) Record { r := diffRecord(); f(&r); return r }
	withImage := func(f func(*Record)) Record { r := imageRecord(); f(&r); return r }
	tests := []struct {
		name   string
		rec    Record
		substr string // "" means valid
	}{
		{"diff ok", diffRecord(), ""},
		{"image ok", imageRecord(), ""},
		{"prev LSNs zero", withDiff(func(r *Record) { r.PrevLSN, r.PrevPageLSN = 0, 0 }), ""},
		{"page 0", withDiff(func(r *Record) { r.Page = 0 }), "page number"},
		{"LSN 0", withDiff(func(r *Record) { r.LSN, r.PrevLSN, r.PrevPageLSN = 0, 0, 0 }), "LSN is 0"},
		{"PrevLSN == LSN", withDiff(func(r *Record) { r.PrevLSN = r.LSN }), "PrevLSN"},
		{"PrevPageLSN == LSN", withDiff(func(r *Record) { r.PrevPageLSN = r.LSN }), "PrevPageLSN"},
		{"kind 0", withDiff(func(r *Record) { r.Kind = 0 }), "kind 0"},
		{"diff with image", withDiff(func(r *Record) { r.Image = []byte{1} }), "also carries a 1-byte image"},
		{"empty range", withDiff(func(r *Record) { r.Ranges[1].Data = nil }), "range 1 at offset 100 is empty"},
		{"overlap", withDiff(func(r *Record) { r.Ranges[1].Offset = 1 }), "range 1 at offset 1 starts before range 0 ends at 3"},
		{"unsorted", withDiff(func(r *Record) { r.Ranges[2].Offset = 0 }), "range 2 at offset 0"},
		{"duplicate offset", withDiff(func(r *Record) { r.Ranges[1].Offset = 0 }), "range 1 at offset 0"},
		{"beyond 32 bits", withDiff(func(r *Record) { r.Ranges[2] = Range{Offset: math.MaxUint32, Data: []byte{1, 2}} }), "32-bit offset space"},
		{"image with ranges", withImage(func(r *Record) { r.Ranges = []Range{{Data: []byte{1}}} }), "1 ranges"},
		{"image empty", withImage(func(r *Record) { r.Image = []byte{} }), "empty image"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.rec.Validate()
			if tc.substr == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.substr) {
				t.Fatalf("Validate = %v, want ErrMalformed mentioning %q", err, tc.substr)
			}
			// Whatever Validate rejects, Decode must reject too, except a
			// stray payload field that Encode does not write.
			r := tc.rec
			if (r.Kind == KindDiff && len(r.Image) > 0) || (r.Kind == KindImage && len(r.Ranges) > 0) {
				return
			}
			if _, derr := Decode(tc.rec.Encode()); derr == nil {
				t.Errorf("Decode accepted a record Validate rejects")
			}
		})
	}
}

func TestPayloadKindString(t *testing.T) {
	for k, want := range map[PayloadKind]string{KindDiff: "diff", KindImage: "image", 9: "PayloadKind(9)"} {
		if got := k.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", uint8(k), got, want)
		}
	}
}
