package control

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestExternalEtcd is the --etcd path: a separate etcd (here another
// embedded one), and a catalog whose client points at its URL. It also
// checks that its data directory is locked while it runs and that a restart
// on the same directory, on other ports, keeps the catalog.
func TestExternalEtcd(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "etcd")
	e, urls, err := StartEmbedded(dir, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(urls) != 1 || !strings.HasPrefix(urls[0], "http://127.0.0.1:") {
		t.Fatalf("urls = %v", urls)
	}

	// A second server on the same directory is refused.
	if _, _, err := StartEmbedded(dir, "", ""); err == nil || !strings.Contains(err.Error(), "in use by another running control plane") {
		t.Fatalf("second server on the same dir: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Open(ctx, urls, "")
	if err != nil {
		t.Fatal(err)
	}
	sixNodes(t, c)
	vol, err := c.CreateVolume(ctx, "main", 4096, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	pg, err := c.PG(ctx, vol.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	checkPG(t, c, pg)
	resp, err := c.Client().Get(ctx, DefaultPrefix+"volumes/main")
	if err != nil || len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), `"version":1`) {
		t.Fatalf("raw volume record: %v %v", resp, err)
	}
	c.Close()
	e.Close()

	// Restart on the same dir, other ports: the catalog is still there.
	e2, urls2, err := StartEmbedded(dir, "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	c2, err := Open(ctx, urls2, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if v, err := c2.Volume(ctx, "main"); err != nil || v.ID != vol.ID {
		t.Fatalf("after restart: %+v %v", v, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "etcd.log")); err != nil {
		t.Fatalf("etcd log: %v", err)
	} else {
		t.Logf("etcd.log: %d bytes", fi.Size())
	}
}

func TestStartEmbeddedErrors(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, _, err = StartEmbedded(t.TempDir(), l.Addr().String(), "")
	if err == nil || !strings.Contains(err.Error(), "its client "+l.Addr().String()+" address is in use") {
		t.Fatalf("taken client port: %v", err)
	}
	if _, _, err := StartEmbedded(t.TempDir(), "nonsense:port:x", ""); err == nil || !strings.Contains(err.Error(), "bad etcd client address") {
		t.Fatalf("bad address: %v", err)
	}
	if _, _, err := StartEmbedded("", "", ""); err == nil {
		t.Fatal("no dir accepted")
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := Open(ctx, []string{"http://" + l.Addr().String()}, ""); err == nil || !strings.Contains(err.Error(), "does not answer") {
		t.Fatalf("open against a non-etcd port: %v", err)
	}
	if _, err := Open(ctx, nil, ""); err == nil {
		t.Fatal("open with no endpoints")
	}
}
