package storage_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/storage"
	"github.com/borealis-db/borealis/internal/wait"
)

// logSizes lists the store's write-ahead logs, oldest first, with their sizes.
func logSizes(t *testing.T, dir string) (names []string, sizes []int64) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "pebble"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".log") {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names) // six-digit numbers: sorted as numbers
	for _, name := range names {
		st, err := os.Stat(filepath.Join(dir, "pebble", name))
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, st.Size())
	}
	return names, sizes
}

// Once the store is idle and flushed, the old logs Pebble keeps to recycle
// are emptied: they held nothing, and on a small store they were most of
// its footprint. Logs reused after that still hold what they are given, as
// a restart that replays them shows.
func TestIdleStoreEmptiesItsOldLogs(t *testing.T) {
	dir := t.TempDir()
	cfg := storage.Config{ID: "s1", AZ: "a", Dir: dir, MaterializeInterval: 10 * time.Millisecond, IdleFlushAfter: time.Second, MemTableBytes: 1 << 20}
	n, c, addr := startNodeWith(t, cfg)
	w := newChainWriter(t, c, 1, 0, addr)
	// 1,500 images of 8 pages: 6 MiB of log, several memtables of 1 MiB.
	for lsn := uint64(1); lsn <= 1500; lsn++ {
		w.write(1+lsn%8, lsn, byte(lsn))
	}
	wait.For(t, 30*time.Second, "the old logs emptied", func() bool {
		names, sizes := logSizes(t, dir)
		if len(names) < 2 {
			return false // no old log kept yet
		}
		for _, sz := range sizes[:len(sizes)-1] {
			if sz != 0 {
				return false
			}
		}
		return true
	})
	names, sizes := logSizes(t, dir)
	t.Logf("after the idle flush: logs %v, sizes %v", names, sizes)
	if _, recyclable := n.WALBytes(); recyclable != 0 {
		t.Errorf("the node counts %d bytes of old logs after emptying them", recyclable)
	}

	// A second burst reuses the emptied logs; the node stops before any
	// flush, so its records are only in them.
	for lsn := uint64(1501); lsn <= 3000; lsn++ {
		w.write(1+lsn%8, lsn, byte(lsn))
	}
	n.Close() // again in the cleanup, which does nothing then

	_, c2, _ := startNodeWith(t, cfg)
	for page := uint64(1); page <= 8; page++ {
		last := uint64(3000) - (3000-(page-1))%8
		resp, err := c2.GetPage(context.Background(), &pb.GetPageRequest{Volume: 1, Pg: 0, Page: page, ReadLsn: 3000})
		if err != nil {
			t.Fatal(err)
		}
		if resp.PageLsn != last || resp.Data[0] != byte(last) {
			t.Fatalf("page %d after the restart: LSN %d, first byte %d; want LSN %d's image", page, resp.PageLsn, resp.Data[0], last)
		}
	}
}
