package storage

import (
	"bytes"
	"context"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
	"github.com/borealis-db/borealis/internal/wait"
)

const (
	hydPageSize = 4096
	hydPages    = 1024
	hydPGPages  = 64 // pages written
)

// hydNode is an in-process node on a fixed loopback address, so that it
// can be closed and opened again where its peers expect it.
type hydNode struct {
	t    *testing.T
	id   string
	dir  string
	addr string
	n    *Node
	c    pb.StorageClient
	conn *grpc.ClientConn
	// tune, if set, adjusts the node's configuration before each open.
	tune func(*Config)
}

func reserveAddr(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

func newHydNode(t *testing.T, id string) *hydNode {
	return newTunedHydNode(t, id, nil)
}

// newTunedHydNode is newHydNode with tune applied to the node's
// configuration at each open.
func newTunedHydNode(t *testing.T, id string, tune func(*Config)) *hydNode {
	h := &hydNode{t: t, id: id, dir: t.TempDir(), addr: reserveAddr(t), tune: tune}
	h.open()
	t.Cleanup(h.close)
	return h
}

func (h *hydNode) open() {
	h.t.Helper()
	cfg := Config{ID: h.id, AZ: "a", Dir: h.dir, GossipInterval: 20 * time.Millisecond, MaterializeInterval: 10 * time.Millisecond}
	if h.tune != nil {
		h.tune(&cfg)
	}
	n, err := Open(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	var lis net.Listener
	wait.For(h.t, 10*time.Second, "the node's address to be free", func() bool {
		lis, err = net.Listen("tcp", h.addr)
		return err == nil
	})
	go n.Serve(lis)
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		h.t.Fatal(err)
	}
	h.n, h.c, h.conn = n, pb.NewStorageClient(conn), conn
}

func (h *hydNode) close() {
	if h.n != nil {
		h.conn.Close()
		h.n.Close()
		h.n = nil
	}
}

func (h *hydNode) member() *pb.Member { return &pb.Member{NodeId: h.id, Az: "a", Addr: h.addr} }

func hydSpec(epoch uint64, sets ...[]*pb.Member) *pb.SegmentSpec {
	spec := &pb.SegmentSpec{Volume: 1, Pg: 0, PageSize: hydPageSize, PagesPerPg: hydPages, MembershipEpoch: epoch}
	for _, set := range sets {
		spec.MemberSets = append(spec.MemberSets, &pb.MemberSet{Members: set})
	}
	return spec
}

// hydWriter writes volume 1 PG 0 as a writer would: images and diffs of
// pages 1..hydPGPages, to every node it is given, telling the read point
// and retain LSN so that the nodes materialize and collect.
type hydWriter struct {
	t    *testing.T
	last uint64
	// holdLog: the writes tell no newer retain LSN, so that the nodes keep
	// the records written from then on.
	holdLog bool
}

func (w *hydWriter) write(spec *pb.SegmentSpec, k int, to ...*hydNode) {
	w.t.Helper()
	raw := make([][]byte, k)
	prev := w.last
	for i := range raw {
		lsn := prev + 1
		page := 1 + lsn%hydPGPages
		r := redo.Record{Volume: 1, PG: 0, Page: page, LSN: lsn, PrevLSN: prev, Epoch: 1, CPL: true}
		if lsn <= hydPGPages || lsn%3 != 0 {
			img := make([]byte, hydPageSize)
			for j := range img {
				img[j] = byte(lsn) + byte(j*7)
			}
			r.Kind, r.Image = redo.KindImage, img
		} else {
			r.Kind, r.Ranges = redo.KindDiff, []redo.Range{{Offset: uint32(lsn % 4000), Data: []byte{byte(lsn), 1, 2, 3}}}
		}
		raw[i] = r.Encode()
		prev = lsn
	}
	retain := prev
	if w.holdLog {
		retain = 0
	}
	req := &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 1, MinReadPoint: prev, Vdl: prev, Declare: []*pb.SegmentSpec{spec},
		Batches: []*pb.SegmentBatch{{Pg: 0, Records: raw, RetainLsn: retain, MembershipEpoch: spec.MembershipEpoch}}}
	for _, h := range to {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := h.c.Append(ctx)
		if err != nil {
			w.t.Fatal(err)
		}
		if err := s.Send(req); err != nil {
			w.t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			w.t.Fatalf("append to %s: %v", h.id, err)
		}
		cancel()
	}
	w.last = prev
}

