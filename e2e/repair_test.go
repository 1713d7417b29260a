package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/wait"
)

// A storage node SIGKILLed for good: after --repair-after, every PG it held
// is moved to the spare of its AZ, which hydrates from its peers, while an
// insert load runs. Every write succeeds throughout, no acknowledged one is
// lost, and the database's integrity check passes.
func TestRepairNodeKilledForGood(t *testing.T) {
	rc, l := startRepairLoad(t, 2<<20, 4, "before the kill")
	victim := "s1"
	held := rc.holding(victim)
	if len(held) < 2 {
		t.Fatalf("%s holds %d PGs; the test needs a node with several", victim, len(held))
	}
	rc.kill(victim)
	took := rc.waitRepaired(3*time.Minute, victim)
	t.Logf("%d PGs held by %s repaired %s after the kill", len(held), victim, took.Round(time.Millisecond))
	l.waitAcks(t, 20, 30*time.Second, "after the repair")
	rc.verify(l)
}

// A storage node SIGKILLed, its directory emptied and restarted after its
// peers collected their log: it cannot catch up by gossip, so the control
// plane has it rehydrate its own segments in place, with no membership
// change. Once it is complete it counts again: with two other nodes then
// killed, commits still reach a write quorum. (Before hydration existed
// such a node stayed behind for good, and writes failed clearly instead:
// issue 7.)
func TestRepairEmptiedNodeRehydratesInPlace(t *testing.T) {
	rc := startRepairCluster(t, "--nodes-per-az", "2", "--repair-after", "10m")
	rc.exec(t, false, sqlclient.Statement{SQL: "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"})
	for k := 1; k <= 300; k += 30 {
		stmts := make([]sqlclient.Statement, 30)
		for j := range stmts {
			stmts[j] = insert(k + j)
		}
		rc.exec(t, true, stmts...)
	}
	rc.fill(1 << 20)
	epochs := map[uint32]uint64{}
	for _, p := range rc.pgs() {
		epochs[p.Pg] = p.MembershipEpoch
	}
	peers := []string{"s1", "s2", "s3", "s4", "s5"}
	wait.For(t, 60*time.Second, "s1 to s5 to collect their log of PG 0", func() bool {
		for _, id := range peers {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			resp, err := storageAt(t, rc.storageNode(id).Addr).SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: rc.vol, Pg: 0})
			cancel()
			if err != nil || resp.GetLogFloor() == 0 {
				return false
			}
		}
		return true
	})

	s6 := rc.storageNode("s6")
	held := rc.holding("s6")
	rc.kill("s6")
	if err := os.RemoveAll(s6.Dir); err != nil {
		t.Fatal(err)
	}
	rc.restart("s6")
	took := rc.waitRepaired(3 * time.Minute)
	t.Logf("s6 rehydrated %d PGs in place %s after its restart", len(held), took.Round(time.Millisecond))
	for _, p := range rc.pgs() {
		if p.MembershipEpoch != epochs[p.Pg] {
			t.Fatalf("PG %d went from membership epoch %d to %d: a node rebuilt in place needs no change", p.Pg, epochs[p.Pg], p.MembershipEpoch)
		}
	}
	rc.kill("s3")
	rc.kill("s4")
	rc.exec(t, false, insert(1000))
	if n := rc.one(t, "SELECT count(*) FROM t"); n != 301 {
		t.Fatalf("%d rows, want the 301 acknowledged", n)
	}
	rc.integrityOK(t)
}

// The failed node comes back in the middle of its repair: the change rolls
// back, or completes, cleanly; writes never fail, so no PG was ever below a
// write quorum of its sets, and the volume ends whole with every segment
// complete.
func TestRepairFailedNodeReturnsMidway(t *testing.T) {
	rc, l := startRepairLoad(t, 4<<20, 2, "before the kill", "--repair-rate", "512KiB")
	rc.kill("s1")
	p := rc.changeOf("s1", time.Minute)
	t.Logf("PG %d replaces s1 by %s; restarting s1", p.Pg, p.Change.Joining)
	rc.restart("s1")
	took := rc.waitRepaired(3 * time.Minute)
	back := len(rc.holding("s1"))
	t.Logf("whole again %s after s1 returned; s1 holds %d PGs (rolled back where it returned first)", took.Round(time.Millisecond), back)
	l.waitAcks(t, 20, 30*time.Second, "after the repair")
	rc.verify(l)
}

