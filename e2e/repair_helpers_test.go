package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/wait"
)

// repairArgs start an `up` cluster with a spare storage node in each AZ (and
// no replica, which the repair tests do not need), a short repair delay, and
// small PGs, so that a volume of a few megabytes has dozens of PGs to
// repair. The writer lease lives 3 s: the tests assert that no write fails,
// and with 1 s a renewal slowed by the machine's load (9 storage nodes,
// hydrations and other test packages on 2 cores) can end the writer's term.
var repairArgs = []string{"--nodes-per-az", "3", "--replicas", "0", "--lease-ttl", "3s", "--repair-after", "3s", "--pg-size", "64KiB", "--write-timeout", "10s"}

// repairCluster is an `up` cluster for repair tests, with its catalog and
// storage nodes at hand.
type repairCluster struct {
	*sqlCluster
	t   *testing.T
	ctl pb.ControlClient
	vol uint64
}

func startRepairCluster(t *testing.T, extra ...string) *repairCluster {
	t.Helper()
	c := startSQLCluster(t, append(slices.Clone(repairArgs), extra...)...)
	rc := &repairCluster{sqlCluster: c, t: t, ctl: controlClient(t, c.f)}
	rc.vol = mainVolumeID(t, c.dir)
	return rc
}

// startRepairLoad starts a repair cluster (with extra flags), fills the
// volume with about fill bytes, and starts an insert load of clients,
// returning once it has 20 acknowledged writes (before says when, for the
// failure message).
func startRepairLoad(t *testing.T, fill, clients int, before string, extra ...string) (*repairCluster, *txLoad) {
	t.Helper()
	rc := startRepairCluster(t, extra...)
	txLoadTables(t, rc.writerAddr())
	rc.fill(fill)
	l := startTxLoad(t, rc.writerAddr(), clients)
	l.waitAcks(t, 20, 30*time.Second, before)
	return rc, l
}

// writerAddr is the writer's SQL endpoint.
func (rc *repairCluster) writerAddr() string {
	w, ok := rc.f.Find("writer")
	if !ok {
		rc.t.Fatal("cluster.json lists no writer")
	}
	return w.Addr
}

// fill writes about n bytes of rows to table fill, in transactions of 50
// rows of 1 KiB, so that the volume spans many PGs.
func (rc *repairCluster) fill(n int) {
	rc.t.Helper()
	mustExec(rc.t, rc.writerAddr(), false, st("CREATE TABLE IF NOT EXISTS fill(k INTEGER PRIMARY KEY, v BLOB NOT NULL)"))
	for k := 0; k < n/1024; k += 50 {
		batch := make([]string, 0, 50)
		for j := k; j < k+50; j++ {
			batch = append(batch, fmt.Sprintf("(%d, randomblob(1024))", j))
		}
		mustExec(rc.t, rc.writerAddr(), true, st("INSERT INTO fill VALUES "+strings.Join(batch, ",")))
	}
}

// pgs is the volume's PGs as the catalog has them now.
func (rc *repairCluster) pgs() []*pb.PGInfo {
	rc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := rc.ctl.GetVolume(ctx, &pb.GetVolumeRequest{Name: "main"})
	if err != nil {
		rc.t.Fatalf("GetVolume: %v", err)
	}
	return v.PgList
}

// holding is the PGs with a segment on node id, in either set.
func (rc *repairCluster) holding(id string) []uint32 {
	var out []uint32
	for _, p := range rc.pgs() {
		for _, s := range append(slices.Clone(p.Segments), p.NextSegments...) {
			if s.Node == id {
				out = append(out, p.Pg)
				break
			}
		}
	}
	return out
}

// storageNode is the component of storage node id in the current
// cluster.json (a restart changes its pid).
func (rc *repairCluster) storageNode(id string) cluster.Component {
	rc.t.Helper()
	f, err := cluster.ReadFile(rc.dir + "/cluster.json")
	if err != nil {
		rc.t.Fatal(err)
	}
	c, ok := f.ByID(id)
	if !ok {
		rc.t.Fatalf("cluster.json lists no %s", id)
	}
	return c
}

// kill SIGKILLs storage node id and waits for it to be gone.
func (rc *repairCluster) kill(id string) {
	rc.t.Helper()
	c := rc.storageNode(id)
	if err := syscall.Kill(c.Pid, syscall.SIGKILL); err != nil {
		rc.t.Fatalf("kill %s: %v", id, err)
	}
	wait.For(rc.t, 10*time.Second, id+" to exit", func() bool { return !alive(c.Pid) })
}

// restart starts storage node id again (borealis restart).
func (rc *repairCluster) restart(id string) {
	rc.t.Helper()
	if out, err := exec.Command(binary, "restart", id, "--dir", rc.dir).CombinedOutput(); err != nil {
		rc.t.Fatalf("borealis restart %s: %v\n%s", id, err, out)
	}
}

// segmentState is one segment as its node reports it.
type segmentState struct {
	scl       uint64
	hydrating bool
	err       error
}

func (rc *repairCluster) segment(addr string, pg uint32) segmentState {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := storageAt(rc.t, addr).SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: rc.vol, Pg: pg})
	if err != nil {
		return segmentState{err: err}
	}
	return segmentState{scl: resp.Scl, hydrating: resp.Hydrating}
}

