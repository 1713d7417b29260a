package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/storage"
)

// testLogger discards logs unless VOLUME_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("VOLUME_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// cluster is six in-process storage nodes in AZs a, a, b, b, c, c.
type cluster struct {
	t       testing.TB
	members []Member
	dirs    []string
	mu      sync.Mutex
	nodes   []*storage.Node
	// tune, if set, adjusts node i's configuration each time it opens.
	tune func(i int, cfg *storage.Config)
}

func startCluster(t testing.TB) *cluster {
	return startClusterWith(t, nil)
}

// startClusterWith is startCluster with tune applied to each node's
// configuration.
func startClusterWith(t testing.TB, tune func(i int, cfg *storage.Config)) *cluster {
	t.Helper()
	cl := &cluster{t: t, tune: tune}
	azs := []string{"a", "a", "b", "b", "c", "c"}
	for i, az := range azs {
		dir := t.TempDir()
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		m := Member{NodeID: fmt.Sprintf("s%d", i), AZ: az, Addr: lis.Addr().String()}
		cl.members = append(cl.members, m)
		cl.dirs = append(cl.dirs, dir)
		cl.nodes = append(cl.nodes, nil)
		cl.serve(i, lis)
	}
	t.Cleanup(func() {
		for i := range cl.nodes {
			cl.stop(i)
		}
	})
	return cl
}

func (cl *cluster) serve(i int, lis net.Listener) {
	cl.t.Helper()
	m := cl.members[i]
	cfg := storage.Config{ID: m.NodeID, AZ: m.AZ, Dir: cl.dirs[i], Logger: testLogger()}
	if cl.tune != nil {
		cl.tune(i, &cfg)
	}
	n, err := storage.Open(cfg)
	if err != nil {
		cl.t.Fatalf("open node %s: %v", m.NodeID, err)
	}
	cl.mu.Lock()
	cl.nodes[i] = n
	cl.mu.Unlock()
	go n.Serve(lis)
}

// stop closes node i (if running).
func (cl *cluster) stop(i int) {
	cl.mu.Lock()
	n := cl.nodes[i]
	cl.nodes[i] = nil
	cl.mu.Unlock()
	if n != nil {
		if err := n.Close(); err != nil {
			cl.t.Logf("close %s: %v", cl.members[i].NodeID, err)
		}
	}
}

// restart reopens node i on its old address and directory.
func (cl *cluster) restart(i int) {
	cl.t.Helper()
	var lis net.Listener
	var err error
	for range 50 {
		lis, err = net.Listen("tcp", cl.members[i].Addr)
		if err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		cl.t.Fatalf("relisten %s: %v", cl.members[i].Addr, err)
	}
	cl.serve(i, lis)
}

func (cl *cluster) placement(pg uint32) (Membership, error) {
	return OneSet(append([]Member(nil), cl.members...)), nil
}

