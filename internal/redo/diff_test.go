package redo

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// checkDiff verifies the properties Diff promises for an equal-length pair:
// ranges sorted and disjoint, each starting and ending on a changed byte,
// gaps between them longer than RangeOverhead (so no merge would shrink the
// encoding), every changed byte covered, and data equal to newPage.
func checkDiff(t *testing.T, oldPage, newPage []byte, ranges []Range) {
	t.Helper()
	covered := make([]bool, len(newPage))
	prevEnd := -1
	for i, rg := range ranges {
		start, end := int(rg.Offset), int(rg.Offset)+len(rg.Data)
		if len(rg.Data) == 0 || end > len(newPage) {
			t.Fatalf("range %d [%d, %d) empty or out of page of %d", i, start, end, len(newPage))
		}
		if prevEnd >= 0 && start-prevEnd <= RangeOverhead {
			t.Fatalf("range %d starts %d bytes after range %d: should have been merged", i, start-prevEnd, i-1)
		}
		if oldPage[start] == newPage[start] || oldPage[end-1] == newPage[end-1] {
			t.Fatalf("range %d [%d, %d) has an unchanged byte at an edge", i, start, end)
		}
		if !bytes.Equal(rg.Data, newPage[start:end]) {
			t.Fatalf("range %d data differs from newPage", i)
		}
		for j := start; j < end; j++ {
			covered[j] = true
		}
		prevEnd = end
	}
	for j := range newPage {
		if oldPage[j] != newPage[j] && !covered[j] {
			t.Fatalf("changed byte %d not covered", j)
		}
	}
}

func TestDiff(t *testing.T) {
	page := func(n int, changes ...int) (old, cur []byte) {
		old = make([]byte, n)
		cur = make([]byte, n)
		for _, c := range changes {
			cur[c] = 0xEE
		}
		return old, cur
	}
	type want struct {
		off uint32
		n   int
	}
	tests := []struct {
		name    string
		size    int
		changes []int
		want    []want
	}{
		{"identical", 64, nil, nil},
		{"empty pages", 0, nil, nil},
		{"first byte", 64, []int{0}, []want{{0, 1}}},
		{"last byte", 64, []int{63}, []want{{63, 1}}},
		{"adjacent bytes form one run", 64, []int{10, 11, 12}, []want{{10, 3}}},
		{"gap of 1 merges", 64, []int{10, 12}, []want{{10, 3}}},
		{"gap of 8 merges", 64, []int{10, 19}, []want{{10, 10}}},
		{"gap of 9 does not", 64, []int{10, 20}, []want{{10, 1}, {20, 1}}},
		{"chain of merges", 64, []int{0, 9, 18, 27}, []want{{0, 28}}},
		{"mixed", 64, []int{0, 1, 9, 30, 40, 63}, []want{{0, 10}, {30, 1}, {40, 1}, {63, 1}}},
		{"every byte", 20, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19}, []want{{0, 20}}},
		{"word boundary", 32, []int{7, 8, 15, 16}, []want{{7, 10}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			old, cur := page(tc.size, tc.changes...)
			got := Diff(old, cur)
			if len(got) != len(tc.want) {
				t.Fatalf("Diff = %d ranges %v, want %v", len(got), got, tc.want)
			}
			for i, w := range tc.want {
				if got[i].Offset != w.off || len(got[i].Data) != w.n {
					t.Fatalf("range %d = [%d, +%d), want [%d, +%d)", i, got[i].Offset, len(got[i].Data), w.off, w.n)
				}
			}
			checkDiff(t, old, cur, got)
		})
	}
}

func TestDiffLengthMismatch(t *testing.T) {
	got := Diff(make([]byte, 4), []byte{1, 2, 3, 4, 5, 6})
	if len(got) != 1 || got[0].Offset != 0 || !bytes.Equal(got[0].Data, []byte{1, 2, 3, 4, 5, 6}) {
		t.Fatalf("Diff with mismatched lengths = %v, want one range of all of new", got)
	}
	if got := Diff([]byte{1}, nil); got != nil {
		t.Fatalf("Diff to empty new = %v, want nil", got)
	}
}

