package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/wait"
)

// catalogKeys lists every key under the catalog's prefix, without it.
func catalogKeys(t *testing.T, c *Catalog) []string {
	t.Helper()
	resp, err := c.Client().Get(ctxT(t), c.Prefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, strings.TrimPrefix(string(kv.Key), c.Prefix()))
	}
	return out
}

// volumeKeys are the keys that name volume id vol (or, for volumes/, name).
func volumeKeys(keys []string, name string, vol uint64) []string {
	id := fmt.Sprintf("%020d", vol)
	var out []string
	for _, k := range keys {
		if k == "volumes/"+name || strings.Contains(k, id) {
			out = append(out, k)
		}
	}
	return out
}

// TestDeleteVolume: a volume with two PGs, a truncation and a writer is
// refused while the writer holds it, naming the holder; once the lease is
// given up, one delete removes every key of the volume and leaves only its
// tombstone, and nothing of another volume; DeletedVolumes names it and
// nothing else; a second delete is NotFound, and the name can be created
// again under a new id.
func TestDeleteVolume(t *testing.T) {
	t.Parallel()
	c := newCatalog(t)
	ctx := ctxT(t)
	sixNodes(t, c)
	vol, err := c.CreateVolume(ctx, "main", 4096, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	other, err := c.CreateVolume(ctx, "other", 4096, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddPG(ctx, "main", 1); err != nil {
		t.Fatal(err)
	}
	lease, epoch, err := c.AcquireWriter(ctx, "main", "db-1", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RecordTruncation(ctx, "main", Truncation{Epoch: epoch, After: 10, Through: 20, PGs: 2}); err != nil {
		t.Fatal(err)
	}
	otherKeysBefore := volumeKeys(catalogKeys(t, c), "other", other.ID)

	_, _, err = c.DeleteVolume(ctx, "main")
	if !errors.Is(err, ErrWriterHeld) || !strings.Contains(err.Error(), "held by db-1 (epoch 1") {
		t.Fatalf("delete with a writer: %v; want ErrWriterHeld naming db-1", err)
	}
	if v, err := c.Volume(ctx, "main"); err != nil || v.PGs != 2 {
		t.Fatalf("the refused delete changed the volume: %+v %v", v, err)
	}

	if err := c.ReleaseWriter(ctx, lease); err != nil {
		t.Fatal(err)
	}
	got, pgs, err := c.DeleteVolume(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != vol.ID || got.PGs != 2 || len(pgs) != 2 || pgs[0].PG != 0 || pgs[1].PG != 1 {
		t.Fatalf("delete returned %+v with PGs %+v", got, pgs)
	}
	keys := catalogKeys(t, c)
	if left := volumeKeys(keys, "main", vol.ID); !slices.Equal(left, []string{fmt.Sprintf("deleted/%020d", vol.ID)}) {
		t.Fatalf("keys of the deleted volume left: %q; want only its tombstone (all keys: %q)", left, keys)
	}
	if after := volumeKeys(keys, "other", other.ID); !slices.Equal(after, otherKeysBefore) {
		t.Fatalf("the other volume's keys changed: %q, were %q", after, otherKeysBefore)
	}
	if _, err := c.Volume(ctx, "main"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Volume after delete: %v", err)
	}
	if _, err := c.VolumeByID(ctx, vol.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("VolumeByID after delete: %v", err)
	}
	if vs, err := c.Volumes(ctx); err != nil || len(vs) != 1 || vs[0].Name != "other" {
		t.Fatalf("Volumes after delete: %+v %v", vs, err)
	}
	if _, err := c.AddPG(ctx, "main", 2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("AddPG after delete: %v", err)
	}
	if _, _, err := c.AcquireWriter(ctx, "main", "db-2", time.Second); !errors.Is(err, ErrNotFound) {
		t.Fatalf("AcquireWriter after delete: %v", err)
	}

	if vol.Incarnation == 0 || other.Incarnation == 0 || vol.Incarnation == other.Incarnation {
		t.Fatalf("incarnations %x and %x: want two different nonzero ones", vol.Incarnation, other.Incarnation)
	}
	hosted := []VolumeRef{{other.ID, other.Incarnation}, {vol.ID, vol.Incarnation}, {999, 1}}
	del, err := c.DeletedVolumes(ctx, hosted, []uint64{other.ID, 998})
	if err != nil || !slices.Equal(del, []VolumeRef{{vol.ID, vol.Incarnation}}) {
		t.Fatalf("DeletedVolumes: %v %v; want [%d/%x]", del, err, vol.ID, vol.Incarnation)
	}
	if tomb, err := c.DeletedVolume(ctx, vol.ID); err != nil || tomb == nil || tomb.Name != "main" || tomb.PGs != 2 || tomb.Incarnation != vol.Incarnation {
		t.Fatalf("tombstone: %+v %v", tomb, err)
	}
	// Another incarnation of the id, or none, is not the deleted volume;
	// a node that holds only the id's epoch is told the tombstone's.
	del, err = c.DeletedVolumes(ctx, []VolumeRef{{vol.ID, vol.Incarnation + 1}, {vol.ID, 0}}, []uint64{vol.ID})
	if err != nil || !slices.Equal(del, []VolumeRef{{vol.ID, vol.Incarnation}}) {
		t.Fatalf("DeletedVolumes of other incarnations and of the epoch only: %v %v; want only the epoch's [%d/%x]", del, err, vol.ID, vol.Incarnation)
	}

	_, _, err = c.DeleteVolume(ctx, "main")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "volume main does not exist") {
		t.Fatalf("second delete: %v", err)
	}
	again, err := c.CreateVolume(ctx, "main", 4096, 1<<20)
	if err != nil || again.ID <= other.ID {
		t.Fatalf("create main again: %+v %v; want an id above %d (ids are never reused)", again, err, other.ID)
	}
	if again.Incarnation == vol.Incarnation {
		t.Fatalf("main again has the deleted main's incarnation %x", vol.Incarnation)
	}
	if del, err := c.DeletedVolumes(ctx, []VolumeRef{{again.ID, again.Incarnation}}, nil); err != nil || len(del) != 0 {
		t.Fatalf("the new main counts as deleted: %v %v", del, err)
	}
}

// TestDeletedVolumesManyIDs: more ids than one etcd transaction may read.
func TestDeletedVolumesManyIDs(t *testing.T) {
	t.Parallel()
	c := newCatalog(t)
	ctx := ctxT(t)
	sixNodes(t, c)
	v, err := c.CreateVolume(ctx, "v", 4096, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.DeleteVolume(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	var hosted []VolumeRef
	var epochOnly []uint64
	for i := range uint64(3 * deletedBatch) {
		hosted = append(hosted, VolumeRef{1000 + i, 1})
		epochOnly = append(epochOnly, 5000+i)
	}
	hosted = append(hosted, VolumeRef{v.ID, v.Incarnation})
	del, err := c.DeletedVolumes(ctx, hosted, epochOnly)
	if err != nil || !slices.Equal(del, []VolumeRef{{v.ID, v.Incarnation}}) {
		t.Fatalf("DeletedVolumes over %d ids: %v %v", len(hosted)+len(epochOnly), del, err)
	}
}

// TestRaceDeleteAndAcquireWriter: a delete and a writer taking the lease at
// the same moment never both win: either the writer holds a volume that
// still exists, or the volume is gone and the writer was refused.
func TestRaceDeleteAndAcquireWriter(t *testing.T) {
	t.Parallel()
	c := newCatalog(t)
	ctx := ctxT(t)
	sixNodes(t, c)
	deletes := 0
	for i := range 20 {
		name := fmt.Sprintf("v%d", i)
		if _, err := c.CreateVolume(ctx, name, 4096, 1<<20); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var delErr, acqErr error
		var lease clientv3.LeaseID
		wg.Add(2)
		go func() { defer wg.Done(); _, _, delErr = c.DeleteVolume(ctx, name) }()
		go func() { defer wg.Done(); lease, _, acqErr = c.AcquireWriter(ctx, name, "db", 10*time.Second) }()
		wg.Wait()
		_, volErr := c.Volume(ctx, name)
		switch {
		case delErr == nil && errors.Is(acqErr, ErrNotFound) && errors.Is(volErr, ErrNotFound):
			deletes++
		case errors.Is(delErr, ErrWriterHeld) && acqErr == nil && volErr == nil:
			if err := c.ReleaseWriter(ctx, lease); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("round %d: delete %v, acquire %v, volume afterwards %v", i, delErr, acqErr, volErr)
		}
	}
	t.Logf("the delete won %d of 20 rounds", deletes)
}

// TestServerDeleteVolumeTellsNodes: DeleteVolume over gRPC refuses an
// unknown volume (NotFound) and one with a writer (FailedPrecondition,
// naming it), and deletes an idle one; a node agent that reports the
// volumes it holds is then told, in its heartbeats, to drop exactly the
// deleted one: never a live volume, nor one the catalog does not know.
func TestServerDeleteVolumeTellsNodes(t *testing.T) {
	t.Parallel()
	cat := newCatalog(t)
	sixNodes(t, cat)
	addr, _ := testServer(t, cat, "", 2*time.Second)
	cli := dialControl(t, addr)
	ctx := ctxT(t)
	a, err := cli.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "a", PgSizeBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	b, err := cli.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "b", PgSizeBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}

	// The node holds segments of a and b, one of a volume a with another
	// incarnation (another catalog's), one of volume 999 (unknown here),
	// and only the epoch of b.
	hb := runAgent(t, addr, "s1",
		[]*pb.VolumeIncarnation{{VolumeId: a.Id, Incarnation: a.Incarnation}, {VolumeId: a.Id, Incarnation: a.Incarnation ^ 1}, {VolumeId: b.Id, Incarnation: b.Incarnation}, {VolumeId: 999, Incarnation: 1}},
		[]uint64{b.Id})

	_, err = cli.DeleteVolume(ctx, &pb.DeleteVolumeRequest{Name: "nope"})
	wantCode(t, err, codes.NotFound, "delete an unknown volume")
	acq, err := cli.AcquireWriter(ctx, &pb.AcquireWriterRequest{Volume: "a", Holder: "w1", TtlMs: 10000})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cli.DeleteVolume(ctx, &pb.DeleteVolumeRequest{Name: "a"})
	wantCode(t, err, codes.FailedPrecondition, "delete a volume with a writer")
	if !strings.Contains(status.Convert(err).Message(), "held by w1") {
		t.Fatalf("the refusal does not name the writer: %v", err)
	}
	// Heartbeats meanwhile tell of no deletion: wait for one that the
	// control plane answered after the refused delete.
	hb.waitAnswered(t, "a heartbeat after the refused delete")
	if told := hb.told(); len(told) != 0 {
		t.Fatalf("told to drop %v before any volume was deleted", told)
	}
	if _, err := cli.ReleaseWriter(ctx, &pb.ReleaseWriterRequest{Lease: acq.Lease}); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.DeleteVolume(ctx, &pb.DeleteVolumeRequest{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if v := resp.GetVolume(); v.GetName() != "a" || v.GetId() != a.Id || v.GetPgs() != 1 || len(v.GetPgList()) != 1 {
		t.Fatalf("DeleteVolume answered %v", v)
	}
	// Two heartbeats' worth: each names a with its incarnation, and only
	// that.
	hb.waitAnswered(t, "a heartbeat after the delete")
	hb.waitAnswered(t, "a second heartbeat after the delete")
	told := hb.told()
	if len(told) < 2 {
		t.Fatalf("told of deletions %d times in two heartbeats, want every time", len(told))
	}
	want := fmt.Sprintf("[%d/%x]", a.Id, a.Incarnation)
	for _, got := range told {
		if got != want {
			t.Fatalf("told to drop %s; want only %s (a^1 is another incarnation, b=%d is live, 999 unknown)", got, want, b.Id)
		}
	}
	list, err := cli.ListVolumes(ctx, &pb.ListVolumesRequest{})
	if err != nil || len(list.Volumes) != 1 || list.Volumes[0].Name != "b" {
		t.Fatalf("ListVolumes after the delete: %v %v", list, err)
	}
}

// agentProbe is a node agent whose node reports fixed volumes, and that
// notes what its heartbeats are told.
type agentProbe struct {
	mu        sync.Mutex
	asked     int      // heartbeats about to be sent (Hosted calls)
	deletions []string // each OnDeleted call, as [id/incarnation ...]
}

// runAgent runs a node agent for node id against the control plane at
// addr, reporting hosted and epochOnly, until the test ends.
func runAgent(t *testing.T, addr, id string, hosted []*pb.VolumeIncarnation, epochOnly []uint64) *agentProbe {
	t.Helper()
	p := &agentProbe{}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		RunNodeAgent(ctx, addr, AgentNode{ID: id, AZ: "a", Addr: "127.0.0.1:7" + id, CapacityBytes: 1 << 30,
			Hosted: func() ([]*pb.VolumeIncarnation, []uint64) {
				p.mu.Lock()
				defer p.mu.Unlock()
				p.asked++
				return hosted, epochOnly
			},
			OnDeleted: func(refs []*pb.VolumeIncarnation) {
				parts := make([]string, len(refs))
				for i, r := range refs {
					parts[i] = fmt.Sprintf("%d/%x", r.VolumeId, r.Incarnation)
				}
				p.mu.Lock()
				defer p.mu.Unlock()
				p.deletions = append(p.deletions, "["+strings.Join(parts, " ")+"]")
			},
		}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	t.Cleanup(func() { stop(); <-done })
	return p
}

// waitAnswered waits until a heartbeat that starts after the call has been
// answered and its answer handled: the agent asks Hosted for the next one
// only after it has handed the last answer's deletions to OnDeleted.
func (p *agentProbe) waitAnswered(t *testing.T, what string) {
	t.Helper()
	p.mu.Lock()
	from := p.asked
	p.mu.Unlock()
	wait.For(t, 10*time.Second, what, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		// Heartbeat from+1 starts after the call; from+2 starts after
		// from+1's answer was handled.
		return p.asked >= from+2
	})
}

// told returns what heartbeats have told of deletions, and forgets it.
func (p *agentProbe) told() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.deletions
	p.deletions = nil
	return out
}
