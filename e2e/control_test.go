package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/control"
)

// cpProc is a borealis process started by the control-plane tests.
type cpProc struct {
	cmd  *exec.Cmd
	out  *cpBuffer
	done chan struct{}
}

type cpBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *cpBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *cpBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// cpStart starts the binary with args; it dies with the test process
// (Pdeathsig) and is killed when the test ends.
func cpStart(t *testing.T, args ...string) *cpProc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	p := &cpProc{cmd: cmd, out: &cpBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("output of %v:\n%s", args, p.out)
		}
	})
	return p
}

func (p *cpProc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// wait waits for the process to exit and returns its output.
func (p *cpProc) wait(t *testing.T, within time.Duration) string {
	t.Helper()
	select {
	case <-p.done:
		return p.out.String()
	case <-time.After(within):
		t.Fatalf("process did not exit within %s; output:\n%s", within, p.out)
		return ""
	}
}

func cpFreeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// cpServing waits for the process to log line, and reports false if it
// exits first.
func cpServing(t *testing.T, p *cpProc, line string) bool {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.out.String(), line) {
		select {
		case <-p.done:
			return false
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q within 10s:\n%s", line, p.out)
		}
	}
	return true
}

func cpDial(t *testing.T, addr string) pb.ControlClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewControlClient(conn)
}

