package sqlvfs

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/volume"
)

// BenchmarkInsertOverCommit measures, on six in-process storage nodes, the
// median latency of a one-row INSERT through SQLite and the VFS against
// that of a bare one-page volume commit measured in the same run, and
// reports their ratio: what the SQL layer adds to the quorum round trip.
//
//	go test ./internal/sqlvfs -run - -bench InsertOverCommit -benchtime 2000x
func BenchmarkInsertOverCommit(b *testing.B) {
	cl := startCluster(b)
	vc := cl.client(b, 1, 0)
	db, err := OpenDB(vc, Options{CacheMiB: 8})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Writer.Exec("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)"); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	page := make([]byte, 4096)
	old := make([]byte, 4096)
	commit := func(i int) error {
		copy(old, page)
		copy(page, fmt.Sprintf("version %d", i))
		_, err := vc.Commit(ctx, []volume.PageWrite{{Page: 100000, Old: old, New: page}})
		return err
	}
	if err := commit(0); err != nil {
		b.Fatal(err)
	}
	v := strings.Repeat("x", 100)
	insert := func(i int) error {
		_, err := db.Writer.Exec("INSERT INTO t(k, v) VALUES(?, ?)", i, v)
		return err
	}
	measure := func(f func(int) error) time.Duration {
		lat := make([]time.Duration, 0, b.N)
		for i := range b.N {
			start := time.Now()
			if err := f(i + 1); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
		slices.Sort(lat)
		return lat[len(lat)/2]
	}
	b.ResetTimer()
	c1 := measure(commit)
	ins := measure(insert)
	c2 := measure(func(i int) error { return commit(b.N + i) })
	base := (c1 + c2) / 2
	b.ReportMetric(float64(base.Microseconds()), "commit-p50-µs")
	b.ReportMetric(float64(ins.Microseconds()), "insert-p50-µs")
	b.ReportMetric(float64(ins)/float64(base), "insert/commit")
}
