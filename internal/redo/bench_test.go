package redo

import (
	"math/rand/v2"
	"testing"
)

// pagePair returns a 4096-byte page and a copy with a 200-byte change.
func pagePair() (old, cur []byte) {
	rng := rand.New(rand.NewPCG(3, 4))
	old = make([]byte, 4096)
	for i := range old {
		old[i] = byte(rng.Uint32())
	}
	cur = append([]byte(nil), old...)
	for i := 1500; i < 1700; i++ {
		cur[i] = ^cur[i]
	}
	return old, cur
}

func BenchmarkDiff(b *testing.B) {
	old, cur := pagePair()
	b.SetBytes(int64(len(cur)))
	b.ReportAllocs()
	for b.Loop() {
		Diff(old, cur)
	}
}

func BenchmarkEncodeDecode(b *testing.B) {
	old, cur := pagePair()
	rec := Record{Volume: 1, PG: 2, Page: 3, LSN: 10, PrevLSN: 9, Epoch: 1, CPL: true, Kind: KindDiff, Ranges: Diff(old, cur)}
	buf := make([]byte, 0, rec.EncodedSize())
	b.SetBytes(int64(rec.EncodedSize()))
	b.ReportAllocs()
	for b.Loop() {
		buf = rec.AppendEncode(buf[:0])
		if _, err := Decode(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkApply(b *testing.B) {
	old, cur := pagePair()
	rec := Record{Page: 3, LSN: 10, Kind: KindDiff, Ranges: Diff(old, cur)}
	page := append([]byte(nil), old...)
	b.ReportAllocs()
	for b.Loop() {
		if err := Apply(page, &rec); err != nil {
			b.Fatal(err)
		}
	}
}