func (cl *cluster) open(t *testing.T, mod func(*Config)) *Client {
	t.Helper()
	cfg := Config{
		VolumeID:     7,
		Epoch:        1,
		PageSize:     4096,
		PagesPerPG:   16,
		Placement:    cl.placement,
		WriteTimeout: 5 * time.Second,
		Logger:       testLogger(),
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// page returns a page image filled with a pattern derived from (page, v).
func pageImage(page uint64, v int) []byte {
	b := make([]byte, 4096)
	for i := range b {
		b[i] = byte(int(page)*31 + v*7 + i/512)
	}
	// a distinct stamp so diffs are small but real
	copy(b[100:], fmt.Sprintf("page %d version %d", page, v))
	return b
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustRead(t *testing.T, c *Client, page, lsn uint64, want []byte) {
	t.Helper()
	got, err := c.ReadPage(ctxT(t, 10*time.Second), page, lsn)
	if err != nil {
		t.Fatalf("read page %d at %d: %v", page, lsn, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read page %d at %d: wrong content (got %q..., want %q...)", page, lsn, got[100:124], want[100:124])
	}
}

func TestCommitReadBackTwoPGs(t *testing.T) {
	cl := startCluster(t)
	c := cl.open(t, nil)
	ctx := ctxT(t, 30*time.Second)

	pages := []uint64{1, 2, 5, 16, 17, 18, 32}
	cur := map[uint64][]byte{}
	// MTR 1: new pages in both PGs (full images).
	var mtr []PageWrite
	for _, p := range pages {
		cur[p] = pageImage(p, 0)
		mtr = append(mtr, PageWrite{Page: p, New: cur[p]})
	}
	lsn1, err := c.Commit(ctx, mtr)
	if err != nil {
		t.Fatal(err)
	}
	if lsn1 != uint64(len(pages)) || c.VDL() < lsn1 {
		t.Fatalf("lsn %d vdl %d", lsn1, c.VDL())
	}
	// A few diff MTRs touching both PGs.
	for v := 1; v <= 3; v++ {
		mtr = mtr[:0]
		for _, p := range pages[v%2:] {
			nw := pageImage(p, v)
			mtr = append(mtr, PageWrite{Page: p, Old: cur[p], New: nw})
			cur[p] = nw
		}
		if _, err := c.Commit(ctx, mtr); err != nil {
			t.Fatal(err)
		}
	}
	vdl := c.VDL()
	for _, p := range pages {
		mustRead(t, c, p, vdl, cur[p])
	}
	// An untouched page of a written PG reads as zeros.
	mustRead(t, c, 3, vdl, make([]byte, 4096))
	// A page of a PG never written reads as zeros too.
	mustRead(t, c, 16*5+1, vdl, make([]byte, 4096))

	for pg := uint32(0); pg < 2; pg++ {
		scls := c.SegmentSCLs(pg)
		n := 0
		for _, s := range scls {
			if s > 0 {
				n++
			}
		}
		if n < 4 {
			t.Fatalf("PG %d: SCLs %v", pg, scls)
		}
	}
	st := c.Stats()
	if st.Commits != 4 || st.RecordsSent == 0 || st.BytesSent == 0 || st.BytesReceived == 0 {
		t.Fatalf("stats %+v", st)
	}
	t.Logf("stats %+v", st)
}

func TestReadAtOldLSN(t *testing.T) {
	cl := startCluster(t)
	c := cl.open(t, nil)
	ctx := ctxT(t, 30*time.Second)

	// Old versions are kept only for pinned read points: pin the oldest.
	pin0, release0 := c.PinReadPoint()
	defer release0()
	if pin0 != 0 {
		t.Fatalf("first read point %d", pin0)
	}
	v := []([]byte){pageImage(3, 0), pageImage(3, 1), pageImage(3, 2)}
	lsn0, err := c.Commit(ctx, []PageWrite{{Page: 3, New: v[0]}})
	if err != nil {
		t.Fatal(err)
	}
	// Other pages in between, so the LSNs of page 3 are not adjacent.
	if _, err := c.Commit(ctx, []PageWrite{{Page: 20, New: pageImage(20, 0)}, {Page: 4, New: pageImage(4, 0)}}); err != nil {
		t.Fatal(err)
	}
	lsn1, err := c.Commit(ctx, []PageWrite{{Page: 3, Old: v[0], New: v[1]}})
	if err != nil {
		t.Fatal(err)
	}
	lsn2, err := c.Commit(ctx, []PageWrite{{Page: 3, Old: v[1], New: v[2]}, {Page: 4, Old: pageImage(4, 0), New: pageImage(4, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	mustRead(t, c, 3, lsn0, v[0])
	mustRead(t, c, 3, lsn1-1, v[0])
	mustRead(t, c, 3, lsn1, v[1])
	mustRead(t, c, 3, lsn2, v[2])
	mustRead(t, c, 3, c.VDL(), v[2])
	mustRead(t, c, 3, lsn0-1, make([]byte, 4096))
	mustRead(t, c, 4, lsn1, pageImage(4, 0))

	// A pinned read point keeps reading the old version.
	rp, release := c.PinReadPoint()
	defer release()
	if rp != c.VDL() {
		t.Fatalf("pin %d vdl %d", rp, c.VDL())
	}
	if _, err := c.Commit(ctx, []PageWrite{{Page: 3, Old: v[2], New: pageImage(3, 3)}}); err != nil {
		t.Fatal(err)
	}
	mustRead(t, c, 3, rp, v[2])
	mustRead(t, c, 3, c.VDL(), pageImage(3, 3))
	if got := c.mrp.Load(); got != 0 {
		t.Fatalf("min read point %d, want oldest pinned 0", got)
	}
	release0()
	if got := c.mrp.Load(); got != rp {
		t.Fatalf("min read point %d, want pinned %d", got, rp)
	}
	release()
	if got := c.mrp.Load(); got != c.VDL() {
		t.Fatalf("min read point %d after release, want VDL %d", got, c.VDL())
	}
}

func TestConcurrentCommitters(t *testing.T) {
	cl := startCluster(t)
	c := cl.open(t, nil)
	ctx := ctxT(t, 60*time.Second)

	const G, N = 32, 50
	var wg sync.WaitGroup
	errc := make(chan error, G)
	final := make([][]byte, G)
	for g := range G {
		wg.Go(func() {
			page := uint64(g + 1) // pages 1..32: two PGs
			var old []byte
			for i := range N {
				nw := pageImage(page, i)
				// every MTR also touches a shared-free second page of its own
				lsn, err := c.Commit(ctx, []PageWrite{{Page: page, Old: old, New: nw}})
				if err != nil {
					errc <- fmt.Errorf("goroutine %d commit %d: %w", g, i, err)
					return
				}
				if c.VDL() < lsn {
					errc <- fmt.Errorf("commit %d returned before VDL %d", lsn, c.VDL())
					return
				}
				old = nw
			}
			final[g] = old
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	vdl := c.VDL()
	if vdl != G*N {
		t.Fatalf("VDL %d, want %d", vdl, G*N)
	}
	for g := range G {
		mustRead(t, c, uint64(g+1), vdl, final[g])
	}
	st := c.Stats()
	t.Logf("stats %+v (records per request %.1f)", st, float64(st.RecordsSent)/float64(st.Requests))
}

func TestNodeDownCommitsContinue(t *testing.T) {
	cl := startCluster(t)
	c := cl.open(t, nil)
	ctx := ctxT(t, 60*time.Second)

	var old1, old2 []byte
	commit := func(i int) {
		t.Helper()
		n1, n2 := pageImage(1, i), pageImage(17, i)
		if _, err := c.Commit(ctx, []PageWrite{{Page: 1, Old: old1, New: n1}, {Page: 17, Old: old2, New: n2}}); err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
		old1, old2 = n1, n2
	}
	for i := range 20 {
		commit(i)
	}
	cl.stop(0)
	start := time.Now()
	for i := 20; i < 60; i++ {
		commit(i)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("40 commits with a node down took %s", d)
	}
	// A second node down (another AZ) still leaves 4.
	cl.stop(2)
	for i := 60; i < 80; i++ {
		commit(i)
	}
	mustRead(t, c, 1, c.VDL(), old1)
	mustRead(t, c, 17, c.VDL(), old2)

	// Bring node 0 back: it reconnects, must not be sent records already
	// durable elsewhere, and catches up by gossip.
	cl.restart(0)
	for i := 80; i < 90; i++ {
		commit(i)
	}
	c.mu.Lock()
	tail := c.pgs[0].last // PG 0's last LSN
	c.mu.Unlock()
	deadline := time.Now().Add(15 * time.Second)
	for {
		scl := c.SegmentSCLs(0)["s0"]
		if scl >= tail {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("s0 did not catch up: SCL %d, PG tail %d (stats %+v)", scl, tail, c.Stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
	st := c.Stats()
	if st.DroppedRecords == 0 {
		t.Fatalf("no durable records were dropped from the dead node's queue: %+v", st)
	}
	t.Logf("stats %+v", st)
}

func TestThreeNodesDownUnavailable(t *testing.T) {
	cl := startCluster(t)
	c := cl.open(t, func(cfg *Config) { cfg.WriteTimeout = time.Second })
	ctx := ctxT(t, 60*time.Second)

	img := pageImage(2, 0)
	if _, err := c.Commit(ctx, []PageWrite{{Page: 2, New: img}, {Page: 18, New: pageImage(18, 0)}}); err != nil {
		t.Fatal(err)
	}
	vdl := c.VDL()
	for _, i := range []int{0, 2, 4} {
		cl.stop(i)
	}
	start := time.Now()
	_, err := c.Commit(ctx, []PageWrite{{Page: 2, Old: img, New: pageImage(2, 1)}})
	var ue *UnavailableError
	if !errors.As(err, &ue) {
		t.Fatalf("commit with 3 nodes down: %v, want *UnavailableError", err)
	}
	waited := time.Since(start)
	if waited < time.Second || waited > 5*time.Second {
		t.Fatalf("failed after %s, want about WriteTimeout (1s)", waited)
	}
	if ue.PG != 0 || len(ue.Unreachable) != 3 || ue.Segments != 6 {
		t.Fatalf("error %+v", ue)
	}
	names := map[string]bool{}
	for _, m := range ue.Unreachable {
		names[m.NodeID] = true
	}
	if !names["s0"] || !names["s2"] || !names["s4"] {
		t.Fatalf("unreachable %v", ue.Unreachable)
	}
	msg := ue.Error()
	for _, want := range []string{"volume 7", "PG 0", "3 of 6 segments cannot make it durable; 3 unreachable (", "s0 " + cl.members[0].Addr} {
		if !strings.Contains(msg, want) {
			t.Fatalf("message %q lacks %q", msg, want)
		}
	}
	t.Log(msg)
	// Reads at the VDL keep working.
	mustRead(t, c, 2, vdl, img)
	mustRead(t, c, 18, vdl, pageImage(18, 0))

	// When a node returns the stuck commit becomes durable.
	cl.restart(2)
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := c.WaitDurable(ctx, ue.LSN)
		if err == nil {
			break
		}
		if !errors.As(err, &ue) || time.Now().After(deadline) {
			t.Fatalf("after a node returned: %v", err)
		}
	}
	mustRead(t, c, 2, c.VDL(), pageImage(2, 1))
}

func TestFenced(t *testing.T) {
	cl := startCluster(t)
	a := cl.open(t, nil)
	ctx := ctxT(t, 30*time.Second)
	img := pageImage(1, 0)
	lsn, err := a.Commit(ctx, []PageWrite{{Page: 1, New: img}})
	if err != nil {
		t.Fatal(err)
	}
	b := cl.open(t, func(cfg *Config) {
		cfg.Epoch = 2
		cfg.BaseLSN = lsn
		cfg.PGTails = map[uint32]uint64{0: lsn}
	})
	if _, err := b.Commit(ctx, []PageWrite{{Page: 1, Old: img, New: pageImage(1, 1)}}); err != nil {
		t.Fatal(err)
	}
	_, err = a.Commit(ctx, []PageWrite{{Page: 1, Old: img, New: pageImage(1, 2)}})
	if !errors.Is(err, ErrFenced) {
		t.Fatalf("old writer: %v, want ErrFenced", err)
	}
	if _, err := a.Submit(ctx, []PageWrite{{Page: 2, New: img}}); !errors.Is(err, ErrFenced) {
		t.Fatalf("old writer after fencing: %v", err)
	}
	t.Log(err)
	mustRead(t, b, 1, b.VDL(), pageImage(1, 1))
}

func TestAllocationLimit(t *testing.T) {
	cl := startCluster(t)
	c := cl.open(t, func(cfg *Config) { cfg.LAL = 4; cfg.WriteTimeout = time.Second })
	ctx := ctxT(t, 30*time.Second)
	big := make([]PageWrite, 5)
	for i := range big {
		big[i] = PageWrite{Page: uint64(i + 1), New: pageImage(uint64(i+1), 0)}
	}
	if _, err := c.Submit(ctx, big); err == nil || !strings.Contains(err.Error(), "allocation limit") {
		t.Fatal("MTR larger than LAL accepted")
	}
	// Many pipelined submits: never more than LAL beyond the VDL.
	var last uint64
	for i := range 40 {
		lsn, err := c.Submit(ctx, []PageWrite{{Page: uint64(i%8 + 1), New: pageImage(uint64(i%8+1), i)}})
		if err != nil {
			t.Fatal(err)
		}
		if lsn > c.VDL()+4 {
			t.Fatalf("allocated %d with VDL %d", lsn, c.VDL())
		}
		last = lsn
	}
	if err := c.WaitDurable(ctx, last); err != nil {
		t.Fatal(err)
	}
	// With 3 nodes down, Submit blocks at the limit and fails after
	// WriteTimeout.
	for _, i := range []int{1, 3, 5} {
		cl.stop(i)
	}
	var err error
	for i := range 10 {
		if _, err = c.Submit(ctx, []PageWrite{{Page: 1, New: pageImage(1, 100+i)}}); err != nil {
			break
		}
	}
	var ue *UnavailableError
	if !errors.As(err, &ue) || len(ue.Unreachable) != 3 {
		t.Fatalf("submit beyond LAL with no quorum: %v", err)
	}
}

func TestUnavailableErrorMessage(t *testing.T) {
	e := &UnavailableError{Volume: 7, PG: 0, Segments: 6, LSN: 812, Waited: 5 * time.Second,
		Unreachable: []Member{{NodeID: "s1", Addr: "127.0.0.1:7101"}, {NodeID: "s2", Addr: "127.0.0.1:7102"}, {NodeID: "s3", Addr: "127.0.0.1:7103"}}}
	want := "volume 7: PG 0 has no write quorum: 3 of 6 segments cannot make it durable; 3 unreachable (s1 127.0.0.1:7101, s2 127.0.0.1:7102, s3 127.0.0.1:7103); commit at LSN 812 not durable after 5s; it becomes durable if the segments return or catch up"
	if e.Error() != want {
		t.Fatalf("got  %q\nwant %q", e.Error(), want)
	}
	e.Unreachable = e.Unreachable[:2]
	e.PGLSN = 810
	e.Behind = []BehindSegment{{Member: Member{NodeID: "s6", Addr: "127.0.0.1:7106"}, SCL: 0, Unchanged: 41 * time.Second}}
	want = "volume 7: PG 0 has no write quorum: 3 of 6 segments cannot make it durable; 2 unreachable (s1 127.0.0.1:7101, s2 127.0.0.1:7102); 1 reachable but behind (s6 127.0.0.1:7106: SCL 0, needs 810, unchanged for 41s); commit at LSN 812 not durable after 5s; it becomes durable if the segments return or catch up"
	if e.Error() != want {
		t.Fatalf("got  %q\nwant %q", e.Error(), want)
	}
}

// BenchmarkCommit64 runs 64 concurrent committers, each on its own page
// (small diffs), against six in-process nodes.
func BenchmarkCommit64(b *testing.B) {
	cl := startCluster(b)
	c, err := Open(context.Background(), Config{VolumeID: 7, Epoch: 1, PagesPerPG: 1024, Placement: cl.placement, Logger: testLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	var next atomic.Uint64
	b.SetParallelism(64 / max(1, runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		page := next.Add(1)
		cur := make([]byte, 4096)
		first := true
		i := 0
		for pb.Next() {
			nw := bytes.Clone(cur)
			copy(nw[i%4000:], fmt.Sprintf("commit %d", i))
			i++
			var old []byte
			if !first {
				old = cur
			}
			first = false
			if _, err := c.Commit(ctx, []PageWrite{{Page: page, Old: old, New: nw}}); err != nil {
				b.Error(err)
				return
			}
			cur = nw
		}
	})
	st := c.Stats()
	b.ReportMetric(float64(st.RecordsSent)/float64(st.Requests), "records/req")
}

func TestCollectorExportsCounters(t *testing.T) {
	c := startCluster(t).open(t, nil)
	if _, err := c.Commit(context.Background(), []PageWrite{{Page: 1, New: make([]byte, c.cfg.PageSize)}}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c.Collector())
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		m := f.GetMetric()[0]
		if m.GetCounter() != nil {
			got[f.GetName()] = m.GetCounter().GetValue()
		} else {
			got[f.GetName()] = m.GetGauge().GetValue()
		}
	}
	// The commit is durable once 4 segments acked: the other two copies
	// may still be on their way, or dropped from their queues.
	if sent := got["borealis_volume_records_sent_total"]; got["borealis_volume_commits_total"] != 1 || got["borealis_volume_vdl"] < 1 || sent < 4 || sent > 6 {
		t.Fatalf("metrics %v", got)
	}
}
