package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/wait"
)

// TestSQLEmptiedNodeDoesNotHoldWrites is issue 7's repro on a real `up`
// cluster: s6 is SIGKILLed, its directory emptied and it is restarted after
// its peers collected the log, so it answers every append but can never
// complete a record; then s3 and s4 are SIGKILLed. Five segments answer,
// three can make a commit durable: an INSERT through `borealis sql` must
// fail with storage_unavailable soon after the write timeout, naming the
// unreachable and the behind segments, instead of hanging.
func TestSQLEmptiedNodeDoesNotHoldWrites(t *testing.T) {
	const writeTimeout = 2 * time.Second
	c := startSQLCluster(t, "--write-timeout", writeTimeout.String())
	c.exec(t, false, sqlclient.Statement{SQL: "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"})
	for k := 1; k <= 300; k += 30 {
		stmts := make([]sqlclient.Statement, 30)
		for j := range stmts {
			stmts[j] = insert(k + j)
		}
		c.exec(t, true, stmts...)
	}

	volID := mainVolumeID(t, c.dir)
	peers := map[string]pb.StorageClient{}
	for _, id := range []string{"s1", "s2", "s3", "s4", "s5"} {
		peers[id] = storageAt(t, c.component(t, id).Addr)
	}
	logFloor := func(id string) uint64 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := peers[id].SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: volID, Pg: 0})
		if err != nil {
			t.Fatalf("SegmentInfo of %s: %v", id, err)
		}
		return resp.GetLogFloor()
	}
	// The peers collect the log below the VDL once they have materialized
	// it: an emptied s6 can then no longer fill its hole by gossip.
	wait.For(t, 60*time.Second, "s1 to s5 to collect their log", func() bool {
		for id := range peers {
			if logFloor(id) == 0 {
				return false
			}
		}
		return true
	})

	s6 := c.component(t, "s6")
	if err := syscall.Kill(s6.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "s6 to exit", func() bool { return !alive(s6.Pid) })
	if err := os.RemoveAll(filepath.Join(c.dir, "s6")); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(binary, "restart", "s6", "--dir", c.dir).CombinedOutput(); err != nil {
		t.Fatalf("borealis restart s6: %v\n%s", err, out)
	}
	for _, id := range []string{"s3", "s4"} {
		if err := syscall.Kill(c.component(t, id).Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}

	start := time.Now()
	stdout, stderr, code := cliSQL(t, "", "--dir", c.dir, "--timeout", "45s", "-e", "INSERT INTO t(v) VALUES('x')")
	took := time.Since(start)
	t.Logf("insert answered after %s: exit %d\n%s%s", took.Round(time.Millisecond), code, stdout, stderr)
	if code != 1 || !strings.Contains(stderr, "storage_unavailable") {
		t.Fatalf("insert with s3, s4 down and s6 emptied: exit %d, %q; want exit 1 with storage_unavailable", code, stderr)
	}
	// The verdict comes after the write timeout, once s6 has stood still
	// for the writer's stuck threshold; well within the client's 45 s.
	if took > 30*time.Second {
		t.Fatalf("insert failed only after %s", took)
	}
	for _, want := range []string{"PG 0", "2 unreachable (", "s3 ", "s4 ", "1 reachable but behind (s6 " + s6.Addr + ": SCL 0"} {
		if !strings.Contains(stderr, want) {
			t.Fatalf("the error does not name %q: %s", want, stderr)
		}
	}
	// Reads still answer, from the three complete segments.
	if n := c.one(t, "SELECT count(*) FROM t"); n != 300 {
		t.Fatalf("SELECT with writes stalled shows %d rows, want the 300 acknowledged", n)
	}
	// With s3 and s4 back, writes go on.
	for _, id := range []string{"s3", "s4"} {
		if out, err := exec.Command(binary, "restart", id, "--dir", c.dir).CombinedOutput(); err != nil {
			t.Fatalf("borealis restart %s: %v\n%s", id, err, out)
		}
	}
	wait.For(t, 30*time.Second, "an insert to succeed with s3 and s4 back", func() bool {
		_, err := c.db.Execute(context.Background(), []sqlclient.Statement{insert(1000)}, false)
		return err == nil || sqlclient.Code(err) == "constraint_violation"
	})
	c.integrityOK(t)
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
