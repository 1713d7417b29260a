// Package e2e runs Borealis as real OS processes on loopback: real gRPC,
// real Pebble, real fsync, and faults made with real signals.
package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/volume"
)

// binary is the borealis binary built once for the package.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "borealis-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "borealis")
	build := exec.Command("go", "build", "-o", binary, "github.com/borealis-db/borealis/cmd/borealis")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build borealis:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const pageSize = 4096

// startNodes starts 6 storage node processes, s1..s6 in AZs a,a,b,b,c,c.
func startNodes(t *testing.T) *cluster.Cluster {
	t.Helper()
	cl := cluster.New(binary, t.TempDir())
	t.Cleanup(func() {
		cl.Stop(5 * time.Second)
		logTailsOnFailure(t, cl)
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cl.StartStorageNodes(ctx, 6); err != nil {
		t.Fatal(err)
	}
	return cl
}

func members(cl *cluster.Cluster) []volume.Member {
	var out []volume.Member
	for _, c := range cl.Components() {
		if c.Role == "storage" {
			out = append(out, volume.Member{NodeID: c.ID, AZ: c.AZ, Addr: c.Addr})
		}
	}
	return out
}

type volumeOpts struct {
	pagesPerPG   uint64
	writeTimeout time.Duration
	volumeID     uint64
	epoch        uint64
}

func openVolume(t *testing.T, cl *cluster.Cluster, o volumeOpts) *volume.Client {
	t.Helper()
	if o.pagesPerPG == 0 {
		o.pagesPerPG = 64
	}
	if o.writeTimeout == 0 {
		o.writeTimeout = 20 * time.Second
	}
	if o.volumeID == 0 {
		o.volumeID = 7
	}
	if o.epoch == 0 {
		o.epoch = 1
	}
	ms := members(cl)
	v, err := volume.Open(context.Background(), volume.Config{
		VolumeID:     o.volumeID,
		Epoch:        o.epoch,
		PageSize:     pageSize,
		PagesPerPG:   o.pagesPerPG,
		Placement:    func(uint32) (volume.Membership, error) { return volume.OneSet(ms), nil },
		WriteTimeout: o.writeTimeout,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// image is a page filled with a pattern that names the page and version.
func image(page uint64, version int) []byte {
	b := make([]byte, pageSize)
	for i := range b {
		b[i] = byte(int(page)*31 + version*7 + i/97)
	}
	copy(b, fmt.Sprintf("page %d version %d", page, version))
	return b
}

// freeListener holds a loopback port for the rest of the test.
func freeListener(t *testing.T) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String(), nil
}

// logTailsOnFailure puts the end of every process's log into a failed test's
// output, so a failure seen only in CI can still be understood.
func logTailsOnFailure(t *testing.T, cl *cluster.Cluster) {
	if !t.Failed() {
		return
	}
	for _, c := range cl.Components() {
		data, err := os.ReadFile(c.Log)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		t.Logf("--- last lines of %s ---\n%s", c.Log, strings.Join(lines, "\n"))
	}
}