// cpWaitNodes polls Status until ok holds for the nodes' states by id, and
// returns how long it took.
func cpWaitNodes(t *testing.T, cli pb.ControlClient, within time.Duration, what string, ok func(map[string]string) bool) time.Duration {
	t.Helper()
	start := time.Now()
	var last any
	for time.Since(start) < within {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := cli.Status(ctx, &pb.StatusRequest{})
		cancel()
		if err != nil {
			last = err
		} else {
			last = st
			m := map[string]string{}
			for _, n := range st.Nodes {
				m[n.Id] = n.State
			}
			if ok(m) {
				return time.Since(start)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("not %s within %s; last status: %v", what, within, last)
	return 0
}

func cpUp(m map[string]string) int {
	n := 0
	for _, s := range m {
		if s == "up" {
			n++
		}
	}
	return n
}

// TestControlPlaneTracksStorageNodes runs `borealis control` and six
// `borealis storage --control` processes: all six come up, one SIGKILLed is
// down within the heartbeat timeout, and up again once restarted. A volume
// created through the control plane is placed 2 per AZ on the nodes'
// actual addresses.
func TestControlPlaneTracksStorageNodes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctlAddr := cpFreeAddr(t)
	ctl := cpStart(t, "control", "--listen", ctlAddr, "--dir", filepath.Join(dir, "control"), "--heartbeat-timeout", "2s")
	cli := cpDial(t, ctlAddr)

	type node struct{ id, az, addr string }
	var nodes []node
	procs := map[string]*cpProc{}
	// A port picked free may be taken before the node binds it (by a
	// parallel test, or by the control plane's embedded etcd picking its
	// own); the node then exits at once and is started on another.
	startNode := func(n *node) {
		for try := 0; ; try++ {
			p := cpStart(t, "storage", "--id", n.id, "--az", n.az, "--listen", n.addr, "--dir", filepath.Join(dir, n.id), "--procs", "1", "--control", ctlAddr)
			procs[n.id] = p
			if cpServing(t, p, "storage node serving") {
				return
			}
			if try == 3 || !strings.Contains(p.out.String(), "address already in use") {
				t.Fatalf("%s exited at start:\n%s", n.id, p.out)
			}
			t.Logf("%s's port %s was taken; starting it on another", n.id, n.addr)
			n.addr = cpFreeAddr(t)
		}
	}
	for i, az := range []string{"a", "a", "b", "b", "c", "c"} {
		nodes = append(nodes, node{fmt.Sprintf("s%d", i+1), az, cpFreeAddr(t)})
	}
	for i := range nodes {
		startNode(&nodes[i])
	}
	d := cpWaitNodes(t, cli, 15*time.Second, "6 nodes up", func(m map[string]string) bool { return cpUp(m) == 6 })
	t.Logf("6 nodes up %s after start", d)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	vol, err := cli.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "main", PgSizeBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	addrOf := map[string]string{}
	for _, n := range nodes {
		addrOf[n.id] = n.addr
	}
	perAZ := map[string]int{}
	seen := map[string]bool{}
	for _, s := range vol.PgList[0].Segments {
		if seen[s.Node] || addrOf[s.Node] != s.Addr {
			t.Fatalf("bad segment %v in %v", s, vol.PgList[0])
		}
		seen[s.Node] = true
		perAZ[s.Az]++
	}
	if len(seen) != 6 || perAZ["a"] != 2 || perAZ["b"] != 2 || perAZ["c"] != 2 {
		t.Fatalf("PG 0 not 2 per AZ on distinct nodes: %v", vol.PgList[0])
	}

	// SIGKILL s4: down within the timeout (2s) plus etcd's lease check.
	procs["s4"].kill()
	d = cpWaitNodes(t, cli, 4*time.Second, "s4 down", func(m map[string]string) bool { return m["s4"] == "down" && cpUp(m) == 5 })
	t.Logf("s4 down %s after SIGKILL (heartbeat timeout 2s)", d)
	startNode(&nodes[3])
	d = cpWaitNodes(t, cli, 10*time.Second, "s4 up again", func(m map[string]string) bool { return cpUp(m) == 6 })
	t.Logf("s4 up %s after restart", d)

	// SIGTERM stops the control plane cleanly, releasing its directory.
	ctl.cmd.Process.Signal(syscall.SIGTERM)
	out := ctl.wait(t, 10*time.Second)
	if ctl.cmd.ProcessState.ExitCode() != 0 || !strings.Contains(out, "control plane stopping") {
		t.Fatalf("control plane exit %d on SIGTERM; output:\n%s", ctl.cmd.ProcessState.ExitCode(), out)
	}
	// It resumes on the same directory with its catalog.
	cpStart(t, "control", "--listen", ctlAddr, "--dir", filepath.Join(dir, "control"), "--heartbeat-timeout", "2s")
	cpWaitNodes(t, cli, 10*time.Second, "6 nodes up after the control plane restarted", func(m map[string]string) bool { return cpUp(m) == 6 })
	got, err := cli.GetVolume(ctx, &pb.GetVolumeRequest{Name: "main"})
	if err != nil || got.Id != vol.Id || len(got.PgList) != 1 {
		t.Fatalf("volume after restart: %v %v", got, err)
	}
}

// TestControlPlaneRefusesBadSetups: a directory in use by another control
// plane, and a taken port, are refused with clear messages.
func TestControlPlaneRefusesBadSetups(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := cpFreeAddr(t)
	cpStart(t, "control", "--listen", addr, "--dir", dir)
	cli := cpDial(t, addr)
	cpWaitNodes(t, cli, 10*time.Second, "serving", func(map[string]string) bool { return true })

	out := cpStart(t, "control", "--listen", cpFreeAddr(t), "--dir", dir).wait(t, 10*time.Second)
	if !strings.Contains(out, "in use by another running control plane") {
		t.Fatalf("second control plane on the same dir: %s", out)
	}
	out = cpStart(t, "control", "--listen", addr, "--dir", t.TempDir()).wait(t, 10*time.Second)
	if !strings.Contains(out, "cannot listen on "+addr+": the address is in use") {
		t.Fatalf("taken port: %s", out)
	}
	out = cpStart(t, "control", "--listen", cpFreeAddr(t)).wait(t, 10*time.Second)
	if !strings.Contains(out, "--dir") {
		t.Fatalf("no dir: %s", out)
	}
}

// TestControlPlaneExternalEtcd runs `borealis control --etcd URL` against a
// separate etcd (embedded in the test process) and creates a volume through
// it; the catalog lands in that etcd.
func TestControlPlaneExternalEtcd(t *testing.T) {
	t.Parallel()
	e, urls, err := control.StartEmbedded(t.TempDir(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	addr := cpFreeAddr(t)
	cpStart(t, "control", "--listen", addr, "--etcd", strings.Join(urls, ","), "--heartbeat-timeout", "2s")
	cli := cpDial(t, addr)
	cpWaitNodes(t, cli, 10*time.Second, "serving", func(map[string]string) bool { return true })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i, az := range []string{"a", "a", "b", "b", "c", "c"} {
		id := fmt.Sprintf("s%d", i+1)
		if _, err := cli.RegisterNode(ctx, &pb.RegisterNodeRequest{Id: id, Az: az, Addr: "127.0.0.1:1" + fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Heartbeat(ctx, &pb.HeartbeatRequest{Id: id}); err != nil {
			t.Fatal(err)
		}
	}
	vol, err := cli.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "ext"})
	if err != nil {
		t.Fatal(err)
	}
	if len(vol.PgList) != 1 || len(vol.PgList[0].Segments) != 6 {
		t.Fatalf("volume: %v", vol)
	}
	cat, err := control.Open(ctx, urls, "")
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	v, err := cat.Volume(ctx, "ext")
	if err != nil || v.ID != vol.Id {
		t.Fatalf("the volume in the external etcd: %+v %v", v, err)
	}
}