func segInfo(t *testing.T, h *hydNode) *pb.SegmentInfoResponse {
	t.Helper()
	in, err := h.c.SegmentInfo(context.Background(), &pb.SegmentInfoRequest{Volume: 1, Pg: 0})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func declare(t *testing.T, h *hydNode, spec *pb.SegmentSpec) *pb.DeclaredSegment {
	t.Helper()
	resp, err := h.c.Declare(context.Background(), &pb.DeclareRequest{Specs: []*pb.SegmentSpec{spec}})
	if err != nil {
		t.Fatalf("declare to %s: %v", h.id, err)
	}
	return resp.Segments[0]
}

// waitCollectedTo waits until h has folded and collected its log up to lsn:
// what a peer copies from it must then come from its pages.
func waitCollectedTo(t *testing.T, h *hydNode, lsn uint64) {
	wait.For(t, 30*time.Second, "the source to materialize and collect its log", func() bool {
		in := segInfo(t, h)
		return in.MaterializedLsn >= lsn && in.LogFloor >= lsn
	})
}

// waitHydrated polls Declare, as the control plane does, until h's segment
// is no longer hydrating and is complete to scl.
func waitHydrated(t *testing.T, h *hydNode, spec *pb.SegmentSpec, scl uint64) *pb.DeclaredSegment {
	var d *pb.DeclaredSegment
	wait.For(t, 60*time.Second, "the hydration to complete", func() bool {
		d = declare(t, h, spec)
		return !d.Hydrating && d.Scl >= scl
	})
	return d
}

// samePages checks that b serves every written page as a does, at read
// point lsn.
func samePages(t *testing.T, a, b *hydNode, lsn uint64) {
	t.Helper()
	for page := uint64(1); page <= hydPGPages; page++ {
		req := &pb.GetPageRequest{Volume: 1, Pg: 0, Page: page, ReadLsn: lsn}
		pa, err := a.c.GetPage(context.Background(), req)
		if err != nil {
			t.Fatalf("%s page %d: %v", a.id, page, err)
		}
		pb_, err := b.c.GetPage(context.Background(), req)
		if err != nil {
			t.Fatalf("%s page %d: %v", b.id, page, err)
		}
		if pa.PageLsn != pb_.PageLsn || !bytes.Equal(pa.Data, pb_.Data) {
			t.Fatalf("page %d at LSN %d: %s has LSN %d, %s has LSN %d (same bytes: %v)", page, lsn, a.id, pa.PageLsn, b.id, pb_.PageLsn, bytes.Equal(pa.Data, pb_.Data))
		}
	}
}

func cloneSpec(s *pb.SegmentSpec) *pb.SegmentSpec { return proto.Clone(s).(*pb.SegmentSpec) }

func smallChunks(t *testing.T) {
	old := hydrateAskChunkBytes
	hydrateAskChunkBytes = 4 * hydPageSize
	t.Cleanup(func() { hydrateAskChunkBytes = old })
}

// TestHydrateFromAPeer: s1 holds the PG with its log collected; s2 joins
// by a membership change, declared with hydrate. Until its copy is in it
// refuses reads and reports no SCL; the writer's records that reach it
// meanwhile are kept; then it serves every page as s1 does, at the same
// read points, and its SCL reaches s1's. A chunk damaged in transit is
// refused and fetched again from its cursor.
func TestHydrateFromAPeer(t *testing.T) {
	smallChunks(t)
	a, b := newHydNode(t, "s1"), newHydNode(t, "s2")
	w := &hydWriter{t: t}
	old := hydSpec(1, []*pb.Member{a.member()})
	for range 10 {
		w.write(old, 40, a)
	}
	waitCollectedTo(t, a, w.last)
	base := w.last

	var served []*pb.HydrateRequest
	var servedMu sync.Mutex
	serve := func(req *pb.HydrateRequest) {
		if req.Release {
			return
		}
		servedMu.Lock()
		served = append(served, req)
		servedMu.Unlock()
	}
	a.n.hooks.hydrateServe.Store(&serve)
	var chunks atomic.Int32
	corrupt := func(c *pb.HydrateChunk) {
		if chunks.Add(1) == 2 && len(c.Pages) > 0 {
			c.Pages[0].Data[100] ^= 0xff
		}
	}
	b.n.hooks.hydrateChunk.Store(&corrupt)
	hold, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	stored := func(*seg, hydrateState) {
		once.Do(func() {
			close(hold)
			<-release
		})
	}
	b.n.hooks.hydrateStored.Store(&stored)

	change := hydSpec(2, []*pb.Member{a.member()}, []*pb.Member{a.member(), b.member()})
	if d := declare(t, a, change); d.Hydrating || d.MembershipEpoch != 2 {
		t.Fatalf("s1 after the change: %+v", d)
	}
	joining := cloneSpec(change)
	joining.Hydrate = true
	d := declare(t, b, joining)
	if !d.Hydrating || d.Scl != 0 {
		t.Fatalf("s2 declared with hydrate: %+v", d)
	}
	<-hold
	// Mid-copy: no reads, no SCL; the writer's records are taken.
	w.write(change, 5, a, b)
	if _, err := b.c.GetPage(context.Background(), &pb.GetPageRequest{Volume: 1, Pg: 0, Page: 1, ReadLsn: base}); ReasonOf(err) != pb.Reason_SEGMENT_BEHIND {
		t.Fatalf("read from a hydrating segment: %v, want SEGMENT_BEHIND", err)
	}
	if d := declare(t, b, joining); !d.Hydrating || d.Scl != 0 || d.Highest != w.last || d.BytesTotal != hydPGPages*hydPageSize || d.BytesCopied == 0 {
		t.Fatalf("s2 mid-copy: %+v", d)
	}
	scls, err := b.c.SegmentSCLs(context.Background(), &pb.SegmentSCLsRequest{Volume: 1})
	if err != nil || len(scls.Segments) != 1 || !scls.Segments[0].Hydrating {
		t.Fatalf("s2's SegmentSCLs mid-copy: %v, %v", scls, err)
	}
	close(release)
	w.write(change, 5, a, b)

	d = waitHydrated(t, b, joining, w.last)
	if d.BytesCopied != hydPGPages*hydPageSize || d.BytesTotal != d.BytesCopied {
		t.Fatalf("s2 copied %d of %d bytes, want %d", d.BytesCopied, d.BytesTotal, hydPGPages*hydPageSize)
	}
	if got := b.n.stats.hydrateBadChunks.Load(); got != 1 {
		t.Fatalf("%d chunks refused, want the one damaged", got)
	}
	servedMu.Lock()
	if len(served) < 2 || served[1].BaseLsn != base || served[1].AfterPage == 0 {
		t.Fatalf("after the damaged chunk, s1 was asked %v; want the same copy again from the last stored page", served)
	}
	servedMu.Unlock()
	samePages(t, a, b, w.last)
	// From now on s2 is a member like any: it takes writes and gossips.
	w.write(change, 20, a, b)
	samePages(t, a, b, w.last)
	if got := b.n.stats.repairsCompleted.Load(); got != 1 {
		t.Fatalf("repairs completed %d", got)
	}
	// Declaring it again with hydrate starts nothing.
	if d := declare(t, b, joining); d.Hydrating {
		t.Fatalf("a repeated declaration with hydrate restarted the copy: %+v", d)
	}
}

// TestHydrateResumesAfterARestart: the copying node closes mid-copy and
// opens again; it resumes the same copy from the last chunk it stored.
func TestHydrateResumesAfterARestart(t *testing.T) {
	smallChunks(t)
	a, b := newHydNode(t, "s1"), newHydNode(t, "s2")
	w := &hydWriter{t: t}
	old := hydSpec(1, []*pb.Member{a.member()})
	for range 5 {
		w.write(old, 40, a)
	}
	waitCollectedTo(t, a, w.last)
	base := w.last

	var served []*pb.HydrateRequest
	var servedMu sync.Mutex
	serve := func(req *pb.HydrateRequest) {
		if req.Release {
			return
		}
		servedMu.Lock()
		served = append(served, req)
		servedMu.Unlock()
	}
	a.n.hooks.hydrateServe.Store(&serve)
	stopped := make(chan hydrateState)
	var count atomic.Int32
	bn := b.n
	stored := func(_ *seg, st hydrateState) {
		if count.Add(1) == 3 {
			stopped <- st
			<-bn.stop
		}
	}
	b.n.hooks.hydrateStored.Store(&stored)

	change := hydSpec(2, []*pb.Member{a.member()}, []*pb.Member{a.member(), b.member()})
	declare(t, a, change)
	joining := cloneSpec(change)
	joining.Hydrate = true
	declare(t, b, joining)
	st := <-stopped
	b.close()
	if st.Cursor == 0 || st.Base != base || st.PagesDone {
		t.Fatalf("progress when s2 closed: %+v", st)
	}
	w.write(change, 5, a)

	b.open()
	d := waitHydrated(t, b, joining, w.last)
	servedMu.Lock()
	last := served[len(served)-1]
	if len(served) != 2 || last.BaseLsn != base || last.AfterPage != st.Cursor {
		t.Fatalf("s1 was asked %v; want the copy at %d resumed after page %d", served, base, st.Cursor)
	}
	servedMu.Unlock()
	if d.BytesCopied != hydPGPages*hydPageSize {
		t.Fatalf("s2 copied %d bytes, want %d", d.BytesCopied, hydPGPages*hydPageSize)
	}
	samePages(t, a, b, w.last)
}

// TestRehydrateInPlace: a member whose node comes back with an empty
// directory is declared again with hydrate and copies its PG from a peer
// whose log no longer holds what it lacks.
func TestRehydrateInPlace(t *testing.T) {
	a, b := newHydNode(t, "s1"), newHydNode(t, "s2")
	w := &hydWriter{t: t}
	spec := hydSpec(1, []*pb.Member{a.member(), b.member()})
	for range 5 {
		w.write(spec, 40, a, b)
	}
	waitCollectedTo(t, a, w.last)
	b.close()
	if err := os.RemoveAll(b.dir); err != nil {
		t.Fatal(err)
	}
	b.open()
	again := cloneSpec(spec)
	again.Hydrate = true
	if d := declare(t, b, again); !d.Hydrating {
		t.Fatalf("the emptied node declared with hydrate: %+v", d)
	}
	waitHydrated(t, b, again, w.last)
	samePages(t, a, b, w.last)
}

// TestHydrateFromAnotherSourceWhenTheSourceDies: the source closes
// mid-copy; the copier starts a new copy from the other complete peer,
// replacing the pages of the first.
func TestHydrateFromAnotherSourceWhenTheSourceDies(t *testing.T) {
	smallChunks(t)
	a, c, b := newHydNode(t, "s1"), newHydNode(t, "s3"), newHydNode(t, "s2")
	w := &hydWriter{t: t}
	old := hydSpec(1, []*pb.Member{a.member(), c.member()})
	for range 5 {
		w.write(old, 40, a, c)
	}
	waitCollectedTo(t, a, w.last)
	waitCollectedTo(t, c, w.last)

	source, proceed := make(chan string), make(chan struct{})
	var count atomic.Int32
	stored := func(_ *seg, st hydrateState) {
		if count.Add(1) == 3 {
			source <- st.Source
			<-proceed
		}
	}
	b.n.hooks.hydrateStored.Store(&stored)
	change := hydSpec(2, []*pb.Member{a.member(), c.member()}, []*pb.Member{a.member(), c.member(), b.member()})
	declare(t, a, change)
	declare(t, c, change)
	joining := cloneSpec(change)
	joining.Hydrate = true
	declare(t, b, joining)
	first := <-source
	dead, live := a, c
	if first == c.id {
		dead, live = c, a
	}
	dead.close()
	close(proceed)
	w.write(change, 5, live, b)

	d := waitHydrated(t, b, joining, w.last)
	if got := b.n.segment(1, 0).hyd.Source; got != live.id {
		t.Fatalf("hydration done from %s, want %s", got, live.id)
	}
	if d.BytesCopied != hydPGPages*hydPageSize {
		t.Fatalf("s2 holds %d bytes of the new copy, want %d", d.BytesCopied, hydPGPages*hydPageSize)
	}
	samePages(t, live, b, w.last)
}

// TestHydrateCopiesAgainWhenTheLogIsGone: the source restarts after the
// pages were copied, forgetting the copy and its hold on the log, and
// collects the log after the copy; the copier then copies the pages again
// at a newer base rather than wait for records no peer keeps.
func TestHydrateCopiesAgainWhenTheLogIsGone(t *testing.T) {
	smallChunks(t)
	a, b := newHydNode(t, "s1"), newHydNode(t, "s2")
	w := &hydWriter{t: t}
	old := hydSpec(1, []*pb.Member{a.member()})
	for range 5 {
		w.write(old, 40, a)
	}
	waitCollectedTo(t, a, w.last)
	base := w.last

	copied, proceed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	stored := func(_ *seg, st hydrateState) {
		if st.PagesDone {
			once.Do(func() {
				close(copied)
				<-proceed
			})
		}
	}
	b.n.hooks.hydrateStored.Store(&stored)
	change := hydSpec(2, []*pb.Member{a.member()}, []*pb.Member{a.member(), b.member()})
	declare(t, a, change)
	joining := cloneSpec(change)
	joining.Hydrate = true
	declare(t, b, joining)
	<-copied
	a.close()
	a.open()
	w.write(change, 50, a)
	waitCollectedTo(t, a, w.last)
	close(proceed)

	waitHydrated(t, b, joining, w.last)
	st := b.n.segment(1, 0).hyd
	if st.Base <= base || st.Base < w.last {
		t.Fatalf("hydration done with the copy at %d; want a new one at %d or above (the first was at %d)", st.Base, w.last, base)
	}
	samePages(t, a, b, w.last)
}
