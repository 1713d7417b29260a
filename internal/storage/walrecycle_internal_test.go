package storage

import (
	"bytes"
	"fmt"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// hookedDirFS runs onDirSync when Pebble syncs its directory, which it does
// after creating a new log on disk and before listing it as live.
type hookedDirFS struct {
	vfs.FS
	onDirSync func()
}

type hookedDir struct {
	vfs.File
	fs *hookedDirFS
}

func (fs *hookedDirFS) OpenDir(name string) (vfs.File, error) {
	f, err := fs.FS.OpenDir(name)
	if err != nil {
		return nil, err
	}
	return hookedDir{File: f, fs: fs}, nil
}

func (d hookedDir) Sync() error {
	if h := d.fs.onDirSync; h != nil {
		h()
	}
	return d.File.Sync()
}

// A log that Pebble has created on disk but not yet listed as live is
// counted as live: emptying the old logs in that window once truncated the
// log just rotated out, whose records were not yet flushed.
func TestEmptyObsoleteSparesLogsBeingCreated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pebble")
	hooked := &hookedDirFS{FS: vfs.Default}
	var syncs, written atomic.Uint64
	fs := syncCountingFS{FS: hooked, syncs: &syncs, written: &written, logs: newLogFiles()}
	db, err := pebble.Open(dir, &pebble.Options{FS: fs, EventListener: &pebble.EventListener{WALCreated: fs.logs.created}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	live := func() int { return int(db.Metrics().WAL.Files) }
	for round := range 4 {
		if err := db.Set([]byte("acked"), []byte{byte(round)}, pebble.Sync); err != nil {
			t.Fatal(err)
		}
		var freed uint64
		var ran bool
		hooked.onDirSync = func() {
			if ran {
				return
			}
			ran = true
			var err error
			if freed, err = fs.emptyObsolete(dir, live); err != nil {
				t.Error(err)
			}
		}
		// Flush rotates the log: the new one is created, the directory
		// synced (emptying runs there), and only then the new log listed.
		if err := db.Flush(); err != nil {
			t.Fatal(err)
		}
		hooked.onDirSync = nil
		if !ran {
			t.Fatal("the directory was not synced in the rotation")
		}
		// Before the first rotation there is no old log at all; after it the
		// logs emptied are ones flushed in an earlier round, never the one
		// this round's key was in, which the flush had not finished.
		if round == 0 && freed != 0 {
			t.Fatalf("round %d: emptied %d bytes of logs while the only old log was live", round, freed)
		}
		v, closer, err := db.Get([]byte("acked"))
		if err != nil {
			t.Fatal(err)
		}
		if v[0] != byte(round) {
			t.Fatalf("round %d: read %d", round, v[0])
		}
		closer.Close()
	}
	// And with the store quiet, the old logs are emptied.
	if _, err := fs.emptyObsolete(dir, live); err != nil {
		t.Fatal(err)
	}
	_, old, err := fs.logBytes(dir, live)
	if err != nil {
		t.Fatal(err)
	}
	if old != 0 {
		t.Errorf("the old logs hold %d bytes after emptying", old)
	}
}

func TestSplitLogsKeepsTheNewestLogs(t *testing.T) {
	f := func(num uint64, name string) logFile { return logFile{path: name, num: num} }
	names := func(ls []logFile) (s []string) {
		for _, l := range ls {
			s = append(s, l.path)
		}
		return s
	}
	cases := []struct {
		logs      []logFile
		keep      int
		old, kept []string
	}{
		{[]logFile{f(9, "9"), f(10, "10"), f(2, "2")}, 1, []string{"2", "9"}, []string{"10"}},
		{[]logFile{f(9, "9"), f(10, "10"), f(2, "2")}, 0, []string{"2", "9", "10"}, nil},
		{[]logFile{f(9, "9"), f(10, "10")}, 5, nil, []string{"9", "10"}},
		// The segments of log 10 count as one log, and go together.
		{[]logFile{f(10, "10-001"), f(9, "9"), f(10, "10"), f(8, "8")}, 2, []string{"8"}, []string{"9", "10", "10-001"}},
		{[]logFile{f(10, "10-001"), f(9, "9"), f(10, "10")}, 1, []string{"9"}, []string{"10", "10-001"}},
	}
	for i, c := range cases {
		old, kept := splitLogs(c.logs, c.keep)
		if !slices.Equal(names(old), c.old) || !slices.Equal(names(kept), c.kept) {
			t.Errorf("case %d: old %v kept %v; want %v and %v", i, names(old), names(kept), c.old, c.kept)
		}
	}
}

// A crash (only what was synced survives) after old logs were emptied and
// reused loses no synced write: the reused logs replay as new ones do, and
// an emptied log that was never reused is not needed.
func TestEmptiedLogsSurviveACrash(t *testing.T) {
	mem := vfs.NewCrashableMem()
	var syncs, written atomic.Uint64
	fs := syncCountingFS{FS: mem, syncs: &syncs, written: &written, logs: newLogFiles()}
	opts := &pebble.Options{FS: fs, MemTableSize: 1 << 20, EventListener: &pebble.EventListener{WALCreated: fs.logs.created}}
	db, err := pebble.Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	live := func() int { return int(db.Metrics().WAL.Files) }
	key := func(i int) []byte { return []byte(fmt.Sprintf("k%04d", i)) }
	val := bytes.Repeat([]byte("v"), 4096)
	var emptied uint64
	i := 0
	// Bursts that rotate the logs, each followed by an idle spell's emptying.
	for burst := range 6 {
		for range 400 {
			if err := db.Set(key(i), val, pebble.Sync); err != nil {
				t.Fatal(err)
			}
			i++
		}
		if burst%2 == 0 {
			if err := db.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		freed, err := fs.emptyObsolete("db", live)
		if err != nil {
			t.Fatal(err)
		}
		emptied += freed
	}
	if emptied == 0 {
		t.Fatal("no old log was emptied: the test does not reuse emptied logs")
	}
	// Writes that only the live log holds, then an emptying, made durable by
	// a directory sync (as the next log's creation would): the live log
	// must not have been touched.
	for range 50 {
		if err := db.Set(key(i), val, pebble.Sync); err != nil {
			t.Fatal(err)
		}
		i++
	}
	if _, err := fs.emptyObsolete("db", live); err != nil {
		t.Fatal(err)
	}
	dir, err := mem.OpenDir("db")
	if err != nil {
		t.Fatal(err)
	}
	if err := dir.Sync(); err != nil {
		t.Fatal(err)
	}
	dir.Close()
	crashed := mem.CrashClone(vfs.CrashCloneCfg{})
	db.Close()
	db2, err := pebble.Open("db", &pebble.Options{FS: crashed})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	for k := range i {
		v, closer, err := db2.Get(key(k))
		if err != nil {
			t.Fatalf("after the crash, synced key %d of %d: %v (%d bytes of old logs emptied)", k, i, err, emptied)
		}
		if !bytes.Equal(v, val) {
			t.Fatalf("after the crash, key %d reads %d bytes", k, len(v))
		}
		closer.Close()
	}
}
