package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/wait"
)

// upFreePorts finds n consecutive free loopback ports below Linux's
// ephemeral range (see freeBasePort) and returns the first.
func upFreePorts(t *testing.T, n int) int {
	t.Helper()
	for try := 0; try < 100; try++ {
		base := 20000 + rand.IntN(12000)
		ok := true
		for p := base; p < base+n && ok; p++ {
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
	t.Fatalf("no %d consecutive free ports", n)
	return 0
}

// upAPI posts body to an instance's (or the router's) SQL API and decodes
// the reply into reply; code is the error code of a refusal ("" if none),
// instance the Borealis-Instance header (set by the router).
func upAPI(addr, path string, body, reply any) (code, instance string, err error) {
	b, err := json.Marshal(body)
	if err != nil {
		return "", "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+path, bytes.NewReader(b))
	if err != nil {
		return "", "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", "", err
	}
	instance = resp.Header.Get("Borealis-Instance")
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		json.Unmarshal(data, &e)
		return e.Error.Code, instance, fmt.Errorf("%s%s: HTTP %d: %s", addr, path, resp.StatusCode, data)
	}
	return "", instance, json.Unmarshal(data, reply)
}

// upExecute runs statements in one transaction and returns the reply's lsn.
func upExecute(t *testing.T, addr string, sqls ...string) uint64 {
	t.Helper()
	var stmts []map[string]any
	for _, s := range sqls {
		stmts = append(stmts, map[string]any{"sql": s})
	}
	var reply struct {
		LSN uint64 `json:"lsn"`
	}
	if _, _, err := upAPI(addr, "/v1/execute", map[string]any{"statements": stmts, "transaction": true}, &reply); err != nil {
		t.Fatal(err)
	}
	if reply.LSN == 0 {
		t.Fatalf("execute on %s replied lsn 0", addr)
	}
	return reply.LSN
}

// upCount runs SELECT count(*) FROM t with min_lsn on addr.
func upCount(addr string, minLSN uint64) (n int64, code, instance string, err error) {
	var reply struct {
		Rows [][]int64 `json:"rows"`
	}
	code, instance, err = upAPI(addr, "/v1/query", map[string]any{"sql": "SELECT count(*) FROM t", "min_lsn": minLSN}, &reply)
	if err != nil {
		return 0, code, instance, err
	}
	if len(reply.Rows) != 1 || len(reply.Rows[0]) != 1 {
		return 0, "", instance, fmt.Errorf("%s: rows %v", addr, reply.Rows)
	}
	return reply.Rows[0][0], "", instance, nil
}

// upSeesCount waits until the instance at addr answers a query with
// min_lsn lsn with want rows: a replica that has not applied lsn yet
// answers lagging after its --min-lsn-wait, and is asked again.
func upSeesCount(t *testing.T, id, addr string, lsn uint64, want int64, within time.Duration) {
	t.Helper()
	last := ""
	wait.For(t, within, fmt.Sprintf("%s to answer with the commit at LSN %d", id, lsn), func() bool {
		n, code, _, err := upCount(addr, lsn)
		switch {
		case err == nil && n == want:
			return true
		case err == nil:
			t.Fatalf("%s at min_lsn %d counts %d rows, want %d", id, lsn, n, want)
		case code != "lagging" && code != "not_ready" && code != "":
			t.Fatalf("%s at min_lsn %d: %v", id, lsn, err)
		}
		if msg := fmt.Sprint(err); msg != last {
			last = msg
			t.Logf("%s at min_lsn %d: %s", id, lsn, msg)
		}
		return false
	})
}

type upStatusInstances struct {
	Instances []struct {
		ID        string   `json:"id"`
		Role      string   `json:"role"`
		AZ        string   `json:"az"`
		Endpoint  string   `json:"endpoint"`
		VDL       *uint64  `json:"vdl"`
		LagLSN    *uint64  `json:"lag_lsn"`
		LagMS     *float64 `json:"lag_ms"`
		ReadPoint *uint64  `json:"read_point"`
		State     string   `json:"state"`
		Source    string   `json:"source"`
	} `json:"instances"`
	Volumes []struct {
		Name   string `json:"name"`
		PGMRPL uint64 `json:"pgmrpl"`
	} `json:"volumes"`
	Routers []struct {
		ID              string   `json:"id"`
		ClusterEndpoint string   `json:"cluster_endpoint"`
		ReaderEndpoint  string   `json:"reader_endpoint"`
		Candidates      []string `json:"candidates"`
	} `json:"routers"`
	Nodes   []json.RawMessage `json:"nodes"`
	Writers []json.RawMessage `json:"writers"`
}

func upStatus(t *testing.T, dir string) upStatusInstances {
	t.Helper()
	out, err := exec.Command(binary, "status", "--dir", dir, "--json").Output()
	if err != nil {
		t.Fatalf("borealis status --json: %v\n%s", err, out)
	}
	var st upStatusInstances
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}

// TestUpReplicas runs `up --replicas 15`: cluster.json lists the 15
// replicas, in AZs b, c, a in turn, on the ports after the writer's, and
// the router with its two endpoints on the next two; every replica serves a
// commit made on the writer once it has applied it (min_lsn); status --json
// lists the 16 instances with their AZ, endpoint, VDL, lag, read point and
// state; the reader endpoint answers from a replica; a write on a replica
// is refused, naming where writes go; r1 killed and restarted with
// `borealis restart r1` catches up with what it missed; and Ctrl-C stops
// every process.
func TestUpReplicas(t *testing.T) {
	const n = 15
	dir := filepath.Join(t.TempDir(), "c")
	base := upFreePorts(t, 7+n+3)
	u := startUp(t, dir, "--base-port", fmt.Sprint(base), "--replicas", fmt.Sprint(n), "--pg-size", "1MiB")
	var f *cluster.File
	wait.For(t, 4*time.Minute, "up --replicas 15 to write cluster.json", func() bool {
		select {
		case <-u.end:
			t.Fatalf("borealis up exited:\n%s", u.output())
		default:
		}
		var err error
		f, err = cluster.ReadFile(filepath.Join(dir, "cluster.json"))
		return err == nil
	})
	// cluster.json is written just before up prints the cluster's summary.
	wait.For(t, 10*time.Second, "up to print the cluster's summary", func() bool {
		return strings.Contains(u.output(), "Ctrl-C stops the cluster")
	})
	t.Logf("up printed:\n%s", u.output())
	if strings.Contains(u.output(), "!! ") {
		t.Fatalf("up reported a failure:\n%s", u.output())
	}

	// cluster.json: 3 control planes, 6 storage nodes, the writer, 15 replicas and
	// the router, each where the contract puts it.
	if len(f.Components) != 3+6+1+n+1 {
		t.Fatalf("cluster.json lists %d components: %+v", len(f.Components), f.Components)
	}
	addr := func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) }
	w, ok := f.Find("writer")
	if !ok || w.Addr != addr(base+7) || w.AZ != "a" {
		t.Fatalf("writer: %+v", w)
	}
	reps := f.Replicas()
	if len(reps) != n {
		t.Fatalf("cluster.json lists %d replicas", len(reps))
	}
	for i, r := range reps {
		wantAZ := []string{"b", "c", "a"}[i%3]
		if r.ID != fmt.Sprintf("r%d", i+1) || r.AZ != wantAZ || r.Addr != addr(base+8+i) || r.Pid == 0 || !alive(r.Pid) {
			t.Fatalf("replica %d: %+v", i+1, r)
		}
		if !strings.Contains(u.output(), fmt.Sprintf("  replica %s (AZ %s) ready at http://%s", r.ID, r.AZ, r.Addr)) {
			t.Fatalf("up did not print %s with its AZ:\n%s", r.ID, u.output())
		}
	}
	rt, ok := f.Find("router")
	if !ok || rt.ClusterEndpoint != addr(base+8+n) || rt.ReaderEndpoint != addr(base+9+n) || !alive(rt.Pid) {
		t.Fatalf("router: %+v", rt)
	}
	for _, want := range []string{"cluster endpoint  http://" + rt.ClusterEndpoint, "reader endpoint   http://" + rt.ReaderEndpoint} {
		if !strings.Contains(u.output(), want) {
			t.Fatalf("up did not print %q:\n%s", want, u.output())
		}
	}

	// A commit through the router's cluster endpoint; every replica serves
	// it once applied.
	lsn := upExecute(t, rt.ClusterEndpoint, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO t(v) VALUES ('one'), ('two')")
	for _, r := range reps {
		upSeesCount(t, r.ID, r.Addr, lsn, 2, time.Minute)
	}

	// status --json: the writer and the 15 replicas, with their figures.
	var st upStatusInstances
	wait.For(t, time.Minute, "status to show every replica streaming at the commit's LSN", func() bool {
		st = upStatus(t, dir)
		if len(st.Instances) != 1+n {
			return false
		}
		for _, in := range st.Instances[1:] {
			if in.State != "streaming" || in.VDL == nil || *in.VDL < lsn {
				return false
			}
		}
		return true
	})
	for i, in := range st.Instances {
		if in.VDL == nil || in.LagLSN == nil || in.LagMS == nil || in.ReadPoint == nil || in.AZ == "" || in.Source != "health" {
			t.Fatalf("status instance %d lacks a figure: %+v", i, in)
		}
		want := "writer"
		if i > 0 {
			want = fmt.Sprintf("r%d", i)
			if in.Role != "replica" || in.Endpoint != "http://"+reps[i-1].Addr || in.AZ != reps[i-1].AZ {
				t.Fatalf("status instance %d: %+v", i, in)
			}
		} else if in.Role != "writer" || in.State != "ready" || in.Endpoint != "http://"+w.Addr || *in.VDL < lsn {
			t.Fatalf("status writer: %+v", in)
		}
		if in.ID != want {
			t.Fatalf("status instance %d is %s, want %s", i, in.ID, want)
		}
	}
	if len(st.Nodes) != 6 || len(st.Writers) != 1 || len(st.Volumes) != 1 || len(st.Routers) != 1 || st.Routers[0].ReaderEndpoint != "http://"+rt.ReaderEndpoint {
		t.Fatalf("status: %d nodes, writers %d, volumes %+v, routers %+v", len(st.Nodes), len(st.Writers), st.Volumes, st.Routers)
	}
	text, err := exec.Command(binary, "status", "--dir", dir).CombinedOutput()
	if err != nil || !strings.Contains(string(text), "INSTANCES of main: PGMRPL ") || !strings.Contains(string(text), "ROUTER router: cluster endpoint http://"+rt.ClusterEndpoint) {
		t.Fatalf("status: %v\n%s", err, text)
	}

	// The reader endpoint answers from a replica once the router sees them.
	wait.For(t, 30*time.Second, "the reader endpoint to answer from a replica", func() bool {
		cnt, _, inst, err := upCount(rt.ReaderEndpoint, lsn)
		if err != nil {
			return false
		}
		if cnt != 2 {
			t.Fatalf("the reader endpoint counts %d rows", cnt)
		}
		return strings.HasPrefix(inst, "r")
	})
	// So does `borealis sql --reader`, and `--replica`, which refuses a
	// write saying where writes go.
	out, err := exec.Command(binary, "sql", "--dir", dir, "--reader", "-e", "SELECT v FROM t ORDER BY k").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "two") {
		t.Fatalf("sql --reader: %v\n%s", err, out)
	}
	out, err = exec.Command(binary, "sql", "--dir", dir, "--replica", "r7", "-e", "INSERT INTO t(v) VALUES ('no')").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not_writer") || !strings.Contains(string(out), "runs them on the writer (http://"+w.Addr+")") {
		t.Fatalf("a write with sql --replica r7: %v\n%s", err, out)
	}

	// r1 killed: up reports it; a commit it misses; restarted, it catches up.
	r1 := reps[0]
	if err := syscall.Kill(r1.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "up to report r1's death", func() bool {
		return strings.Contains(u.output(), fmt.Sprintf("!! r1 (replica, AZ b, pid %d)", r1.Pid))
	})
	lsn2 := upExecute(t, w.Addr, "INSERT INTO t(v) VALUES ('three')")
	out, err = exec.Command(binary, "restart", "r1", "--dir", dir, "--wait", "60s").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "r1 restarted, pid ") || !strings.Contains(string(out), ", ready (") {
		t.Fatalf("restart r1: %v\n%s", err, out)
	}
	r1b := componentOf(t, dir, "r1")
	if r1b.Pid == r1.Pid || !alive(r1b.Pid) || r1b.Addr != r1.Addr {
		t.Fatalf("cluster.json lists r1 as %+v after its restart (was pid %d)", r1b, r1.Pid)
	}
	upSeesCount(t, "r1", r1.Addr, lsn2, 3, time.Minute)
	for _, r := range reps[1:] {
		upSeesCount(t, r.ID, r.Addr, lsn2, 3, time.Minute)
	}
	// The router's too.
	if err := syscall.Kill(rt.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "up to report the router's death", func() bool {
		return strings.Contains(u.output(), fmt.Sprintf("!! router (router, pid %d)", rt.Pid))
	})
	if out, err := exec.Command(binary, "restart", "router", "--dir", dir).CombinedOutput(); err != nil || !strings.Contains(string(out), ", ready (") {
		t.Fatalf("restart router: %v\n%s", err, out)
	}
	upSeesCount(t, "the reader endpoint", rt.ReaderEndpoint, lsn2, 3, 30*time.Second)

	// Ctrl-C stops every process, the replicas and the router included.
	f2, err := cluster.ReadFile(filepath.Join(dir, "cluster.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := u.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	wait.For(t, time.Minute, "up to stop on SIGINT", func() bool {
		select {
		case <-u.end:
			return true
		default:
			return false
		}
	})
	checkClusterGone(t, dir, f2)
}