// The joining node is killed in the middle of its hydration: with no other
// spare in its AZ the PG waits, degraded but writable, and once the node is
// back the repair resumes and completes.
func TestRepairJoiningNodeKilledMidHydration(t *testing.T) {
	rc, l := startRepairLoad(t, 4<<20, 2, "before the kill", "--repair-rate", "512KiB")
	rc.kill("s1")
	p := rc.changeOf("s1", time.Minute)
	g := p.Change.Joining
	rc.kill(g)
	t.Logf("PG %d was replacing s1 by %s; killed %s mid-hydration", p.Pg, g, g)
	l.waitAcks(t, 20, 60*time.Second, "with s1 and "+g+" down")
	rc.restart(g)
	took := rc.waitRepaired(4*time.Minute, "s1")
	t.Logf("repaired %s after %s returned", took.Round(time.Millisecond), g)
	rc.verify(l)
}

// A second failure in a PG under repair: s1 is killed, and while its PGs
// hydrate on the spare of AZ a, a member of one of them in AZ b is killed
// too. Each PG is repaired one change at a time, and every PG ends whole
// off both nodes; writes never fail.
func TestRepairSecondFailureInSamePG(t *testing.T) {
	rc, l := startRepairLoad(t, 4<<20, 2, "before the kill", "--repair-rate", "1MiB")
	rc.kill("s1")
	p := rc.changeOf("s1", time.Minute)
	var second string
	for _, s := range p.Segments {
		if s.Az == "b" {
			second = s.Node
			break
		}
	}
	rc.kill(second)
	t.Logf("PG %d was replacing s1 by %s; killed %s, another member of it", p.Pg, p.Change.Joining, second)
	took := rc.waitRepaired(5*time.Minute, "s1", second)
	t.Logf("repaired off s1 and %s %s after the second kill", second, took.Round(time.Millisecond))
	rc.verify(l)
}

// A whole AZ lost: every storage node of AZ c is killed, writes go on with
// the four segments of a and b, and two new nodes started in c with
// `borealis storage --control` join; the repairs waiting for capacity in c
// use them, and every PG is whole again.
func TestRepairAZLost(t *testing.T) {
	rc, l := startRepairLoad(t, 2<<20, 2, "before the AZ is lost")
	lost := rc.nodesIn("c")
	for _, id := range lost {
		rc.kill(id)
	}
	l.waitAcks(t, 20, 60*time.Second, "with AZ c lost")
	for _, id := range []string{"c1", "c2"} {
		addr, err := cluster.FreeAddr()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(binary, "storage", "--id", id, "--az", "c", "--listen", addr, "--dir", t.TempDir(), "--control", rc.f.ControlAddrs())
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	took := rc.waitRepaired(5*time.Minute, lost...)
	t.Logf("AZ c rebuilt on c1 and c2 %s after they started", took.Round(time.Millisecond))
	rc.verify(l)
}

// `borealis node drain` under load moves every segment off a live node
// with nothing ever degraded: each change keeps the leaving member, which
// stays healthy, until the joining one is complete. Once empty the node is
// removed.
func TestRepairNodeDrain(t *testing.T) {
	rc, l := startRepairLoad(t, 2<<20, 2, "before the drain")
	if n := len(rc.holding("s1")); n == 0 {
		t.Fatal("s1 holds nothing to drain")
	}
	t.Log(rc.nodeCLI("drain", "s1"))
	start := time.Now()
	for len(rc.holding("s1")) > 0 {
		if d := degradedPGs(t, rc.dir); d != "" {
			t.Fatalf("during the drain: %s", d)
		}
		if time.Since(start) > 5*time.Minute {
			t.Fatalf("s1 still holds PGs %v after 5 minutes of draining", rc.holding("s1"))
		}
		time.Sleep(300 * time.Millisecond)
	}
	rc.waitRepaired(time.Minute, "s1")
	t.Logf("s1 drained in %s", time.Since(start).Round(time.Millisecond))
	t.Log(rc.nodeCLI("remove", "s1"))
	if d := degradedPGs(t, rc.dir); d != "" {
		t.Fatalf("after s1 was removed: %s", d)
	}
	rc.verify(l)
}

// degradedPGs says which PGs `status --json` counts as not healthy, or "".
func degradedPGs(t *testing.T, dir string) string {
	t.Helper()
	out, err := exec.Command(binary, "status", "--dir", dir, "--json").Output()
	if err != nil {
		t.Fatalf("borealis status: %v\n%s", err, out)
	}
	var st struct {
		Volumes []struct {
			Name     string         `json:"name"`
			PGCounts map[string]int `json:"pg_counts"`
		} `json:"volumes"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	for _, v := range st.Volumes {
		if v.PGCounts["degraded"] > 0 || v.PGCounts["no_quorum"] > 0 {
			return fmt.Sprintf("volume %s has PGs %v", v.Name, v.PGCounts)
		}
	}
	return ""
}