func TestDiffDoesNotAlias(t *testing.T) {
	old := make([]byte, 32)
	cur := bytes.Repeat([]byte{7}, 32)
	got := Diff(old, cur)
	cur[0] = 99
	old[0] = 99
	if got[0].Data[0] != 7 {
		t.Fatal("Diff result aliases its input")
	}
}

func TestDiffApplyRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 2000; iter++ {
		size := 1 + rng.IntN(600)
		old := make([]byte, size)
		for i := range old {
			old[i] = byte(rng.IntN(4)) // few distinct values, so edits often restore bytes
		}
		cur := bytes.Clone(old)
		for e := rng.IntN(12); e > 0; e-- {
			off := rng.IntN(size)
			for n := rng.IntN(20); n > 0 && off < size; n, off = n-1, off+1 {
				cur[off] = byte(rng.IntN(4))
			}
		}
		ranges := Diff(old, cur)
		checkDiff(t, old, cur, ranges)
		rec := Record{Page: 1, LSN: 1, Kind: KindDiff, Ranges: ranges}
		page := bytes.Clone(old)
		if err := Apply(page, &rec); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(page, cur) {
			t.Fatalf("iter %d: Apply(Diff) does not reproduce new page", iter)
		}
	}
}

func TestApply(t *testing.T) {
	base := func() []byte { return bytes.Repeat([]byte{0x11}, 16) }
	diff := func(rs ...Range) *Record { return &Record{Page: 1, LSN: 1, Kind: KindDiff, Ranges: rs} }

	t.Run("diff", func(t *testing.T) {
		page := base()
		if err := Apply(page, diff(Range{0, []byte{1, 2}}, Range{14, []byte{3, 4}})); err != nil {
			t.Fatal(err)
		}
		want := base()
		copy(want, []byte{1, 2})
		copy(want[14:], []byte{3, 4})
		if !bytes.Equal(page, want) {
			t.Fatalf("page = %x, want %x", page, want)
		}
	})
	t.Run("no ranges", func(t *testing.T) {
		page := base()
		if err := Apply(page, diff()); err != nil || !bytes.Equal(page, base()) {
			t.Fatalf("Apply of empty diff: %v, page %x", err, page)
		}
	})
	t.Run("image", func(t *testing.T) {
		page := base()
		img := bytes.Repeat([]byte{0x22}, 16)
		if err := Apply(page, &Record{Page: 1, LSN: 1, Kind: KindImage, Image: img}); err != nil || !bytes.Equal(page, img) {
			t.Fatalf("Apply of image: %v, page %x", err, page)
		}
	})

	errs := []struct {
		name   string
		rec    *Record
		substr string
	}{
		{"nil record", nil, "nil record"},
		{"image too short", &Record{Kind: KindImage, Image: make([]byte, 15)}, "image is 15 bytes, page is 16"},
		{"image too long", &Record{Kind: KindImage, Image: make([]byte, 17)}, "image is 17 bytes, page is 16"},
		{"range ends past page", diff(Range{0, []byte{1}}, Range{15, []byte{1, 2}}), "range 1 [15, 17) extends past page size 16"},
		{"range starts past page", diff(Range{16, []byte{1}}), "range 0 [16, 17)"},
		{"range near 2^32", diff(Range{math.MaxUint32, []byte{1}}), "extends past page size"},
		{"empty range", diff(Range{3, nil}), "empty"},
		{"overlap", diff(Range{3, []byte{1, 2}}, Range{4, []byte{1}}), "starts before"},
		{"unsorted", diff(Range{8, []byte{1}}, Range{2, []byte{1}}), "starts before"},
		{"bad kind", &Record{Kind: 0}, "kind 0"},
	}
	for _, tc := range errs {
		t.Run(tc.name, func(t *testing.T) {
			page := base()
			err := Apply(page, tc.rec)
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.substr) {
				t.Fatalf("Apply = %v, want ErrMalformed mentioning %q", err, tc.substr)
			}
			if !bytes.Equal(page, base()) {
				t.Fatalf("failed Apply modified the page: %x", page)
			}
		})
	}
}