// TestUpResumesWithItsReplicas: a second `up` on the directory runs as
// many replicas as the first, on the same ports, unless --replicas says
// otherwise: then the new replica gets the ports after the highest, and a
// replica left out is said to be.
func TestUpResumesWithItsReplicas(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	base := upFreePorts(t, 7+2+3+1)
	stop := func(u *upProcess) *cluster.File {
		t.Helper()
		f, err := cluster.ReadFile(filepath.Join(dir, "cluster.json"))
		if err != nil {
			t.Fatal(err)
		}
		u.cmd.Process.Signal(syscall.SIGINT)
		wait.For(t, time.Minute, "borealis up to stop", func() bool {
			select {
			case <-u.end:
				return true
			default:
				return false
			}
		})
		checkClusterGone(t, dir, f)
		return f
	}
	ids := func(f *cluster.File) string {
		var s []string
		for _, c := range f.Components {
			if c.Role == "replica" || c.Role == "router" {
				s = append(s, fmt.Sprintf("%s@%s", c.ID, strings.TrimPrefix(c.Addr, "127.0.0.1:")))
			}
		}
		return strings.Join(s, " ")
	}
	p := func(off int) int { return base + off }
	u := startUp(t, dir, "--base-port", fmt.Sprint(base), "--replicas", "2")
	u.waitReady()
	f := stop(u)
	if got, want := ids(f), fmt.Sprintf("r1@%d r2@%d router@%d", p(8), p(9), p(10)); got != want {
		t.Fatalf("first up: %s, want %s", got, want)
	}

	u = startUp(t, dir)
	u.waitReady()
	if !strings.Contains(u.output(), "2 replica(s), as the cluster last ran") {
		t.Fatalf("resumed up printed:\n%s", u.output())
	}
	f = stop(u)
	if got, want := ids(f), fmt.Sprintf("r1@%d r2@%d router@%d", p(8), p(9), p(10)); got != want {
		t.Fatalf("resumed: %s, want %s", got, want)
	}

	u = startUp(t, dir, "--replicas", "3")
	u.waitReady()
	f = stop(u)
	if got, want := ids(f), fmt.Sprintf("r1@%d r2@%d r3@%d router@%d", p(8), p(9), p(12), p(10)); got != want {
		t.Fatalf("resumed with --replicas 3: %s, want %s", got, want)
	}

	u = startUp(t, dir, "--replicas", "1")
	u.waitReady()
	if !strings.Contains(u.output(), "--replicas 1: r2, r3 of the last run not started") {
		t.Fatalf("resumed with --replicas 1 printed:\n%s", u.output())
	}
	f = stop(u)
	if got, want := ids(f), fmt.Sprintf("r1@%d router@%d", p(8), p(10)); got != want {
		t.Fatalf("resumed with --replicas 1: %s, want %s", got, want)
	}
}
