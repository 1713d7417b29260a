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
}

// startTestInstance starts it. cfg's Volume and Control may be left empty;
// opts configure the SQL database (a short BusyTimeout, for instance).
// Everything is closed when the test ends.
func startTestInstance(t *testing.T, cfg Config, opts sqlvfs.Options) *testInstance {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	var members []volume.Member
	for i, az := range []string{"a", "a", "b", "b", "c", "c"} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("s%d", i)
		n, err := storage.Open(storage.Config{ID: id, AZ: az, Dir: t.TempDir(), Logger: logger})
		if err != nil {
			lis.Close()
			t.Fatal(err)
		}
		go n.Serve(lis)
		t.Cleanup(func() { n.Close() })
		members = append(members, volume.Member{NodeID: id, AZ: az, Addr: lis.Addr().String()})
	}
	vol, err := volume.Open(context.Background(), volume.Config{VolumeID: 1, Epoch: 1, PageSize: 4096,
		Placement: func(uint32) ([]volume.Member, error) { return members, nil }, Logger: logger})
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
	// As Instance.open sizes them.
	db.Writer.SetMaxOpenConns(cfg.MaxWriters)
	db.Writer.SetMaxIdleConns(cfg.MaxWriters)
	db.Reader.SetMaxIdleConns(cfg.MaxWriters)
	db.Reader.SetMaxOpenConns(cfg.MaxWriters)
	s := &Instance{cfg: cfg, log: logger, status: "ready", db: db, vol: vol}
	s.closeVol = func() { db.Close(); vol.Close() }
	s.ready.Store(true)
	// Cleanups run last in, first out: the server stops before the
	// database closes, and the database before the storage nodes.
	t.Cleanup(s.shutdown)
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return &testInstance{Instance: s, URL: srv.URL, Client: srv.Client()}
}