// unrepaired says what keeps the volume from being whole again with no
// segment on any node of gone: "" once every PG has one set of six
// segments, two in each AZ, none on gone and no change under way, and each
// segment is complete (not hydrating, at the SCL of the PG's most advanced
// segment).
func (rc *repairCluster) unrepaired(gone ...string) string {
	for _, p := range rc.pgs() {
		if len(p.NextSegments) > 0 || p.Change != nil {
			return fmt.Sprintf("PG %d is still replacing %s by %s", p.Pg, p.GetChange().GetLeaving(), p.GetChange().GetJoining())
		}
		azs := map[string]int{}
		for _, s := range p.Segments {
			if slices.Contains(gone, s.Node) {
				return fmt.Sprintf("PG %d still has a segment on %s", p.Pg, s.Node)
			}
			azs[s.Az]++
		}
		if len(p.Segments) != 6 || azs["a"] != 2 || azs["b"] != 2 || azs["c"] != 2 {
			return fmt.Sprintf("PG %d has segments %v", p.Pg, segNodes(p.Segments))
		}
		// Under a load the SCLs move on while the segments are asked one by
		// one: a segment is complete when, asked again, it has reached the
		// highest SCL any of them reported the first time.
		var hi uint64
		for round := range 2 {
			for _, s := range p.Segments {
				st := rc.segment(s.Addr, p.Pg)
				switch {
				case st.err != nil:
					return fmt.Sprintf("PG %d: %s does not answer: %v", p.Pg, s.Node, st.err)
				case st.hydrating:
					return fmt.Sprintf("PG %d: %s is hydrating", p.Pg, s.Node)
				case round == 0:
					hi = max(hi, st.scl)
				case st.scl < hi:
					return fmt.Sprintf("PG %d: %s is at SCL %d, below the %d another segment had", p.Pg, s.Node, st.scl, hi)
				}
			}
		}
	}
	return ""
}

// waitRepaired waits until unrepaired says nothing, and returns how long
// that took.
func (rc *repairCluster) waitRepaired(within time.Duration, gone ...string) time.Duration {
	rc.t.Helper()
	start := time.Now()
	var last string
	deadline := start.Add(within)
	for {
		last = rc.unrepaired(gone...)
		if last == "" {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			rc.t.Fatalf("the volume was not repaired within %s: %s", within, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func segNodes(segs []*pb.SegmentInfo) []string {
	var out []string
	for _, s := range segs {
		out = append(out, s.Node)
	}
	sort.Strings(out)
	return out
}

// noWriteFailed fails the test if the load saw any write refused or of
// unknown outcome: through the whole repair, writes never stopped.
func noWriteFailed(t *testing.T, l *txLoad) {
	t.Helper()
	if nAcked, nRefused, nUnknown := l.counts(); nRefused > 0 || nUnknown > 0 {
		t.Fatalf("%d writes acknowledged, but %d refused and %d of unknown outcome during the repair: %s", nAcked, nRefused, nUnknown, l.errorSummary())
	}
}

// verify checks the load and the database after a repair: no write ever
// failed, every acknowledged one is there, and the integrity check passes.
func (rc *repairCluster) verify(l *txLoad) {
	rc.t.Helper()
	noWriteFailed(rc.t, l)
	l.check(rc.t, rc.writerAddr())
	rc.integrityOK(rc.t)
}

// nodesIn is the storage nodes of az in cluster.json, by id.
func (rc *repairCluster) nodesIn(az string) []string {
	rc.t.Helper()
	f, err := cluster.ReadFile(rc.dir + "/cluster.json")
	if err != nil {
		rc.t.Fatal(err)
	}
	var out []string
	for _, c := range f.Storage() {
		if c.AZ == az {
			out = append(out, c.ID)
		}
	}
	sort.Strings(out)
	return out
}

// changeOf waits for a PG with a segment on leaving to be in a change away
// from it, and returns that PG.
func (rc *repairCluster) changeOf(leaving string, within time.Duration) *pb.PGInfo {
	rc.t.Helper()
	var got *pb.PGInfo
	wait.For(rc.t, within, "a PG to start replacing "+leaving, func() bool {
		for _, p := range rc.pgs() {
			if p.Change != nil && p.Change.Leaving == leaving {
				got = p
				return true
			}
		}
		return false
	})
	return got
}

// nodeCLI runs `borealis node args... --dir D` and returns its output.
func (rc *repairCluster) nodeCLI(args ...string) string {
	rc.t.Helper()
	out, err := exec.Command(binary, append(append([]string{"node"}, args...), "--dir", rc.dir)...).CombinedOutput()
	if err != nil {
		rc.t.Fatalf("borealis node %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// mainVolumeID is the id of the volume "main" as `status --json` shows it.
func mainVolumeID(t *testing.T, dir string) uint64 {
	t.Helper()
	out, err := exec.Command(binary, "status", "--dir", dir, "--json").Output()
	if err != nil {
		t.Fatalf("borealis status: %v\n%s", err, out)
	}
	var st struct {
		Volumes []struct {
			Name string `json:"name"`
			ID   uint64 `json:"id"`
		} `json:"volumes"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	for _, v := range st.Volumes {
		if v.Name == "main" {
			return v.ID
		}
	}
	t.Fatalf("status lists no volume main: %s", out)
	return 0
}
