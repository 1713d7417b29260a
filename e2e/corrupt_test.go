package e2e

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/wait"
)

// A storage node's files damaged while it is down: s1 is SIGKILLed, bytes
// in the middle of its largest table file, or of its log while nothing was
// flushed (page versions and records), are flipped, and it is started
// again. The damage is detected (by Pebble's
// block checksums or the items' CRC32C, when the node opens, reads or
// scrubs), the store is moved aside and every segment is rebuilt from its
// peers in place. Throughout, no page s1 serves differs from what another
// member serves at the same LSN, the SQL rows are those written, and the
// integrity check passes.
func TestRepairDamagedStoreFiles(t *testing.T) {
	rc := startRepairCluster(t, "--nodes-per-az", "2", "--repair-after", "10m")
	rc.fill(1 << 20)
	before := rc.query(t, "SELECT count(*), total(k), group_concat(hex(substr(v, 1, 4)), '') FROM fill")
	s1 := rc.storageNode("s1")
	// The largest of s1's table files once its idle store flushed, or else
	// its largest log: either holds page versions and records.
	var damaged string
	wait.For(t, 60*time.Second, "s1 to hold its data in a table or log file", func() bool {
		damaged = largestFile(t, s1.Dir, ".sst")
		if st, err := os.Stat(damaged); damaged != "" && err == nil && st.Size() > 256<<10 {
			return true
		}
		damaged = largestFile(t, s1.Dir, ".log")
		st, err := os.Stat(damaged)
		return damaged != "" && err == nil && st.Size() > 256<<10
	})
	t.Logf("damaging %s", damaged)
	held := rc.holding("s1")
	rc.kill("s1")
	flipBytes(t, damaged)
	rc.restart("s1")

	// Every read of s1 either fails or returns what another member serves.
	pgs := rc.pgs()
	const pagesPerPG = 16 // 64 KiB PGs of 4 KiB pages
	compared, refused := 0, 0
	check := func() {
		for _, p := range pgs {
			var s1Addr, other string
			for _, s := range p.Segments {
				if s.Node == "s1" {
					s1Addr = s.Addr
				} else if other == "" {
					other = s.Addr
				}
			}
			if s1Addr == "" {
				continue
			}
			for page := uint64(p.Pg)*pagesPerPG + 1; page <= uint64(p.Pg+1)*pagesPerPG; page++ {
				at := rc.segment(other, p.Pg).scl
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				want, err := storageAt(t, other).GetPage(ctx, &pb.GetPageRequest{Volume: rc.vol, Pg: p.Pg, Page: page, ReadLsn: at, PgTailLsn: at})
				if err != nil {
					cancel()
					continue
				}
				got, err := storageAt(t, s1Addr).GetPage(ctx, &pb.GetPageRequest{Volume: rc.vol, Pg: p.Pg, Page: page, ReadLsn: at, PgTailLsn: at})
				cancel()
				if err != nil {
					refused++
					continue
				}
				compared++
				if got.PageLsn != want.PageLsn || !bytes.Equal(got.Data, want.Data) {
					t.Fatalf("PG %d page %d read at LSN %d: s1 serves the version of LSN %d, its peer that of LSN %d (same bytes: %v)", p.Pg, page, at, got.PageLsn, want.PageLsn, bytes.Equal(got.Data, want.Data))
				}
			}
		}
	}
	deadline := time.Now().Add(3 * time.Minute)
	for rc.unrepaired() != "" {
		check()
		if time.Now().After(deadline) {
			t.Fatalf("s1 was not rebuilt within 3 minutes: %s", rc.unrepaired())
		}
		time.Sleep(200 * time.Millisecond)
	}
	check()
	t.Logf("s1 rebuilt its %d PGs; %d page reads of s1 compared equal to a peer's, %d refused meanwhile", len(held), compared, refused)
	if compared == 0 {
		t.Fatal("no page read of s1 was compared")
	}
	after := rc.query(t, "SELECT count(*), total(k), group_concat(hex(substr(v, 1, 4)), '') FROM fill")
	if len(after) != 1 || len(before) != 1 || after[0][0] != before[0][0] || after[0][1] != before[0][1] || after[0][2] != before[0][2] {
		t.Fatalf("the rows changed: %v before, %v after", before[0][:2], after[0][:2])
	}
	rc.integrityOK(t)
	aside, _ := filepath.Glob(filepath.Join(s1.Dir, "damaged-*"))
	logged, _ := os.ReadFile(s1.Log)
	var said []string
	for _, line := range strings.Split(string(logged), "\n") {
		if strings.Contains(line, "damaged") || strings.Contains(line, "corrupt") {
			said = append(said, line)
		}
	}
	t.Logf("moved aside: %v; s1 logged:\n%s", aside, strings.Join(said, "\n"))
}

// largestFile is the largest file under dir whose name ends in ext, or "".
func largestFile(t *testing.T, dir, ext string) string {
	t.Helper()
	var best string
	var size int64
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(path) != ext {
			return nil
		}
		if st, err := d.Info(); err == nil && st.Size() > size {
			best, size = path, st.Size()
		}
		return nil
	})
	return best
}

// flipBytes inverts 64 bytes in the middle of what path holds, and 64 more
// at three quarters, where page versions and records lie (a log's zeros kept
// ahead of its records do not count).
func flipBytes(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	end := len(data)
	for end > 0 && data[end-1] == 0 {
		end--
	}
	if end < 1<<10 {
		t.Fatalf("%s holds only %d bytes", path, end)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, at := range []int{end / 2, end * 3 / 4} {
		buf := slices.Clone(data[at : at+64])
		for i := range buf {
			buf[i] ^= 0xff
		}
		if _, err := f.WriteAt(buf, int64(at)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	t.Logf("flipped 128 bytes of the %d that %s holds", end, path)
}
