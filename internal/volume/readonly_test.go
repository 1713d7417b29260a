package volume

import (
	"bytes"
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
	"github.com/borealis-db/borealis/internal/wait"
)

// redoLog is a RedoObserver that keeps what the writer's client tells it.
type redoLog struct {
	mu   sync.Mutex
	mtrs []loggedMTR
	vdl  uint64
	// bad is the first breach of the observer's contract seen.
	bad string
}

type loggedMTR struct {
	first, last uint64
	records     [][]byte
}

func (l *redoLog) Submitted(first, last uint64, records [][]byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev := uint64(0)
	if n := len(l.mtrs); n > 0 {
		prev = l.mtrs[n-1].last
	}
	if l.bad == "" && (first != prev+1 || uint64(len(records)) != last-first+1) {
		l.bad = "MTR " + itoa(first) + ".." + itoa(last) + " after " + itoa(prev)
	}
	l.mtrs = append(l.mtrs, loggedMTR{first, last, records})
}

func (l *redoLog) Durable(vdl uint64, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.bad == "" && vdl <= l.vdl {
		l.bad = "VDL " + itoa(vdl) + " after " + itoa(l.vdl)
	}
	if n := len(l.mtrs); l.bad == "" && (n == 0 || l.mtrs[n-1].last < vdl) {
		l.bad = "VDL " + itoa(vdl) + " before its MTR was submitted"
	}
	l.vdl = vdl
}

// durableAfter returns the MTRs above lsn that the VDL covers, and the VDL.
func (l *redoLog) durableAfter(lsn uint64) ([]loggedMTR, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []loggedMTR
	for _, m := range l.mtrs {
		if m.first > lsn && m.last <= l.vdl {
			out = append(out, m)
		}
	}
	return out, l.vdl
}

func itoa(v uint64) string {
	b := []byte{}
	for {
		b = append([]byte{byte('0' + v%10)}, b...)
		if v /= 10; v == 0 {
			return string(b)
		}
	}
}

// follower feeds a read-only client from a writer's redo, as a replica
// does from the writer's stream: the tails of every record, the writer's
// PG states, then the VDL.
type follower struct {
	t       *testing.T
	log     *redoLog
	w, ro   *Client
	applied uint64
}

// catchUp takes every durable MTR the replica has not applied yet.
func (f *follower) catchUp() uint64 {
	f.t.Helper()
	mtrs, vdl := f.log.durableAfter(f.applied)
	for _, m := range mtrs {
		for i, b := range m.records {
			rec, err := redo.Decode(b)
			if err != nil {
				f.t.Fatalf("record %d of MTR %d..%d: %v", i, m.first, m.last, err)
			}
			if rec.LSN != m.first+uint64(i) || rec.CPL != (rec.LSN == m.last) || uint64(rec.PG) != (rec.Page-1)/16 {
				f.t.Fatalf("record %+v in MTR %d..%d", rec, m.first, m.last)
			}
			f.ro.NoteRedo(rec.PG, rec.LSN)
		}
	}
	f.ro.NotePGStates(f.w.PGStates(vdl))
	f.ro.SetVDL(vdl)
	f.applied = vdl
	return vdl
}

