package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/wait"
)

// sqlCluster is a cluster started by `borealis up`, with a client of its
// writer's SQL API.
type sqlCluster struct {
	u   *upProcess
	f   *cluster.File
	db  *sqlclient.Client
	dir string
}

func startSQLCluster(t *testing.T, args ...string) *sqlCluster {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "c")
	u := startUp(t, dir, append([]string{"--base-port", fmt.Sprint(freeBasePort(t))}, args...)...)
	f := u.waitReady()
	return &sqlCluster{u: u, f: f, db: writerClient(t, f), dir: dir}
}

func writerClient(t *testing.T, f *cluster.File) *sqlclient.Client {
	t.Helper()
	w, ok := f.Find("writer")
	if !ok {
		t.Fatal("cluster.json lists no writer")
	}
	return &sqlclient.Client{Endpoint: "http://" + w.Addr}
}

func (c *sqlCluster) component(t *testing.T, id string) cluster.Component {
	t.Helper()
	for _, comp := range c.f.Components {
		if comp.ID == id {
			return comp
		}
	}
	t.Fatalf("no component %s", id)
	return cluster.Component{}
}

func (c *sqlCluster) exec(t *testing.T, tx bool, stmts ...sqlclient.Statement) []sqlclient.Result {
	t.Helper()
	res, err := c.db.Execute(context.Background(), stmts, tx)
	if err != nil {
		t.Fatalf("execute %q...: %v", stmts[0].SQL, err)
	}
	return res
}

func (c *sqlCluster) query(t *testing.T, q string, params ...any) [][]any {
	t.Helper()
	rows, err := c.db.Query(context.Background(), q, params...)
	if err != nil {
		t.Fatalf("query %q: %v", q, err)
	}
	return rows.Rows
}

// one returns the single integer a query answers.
func (c *sqlCluster) one(t *testing.T, q string, params ...any) int64 {
	t.Helper()
	rows := c.query(t, q, params...)
	if len(rows) != 1 || len(rows[0]) != 1 {
		t.Fatalf("%q answered %v", q, rows)
	}
	n, ok := rows[0][0].(int64)
	if !ok {
		t.Fatalf("%q answered %v (%T)", q, rows[0][0], rows[0][0])
	}
	return n
}

func (c *sqlCluster) integrityOK(t *testing.T) {
	t.Helper()
	rows := c.query(t, "PRAGMA integrity_check")
	if len(rows) != 1 || rows[0][0] != "ok" {
		t.Fatalf("integrity_check: %v", rows)
	}
}

func rowText(k int) string { return fmt.Sprintf("row %d ", k) + strings.Repeat("v", 60+k%40) }

func insert(k int) sqlclient.Statement {
	return sqlclient.Statement{SQL: "INSERT INTO t(k, v) VALUES(?, ?)", Params: []any{k, rowText(k)}}
}

// Required test 1: 10,000 rows inserted in transactions of various sizes
// read back exactly.
func TestSQLInsertsReadBackExactly(t *testing.T) {
	c := startSQLCluster(t)
	c.exec(t, false, sqlclient.Statement{SQL: "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"})
	sizes := []int{1, 3, 17, 250, 1000, 2}
	k := 0
	for i := 0; k < 10000; i++ {
		n := min(sizes[i%len(sizes)], 10000-k)
		stmts := make([]sqlclient.Statement, n)
		for j := range stmts {
			k++
			stmts[j] = insert(k)
		}
		res := c.exec(t, true, stmts...)
		if len(res) != n || res[n-1].LastInsertID != int64(k) || res[0].RowsAffected != 1 {
			t.Fatalf("results of a transaction of %d inserts: %+v...", n, res[0])
		}
	}
	rows := c.query(t, "SELECT k, v FROM t ORDER BY k")
	if len(rows) != 10000 {
		t.Fatalf("read back %d rows, want 10000", len(rows))
	}
	for i, r := range rows {
		if r[0] != int64(i+1) || r[1] != rowText(i+1) {
			t.Fatalf("row %d reads back as %v", i+1, r)
		}
	}
	c.integrityOK(t)
}

