package dbserver

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/instance"
	"github.com/borealis-db/borealis/internal/sqlvfs"
	"github.com/borealis-db/borealis/internal/storage"
	"github.com/borealis-db/borealis/internal/volume"
)

// testInstance is a writer instance serving the HTTP API over a real volume
// on six in-process storage nodes (two per AZ). It skips the control plane:
// no lease, no recovery, epoch 1 of a fresh volume.
type testInstance struct {
	*Instance
	URL    string
	Client *http.Client
	nodes  []*testNode
}

// testNode is one of the instance's storage nodes, which a fault test may
// stop (as a crash: nothing more is acknowledged) and start again on the
// same directory and address.
type testNode struct {
	t    *testing.T
	cfg  storage.Config
	addr string
	node *storage.Node
}

// start serves on lis, or when it is nil on the node's address again.
func (n *testNode) start(lis net.Listener) {
	n.t.Helper()
	node, err := storage.Open(n.cfg)
	if err != nil {
		n.t.Fatal(err)
	}
	if lis == nil {
		if lis, err = net.Listen("tcp", n.addr); err != nil {
			node.Close()
			n.t.Fatal(err)
		}
	}
	go node.Serve(lis)
	n.node = node
}

func (n *testNode) stop() {
	if n.node != nil {
		n.node.Close()
		n.node = nil
	}
}

// startTestInstance starts it. cfg's Volume and Control may be left empty;
// opts configure the SQL database (a short BusyTimeout, for instance).
// Everything is closed when the test ends.
func startTestInstance(t *testing.T, cfg Config, opts sqlvfs.Options) *testInstance {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	var members []volume.Member
	var nodes []*testNode
	for i, az := range []string{"a", "a", "b", "b", "c", "c"} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := lis.Addr().String()
		id := fmt.Sprintf("s%d", i)
		n := &testNode{t: t, cfg: storage.Config{ID: id, AZ: az, Dir: t.TempDir(), Logger: logger}, addr: addr}
		n.start(lis)
		t.Cleanup(n.stop)
		nodes = append(nodes, n)
		members = append(members, volume.Member{NodeID: id, AZ: az, Addr: addr})
	}
	vol, err := volume.Open(context.Background(), volume.Config{VolumeID: 1, Epoch: 1, PageSize: 4096,
		Placement: func(uint32) (volume.Membership, error) { return volume.OneSet(members), nil }, Logger: logger,
		WriteTimeout: cfg.WriteTimeout})
	if err != nil {
		t.Fatal(err)
	}
	opts.PageSize = 4096
	db, err := sqlvfs.OpenDB(vol, withPolicy(opts))
	if err != nil {
		vol.Close()
		t.Fatal(err)
	}
	if cfg.Volume == "" {
		cfg.Volume = "v"
	}
	if cfg.Control == "" {
		// Nothing listens there; only lease and recovery would call it.
		cfg.Control = "127.0.0.1:1"
	}
	cfg.Logger = logger
	if err := cfg.defaults(); err != nil {
		t.Fatal(err)
	}
	// A writer serving db as it is: no lease, no recovery (it sizes the
	// pools as a writer does).
	w := instance.NewOpenWriter(writerConfig(cfg, noControl{}), db, vol)
	s := &Instance{cfg: cfg, log: logger, w: w, role: writerRole{w}}
	// Cleanups run last in, first out: the server stops before the
	// database closes, and the database before the storage nodes.
	t.Cleanup(func() { w.Close() })
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return &testInstance{Instance: s, URL: srv.URL, Client: srv.Client(), nodes: nodes}
}

// noControl is the control plane of a test instance that never calls it.
type noControl struct{ pb.ControlClient }

// notReady makes the instance answer as a writer that does not serve, with
// status st, until resume is called: it refuses with what
// instance.Writer.Readable and Writable refuse with then, through the same
// mapping to API errors. Call both between requests.
func (ti *testInstance) notReady(st string) (resume func()) {
	prev := ti.role
	ti.role = notReadyRole{role: prev, err: &instance.NotReadyError{Volume: ti.cfg.Volume, Status: st}}
	return func() { ti.role = prev }
}

// notReadyRole is a role that does not serve.
type notReadyRole struct {
	role
	err *instance.NotReadyError
}

func (r notReadyRole) readable() (*sqlvfs.DB, *APIError) { return nil, writerRefusal(r.err) }

func (r notReadyRole) writable(context.Context) (*sqlvfs.DB, *APIError) {
	return nil, writerRefusal(r.err)
}

func (r notReadyRole) health(h *Health) {
	r.role.health(h)
	h.Ready, h.Status = false, r.err.Status
}