// A read-only client fed the writer's redo reads every page at every read
// point it pinned exactly as the writer wrote it as of that point, across
// PGs written at different times, with pages never written and a PG never
// written reading as zeros. Its pins, reported as the writer's read floor,
// keep storage from collecting the versions it needs. The PG tails it
// learned are what let it read: a client that has only the VDL asks for
// segments complete to the read point itself, which a PG whose last record
// is older never is.
func TestReadOnlyClientReadsWhatTheWriterWrote(t *testing.T) {
	cl := startCluster(t)
	log := &redoLog{}
	w := cl.open(t, func(c *Config) { c.Redo = log })
	ro := cl.open(t, func(c *Config) { c.ReadOnly = true })
	ro.SetStreamEpoch(1)
	f := &follower{t: t, log: log, w: w, ro: ro}
	ctx := ctxT(t, 60*time.Second)
	// The replica's reports: its oldest pin is the writer's read floor.
	report := func() { w.SetReadFloor(ro.ReadFloor(time.Now(), 0), false) }

	const pages = 48 // PGs 0, 1 and 2; page 60 (PG 3) is never written
	rng := rand.New(rand.NewPCG(5, 6))
	cur := map[uint64][]byte{}
	type point struct {
		rp      uint64
		images  map[uint64][]byte
		release func()
	}
	var points []point
	for round := range 14 {
		var mtr []PageWrite
		for range 1 + rng.IntN(6) {
			var page uint64
			switch {
			case round == 13:
				page = 17 + uint64(rng.IntN(16)) // the last MTR touches PG 1 only
			case round < 5:
				page = 1 + uint64(rng.IntN(32)) // PG 2 is written from round 5
			default:
				page = 1 + uint64(rng.IntN(pages))
			}
			if dup := func() bool {
				for _, m := range mtr {
					if m.Page == page {
						return true
					}
				}
				return false
			}(); dup {
				continue
			}
			nw := pageImage(page, round)
			mtr = append(mtr, PageWrite{Page: page, Old: cur[page], New: nw})
			cur[page] = nw
		}
		if _, err := w.Commit(ctx, mtr); err != nil {
			t.Fatal(err)
		}
		f.catchUp()
		if round%3 == 1 {
			continue // a VDL applied and never pinned
		}
		rp, release := ro.PinReadPoint()
		if rp != ro.VDL() || rp != w.VDL() {
			t.Fatalf("pinned %d; replica VDL %d, writer VDL %d", rp, ro.VDL(), w.VDL())
		}
		report()
		images := map[uint64][]byte{}
		for p, img := range cur {
			images[p] = img
		}
		points = append(points, point{rp, images, release})
	}
	if log.bad != "" {
		t.Fatalf("the redo observer was told %s", log.bad)
	}
	if got, want := w.MinReadPoint(), points[0].rp; got != want {
		t.Fatalf("writer's min_read_point %d, want the replica's oldest pin %d", got, want)
	}
	// Storage materializes (and collects the versions it replaces) up to
	// the replica's oldest pin, not beyond.
	rp0 := points[0].rp
	var re *ReadError
	wait.For(t, 20*time.Second, "segments to materialize to the replica's floor", func() bool {
		for pg := uint32(0); pg <= 2; pg++ {
			for _, m := range cl.members {
				in := infoOf(t, storageClient(t, m.Addr), 7, pg)
				if in.MaterializedLsn > rp0 {
					t.Fatalf("node %s PG %d materialized to %d, above the replica's floor %d", m.NodeID, pg, in.MaterializedLsn, rp0)
				}
				if in.MaterializedLsn < min(in.Scl, rp0) {
					return false
				}
			}
		}
		return true
	})
	if _, err := ro.ReadPage(ctx, 1, rp0-1); !errors.As(err, &re) || reasonOf(re.Tried[0].Err) != pb.Reason_BELOW_GC_HORIZON {
		t.Fatalf("a read below the floor once storage moved up to it: %v; want BELOW_GC_HORIZON", err)
	}
	zeros := make([]byte, 4096)
	for _, pt := range points {
		for page := uint64(1); page <= pages; page++ {
			want := pt.images[page]
			if want == nil {
				want = zeros
			}
			got, err := ro.ReadPage(ctx, page, pt.rp)
			if err != nil {
				t.Fatalf("read-only client: page %d at %d: %v", page, pt.rp, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("read-only client: page %d at %d: %q..., want %q...", page, pt.rp, got[100:124], want[100:124])
			}
		}
		mustRead(t, ro, 60, pt.rp, zeros)
	}

	// Without the tails: the VDL alone. PG 0's last record is below it, so
	// no segment of PG 0 is complete to it.
	p0 := uint64(1)
	for cur[p0] == nil {
		p0++
	}
	if p0 > 16 {
		t.Fatal("no page of PG 0 written")
	}
	bare := cl.open(t, func(c *Config) { c.ReadOnly = true })
	bare.SetVDL(w.VDL())
	if _, err := bare.ReadPage(ctx, p0, w.VDL()); !errors.As(err, &re) || reasonOf(re.Tried[0].Err) != pb.Reason_SEGMENT_BEHIND {
		t.Fatalf("a read-only client without tails read PG 0 at the VDL: %v; want SEGMENT_BEHIND from its segments", err)
	}
	mustRead(t, ro, p0, w.VDL(), cur[p0])

	// Released pins stop holding storage back.
	for _, pt := range points {
		pt.release()
	}
	report()
	if got := w.MinReadPoint(); got != w.VDL() {
		t.Fatalf("writer's min_read_point %d with no replica pin, want the VDL %d", got, w.VDL())
	}
}

// A read-only client never writes: Submit and Commit fail with
// ErrReadOnly, and its reads open no Append stream and create no segment.
func TestReadOnlyClientNeverWrites(t *testing.T) {
	cl := startCluster(t)
	ro := cl.open(t, func(c *Config) { c.ReadOnly = true })
	ctx := ctxT(t, 30*time.Second)
	mtr := []PageWrite{{Page: 1, New: pageImage(1, 0)}}
	if _, err := ro.Submit(ctx, mtr); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Submit: %v, want ErrReadOnly", err)
	}
	if _, err := ro.Commit(ctx, mtr); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Commit: %v, want ErrReadOnly", err)
	}
	mustRead(t, ro, 1, 0, make([]byte, 4096))
	for _, m := range cl.members {
		_, err := storageClient(t, m.Addr).SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: 7, Pg: 0})
		if reasonOf(err) != pb.Reason_PG_NOT_HOSTED {
			t.Fatalf("node %s after a read-only client's read: %v; want PG_NOT_HOSTED", m.NodeID, err)
		}
	}
	w := cl.open(t, nil)
	if _, err := w.Commit(ctx, mtr); err != nil {
		t.Fatal(err)
	}
	ro.NoteRedo(0, 1)
	ro.SetVDL(1)
	mustRead(t, ro, 1, 1, pageImage(1, 0))
	if st := ro.Stats(); st.Requests != 0 || st.Commits != 0 {
		t.Fatalf("read-only client stats %+v: it sent Append requests", st)
	}
	ro.mu.Lock()
	defer ro.mu.Unlock()
	for id, n := range ro.nodes {
		n.mu.Lock()
		streams, connected := n.streams, n.connected
		n.mu.Unlock()
		if streams != 0 || connected {
			t.Fatalf("read-only client opened %d Append streams to %s", streams, id)
		}
	}
}

