package storage

import (
	"path/filepath"
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
