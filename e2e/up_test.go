package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/volume"
)

// upProcess is a running `borealis up` and what it printed.
type upProcess struct {
	t   *testing.T
	cmd *exec.Cmd
	dir string
	mu  sync.Mutex
	out bytes.Buffer
	end chan struct{}
}

func (u *upProcess) output() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.out.String()
}

// freeBasePort finds 11 consecutive free loopback ports: control, s1..s6,
// the writer, the replica r1 and the router's two endpoints (up's
// default cluster). They are taken below Linux's ephemeral range (32768 up),
// where no port picked by the kernel (":0" listeners, embedded etcd,
// outgoing connections) can land on them between the check and the bind.
func freeBasePort(t *testing.T) int {
	for try := 0; try < 50; try++ {
		base := 20000 + rand.IntN(12000)
		ok := true
		// up's ports run from the base to base+37 (the control planes'
		// are at the top).
		for p := base; p <= base+37 && ok; p++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				ok = false
				continue
			}
			l.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatal("no 38 consecutive free ports")
	return 0
}

func startUp(t *testing.T, dir string, args ...string) *upProcess {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"up", "--dir", dir}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	u := &upProcess{t: t, cmd: cmd, dir: dir, end: make(chan struct{})}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			u.mu.Lock()
			u.out.WriteString(sc.Text() + "\n")
			u.mu.Unlock()
		}
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); pw.Close(); close(u.end) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-u.end:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
		}
	})
	return u
}

// waitReady waits for cluster.json and returns it.
func (u *upProcess) waitReady() *cluster.File {
	u.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if f, err := cluster.ReadFile(filepath.Join(u.dir, "cluster.json")); err == nil {
			return f
		}
		select {
		case <-u.end:
			u.t.Fatalf("borealis up exited:\n%s", u.output())
		case <-time.After(100 * time.Millisecond):
		}
	}
	u.t.Fatalf("cluster.json never appeared:\n%s", u.output())
	return nil
}