// A replica's reads carry replica: true, so storage does not fence them by
// epoch: after a newer epoch fenced the writer's, a read-only client
// following the old epoch's stream still reads, while the writer is fenced.
func TestReplicaReadsAreNotFencedByEpoch(t *testing.T) {
	cl := startCluster(t)
	w := cl.open(t, nil)
	ro := cl.open(t, func(c *Config) { c.ReadOnly = true })
	ro.SetStreamEpoch(1)
	ctx := ctxT(t, 30*time.Second)
	lsn, err := w.Commit(ctx, []PageWrite{{Page: 1, New: pageImage(1, 0)}})
	if err != nil {
		t.Fatal(err)
	}
	ro.NoteRedo(0, lsn)
	ro.SetVDL(lsn)
	for _, m := range cl.members {
		if _, err := storageClient(t, m.Addr).SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: 7, Pg: 0, FenceEpoch: 2}); err != nil {
			t.Fatal(err)
		}
	}
	mustRead(t, ro, 1, lsn, pageImage(1, 0))
	if _, err := w.ReadPage(ctx, 1, lsn); !errors.Is(err, ErrFenced) {
		t.Fatalf("the writer's read after a newer epoch: %v, want ErrFenced", err)
	}
	mustRead(t, ro, 1, lsn, pageImage(1, 0))
}