// Required test 2: with both nodes of AZ a SIGKILLed inserts go on; with one
// more node down they fail with storage_unavailable while SELECTs answer;
// with the nodes back, inserts succeed again.
func TestSQLAZLossAndOneMore(t *testing.T) {
	const timeout = 2 * time.Second
	c := startSQLCluster(t, "--write-timeout", timeout.String())
	c.exec(t, false, sqlclient.Statement{SQL: "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"})
	for k := 1; k <= 10; k++ {
		c.exec(t, false, insert(k))
	}
	for _, id := range []string{"s1", "s2"} {
		if err := syscall.Kill(c.component(t, id).Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	for k := 11; k <= 30; k++ {
		c.exec(t, false, insert(k))
	}
	if n := c.one(t, "SELECT count(*) FROM t"); n != 30 {
		t.Fatalf("%d rows with AZ a down, want 30", n)
	}

	if err := syscall.Kill(c.component(t, "s3").Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := c.db.Execute(context.Background(), []sqlclient.Statement{insert(31)}, false)
	if sqlclient.Code(err) != "storage_unavailable" {
		t.Fatalf("insert with AZ a and s3 down: %v; want storage_unavailable", err)
	}
	t.Logf("insert failed after %s (write timeout %s): %v", time.Since(start).Round(time.Millisecond), timeout, err)
	// Reads answer at the VDL: the 30 acknowledged rows, not the one that
	// was not acknowledged.
	if n := c.one(t, "SELECT count(*) FROM t"); n != 30 {
		t.Fatalf("SELECT with writes stalled shows %d rows, want the 30 acknowledged", n)
	}
	if n := c.one(t, "SELECT max(k) FROM t"); n != 30 {
		t.Fatalf("SELECT with writes stalled shows max(k) %d, want 30", n)
	}
	// status says the PG's complete LSN is unknown with three segments
	// answering, and shows the writer's own VDL.
	st := statusJSON(t, c.dir)
	for _, v := range st.Volumes {
		if v.Name == "main" && (v.VDLSource != "writer" || v.VDL == 0 || len(v.PGs) == 0 || v.PGs[0].PGCLBound != "unknown") {
			t.Fatalf("status with three nodes down: %+v", v)
		}
	}

	for _, id := range []string{"s1", "s2", "s3"} {
		out, err := exec.Command(binary, "restart", id, "--dir", c.dir).CombinedOutput()
		if err != nil {
			t.Fatalf("borealis restart %s: %v\n%s", id, err, out)
		}
	}
	for k := 32; k <= 40; k++ {
		c.exec(t, false, insert(k))
	}
	// The insert that timed out was not acknowledged; it was not lost
	// either: the writer kept it, and it became durable once the nodes came
	// back (a timeout's outcome is unknown to the client, as with any
	// database).
	rows := c.query(t, "SELECT k FROM t ORDER BY k")
	if len(rows) != 40 {
		t.Fatalf("after the nodes came back: %d rows, want 40", len(rows))
	}
	c.integrityOK(t)
}

// Required test 3: rolled-back transactions, large ones included, and
// statements failing half-way through a transaction leave no trace.
func TestSQLRollbacksLeaveNoTrace(t *testing.T) {
	c := startSQLCluster(t)
	c.exec(t, false, sqlclient.Statement{SQL: "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"})
	var stmts []sqlclient.Statement
	for k := 1; k <= 100; k++ {
		stmts = append(stmts, insert(k))
	}
	c.exec(t, true, stmts...)
	before := c.query(t, "SELECT k, v FROM t ORDER BY k")
	health, err := c.db.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	// A constraint violation half-way through a transaction of 5,000 inserts.
	stmts = stmts[:0]
	for k := 101; k <= 5100; k++ {
		stmts = append(stmts, insert(k))
		if k == 2600 {
			stmts = append(stmts, insert(50)) // duplicate key
		}
	}
	_, err = c.db.Execute(context.Background(), stmts, true)
	if sqlclient.Code(err) != "constraint_violation" || !strings.Contains(err.Error(), "UNIQUE") {
		t.Fatalf("a duplicate key in a transaction: %v; want constraint_violation with SQLite's message", err)
	}
	// A NOT NULL violation in the middle of a small one, after an UPDATE.
	_, err = c.db.Execute(context.Background(), []sqlclient.Statement{
		{SQL: "UPDATE t SET v = 'changed' WHERE k <= 50"},
		{SQL: "INSERT INTO t(k, v) VALUES(9999, NULL)"},
		insert(10000),
	}, true)
	if sqlclient.Code(err) != "constraint_violation" {
		t.Fatalf("a NULL in a NOT NULL column: %v", err)
	}
	// An explicit ROLLBACK of a large transaction, and a SQL error.
	stmts = []sqlclient.Statement{{SQL: "BEGIN"}, {SQL: "DELETE FROM t"}}
	for k := 200; k < 3000; k++ {
		stmts = append(stmts, insert(k))
	}
	stmts = append(stmts, sqlclient.Statement{SQL: "ROLLBACK"})
	c.exec(t, false, stmts...)
	_, err = c.db.Execute(context.Background(), []sqlclient.Statement{insert(7000), {SQL: "INSERT INTO nowhere VALUES(1)"}}, true)
	if sqlclient.Code(err) != "sql_error" || !strings.Contains(err.Error(), "no such table") {
		t.Fatalf("a statement on a missing table: %v", err)
	}

	// A BEGIN left open is rolled back (it would hold the writer turn), and
	// transaction control inside "transaction": true is refused.
	_, err = c.db.Execute(context.Background(), []sqlclient.Statement{{SQL: "BEGIN"}, insert(8000)}, false)
	if sqlclient.Code(err) != "bad_request" || !strings.Contains(err.Error(), "left a transaction open") {
		t.Fatalf("a BEGIN without COMMIT: %v", err)
	}
	_, err = c.db.Execute(context.Background(), []sqlclient.Statement{{SQL: "BEGIN"}, insert(8001), insert(1)}, false)
	if sqlclient.Code(err) != "constraint_violation" || !strings.Contains(err.Error(), "was rolled back") {
		t.Fatalf("a failing statement after BEGIN: %v", err)
	}
	_, err = c.db.Execute(context.Background(), []sqlclient.Statement{insert(8002), {SQL: "COMMIT"}}, true)
	if sqlclient.Code(err) != "bad_request" {
		t.Fatalf("COMMIT inside a transaction: %v", err)
	}
	// Two statements in one entry would run as a script: a COMMIT in it
	// would end the transaction early.
	_, err = c.db.Execute(context.Background(), []sqlclient.Statement{insert(8003), {SQL: "INSERT INTO t(k, v) VALUES(8004, 'x'); COMMIT"}, {SQL: "INSERT INTO t(k, v) VALUES(1, 'dup')"}}, true)
	if sqlclient.Code(err) != "bad_request" || !strings.Contains(err.Error(), "more than one SQL statement") {
		t.Fatalf("two statements in one entry: %v", err)
	}
	// A read transaction may not outlive its query.
	if _, err := c.db.Query(context.Background(), "BEGIN"); sqlclient.Code(err) != "bad_request" {
		t.Fatalf("BEGIN on /v1/query: %v", err)
	}

	after := c.query(t, "SELECT k, v FROM t ORDER BY k")
	if fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("the table changed: %d rows before, %d after", len(before), len(after))
	}
	health2, err := c.db.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if health2.Stats.Commits != health.Stats.Commits {
		t.Fatalf("%d commits reached storage from failed or rolled-back transactions", health2.Stats.Commits-health.Stats.Commits)
	}
	c.integrityOK(t)
	// Nothing kept the writer turn: writes go on.
	c.exec(t, true, insert(9000), insert(9001))
}

// Required test 4, and the pipelined commit's test: SIGKILL every process
// of the cluster in the middle of a concurrent load of inserts and reads,
// then start it again with `borealis up`. Every acknowledged insert is
// there, no read ever showed a row that is not there after the crash (reads
// see only durable data), and the database is intact.
func TestSQLWholeClusterKilledLosesNothing(t *testing.T) {
	c := startSQLCluster(t, "--pg-size", "1MiB")
	c.exec(t, false, sqlclient.Statement{SQL: "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu      sync.Mutex
		acked   = map[int]bool{}
		seenMax atomic.Int64
		next    atomic.Int64
		wg      sync.WaitGroup
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				k := int(next.Add(1))
				if _, err := c.db.Execute(ctx, []sqlclient.Statement{insert(k)}, false); err == nil {
					mu.Lock()
					acked[k] = true
					mu.Unlock()
				}
			}
		}()
	}
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				rows, err := c.db.Query(ctx, "SELECT max(k) FROM t")
				if err == nil && len(rows.Rows) == 1 {
					if m, ok := rows.Rows[0][0].(int64); ok && m > seenMax.Load() {
						seenMax.Store(m)
					}
				}
			}
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 300 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d inserts acknowledged in 20s", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Every process at once: the cluster's and `up` itself.
	pids := []int{c.u.cmd.Process.Pid}
	for _, comp := range c.f.Components {
		pids = append(pids, comp.Pid)
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	cancel()
	wg.Wait()
	<-c.u.end
	for _, pid := range pids {
		for i := 0; alive(pid) && i < 100; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
	mu.Lock()
	t.Logf("%d inserts acknowledged before SIGKILL; reads saw up to k=%d", len(acked), seenMax.Load())
	mu.Unlock()

	// The killed `up` left its cluster.json behind; the new one writes its own.
	os.Remove(filepath.Join(c.dir, "cluster.json"))
	u2 := startUp(t, c.dir)
	c2 := &sqlCluster{u: u2, f: u2.waitReady(), dir: c.dir}
	c2.db = writerClient(t, c2.f)
	if !strings.Contains(u2.output(), "resuming the cluster") {
		t.Fatalf("up did not resume:\n%s", u2.output())
	}
	present := map[int]bool{}
	for _, r := range c2.query(t, "SELECT k, v FROM t") {
		k := int(r[0].(int64))
		if r[1] != rowText(k) {
			t.Fatalf("row %d reads back as %v", k, r[1])
		}
		present[k] = true
	}
	mu.Lock()
	for k := range acked {
		if !present[k] {
			t.Fatalf("acknowledged insert of k=%d is lost", k)
		}
	}
	mu.Unlock()
	if m := seenMax.Load(); m > 0 && !present[int(m)] {
		t.Fatalf("a read showed k=%d, which the crash lost: reads saw data that was not durable", m)
	}
	t.Logf("%d rows after the restart (%d acknowledged, the rest committed but not yet acknowledged)", len(present), len(acked))
	c2.integrityOK(t)
	// And the database takes writes again.
	c2.exec(t, false, insert(int(next.Load())+1000))
}

// Required test 5: a table spanning several PGs reads and writes correctly.
func TestSQLTableSpansPGs(t *testing.T) {
	c := startSQLCluster(t, "--pg-size", "64KiB") // 16 pages per PG
	c.exec(t, false, sqlclient.Statement{SQL: "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"})
	c.exec(t, false, sqlclient.Statement{SQL: "CREATE INDEX t_v ON t(v)"})
	big := func(k, version int) string { return fmt.Sprintf("%d/%d ", k, version) + strings.Repeat("p", 1500) }
	var stmts []sqlclient.Statement
	for k := 1; k <= 400; k++ {
		stmts = append(stmts, sqlclient.Statement{SQL: "INSERT INTO t(k, v) VALUES(?, ?)", Params: []any{k, big(k, 1)}})
		if len(stmts) == 50 {
			c.exec(t, true, stmts...)
			stmts = stmts[:0]
		}
	}
	c.exec(t, true,
		sqlclient.Statement{SQL: "UPDATE t SET v = ? || substr(v, length(?) + 1) WHERE k % 7 = 0", Params: []any{"updated ", "updated "}},
		sqlclient.Statement{SQL: "DELETE FROM t WHERE k % 10 = 3"})
	ctl := controlClient(t, c.f)
	vi, err := ctl.GetVolume(context.Background(), &pb.GetVolumeRequest{Name: "main"})
	if err != nil {
		t.Fatal(err)
	}
	if vi.Pgs < 8 {
		t.Fatalf("the table fits in %d PGs; the test wants it to span several", vi.Pgs)
	}
	t.Logf("the database spans %d PGs of 16 pages", vi.Pgs)
	rows := c.query(t, "SELECT k, v FROM t ORDER BY k")
	want := 0
	for k := 1; k <= 400; k++ {
		if k%10 == 3 {
			continue
		}
		if want >= len(rows) {
			t.Fatalf("only %d rows read back", len(rows))
		}
		v := big(k, 1)
		if k%7 == 0 {
			v = "updated " + v[len("updated "):]
		}
		if rows[want][0] != int64(k) || rows[want][1] != v {
			t.Fatalf("row %d reads back as %.40v", k, rows[want])
		}
		want++
	}
	if want != len(rows) {
		t.Fatalf("read back %d rows, want %d", len(rows), want)
	}
	if n := c.one(t, "SELECT count(*) FROM t INDEXED BY t_v WHERE v >= ''"); n != int64(want) {
		t.Fatalf("the index holds %d rows, want %d", n, want)
	}
	c.integrityOK(t)
}

// The writer SIGKILLed while AZ a is down: the restarted writer waits out
// the old lease, recovers with the four nodes left (a read quorum and a
// write quorum of every PG), and every acknowledged row is there. The
// cluster has no replica, so that no failover promotes one: this is the
// writer's own recovery. up, which supervises the database instances,
// starts the killed writer again by itself; `restart writer` then waits
// for that one and succeeds.
func TestSQLWriterRestartsDuringAZLoss(t *testing.T) {
	c := startSQLCluster(t, "--pg-size", "64KiB", "--replicas", "0")
	c.exec(t, false, sqlclient.Statement{SQL: "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"})
	for k := 1; k <= 50; k++ {
		c.exec(t, false, insert(k))
	}
	for _, id := range []string{"s1", "s2"} {
		if err := syscall.Kill(c.component(t, id).Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	for k := 51; k <= 100; k++ {
		c.exec(t, false, insert(k))
	}
	before, err := c.db.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	old := c.component(t, "writer")
	if err := syscall.Kill(old.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// up reports the death and starts the writer again itself (a killed
	// writer is unreachable for the moment before that: too short to
	// look for in status).
	wait.For(t, 20*time.Second, "up to report the writer's death and start it again", func() bool {
		return strings.Contains(c.u.output(), fmt.Sprintf("!! writer (writer, AZ a, pid %d) ", old.Pid)) &&
			strings.Contains(c.u.output(), "up starts it again in")
	})
	out, err := exec.Command(binary, "restart", "writer", "--dir", c.dir).CombinedOutput()
	if err != nil {
		t.Fatalf("borealis restart writer: %v\n%s", err, out)
	}
	after, err := c.db.Health(context.Background())
	if err != nil || !after.Ready || after.Role != "writer" {
		t.Fatalf("writer after restart: %+v %v", after, err)
	}
	t.Logf("writer back in %s at epoch %d (was %d), VDL %d (was %d)", time.Since(start).Round(time.Millisecond), after.Epoch, before.Epoch, after.VDL, before.VDL)
	if after.Epoch <= before.Epoch || after.VDL < before.VDL {
		t.Fatalf("recovery went from epoch %d VDL %d to epoch %d VDL %d", before.Epoch, before.VDL, after.Epoch, after.VDL)
	}
	if w := componentOf(t, c.dir, "writer"); w.Pid == old.Pid || !alive(w.Pid) {
		t.Fatalf("cluster.json lists the writer with pid %d (the killed one was %d)", w.Pid, old.Pid)
	}
	// status says the writer took its lease back, with no replica
	// promoted. The control plane marks the failover done once it sees
	// the new holder's registration ready, a moment after the writer is.
	lease, last := writerLeaseStatus(t, c.dir)
	if lease == nil || lease.Holder != "writer" || lease.Epoch != after.Epoch {
		t.Fatalf("status shows the writer lease %+v; the restarted writer serves at epoch %d", lease, after.Epoch)
	}
	wait.For(t, 10*time.Second, "status to show the failover done, the writer taking its lease back", func() bool {
		_, last = writerLeaseStatus(t, c.dir)
		return last != nil && last.State == "done"
	})
	if last.Kind != "unplanned" || last.From != "writer" || last.Target != "writer" || last.Epoch != after.Epoch {
		t.Fatalf("status shows the last failover %+v; the writer took its own lease back at epoch %d", last, after.Epoch)
	}
	rows := c.query(t, "SELECT k, v FROM t ORDER BY k")
	if len(rows) != 100 {
		t.Fatalf("%d rows after the writer's restart, want 100", len(rows))
	}
	for i, r := range rows {
		if r[0] != int64(i+1) || r[1] != rowText(i+1) {
			t.Fatalf("row %d reads back as %v", i+1, r)
		}
	}
	c.exec(t, false, insert(101))
	c.integrityOK(t)
}

// leaseStatus is a volume's writer_lease in `borealis status --json`.
type leaseStatus struct {
	Holder string `json:"holder"`
	Epoch  uint64 `json:"epoch"`
}

// failoverStatus is a volume's last_failover there.
type failoverStatus struct {
	Kind   string `json:"kind"`
	From   string `json:"from"`
	Target string `json:"target"`
	State  string `json:"state"`
	Epoch  uint64 `json:"epoch"`
}

// writerLeaseStatus is the writer_lease and last_failover of volume main
// as `borealis status --json` shows them (nil when absent).
func writerLeaseStatus(t *testing.T, dir string) (*leaseStatus, *failoverStatus) {
	t.Helper()
	out, err := exec.Command(binary, "status", "--dir", dir, "--json").Output()
	if err != nil {
		t.Fatalf("borealis status: %v\n%s", err, out)
	}
	var st struct {
		Volumes []struct {
			Name         string          `json:"name"`
			WriterLease  *leaseStatus    `json:"writer_lease"`
			LastFailover *failoverStatus `json:"last_failover"`
		} `json:"volumes"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	for _, v := range st.Volumes {
		if v.Name == "main" {
			return v.WriterLease, v.LastFailover
		}
	}
	t.Fatalf("status --json shows no volume main:\n%s", out)
	return nil, nil
}

// A writer paused (SIGSTOP) past its lease is replaced: a second writer
// takes the lease, bumps the epoch and recovers. Woken, the old writer
// never gets another write accepted (storage fences its epoch, or it sees
// its lease gone), and every write either of them acknowledged is there.
// The cluster has no replica: one would be promoted in the pause, and the
// second writer would start as its replica.
func TestSQLPausedWriterIsFenced(t *testing.T) {
	c := startSQLCluster(t, "--replicas", "0")
	c.exec(t, false, sqlclient.Statement{SQL: "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"})
	for k := 1; k <= 20; k++ {
		c.exec(t, false, insert(k))
	}
	old := c.component(t, "writer")
	if err := syscall.Kill(old.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			syscall.Kill(old.Pid, syscall.SIGCONT)
		}
	}()

	addr := cpFreeAddr(t)
	cpStart(t, "db", "--role", "writer", "--volume", "main", "--control", c.f.ControlAddrs(), "--listen", addr, "--id", "writer-2")
	db2 := &sqlclient.Client{Endpoint: "http://" + addr}
	var h2 *sqlclient.Health
	wait.For(t, 30*time.Second, "the second writer to serve as the writer", func() bool {
		h, err := db2.Health(context.Background())
		h2 = h
		return err == nil && h.Ready && h.Role == "writer"
	})
	t.Logf("second writer ready at epoch %d, VDL %d", h2.Epoch, h2.VDL)
	for k := 21; k <= 40; k++ {
		if _, err := db2.Execute(context.Background(), []sqlclient.Statement{insert(k)}, false); err != nil {
			t.Fatalf("insert %d through the second writer: %v", k, err)
		}
	}

	if err := syscall.Kill(old.Pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	for k := 1000; k < 1010; k++ {
		_, err := c.db.Execute(context.Background(), []sqlclient.Statement{insert(k)}, false)
		switch code := sqlclient.Code(err); code {
		case "not_writer", "not_ready":
			if k == 1000 {
				t.Logf("the woken writer refuses: %v", err)
			}
		default:
			t.Fatalf("insert %d through the fenced writer: %v; want not_writer or not_ready", k, err)
		}
	}
	rows, err := db2.Query(context.Background(), "SELECT k FROM t ORDER BY k")
	if err != nil {
		t.Fatal(err)
	}
	if len(rows.Rows) != 40 || rows.Rows[39][0] != int64(40) {
		t.Fatalf("the second writer reads %d rows (want 1..40): %v", len(rows.Rows), rows.Rows)
	}
	res, err := db2.Query(context.Background(), "PRAGMA integrity_check")
	if err != nil || res.Rows[0][0] != "ok" {
		t.Fatalf("integrity_check: %v %v", res, err)
	}
}
