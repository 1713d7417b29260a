package volume

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/storage"
	"github.com/borealis-db/borealis/internal/wait"
)

// flipFS damages what is read from table files while on is set, as a
// failing disk would.
type flipFS struct {
	vfs.FS
	on *atomic.Bool
}

func (fs flipFS) Open(name string, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.Open(name, opts...)
	if err != nil || !strings.HasSuffix(name, ".sst") {
		return f, err
	}
	return flipFile{File: f, on: fs.on}, nil
}

type flipFile struct {
	vfs.File
	on *atomic.Bool
}

func (f flipFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.File.ReadAt(p, off)
	if n > 0 && f.on.Load() {
		p[n/2] ^= 0xff
	}
	return n, err
}

// TestReadMovesOnFromACorruptSegment: a segment whose store is damaged
// where a read needs it refuses the read with SEGMENT_CORRUPT, and the
// client reads from another segment: with every store damaged each
// segment is tried and refuses; with one sound, the read is served by it.
func TestReadMovesOnFromACorruptSegment(t *testing.T) {
	var damaged [6]atomic.Bool
	cl := startClusterWith(t, func(i int, cfg *storage.Config) { cfg.FS = flipFS{FS: vfs.Default, on: &damaged[i]} })
	c := cl.open(t, nil)
	ctx := ctxT(t, 30*time.Second)
	img := pageImage(3, 0)
	lsn, err := c.Commit(ctx, []PageWrite{{Page: 3, New: img}})
	if err != nil {
		t.Fatal(err)
	}
	// Every node holds the record, materialized, in a table that no read
	// has cached: the materializer reads the page before it folds the
	// record, so the tables are rewritten after it has.
	for i, m := range cl.members {
		conn, err := grpc.NewClient(m.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		sc := pb.NewStorageClient(conn)
		wait.For(t, 10*time.Second, m.NodeID+" to hold the record", func() bool {
			in, err := sc.SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: 7, Pg: 0})
			return err == nil && in.Scl >= lsn && in.MaterializedLsn >= lsn
		})
		if err := cl.nodes[i].Compact(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range damaged {
		damaged[i].Store(true)
	}
	_, err = c.ReadPage(ctx, 3, lsn)
	var re *ReadError
	if !errors.As(err, &re) || len(re.Tried) != len(cl.members) {
		t.Fatalf("read with every store damaged: %v; want every segment tried", err)
	}
	for _, tr := range re.Tried {
		if r := storage.ReasonOf(tr.Err); r != pb.Reason_SEGMENT_CORRUPT {
			t.Fatalf("%s answered %v, want SEGMENT_CORRUPT", tr.Member.NodeID, tr.Err)
		}
	}
	damaged[4].Store(false)
	mustRead(t, c, 3, lsn, img)
}
