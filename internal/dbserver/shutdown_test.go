package dbserver

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/sqlvfs"
	"github.com/borealis-db/borealis/internal/storage"
	"github.com/borealis-db/borealis/internal/volume"
)

// Queries racing with the instance's shutdown (as after a lost lease) get
// either an answer or not_ready: never a crash or an internal error. Run
// with -race.
func TestRequestsDuringShutdown(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	var members []volume.Member
	for i, az := range []string{"a", "a", "b", "b", "c", "c"} {
		lis, _ := net.Listen("tcp", "127.0.0.1:0")
		id := fmt.Sprintf("s%d", i)
		n, err := storage.Open(storage.Config{ID: id, AZ: az, Dir: t.TempDir(), Logger: logger})
		if err != nil {
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
	db, err := sqlvfs.OpenDB(vol, sqlvfs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Volume: "v", Control: "127.0.0.1:1", Logger: logger}
	cfg.defaults()
	s := &Instance{cfg: cfg, log: logger, status: "ready", db: db, vol: vol}
	s.closeVol = func() { db.Close(); vol.Close() }
	s.ready.Store(true)
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				resp, err := http.Post(srv.URL+"/v1/query", "application/json", strings.NewReader(`{"sql":"SELECT 1"}`))
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				mu.Lock()
				statuses[resp.StatusCode]++
				mu.Unlock()
			}
		}()
	}
	time.Sleep(5 * time.Millisecond)
	s.shutdown()
	wg.Wait()
	t.Logf("replies by HTTP status: %v", statuses)
	for st := range statuses {
		if st != http.StatusOK && st != http.StatusServiceUnavailable {
			t.Fatalf("a query during shutdown got HTTP %d (all: %v)", st, statuses)
		}
	}
}
