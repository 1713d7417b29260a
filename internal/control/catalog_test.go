package control

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testURLs are the client URLs of the package's shared embedded etcd; each
// test has its own key prefix in it.
var testURLs []string

var prefixSeq atomic.Int64

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "borealis-control-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	e, urls, err := StartEmbedded(dir, "", "")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	testURLs = urls
	code := m.Run()
	e.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newCatalog(t *testing.T) *Catalog {
	t.Helper()
	// A fresh prefix per run, so that -count=N starts each run empty.
	prefix := fmt.Sprintf("/test/%s/%d/", t.Name(), prefixSeq.Add(1))
	c, err := Open(ctxT(t), testURLs, prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// addNodes registers nodes id (AZ az) and heartbeats them.
func addNodes(t *testing.T, c *Catalog, spec ...string) {
	t.Helper()
	ctx := ctxT(t)
	for i := 0; i < len(spec); i += 2 {
		id, az := spec[i], spec[i+1]
		if err := c.RegisterNode(ctx, Node{ID: id, AZ: az, Addr: "127.0.0.1:7" + id, CapacityBytes: 1 << 30}); err != nil {
			t.Fatal(err)
		}
		if err := c.Heartbeat(ctx, id, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

func sixNodes(t *testing.T, c *Catalog) {
	addNodes(t, c, "s1", "a", "s2", "a", "s3", "b", "s4", "b", "s5", "c", "s6", "c")
}

// checkPG checks that a PG has 6 segments on distinct nodes, 2 per AZ, with
// AZs matching the nodes' registered ones.
func checkPG(t *testing.T, c *Catalog, pg PG) {
	t.Helper()
	nodes, err := c.Nodes(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	azOf := map[string]string{}
	for _, n := range nodes {
		azOf[n.ID] = n.AZ
	}
	if len(pg.Segments) != 6 {
		t.Fatalf("PG %d has %d segments, want 6: %+v", pg.PG, len(pg.Segments), pg.Segments)
	}
	perAZ := map[string]int{}
	seen := map[string]bool{}
	for _, s := range pg.Segments {
		if seen[s.Node] {
			t.Fatalf("PG %d has two segments on %s: %+v", pg.PG, s.Node, pg.Segments)
		}
		seen[s.Node] = true
		if azOf[s.Node] != s.AZ {
			t.Fatalf("PG %d: segment on %s says AZ %s, node is in %s", pg.PG, s.Node, s.AZ, azOf[s.Node])
		}
		perAZ[s.AZ]++
	}
	if len(perAZ) != 3 {
		t.Fatalf("PG %d spans %d AZs, want 3: %+v", pg.PG, len(perAZ), pg.Segments)
	}
	for az, n := range perAZ {
		if n != 2 {
			t.Fatalf("PG %d has %d segments in AZ %s, want 2", pg.PG, n, az)
		}
	}
}

func TestRegisterNodeAndHeartbeat(t *testing.T) {
	c := newCatalog(t)
	ctx := ctxT(t)
	n := Node{ID: "s1", AZ: "a", Addr: "127.0.0.1:7101", CapacityBytes: 100}
	if err := c.RegisterNode(ctx, n); err != nil {
		t.Fatal(err)
	}
	nodes, _ := c.Nodes(ctx)
	first := nodes[0].RegisteredAt
	n.Addr = "127.0.0.1:7201"
	if err := c.RegisterNode(ctx, n); err != nil { // idempotent upsert
		t.Fatal(err)
	}
	nodes, err := c.Nodes(ctx)
	if err != nil || len(nodes) != 1 || nodes[0].Addr != "127.0.0.1:7201" || !nodes[0].RegisteredAt.Equal(first) || nodes[0].Version != 1 {
		t.Fatalf("nodes = %+v, %v", nodes, err)
	}
	n.AZ = "b"
	err = c.RegisterNode(ctx, n)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "node s1 is registered in AZ a and cannot move to AZ b") {
		t.Fatalf("moving AZ: %v", err)
	}
	if err := c.RegisterNode(ctx, Node{ID: "bad/id", AZ: "a", Addr: "x:1"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad id: %v", err)
	}
	if err := c.Heartbeat(ctx, "s9", time.Second); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "node s9 is not registered") {
		t.Fatalf("heartbeat of an unregistered node: %v", err)
	}
	st, err := c.NodeStates(ctx)
	if err != nil || st["s1"].State != StateDown || !st["s1"].LastHeartbeat.IsZero() {
		t.Fatalf("before any heartbeat: %+v, %v", st, err)
	}
	for range 3 {
		if err := c.Heartbeat(ctx, "s1", 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	st, err = c.NodeStates(ctx)
	if err != nil || st["s1"].State != StateUp || time.Since(st["s1"].LastHeartbeat) > 5*time.Second {
		t.Fatalf("after heartbeats: %+v, %v", st, err)
	}
}

// TestHeartbeatExpiry lets a node's lease expire (1 s TTL; etcd's minimum
// may stretch it to 2 s), and brings it back.
func TestHeartbeatExpiry(t *testing.T) {
	t.Parallel()
	c := newCatalog(t)
	ctx := ctxT(t)
	sixNodes(t, c)
	if err := c.Heartbeat(ctx, "s6", time.Second); err != nil { // re-grant with a short TTL
		t.Fatal(err)
	}
	start := time.Now()
	for {
		st, err := c.NodeStates(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st["s6"].State == StateDown {
			if st["s6"].LastHeartbeat.IsZero() {
				t.Fatal("a down node lost its last heartbeat time")
			}
			if st["s5"].State != StateUp {
				t.Fatalf("s5 is %s", st["s5"].State)
			}
			break
		}
		if time.Since(start) > 6*time.Second {
			t.Fatal("s6 still up 6 s after its last heartbeat with a 1 s TTL")
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("s6 down after %v", time.Since(start))
	_, err := c.CreateVolume(ctx, "main", 0, 1<<20)
	if !errors.Is(err, ErrPlacement) || !strings.Contains(err.Error(), "c: 1 (s5; s6 is down)") {
		t.Fatalf("create with s6 down: %v", err)
	}
	if err := c.Heartbeat(ctx, "s6", time.Second); err != nil { // back: a new lease
		t.Fatal(err)
	}
	st, _ := c.NodeStates(ctx)
	if st["s6"].State != StateUp {
		t.Fatalf("s6 after it returned: %+v", st["s6"])
	}
	if _, err := c.CreateVolume(ctx, "main", 0, 1<<20); err != nil {
		t.Fatal(err)
	}
}

func TestCreateVolume(t *testing.T) {
	c := newCatalog(t)
	ctx := ctxT(t)
	sixNodes(t, c)
	vol, err := c.CreateVolume(ctx, "main", 4096, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if vol.Name != "main" || vol.ID != 1 || vol.PageSize != 4096 || vol.PGSizeBytes != 1<<20 || vol.PagesPerPG != 256 ||
		vol.GeometryEpoch != 1 || vol.VolumeEpoch != 0 || vol.PGs != 1 || vol.Version != 1 {
		t.Fatalf("volume = %+v", vol)
	}
	if vol.MaxPGs() != 128<<20 || vol.SizeBytes() != 1<<20 || vol.PGOf(256) != 0 || vol.PGOf(257) != 1 {
		t.Fatalf("MaxPGs %d SizeBytes %d", vol.MaxPGs(), vol.SizeBytes())
	}
	pg, err := c.PG(ctx, vol.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	checkPG(t, c, pg)
	if pg.MembershipEpoch != 1 || pg.VolumeID != vol.ID || pg.GeometryEpoch != 1 {
		t.Fatalf("PG 0 = %+v", pg)
	}
	if got, err := c.Volume(ctx, "main"); err != nil || got.ID != vol.ID {
		t.Fatalf("Volume: %+v %v", got, err)
	}
	if got, err := c.VolumeByID(ctx, vol.ID); err != nil || got.Name != "main" {
		t.Fatalf("VolumeByID: %+v %v", got, err)
	}
	if _, err := c.VolumeByID(ctx, 99); !errors.Is(err, ErrNotFound) {
		t.Fatalf("VolumeByID(99): %v", err)
	}
	if _, err := c.PG(ctx, vol.ID, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("PG 1: %v", err)
	}
	_, err = c.CreateVolume(ctx, "main", 4096, 1<<20)
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "volume main already exists") {
		t.Fatalf("second create: %v", err)
	}
	v2, err := c.CreateVolume(ctx, "other", 0, 0)
	if err != nil || v2.ID != 2 || v2.PageSize != DefaultPageSize || v2.PGSizeBytes != DefaultPGSizeBytes {
		t.Fatalf("other: %+v %v", v2, err)
	}
	vols, err := c.Volumes(ctx)
	if err != nil || len(vols) != 2 {
		t.Fatalf("volumes: %+v %v", vols, err)
	}
}

func TestCreateVolumeRefusals(t *testing.T) {
	c := newCatalog(t)
	ctx := ctxT(t)
	// s6 is registered but never heartbeats: down.
	addNodes(t, c, "s1", "a", "s2", "a", "s3", "b", "s4", "b", "s5", "c")
	if err := c.RegisterNode(ctx, Node{ID: "s6", AZ: "c", Addr: "127.0.0.1:7106"}); err != nil {
		t.Fatal(err)
	}
	_, err := c.CreateVolume(ctx, "main", 4096, 1<<20)
	want := "need 2 live storage nodes in each of 3 AZs; have a: 2 (s1, s2), b: 2 (s3, s4), c: 1 (s5; s6 is down)"
	if !errors.Is(err, ErrPlacement) || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
	if _, err := c.Volume(ctx, "main"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused create left a volume: %v", err)
	}
	for _, tc := range []struct {
		name     string
		pageSize int
		pgSize   uint64
		want     string
	}{
		{"main", 1000, 1 << 20, "page size 1000"},
		{"main", 256, 1 << 20, "page size 256"},
		{"main", 1 << 17, 1 << 20, "page size 131072"},
		{"main", 4096, 1000, "PG size 1000"},
		{"main", 4096, 4096 + 1, "PG size 4097"},
		{"main", 4096, 256 << 40, "larger than the 128 TiB"},
		{"bad/name", 4096, 1 << 20, "volume name"},
		{"", 4096, 1 << 20, "volume name"},
	} {
		_, err := c.CreateVolume(ctx, tc.name, tc.pageSize, tc.pgSize)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CreateVolume(%q, %d, %d) = %v, want %q", tc.name, tc.pageSize, tc.pgSize, err, tc.want)
		}
	}
}

// TestRaceCreateVolume: of concurrent creates of one name exactly one wins.
func TestRaceCreateVolume(t *testing.T) {
	c := newCatalog(t)
	ctx := ctxT(t)
	sixNodes(t, c)
	const n = 16
	var wg sync.WaitGroup
	vols := make([]Volume, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			// Each goroutine has its own client, as separate control planes would.
			cc, err := Open(ctx, testURLs, c.Prefix())
			if err != nil {
				errs[i] = err
				return
			}
			defer cc.Close()
			vols[i], errs[i] = cc.CreateVolume(ctx, "main", 4096, 1<<20)
		})
	}
	wg.Wait()
	wins := 0
	for i, err := range errs {
		switch {
		case err == nil:
			wins++
		case errors.Is(err, ErrExists) && strings.Contains(err.Error(), "volume main already exists"):
		default:
			t.Fatalf("goroutine %d: %v", i, err)
		}
		_ = vols[i]
	}
	if wins != 1 {
		t.Fatalf("%d creates won, want 1", wins)
	}
	pgs, err := c.PGs(ctx, 1)
	if err != nil || len(pgs) != 1 {
		t.Fatalf("PGs of the volume: %+v %v", pgs, err)
	}

	// Concurrent creates of distinct names get distinct ids.
	ids := make([]uint64, n)
	for i := range n {
		wg.Go(func() {
			v, err := c.CreateVolume(ctx, fmt.Sprintf("v%d", i), 4096, 1<<20)
			if err != nil {
				errs[i] = err
			}
			ids[i] = v.ID
		})
	}
	wg.Wait()
	seen := map[uint64]bool{1: true}
	for i, id := range ids {
		if errs[i] != nil && !errors.Is(errs[i], ErrExists) {
			t.Fatal(errs[i])
		}
		if seen[id] {
			t.Fatalf("volume id %d given twice", id)
		}
		seen[id] = true
	}
}

// TestRaceAddPG: concurrent AddPG calls for the same next PG (and epoch
// bumps on the same volume key) place it once; everyone gets that PG, and
// the geometry epoch goes up exactly once per PG.
func TestRaceAddPG(t *testing.T) {
	c := newCatalog(t)
	ctx := ctxT(t)
	addNodes(t, c, "s1", "a", "s2", "a", "s7", "a", "s3", "b", "s4", "b", "s8", "b", "s5", "c", "s6", "c", "s9", "c")
	vol, err := c.CreateVolume(ctx, "main", 4096, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	const n = 12
	clients := make([]*Catalog, n)
	for i := range clients {
		cc, err := Open(ctx, testURLs, c.Prefix())
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		clients[i] = cc
	}
	epoch := uint64(0)
	for pg := uint32(1); pg <= 4; pg++ {
		var wg sync.WaitGroup
		got := make([]PG, n)
		errs := make([]error, n)
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				got[i], errs[i] = clients[i].AddPG(ctx, "main", pg)
			})
		}
		// Epoch bumps race on the same volume key.
		wg.Go(func() {
			<-start
			for range 3 {
				e, err := c.BumpEpoch(ctx, "main", epoch)
				if err != nil {
					t.Error(err)
					return
				}
				epoch = e
			}
		})
		close(start)
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("PG %d, goroutine %d: %v", pg, i, errs[i])
			}
			if fmt.Sprint(got[i]) != fmt.Sprint(got[0]) {
				t.Fatalf("PG %d: goroutines got different PGs:\n%+v\n%+v", pg, got[0], got[i])
			}
		}
		checkPG(t, c, got[0])
		v, err := c.Volume(ctx, "main")
		if err != nil {
			t.Fatal(err)
		}
		if v.PGs != pg+1 || v.GeometryEpoch != uint64(pg)+1 || got[0].GeometryEpoch != v.GeometryEpoch || v.VolumeEpoch != epoch {
			t.Fatalf("after PG %d: volume %+v, PG %+v, epoch %d", pg, v, got[0], epoch)
		}
	}
	pgs, err := c.PGs(ctx, vol.ID)
	if err != nil || len(pgs) != 5 {
		t.Fatalf("PGs: %d %v", len(pgs), err)
	}
	for i, p := range pgs {
		if p.PG != uint32(i) {
			t.Fatalf("PGs out of order: %+v", pgs)
		}
	}
}

// TestGrowth grows a volume PG by PG over 9 nodes and checks each PG's
// placement and that the load stays even.
func TestGrowth(t *testing.T) {
	c := newCatalog(t)
	ctx := ctxT(t)
	addNodes(t, c, "s1", "a", "s2", "a", "s7", "a", "s3", "b", "s4", "b", "s8", "b", "s5", "c", "s6", "c", "s9", "c")
	vol, err := c.CreateVolume(ctx, "main", 4096, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddPG(ctx, "main", 2); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "the next one is PG 1, not 2") {
		t.Fatalf("AddPG out of order: %v", err)
	}
	if _, err := c.AddPG(ctx, "nope", 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("AddPG on a missing volume: %v", err)
	}
	for pg := uint32(1); pg < 6; pg++ {
		p, err := c.AddPG(ctx, "main", pg)
		if err != nil {
			t.Fatal(err)
		}
		checkPG(t, c, p)
		again, err := c.AddPG(ctx, "main", pg) // idempotent
		if err != nil || fmt.Sprint(again) != fmt.Sprint(p) {
			t.Fatalf("AddPG again: %+v %v", again, err)
		}
		// Load: every node's segment count within 1 of every other's.
		pgs, err := c.PGs(ctx, vol.ID)
		if err != nil {
			t.Fatal(err)
		}
		load := map[string]int{}
		for _, q := range pgs {
			for _, s := range q.Segments {
				load[s.Node]++
			}
		}
		lo, hi := 1<<30, 0
		for _, id := range []string{"s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9"} {
			lo, hi = min(lo, load[id]), max(hi, load[id])
		}
		if hi-lo > 1 {
			t.Fatalf("after PG %d the load is uneven: %v", pg, load)
		}
	}
	v, _ := c.Volume(ctx, "main")
	if v.PGs != 6 || v.GeometryEpoch != 6 || v.SizeBytes() != 6<<20 {
		t.Fatalf("volume after growth: %+v", v)
	}

	// The 128 TiB cap: 64 TiB PGs allow 2.
	big, err := c.CreateVolume(ctx, "big", 4096, 64<<40)
	if err != nil {
		t.Fatal(err)
	}
	if big.MaxPGs() != 2 {
		t.Fatalf("MaxPGs = %d", big.MaxPGs())
	}
	if _, err := c.AddPG(ctx, "big", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddPG(ctx, "big", 2); !errors.Is(err, ErrVolumeFull) || !strings.Contains(err.Error(), "128 TiB") {
		t.Fatalf("AddPG past 128 TiB: %v", err)
	}
}

func TestWriterLease(t *testing.T) {
	t.Parallel()
	c := newCatalog(t)
	ctx := ctxT(t)
	sixNodes(t, c)
	if _, err := c.CreateVolume(ctx, "main", 4096, 1<<20); err != nil {
		t.Fatal(err)
	}
	if w, err := c.Writer(ctx, "main"); err != nil || w != nil {
		t.Fatalf("writer before any: %+v %v", w, err)
	}
	l1, e1, err := c.AcquireWriter(ctx, "main", "db-1", 10*time.Second)
	if err != nil || e1 != 1 {
		t.Fatalf("first acquire: epoch %d, %v", e1, err)
	}
	if err := c.RenewWriter(ctx, l1); err != nil {
		t.Fatal(err)
	}
	_, _, err = c.AcquireWriter(ctx, "main", "db-2", 10*time.Second)
	if !errors.Is(err, ErrWriterHeld) || !strings.Contains(err.Error(), "held by db-1 (epoch 1") {
		t.Fatalf("second acquire: %v", err)
	}
	w, err := c.Writer(ctx, "main")
	if err != nil || w == nil || w.Holder != "db-1" || w.Epoch != 1 || w.Lease != l1 {
		t.Fatalf("writer: %+v %v", w, err)
	}
	if err := c.ReleaseWriter(ctx, l1); err != nil {
		t.Fatal(err)
	}
	if err := c.RenewWriter(ctx, l1); !errors.Is(err, ErrLeaseExpired) {
		t.Fatalf("renew a revoked lease: %v", err)
	}
	_, e2, err := c.AcquireWriter(ctx, "main", "db-2", time.Second)
	if err != nil || e2 != 2 {
		t.Fatalf("acquire after release: epoch %d, %v", e2, err)
	}
	// Let db-2's 1 s lease expire: db-3 then gets epoch 3.
	deadline := time.Now().Add(6 * time.Second)
	var e3 uint64
	for {
		_, e3, err = c.AcquireWriter(ctx, "main", "db-3", 10*time.Second)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrWriterHeld) || time.Now().After(deadline) {
			t.Fatalf("acquire after expiry: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if e3 != 3 {
		t.Fatalf("epoch after expiry = %d, want 3", e3)
	}
	if _, err := c.BumpEpoch(ctx, "main", 2); !errors.Is(err, ErrStaleEpoch) || !strings.Contains(err.Error(), "is 3, not 2") {
		t.Fatalf("stale bump: %v", err)
	}
	if e, err := c.BumpEpoch(ctx, "main", 3); err != nil || e != 4 {
		t.Fatalf("bump: %d %v", e, err)
	}
	if v, _ := c.Volume(ctx, "main"); v.VolumeEpoch != 4 {
		t.Fatalf("volume epoch = %d", v.VolumeEpoch)
	}
	if _, _, err := c.AcquireWriter(ctx, "nope", "db-1", time.Second); !errors.Is(err, ErrNotFound) {
		t.Fatalf("acquire on a missing volume: %v", err)
	}
}

func TestWatch(t *testing.T) {
	c := newCatalog(t)
	ctx := ctxT(t)
	sixNodes(t, c)
	vol, err := c.CreateVolume(ctx, "main", 4096, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	ch := c.Watch(wctx, vol.ID)
	next := func() Event {
		t.Helper()
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("watch closed")
			}
			return ev
		case <-time.After(5 * time.Second):
			t.Fatal("no watch event within 5 s")
		}
		return Event{}
	}
	if ev := next(); ev.Type != EventExisting || ev.PG.PG != 0 {
		t.Fatalf("first event: %+v", ev)
	}
	added, err := c.AddPG(ctx, "main", 1)
	if err != nil {
		t.Fatal(err)
	}
	ev := next()
	if ev.Type != EventAdded || fmt.Sprint(ev.PG) != fmt.Sprint(added) || ev.PG.GeometryEpoch != 2 {
		t.Fatalf("event for PG 1: %+v, want %+v", ev, added)
	}
	// Another volume's growth is not reported.
	if _, err := c.CreateVolume(ctx, "other", 4096, 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddPG(ctx, "main", 2); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Type != EventAdded || ev.PG.PG != 2 || ev.PG.VolumeID != vol.ID {
		t.Fatalf("event for PG 2: %+v", ev)
	}
	cancel()
	for range ch { // closes once ctx is done
	}
}