func controlClient(t *testing.T, f *cluster.File) pb.ControlClient {
	t.Helper()
	addrs := f.ControlAddrs()
	if addrs == "" {
		t.Fatal("cluster.json lists no control plane")
	}
	conn, err := control.Dial(addrs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewControlClient(conn)
}

func nodeState(t *testing.T, ctl pb.ControlClient, id string) string {
	st, err := ctl.Status(context.Background(), &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st.Nodes {
		if n.Id == id {
			return n.State
		}
	}
	return "unknown"
}

func waitState(t *testing.T, ctl pb.ControlClient, id, want string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for nodeState(t, ctl, id) != want {
		if time.Since(start) > within {
			t.Fatalf("%s not %s after %s", id, want, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start)
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// checkClusterGone fails t unless the `up` of dir left no process of f
// running and removed cluster.json and up.sock.
func checkClusterGone(t *testing.T, dir string, f *cluster.File) {
	t.Helper()
	for _, c := range f.Components {
		if alive(c.Pid) {
			t.Fatalf("%s (pid %d) still runs after up stopped", c.ID, c.Pid)
		}
	}
	for _, name := range []string{"cluster.json", "up.sock"} {
		if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Fatalf("%s outlives the cluster: %v", name, err)
		}
	}
}

// placedTwoPerAZ says whether segments, given as (node, AZ) pairs, are 6
// distinct nodes, 2 in each of AZs a, b and c.
func placedTwoPerAZ(nodeAZ [][2]string) bool {
	perAZ, nodes := map[string]int{}, map[string]bool{}
	for _, s := range nodeAZ {
		nodes[s[0]] = true
		perAZ[s[1]]++
	}
	return len(nodeAZ) == 6 && len(nodes) == 6 && perAZ["a"] == 2 && perAZ["b"] == 2 && perAZ["c"] == 2
}

// checkPlacement fails the test unless every PG is placed 2 per AZ on
// distinct nodes.
func checkPlacement(t *testing.T, pgs []*pb.PGInfo) {
	t.Helper()
	for _, pg := range pgs {
		var segs [][2]string
		for _, s := range pg.Segments {
			segs = append(segs, [2]string{s.Node, s.Az})
		}
		if !placedTwoPerAZ(segs) {
			t.Fatalf("PG %d placed %v", pg.Pg, pg.Segments)
		}
	}
}

// volumeOn opens the writer's volume client on the volume as the catalog
// places it, growing it through the control plane.
func volumeOn(t *testing.T, ctl pb.ControlClient, name string) *volume.Client {
	t.Helper()
	cfg := volume.Config{Epoch: 1, WriteTimeout: 10 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := volume.NewFromControl(ctl, name).Configure(t.Context(), &cfg); err != nil {
		t.Fatal(err)
	}
	v, err := volume.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// rawVolume is a volume beside "main" (which `up`'s writer owns) for tests
// that drive a volume client directly; it has main's PG size.
const rawVolume = "raw"

func createRaw(t *testing.T, ctl pb.ControlClient) {
	t.Helper()
	ctx := context.Background()
	main, err := ctl.GetVolume(ctx, &pb.GetVolumeRequest{Name: "main"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: rawVolume, PageSize: main.PageSize, PgSizeBytes: main.PgSizeBytes}); err != nil {
		t.Fatal(err)
	}
}

// TestVolumeGrowsAPGAtATime writes past the first PG of a volume with small
// PGs: the writer asks the control plane for each new PG, every PG is placed
// 2 per AZ on distinct nodes, a transaction spanning a PG boundary commits,
// and reads across the boundaries return what was written. Reading beyond
// the volume reads zeros and grows nothing.
func TestVolumeGrowsAPGAtATime(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	u := startUp(t, dir, "--base-port", fmt.Sprint(freeBasePort(t)), "--pg-size", "64KiB")
	ctl := controlClient(t, u.waitReady())
	createRaw(t, ctl)
	v := volumeOn(t, ctl, rawVolume)
	defer v.Close()
	ctx := context.Background()
	// Another party follows the volume through the catalog's watch.
	follower := volume.NewFromControl(ctl, rawVolume)
	if err := follower.Configure(t.Context(), &volume.Config{}); err != nil {
		t.Fatal(err)
	}
	// 16 pages per PG: pages 16 and 17 straddle PGs 0 and 1; page 70 is in PG 4.
	writes := []volume.PageWrite{{Page: 16, New: image(16, 1)}, {Page: 17, New: image(17, 1)}}
	if _, err := v.Commit(ctx, writes); err != nil {
		t.Fatal(err)
	}
	lsn, err := v.Commit(ctx, []volume.PageWrite{{Page: 70, New: image(70, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	vi, err := ctl.GetVolume(ctx, &pb.GetVolumeRequest{Name: rawVolume})
	if err != nil {
		t.Fatal(err)
	}
	if vi.Pgs != 5 || vi.GeometryEpoch != 5 || len(vi.PgList) != 5 {
		t.Fatalf("after writing page 70 the volume has %d PGs (geometry epoch %d); want 5 and 5", vi.Pgs, vi.GeometryEpoch)
	}
	checkPlacement(t, vi.PgList)
	for pg := uint32(0); pg < 5; pg++ {
		deadline := time.Now().Add(5 * time.Second)
		for {
			if _, ok := follower.Known(pg); ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the watch never showed PG %d to another party", pg)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for page, want := range map[uint64][]byte{16: image(16, 1), 17: image(17, 1), 70: image(70, 1), 33: make([]byte, pageSize), 500: make([]byte, pageSize)} {
		got, err := v.ReadPage(ctx, page, lsn)
		if err != nil {
			t.Fatalf("read page %d: %v", page, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("page %d read back wrong", page)
		}
	}
	if vi, _ := ctl.GetVolume(ctx, &pb.GetVolumeRequest{Name: rawVolume}); vi.Pgs != 5 {
		t.Fatalf("reading page 500 grew the volume to %d PGs", vi.Pgs)
	}

	// `borealis volume create` takes a PG size too, and lists what it made.
	out, err := exec.Command(binary, "volume", "create", "small", "--pg-size", "1MiB", "--dir", dir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "1MiB PGs") {
		t.Fatalf("volume create: %v\n%s", err, out)
	}
	out, err = exec.Command(binary, "volume", "create", "small", "--dir", dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "already exists") {
		t.Fatalf("second volume create: %v\n%s", err, out)
	}
	out, err = exec.Command(binary, "volume", "list", "--dir", dir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "small") || !strings.Contains(string(out), "main") {
		t.Fatalf("volume list: %v\n%s", err, out)
	}
}

// TestUpRunsAndResumesACluster runs `borealis up` for real: cluster.json and
// the catalog describe 6 nodes 2 per AZ and a volume placed 2 per AZ; a
// SIGKILLed node is reported and shown down, and `borealis restart` brings it
// back; a second `up` on the same directory is refused; SIGINT leaves no
// process behind; and `up` again resumes the same volume with its data.
func TestUpRunsAndResumesACluster(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	base := freeBasePort(t)
	u := startUp(t, dir, "--base-port", fmt.Sprint(base), "--pg-size", "1MiB", "--heartbeat-timeout", "2s")
	f := u.waitReady()
	// So does the query up suggests.
	if out, err := exec.Command("sh", "-c", printedCommand(t, u.output(), "Try: ", "")).CombinedOutput(); err != nil || !strings.Contains(string(out), "3.") {
		t.Fatalf("the command up suggests: %v\n%s", err, out)
	}

	byID := map[string]cluster.Component{}
	azs := map[string]int{}
	for _, c := range f.Components {
		byID[c.ID] = c
		if c.Role == "storage" {
			azs[c.AZ]++
		}
		if c.Pid == 0 || !alive(c.Pid) || c.Log == "" || c.Addr == "" {
			t.Fatalf("component %+v is not running as listed", c)
		}
	}
	if len(f.Components) != 12 || byID["r1"].Role != "replica" || byID["router"].Role != "router" || byID["c1"].Role != "control" || byID["c2"].AZ != "b" || byID["c3"].AZ != "c" || byID["writer"].Role != "writer" || len(azs) != 3 || azs["a"] != 2 || azs["b"] != 2 || azs["c"] != 2 {
		t.Fatalf("cluster.json: %+v", f.Components)
	}
	ctl := controlClient(t, f)
	for _, id := range []string{"s1", "s2", "s3", "s4", "s5", "s6"} {
		if s := nodeState(t, ctl, id); s != "up" {
			t.Fatalf("%s is %s", id, s)
		}
	}
	vi, err := ctl.GetVolume(context.Background(), &pb.GetVolumeRequest{Name: "main"})
	if err != nil {
		t.Fatal(err)
	}
	if vi.PgSizeBytes != 1<<20 || len(vi.PgList) == 0 {
		t.Fatalf("volume main: %+v", vi)
	}
	checkPlacement(t, vi.PgList)

	// Data written now must survive the restart of the whole cluster.
	createRaw(t, ctl)
	v := volumeOn(t, ctl, rawVolume)
	page := image(5, 1)
	lsn, err := v.Commit(context.Background(), []volume.PageWrite{{Page: 5, New: page}})
	if err != nil {
		t.Fatal(err)
	}
	v.Close()

	// `borealis status --json` shows the nodes, the volume and its SCLs.
	rep := statusJSON(t, dir)
	nodeAZ := map[string]int{}
	for _, n := range rep.Nodes {
		if n.State != "up" {
			t.Fatalf("status: %+v", n)
		}
		nodeAZ[n.AZ]++
	}
	if len(rep.Nodes) != 6 || len(nodeAZ) != 3 || nodeAZ["a"] != 2 || nodeAZ["b"] != 2 || nodeAZ["c"] != 2 {
		t.Fatalf("status lists nodes %+v", rep.Nodes)
	}
	if len(rep.Writers) != 1 || rep.Writers[0].Volume != "main" || rep.Writers[0].Endpoint != "http://"+byID["writer"].Addr || rep.Writers[0].Ready == nil || !*rep.Writers[0].Ready {
		t.Fatalf("status writers: %+v", rep.Writers)
	}
	if len(rep.Volumes) != 2 || rep.Volumes[0].Name != "main" || rep.Volumes[1].Name != rawVolume {
		t.Fatalf("status volumes: %+v", rep.Volumes)
	}
	raw := rep.Volumes[1]
	for _, pg := range raw.PGs {
		var segs [][2]string
		for _, s := range pg.Segments {
			segs = append(segs, [2]string{s.Node, s.AZ})
		}
		if !placedTwoPerAZ(segs) {
			t.Fatalf("status shows PG %d on %+v", pg.ID, pg.Segments)
		}
	}
	if len(raw.PGs) == 0 || raw.PGsListed != "all" || raw.PGCounts["healthy"] != len(raw.PGs) || raw.PGCounts["degraded"] != 0 || raw.PGCounts["no_quorum"] != 0 {
		t.Fatalf("status volumes: %+v", rep.Volumes)
	}
	// Without --pgs, status counts the PGs and lists only those that are
	// not healthy: none here.
	for _, v := range statusJSON(t, dir, "summary").Volumes {
		if v.Name == rawVolume && (v.PGsListed != "not_healthy" || len(v.PGs) != 0 || v.PGCounts["healthy"] != len(raw.PGs)) {
			t.Fatalf("status without --pgs: %+v", v)
		}
	}
	complete := 0
	for _, s := range raw.PGs[0].Segments {
		if s.SCL >= lsn {
			complete++
		}
	}
	if complete < 4 || raw.VDL < lsn {
		t.Fatalf("status shows %d segments complete to LSN %d and VDL %d: %+v", complete, lsn, raw.VDL, raw)
	}

	// A storage node killed is reported, shown down, and restarted on request.
	s3 := byID["s3"]
	if err := syscall.Kill(s3.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Down within the heartbeat timeout (2s), give or take etcd's lease
	// expiry check.
	took := waitState(t, ctl, "s3", "down", 3500*time.Millisecond)
	t.Logf("s3 shown down %s after SIGKILL", took)
	for _, n := range statusJSON(t, dir).Nodes {
		if (n.ID == "s3") != (n.State == "down") {
			t.Fatalf("status after killing s3: %+v", n)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(u.output(), "s3 (storage, AZ b") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(u.output(), "s3 (storage, AZ b") {
		t.Fatalf("up did not report s3's death:\n%s", u.output())
	}
	// The hint up printed works as printed: it names this binary, not a
	// `borealis` the user may not have on PATH.
	out, err := exec.Command("sh", "-c", printedCommand(t, u.output(), "It is not restarted; `", "` starts it again")).CombinedOutput()
	if err != nil {
		t.Fatalf("the restart hint up printed: %v\n%s", err, out)
	}
	waitState(t, ctl, "s3", "up", 10*time.Second)
	f2, err := cluster.ReadFile(filepath.Join(dir, "cluster.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range f2.Components {
		if c.ID == "s3" && (c.Pid == s3.Pid || !alive(c.Pid)) {
			t.Fatalf("cluster.json lists s3 with pid %d after restart (was %d)", c.Pid, s3.Pid)
		}
	}

	// An `up` on a new directory whose ports are taken is refused.
	out, err = exec.Command(binary, "up", "--dir", filepath.Join(t.TempDir(), "other"), "--base-port", fmt.Sprint(base)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "taken by another process") {
		t.Fatalf("up on taken ports: %v\n%s", err, out)
	}

	// A second `up` on the same directory is refused.
	out, err = exec.Command(binary, "up", "--dir", dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use by a running `borealis up`") {
		t.Fatalf("second up on %s: %v\n%s", dir, err, out)
	}

	// SIGINT stops every process.
	if err := u.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-u.end:
	case <-time.After(20 * time.Second):
		t.Fatalf("up did not stop on SIGINT:\n%s", u.output())
	}
	checkClusterGone(t, dir, f2)
	// The writer stopped before the control plane, so it gave its lease
	// back and the next start need not wait out the lease's TTL.
	if w, ok := f2.Find("writer"); ok {
		log, _ := os.ReadFile(w.Log)
		if strings.Contains(string(log), "could not release the writer lease") {
			t.Fatalf("the writer could not release its lease on stop:\n%s", log)
		}
	}

	// Up again: the same cluster, the same volume, the data intact.
	u2 := startUp(t, dir)
	f3 := u2.waitReady()
	if !strings.Contains(u2.output(), "resuming the cluster") {
		t.Fatalf("second up did not resume:\n%s", u2.output())
	}
	ctl2 := controlClient(t, f3)
	vi2, err := ctl2.GetVolume(context.Background(), &pb.GetVolumeRequest{Name: "main"})
	if err != nil {
		t.Fatal(err)
	}
	if vi2.Id != vi.Id {
		t.Fatalf("resumed volume id %d, was %d", vi2.Id, vi.Id)
	}
	v2 := volumeOn(t, ctl2, rawVolume)
	defer v2.Close()
	got, err := v2.ReadPage(context.Background(), 5, lsn)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, page) {
		t.Fatalf("page 5 after resume differs from what was committed")
	}
}

// printedCommand finds, in what up printed, the command between before and
// after (or the end of the line) on the first line that has them.
func printedCommand(t *testing.T, printed, before, after string) string {
	t.Helper()
	for _, line := range strings.Split(printed, "\n") {
		_, rest, ok := strings.Cut(line, before)
		if !ok {
			continue
		}
		if after == "" {
			return rest
		}
		if cmd, _, ok := strings.Cut(rest, after); ok {
			return cmd
		}
	}
	t.Fatalf("up printed no %q...%q:\n%s", before, after, printed)
	return ""
}

type statusOutput struct {
	Nodes []struct {
		ID, AZ, Addr, State string
	} `json:"nodes"`
	Writers []struct {
		Volume      string `json:"volume"`
		Epoch       uint64 `json:"epoch"`
		Endpoint    string `json:"endpoint"`
		Ready       *bool  `json:"ready"`
		Unreachable string `json:"unreachable"`
	} `json:"writers"`
	Volumes []struct {
		Name          string         `json:"name"`
		VolumeEpoch   uint64         `json:"volume_epoch"`
		GeometryEpoch uint64         `json:"geometry_epoch"`
		VDL           uint64         `json:"vdl"`
		VDLSource     string         `json:"vdl_source"`
		PGCounts      map[string]int `json:"pg_counts"`
		PGsListed     string         `json:"pgs_listed"`
		PGs           []struct {
			ID              uint32 `json:"id"`
			MembershipEpoch uint64 `json:"membership_epoch"`
			PGCLBound       string `json:"pgcl_bound"`
			Segments        []struct {
				Node string `json:"node"`
				AZ   string `json:"az"`
				SCL  uint64 `json:"scl"`
			} `json:"segments"`
		} `json:"pgs"`
	} `json:"volumes"`
}

// statusJSON is `borealis status --json --pgs` (every PG listed), or
// without --pgs when extra says "summary".
func statusJSON(t *testing.T, dir string, extra ...string) statusOutput {
	t.Helper()
	args := []string{"status", "--dir", dir, "--json", "--pgs"}
	if slices.Contains(extra, "summary") {
		args = args[:len(args)-1]
	}
	out, err := exec.Command(binary, args...).Output()
	if err != nil {
		t.Fatalf("borealis status: %v\n%s", err, out)
	}
	var rep statusOutput
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return rep
}

// TestStorageLearnsEpochFromControl: when a new writer takes the lease, the
// control plane bumps the volume epoch, storage nodes learn it with their
// heartbeats, and the old writer is fenced even if it never met the new one.
func TestStorageLearnsEpochFromControl(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	u := startUp(t, dir, "--base-port", fmt.Sprint(freeBasePort(t)), "--heartbeat-timeout", "2s")
	ctl := controlClient(t, u.waitReady())
	createRaw(t, ctl)
	ctx := context.Background()
	first, err := ctl.AcquireWriter(ctx, &pb.AcquireWriterRequest{Volume: rawVolume, Holder: "writer-1", TtlMs: 5000})
	if err != nil {
		t.Fatal(err)
	}
	cfg := volume.Config{Epoch: first.Epoch, WriteTimeout: 5 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := volume.NewFromControl(ctl, rawVolume).Configure(t.Context(), &cfg); err != nil {
		t.Fatal(err)
	}
	old, err := volume.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if _, err := old.Commit(ctx, []volume.PageWrite{{Page: 1, New: image(1, 1)}}); err != nil {
		t.Fatal(err)
	}
	// A new writer takes over: the old lease is released, a new one bumps the epoch.
	if _, err := ctl.ReleaseWriter(ctx, &pb.ReleaseWriterRequest{Lease: first.Lease}); err != nil {
		t.Fatal(err)
	}
	second, err := ctl.AcquireWriter(ctx, &pb.AcquireWriterRequest{Volume: rawVolume, Holder: "writer-2", TtlMs: 5000})
	if err != nil {
		t.Fatal(err)
	}
	if second.Epoch != first.Epoch+1 {
		t.Fatalf("epoch went from %d to %d", first.Epoch, second.Epoch)
	}
	// Within a few heartbeats every node refuses the old epoch.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := old.Commit(ctx, []volume.PageWrite{{Page: 1, Old: image(1, 1), New: image(1, 2)}})
		if errors.Is(err, volume.ErrFenced) {
			t.Logf("old writer fenced: %v", err)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the old writer is not fenced 10s after the epoch moved on: last commit gave %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestWritesGoOnWithoutTheControlPlane: the control plane is off the I/O
// path. With it SIGKILLed, a writer that knows its PGs keeps committing and
// reading; restarted, it sees every node up again.
func TestWritesGoOnWithoutTheControlPlane(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	u := startUp(t, dir, "--base-port", fmt.Sprint(freeBasePort(t)), "--heartbeat-timeout", "2s")
	f := u.waitReady()
	ctl := controlClient(t, f)
	createRaw(t, ctl)
	v := volumeOn(t, ctl, rawVolume)
	defer v.Close()
	ctx := context.Background()
	if _, err := v.Commit(ctx, []volume.PageWrite{{Page: 3, New: image(3, 1)}}); err != nil {
		t.Fatal(err)
	}
	// Every control plane: the catalog is gone.
	for _, c := range f.ControlPlanes() {
		if err := syscall.Kill(c.Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	old := image(3, 1)
	var lsn uint64
	for i := 2; i <= 20; i++ {
		next := image(3, i)
		var err error
		if lsn, err = v.Commit(ctx, []volume.PageWrite{{Page: 3, Old: old, New: next}}); err != nil {
			t.Fatalf("commit %d with the control plane down: %v", i, err)
		}
		old = next
	}
	got, err := v.ReadPage(ctx, 3, lsn)
	if err != nil || !bytes.Equal(got, old) {
		t.Fatalf("read with the control plane down: %v", err)
	}
	out, err := exec.Command(binary, "restart", "control", "--dir", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("borealis restart control: %v\n%s", err, out)
	}
	for _, id := range []string{"s1", "s2", "s3", "s4", "s5", "s6"} {
		waitState(t, ctl, id, "up", 10*time.Second)
	}
}