// SetVDL raises a read-only client's VDL (never lowers it) and releases
// exactly the waiters it reaches; cancelled waits and Close end the rest.
func TestSetVDLWakesWaitDurable(t *testing.T) {
	cl := startCluster(t)
	ro := cl.open(t, func(c *Config) {
		c.ReadOnly = true
		c.WriteTimeout = 100 * time.Millisecond // never makes a replica's wait fail
	})
	ctx := ctxT(t, 30*time.Second)
	waitFor := func(c context.Context, lsn uint64) <-chan error {
		ch := make(chan error, 1)
		go func() { ch <- ro.WaitDurable(c, lsn) }()
		return ch
	}
	w10, w20 := waitFor(ctx, 10), waitFor(ctx, 20)
	cctx, cancel := context.WithCancel(ctx)
	w30 := waitFor(cctx, 30)
	wait.For(t, 5*time.Second, "three waiters", func() bool {
		ro.mu.Lock()
		defer ro.mu.Unlock()
		return len(ro.waiters) == 3
	})
	ro.SetVDL(15)
	if err := <-w10; err != nil {
		t.Fatalf("WaitDurable(10) after SetVDL(15): %v", err)
	}
	ro.SetVDL(12)
	if ro.VDL() != 15 {
		t.Fatalf("VDL %d after SetVDL(15) then SetVDL(12)", ro.VDL())
	}
	if err := ro.WaitDurable(ctx, 15); err != nil {
		t.Fatal(err)
	}
	// Past the write timeout a replica's wait goes on: no PG of its own holds
	// it back.
	wait.For(t, 5*time.Second, "a wait past the write timeout", func() bool {
		select {
		case err := <-w20:
			t.Fatalf("WaitDurable(20) at VDL 15 returned %v", err)
		default:
		}
		ro.mu.Lock()
		defer ro.mu.Unlock()
		return len(ro.waiters) == 2
	})
	ro.SetVDL(25)
	if err := <-w20; err != nil {
		t.Fatalf("WaitDurable(20) after SetVDL(25): %v", err)
	}
	cancel()
	if err := <-w30; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled WaitDurable(30): %v", err)
	}
	w40 := waitFor(ctx, 40)
	wait.For(t, 5*time.Second, "the waiter", func() bool {
		ro.mu.Lock()
		defer ro.mu.Unlock()
		return len(ro.waiters) == 1
	})
	ro.Close()
	if err := <-w40; !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitDurable(40) after Close: %v, want ErrClosed", err)
	}
}

// ReadFloor is the oldest pin, at most the VDL; pins older than maxAge are
// left out (their transactions fail with snapshot_too_old instead of
// holding storage's GC back).
func TestReadFloorLeavesOutOldPins(t *testing.T) {
	cl := startCluster(t)
	ro := cl.open(t, func(c *Config) { c.ReadOnly = true })
	now := time.Now()
	if got := ro.ReadFloor(now, 0); got != 0 {
		t.Fatalf("floor %d of a fresh client", got)
	}
	ro.SetVDL(10)
	if got := ro.ReadFloor(now, 0); got != 10 {
		t.Fatalf("floor %d with no pins, want the VDL 10", got)
	}
	old, releaseOld := ro.PinReadPoint()
	ro.SetVDL(20)
	young, releaseYoung := ro.PinReadPoint()
	ro.SetVDL(30)
	if old != 10 || young != 20 {
		t.Fatalf("pins %d %d", old, young)
	}
	// The first pin was taken an hour ago.
	ro.mu.Lock()
	ro.pinAt[old] = now.Add(-time.Hour)
	ro.mu.Unlock()
	for _, c := range []struct {
		maxAge time.Duration
		want   uint64
	}{
		{0, 10},
		{2 * time.Hour, 10},
		{30 * time.Minute, 20},
	} {
		if got := ro.ReadFloor(now, c.maxAge); got != c.want {
			t.Fatalf("floor with max age %s: %d, want %d", c.maxAge, got, c.want)
		}
	}
	if got := ro.ReadFloor(now.Add(time.Hour), 30*time.Minute); got != 30 {
		t.Fatalf("floor with every pin too old: %d, want the VDL 30", got)
	}
	releaseYoung()
	if got := ro.ReadFloor(now, 30*time.Minute); got != 30 {
		t.Fatalf("floor with only a too old pin: %d, want the VDL 30", got)
	}
	releaseOld()
	releaseOld() // a second release changes nothing
	if got := ro.ReadFloor(now, 0); got != 30 {
		t.Fatalf("floor with no pins: %d, want the VDL 30", got)
	}
}

