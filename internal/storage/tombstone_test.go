package storage

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/wait"
)

// controlPlane is a control plane over an embedded etcd in dir, serving
// until the test ends or stop.
type controlPlane struct {
	cat  *control.Catalog
	addr string
	stop func()
}

func startControlPlane(t *testing.T, dir string) *controlPlane {
	t.Helper()
	e, urls, err := control.StartEmbedded(dir, "", "")
	if err != nil {
		t.Fatal(err)
	}
	cat, err := control.Open(context.Background(), urls, "")
	if err != nil {
		e.Close()
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := control.NewServer(cat, time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	gs := grpc.NewServer()
	pb.RegisterControlServer(gs, srv)
	go gs.Serve(lis)
	var once sync.Once
	cp := &controlPlane{cat: cat, addr: lis.Addr().String()}
	cp.stop = func() {
		once.Do(func() {
			srv.Stop()
			gs.Stop()
			cat.Close()
			e.Close()
			<-e.Server.StopNotify()
		})
	}
	t.Cleanup(cp.stop)
	// Six live nodes, so that volumes can be placed.
	ctx := context.Background()
	for i, az := range []string{"a", "a", "b", "b", "c", "c"} {
		id := fmt.Sprintf("s%d", i+1)
		if err := cat.RegisterNode(ctx, control.Node{ID: id, AZ: az, Addr: "127.0.0.1:1", CapacityBytes: 1 << 30}); err != nil {
			t.Fatal(err)
		}
		if err := cat.Heartbeat(ctx, id, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	return cp
}

// nodeAgent runs the control plane agent of node n against addr, wired as
// `borealis storage` wires it, and counts its heartbeats.
type nodeAgent struct {
	mu    sync.Mutex
	asked int
	stop  func()
}

func runNodeAgent(t *testing.T, n *Node, addr string) *nodeAgent {
	t.Helper()
	a := &nodeAgent{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		control.RunNodeAgent(ctx, addr, control.AgentNode{ID: n.cfg.ID, AZ: n.cfg.AZ, Addr: "127.0.0.1:1", CapacityBytes: 1 << 30,
			OnEpochs: func(epochs map[uint64]uint64) {
				if err := n.ObserveEpochs(epochs); err != nil {
					t.Error(err)
				}
			},
			Hosted: func() ([]*pb.VolumeIncarnation, []uint64) {
				a.mu.Lock()
				a.asked++
				a.mu.Unlock()
				return n.HostedVolumes()
			},
			OnDeleted: func(vols []*pb.VolumeIncarnation) {
				if err := n.DropVolumes(vols); err != nil {
					t.Error(err)
				}
			},
		}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	var once sync.Once
	a.stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(a.stop)
	return a
}

// heartbeats waits for k heartbeats that started after the call to be
// answered and handled (the agent asks Hosted for the next heartbeat only
// after the last one's deletions were dropped).
func (a *nodeAgent) heartbeats(t *testing.T, k int) {
	t.Helper()
	a.mu.Lock()
	from := a.asked
	a.mu.Unlock()
	wait.For(t, 20*time.Second, fmt.Sprintf("%d heartbeats", k), func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.asked >= from+k+1
	})
}

// TestTombstonesOfAnotherCatalog is the review's scenario: volumes main
// (id 1) and app (id 2) have segments on a node; the control plane's
// directory is lost, and a fresh etcd gives main id 1 again and ids 2..5 to
// benchmark volumes, which are deleted. Heartbeating to that control plane
// (or to any other cluster's), the node drops nothing: the tombstones of ids
// 2..5 are of other incarnations. Back with its own control plane, it drops
// app once app is deleted there, and keeps main.
func TestTombstonesOfAnotherCatalog(t *testing.T) {
	ctx := context.Background()
	ownDir := filepath.Join(t.TempDir(), "control")
	own := startControlPlane(t, ownDir)
	mainVol, err := own.cat.CreateVolume(ctx, "main", dropPageSize, dropPageSize*dropPages)
	if err != nil {
		t.Fatal(err)
	}
	app, err := own.cat.CreateVolume(ctx, "app", dropPageSize, dropPageSize*dropPages)
	if err != nil {
		t.Fatal(err)
	}
	if mainVol.ID != 1 || app.ID != 2 {
		t.Fatalf("volume ids %d and %d, want 1 and 2", mainVol.ID, app.ID)
	}
	n, err := Open(Config{ID: "s1", AZ: "a", Dir: t.TempDir(), GossipInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// Closed after the agents stop (cleanups run last first).
	t.Cleanup(func() { n.Close() })
	rng := rand.New(rand.NewPCG(5, 6))
	for _, v := range []control.Volume{mainVol, app} {
		w := &dropWriter{n: n, vol: v.ID, inc: v.Incarnation, rng: rng}
		if err := w.append(100); err != nil {
			t.Fatal(err)
		}
	}
	want := fmt.Sprintf("1/%x 2/%x | []", mainVol.Incarnation, app.Incarnation)
	if got := hostedString(n); got != want {
		t.Fatalf("HostedVolumes = %q, want %q", got, want)
	}
	keysMain, keysApp := volumeKeyCount(t, n, 1), volumeKeyCount(t, n, 2)
	own.stop()

	// A fresh etcd: main is id 1 again, benchmark volumes 2..5 come and go.
	fresh := startControlPlane(t, filepath.Join(t.TempDir(), "fresh"))
	if v, err := fresh.cat.CreateVolume(ctx, "main", 4096, 1<<20); err != nil || v.ID != 1 {
		t.Fatalf("main in the fresh catalog: %+v %v", v, err)
	}
	for i := range 4 {
		name := fmt.Sprintf("bench-c%d", i)
		v, err := fresh.cat.CreateVolume(ctx, name, 4096, 1<<20)
		if err != nil || v.ID != uint64(2+i) {
			t.Fatalf("%s: %+v %v", name, v, err)
		}
		if _, _, err := fresh.cat.DeleteVolume(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	agent := runNodeAgent(t, n, fresh.addr)
	agent.heartbeats(t, 2)
	if got := hostedString(n); got != want {
		t.Fatalf("HostedVolumes after heartbeats to another catalog = %q, want %q", got, want)
	}
	if k1, k2 := volumeKeyCount(t, n, 1), volumeKeyCount(t, n, 2); k1 != keysMain || k2 != keysApp {
		t.Fatalf("keys of main and app after heartbeats to another catalog: %d and %d, were %d and %d", k1, k2, keysMain, keysApp)
	}
	agent.stop()
	fresh.stop()

	// Its own control plane again (same directory): app is deleted there.
	own = startControlPlane(t, ownDir)
	if _, _, err := own.cat.DeleteVolume(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	runNodeAgent(t, n, own.addr)
	want = fmt.Sprintf("1/%x | []", mainVol.Incarnation)
	wait.For(t, 20*time.Second, "the node to drop app", func() bool { return hostedString(n) == want })
	if k1, k2 := volumeKeyCount(t, n, 1), volumeKeyCount(t, n, 2); k1 != keysMain || k2 != 0 {
		t.Fatalf("keys of main and app after app's delete: %d and %d, want %d and 0", k1, k2, keysMain)
	}
}
