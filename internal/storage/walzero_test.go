package storage

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// A store whose logs are zeroed ahead replays them whole: every synced key
// comes back after a reopen, and the log on disk is whole chunks long, its
// tail zeros, which Pebble reads as the log's end.
func TestZeroedLogsReplay(t *testing.T) {
	dir := t.TempDir()
	var syncs, written atomic.Uint64
	fs := syncCountingFS{FS: vfs.Default, syncs: &syncs, written: &written, logs: newLogFiles()}
	open := func() *pebble.DB {
		db, err := pebble.Open(dir, &pebble.Options{FS: fs, Logger: pebbleLogger{log: slog.New(slog.NewTextHandler(io.Discard, nil))}})
		if err != nil {
			t.Fatal(err)
		}
		return db
	}
	db := open()
	val := bytes.Repeat([]byte("v"), 700)
	const n = 3000 // about 2 MiB of log: more than one chunk
	for i := range n {
		if err := db.Set([]byte(fmt.Sprintf("k%06d", i)), val, pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	if len(logs) == 0 {
		t.Fatal("no write-ahead log")
	}
	for _, l := range logs {
		st, err := os.Stat(l)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size()%walZeroChunk != 0 {
			t.Fatalf("%s is %d bytes: not zeroed ahead in whole chunks", l, st.Size())
		}
	}
	if written.Load() < n*uint64(len(val)) {
		t.Fatalf("%d file bytes counted for %d synced values of %d bytes", written.Load(), n, len(val))
	}
	// Closing does not flush the memtable: the reopen replays the logs.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = open()
	defer db.Close()
	for i := range n {
		got, closer, err := db.Get([]byte(fmt.Sprintf("k%06d", i)))
		if err != nil {
			t.Fatalf("key %d after reopen: %v", i, err)
		}
		if !bytes.Equal(got, val) {
			t.Fatalf("key %d after reopen: %d bytes", i, len(got))
		}
		closer.Close()
	}
}

// Appends land where they would without the zeros, and each write past the
// zeroed end extends it by whole chunks.
func TestZeroAheadFileWritesInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "000001.log")
	raw, err := vfs.Default.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	var written atomic.Uint64
	f, err := newZeroAheadFile(raw, &written)
	if err != nil {
		t.Fatal(err)
	}
	var want []byte
	for i := range 40 {
		p := bytes.Repeat([]byte{byte('a' + i%26)}, 50_000)
		if _, err := f.Write(p); err != nil {
			t.Fatal(err)
		}
		want = append(want, p...)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2*walZeroChunk {
		t.Fatalf("file is %d bytes; want 2 chunks for %d bytes written", len(got), len(want))
	}
	if !bytes.Equal(got[:len(want)], want) || !bytes.Equal(got[len(want):], make([]byte, len(got)-len(want))) {
		t.Fatal("the file is not the writes followed by zeros")
	}
	if written.Load() != 2*walZeroChunk {
		t.Fatalf("%d zero bytes counted, want %d", written.Load(), 2*walZeroChunk)
	}
}