// The writer's min_read_point (sent to storage) is the lowest of its VDL,
// its pins and the replicas' floor (SetReadFloor), and 0 while the floor is
// held. Storage follows it: it materializes no further than
// min_read_point, so versions a replica's floor needs stay readable, and a
// held floor from the start keeps everything.
func TestWriterReadFloorSetsMinReadPoint(t *testing.T) {
	cl := startCluster(t)
	w := cl.open(t, nil)
	ctx := ctxT(t, 60*time.Second)
	commit := func(page uint64, v int, old []byte) []byte {
		t.Helper()
		img := pageImage(page, v)
		if _, err := w.Commit(ctx, []PageWrite{{Page: page, Old: old, New: img}}); err != nil {
			t.Fatal(err)
		}
		return img
	}
	img := commit(1, 0, nil)
	for v := 1; v <= 4; v++ {
		img = commit(1, v, img)
	}
	if got := w.MinReadPoint(); got != w.VDL() {
		t.Fatalf("min_read_point %d with no floor and no pins, want the VDL %d", got, w.VDL())
	}
	floor := w.VDL()
	atFloor := img
	w.SetReadFloor(floor, false)
	for v := 5; v <= 30; v++ {
		img = commit(1, v, img)
	}
	if got := w.MinReadPoint(); got != floor {
		t.Fatalf("min_read_point %d, want the floor %d", got, floor)
	}
	// Storage materializes up to the floor and no further, and serves it.
	infos := func() []*pb.SegmentInfoResponse {
		var out []*pb.SegmentInfoResponse
		for _, m := range cl.members {
			out = append(out, infoOf(t, storageClient(t, m.Addr), 7, 0))
		}
		return out
	}
	wait.For(t, 20*time.Second, "segments to materialize to the floor", func() bool {
		n := 0
		for _, in := range infos() {
			if in.MaterializedLsn > floor {
				t.Fatalf("a segment materialized to %d, above the floor %d", in.MaterializedLsn, floor)
			}
			if in.MaterializedLsn == floor {
				n++
			}
		}
		return n == len(cl.members)
	})
	mustRead(t, w, 1, floor, atFloor)

	pin, release := w.PinReadPoint()
	w.SetReadFloor(floor, true)
	if got := w.MinReadPoint(); got != 0 {
		t.Fatalf("min_read_point %d while held, want 0", got)
	}
	w.SetReadFloor(noFloor, false)
	if got := w.MinReadPoint(); got != pin {
		t.Fatalf("min_read_point %d with the floor gone, want the writer's pin %d", got, pin)
	}
	release()
	w.SetReadFloor(w.VDL()+100, false)
	if got := w.MinReadPoint(); got != w.VDL() {
		t.Fatalf("min_read_point %d with a floor above the VDL, want the VDL %d", got, w.VDL())
	}
	// With the floor gone, storage materializes up to the VDL.
	vdl := w.VDL()
	wait.For(t, 20*time.Second, "segments to materialize to the VDL", func() bool {
		for _, in := range infos() {
			if in.MaterializedLsn < vdl {
				return false
			}
		}
		return true
	})
	var re *ReadError
	if _, err := w.ReadPage(ctx, 1, floor); !errors.As(err, &re) || reasonOf(re.Tried[0].Err) != pb.Reason_BELOW_GC_HORIZON {
		t.Fatalf("read at the old floor %d after storage moved on: %v; want BELOW_GC_HORIZON", floor, err)
	}
	mustRead(t, w, 1, vdl, img)
}

// A floor held from the writer's start sends min_read_point 0, which
// raises nothing at storage: every version stays, whatever the writer
// commits, until the hold ends.
func TestHeldFloorKeepsEveryVersion(t *testing.T) {
	cl := startCluster(t)
	w := cl.open(t, nil)
	w.SetReadFloor(noFloor, true)
	ctx := ctxT(t, 60*time.Second)
	var imgs [][]byte
	var lsns []uint64
	var old []byte
	for v := range 20 {
		img := pageImage(2, v)
		lsn, err := w.Commit(ctx, []PageWrite{{Page: 2, Old: old, New: img}})
		if err != nil {
			t.Fatal(err)
		}
		imgs, lsns, old = append(imgs, img), append(lsns, lsn), img
	}
	if got := w.MinReadPoint(); got != 0 {
		t.Fatalf("min_read_point %d while held", got)
	}
	// Longer than storage waits before it materializes a small backlog.
	began := time.Now()
	wait.For(t, 10*time.Second, "storage's materialization delay to pass", func() bool {
		for _, m := range cl.members {
			if in := infoOf(t, storageClient(t, m.Addr), 7, 0); in.MaterializedLsn != 0 {
				t.Fatalf("node %s materialized to %d while the floor was held", m.NodeID, in.MaterializedLsn)
			}
		}
		return time.Since(began) > 2*time.Second
	})
	for i, lsn := range lsns {
		mustRead(t, w, 2, lsn, imgs[i])
	}
	w.SetReadFloor(noFloor, false)
	if got := w.MinReadPoint(); got != w.VDL() {
		t.Fatalf("min_read_point %d after the hold, want the VDL %d", got, w.VDL())
	}
	vdl := w.VDL()
	wait.For(t, 20*time.Second, "segments to materialize after the hold", func() bool {
		for _, m := range cl.members {
			if infoOf(t, storageClient(t, m.Addr), 7, 0).MaterializedLsn < vdl {
				return false
			}
		}
		return true
	})
}

// noFloor is the Server's read floor when no replica reports.
const noFloor = math.MaxUint64

// A pin is left out of ReadFloor only once it is older than maxAge; a
// transaction that pinned an LSN just now still needs that LSN's
// versions, even if another transaction pinned the same LSN long ago and
// is still open. pinAt keeps the first pin's time while the LSN stays
// pinned, so the young transaction's read point is left out too: the
// replica reports a floor above it, storage may collect what it reads,
// and it fails (BELOW_GC_HORIZON, snapshot_too_old) well within its age.
func TestReadFloorKeepsAYoungPinOfAnOldLSN(t *testing.T) {
	cl := startCluster(t)
	ro := cl.open(t, func(c *Config) { c.ReadOnly = true })
	ro.SetVDL(10)
	lsn, releaseOld := ro.PinReadPoint()
	defer releaseOld()
	// That transaction has been open for an hour (past its bound).
	ro.mu.Lock()
	ro.pinAt[lsn] = time.Now().Add(-time.Hour)
	ro.mu.Unlock()
	// A new transaction pins the same VDL now.
	if again, releaseYoung := ro.PinReadPoint(); again != lsn {
		t.Fatalf("pinned %d, then %d", lsn, again)
	} else {
		defer releaseYoung()
	}
	ro.SetVDL(20)
	if got := ro.ReadFloor(time.Now(), 30*time.Minute); got != lsn {
		t.Fatalf("floor %d with a transaction pinned at %d a moment ago (max age 30m), want %d", got, lsn, lsn)
	}
}
