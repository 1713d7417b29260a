package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/wait"
)

// The control plane survives an AZ (issue 9): `borealis up` runs three
// control planes over a three-member etcd, and these tests SIGKILL them
// under load on real processes.

// haCluster is a cluster `borealis up` runs, with one replica.
type haCluster struct {
	u *upProcess
	f *cluster.File
}

func startHACluster(t *testing.T) *haCluster {
	t.Helper()
	dir, err := os.MkdirTemp("", "cpha-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	u := startUp(t, dir, "--base-port", fmt.Sprint(freeBasePort(t)), "--replicas", "1", "--heartbeat-timeout", "2s")
	f := u.waitReady()
	if n := len(f.ControlPlanes()); n != 3 {
		t.Fatalf("up runs %d control planes, want 3: %+v", n, f.Components)
	}
	return &haCluster{u: u, f: f}
}

func (h *haCluster) comp(t *testing.T, id string) cluster.Component {
	t.Helper()
	c, ok := h.f.ByID(id)
	if !ok {
		t.Fatalf("cluster.json lists no %s", id)
	}
	return c
}

func (h *haCluster) kill(t *testing.T, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := syscall.Kill(h.comp(t, id).Pid, syscall.SIGKILL); err != nil {
			t.Fatalf("SIGKILL %s: %v", id, err)
		}
	}
}

// leaders asks each control plane, except those in skip, whether it leads,
// and returns the names of those that say so.
func (h *haCluster) leaders(skip map[string]bool) []string {
	var out []string
	for _, c := range h.f.ControlPlanes() {
		if skip[c.ID] {
			continue
		}
		conn, err := grpc.NewClient(c.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := pb.NewControlPlaneClient(conn).ControlPlaneStatus(ctx, &pb.ControlPlaneStatusRequest{})
		cancel()
		conn.Close()
		if err == nil && resp.GetLeading() {
			out = append(out, resp.GetSelf().GetName())
		}
	}
	return out
}

// waitLeader waits until exactly one of the control planes not in skip
// leads, and returns it.
func (h *haCluster) waitLeader(t *testing.T, skip map[string]bool, within time.Duration, what string) string {
	t.Helper()
	var leader string
	wait.For(t, within, what, func() bool {
		l := h.leaders(skip)
		if len(l) == 1 {
			leader = l[0]
			return true
		}
		return false
	})
	return leader
}

// insertLoad inserts rows k = 1, 2, ... one a transaction, and counts the
// rows with a query after each, through addr, until stopped; it records
// which inserts were acknowledged and when the last insert and read
// succeeded.
type insertLoad struct {
	addr string
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	acked    []int64
	failed   int
	lastErr  string
	lastAck  time.Time
	lastRead time.Time
	reads    int
}

func startInsertLoad(t *testing.T, addr string) *insertLoad {
	t.Helper()
	mustExec(t, addr, false, st("CREATE TABLE ha(k INTEGER PRIMARY KEY, v TEXT)"))
	l := &insertLoad{addr: addr, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for k := int64(1); ; k++ {
			select {
			case <-l.stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := execLSN(ctx, addr, true, st("INSERT INTO ha VALUES(?, ?)", k, fmt.Sprintf("row %d", k)))
			cancel()
			now := time.Now()
			l.mu.Lock()
			if err == nil {
				l.acked = append(l.acked, k)
				l.lastAck = now
			} else {
				l.failed++
				l.lastErr = err.Error()
			}
			l.mu.Unlock()
			ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
			_, _, err = queryRows(ctx, addr, 0, "SELECT count(*) FROM ha")
			cancel()
			if err == nil {
				l.mu.Lock()
				l.lastRead, l.reads = time.Now(), l.reads+1
				l.mu.Unlock()
			}
			if err != nil || l.failedSince() {
				// Not a tight loop while the cluster cannot answer.
				select {
				case <-l.stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
	}()
	t.Cleanup(l.halt)
	return l
}

func (l *insertLoad) failedSince() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed > 0 && (len(l.acked) == 0 || l.lastAck.Before(time.Now().Add(-50*time.Millisecond)))
}

func (l *insertLoad) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
}

type loadState struct {
	acked, failed, reads int
	lastAck, lastRead    time.Time
	lastErr              string
}

func (l *insertLoad) state() loadState {
	l.mu.Lock()
	defer l.mu.Unlock()
	return loadState{len(l.acked), l.failed, l.reads, l.lastAck, l.lastRead, l.lastErr}
}

// waitMore waits until n more inserts and a read after now have
// succeeded.
func (l *insertLoad) waitMore(t *testing.T, n int, within time.Duration, what string) {
	t.Helper()
	from, now := l.state().acked, time.Now()
	wait.For(t, within, fmt.Sprintf("%d more acknowledged inserts and a read %s (last error: %s)", n, what, l.state().lastErr), func() bool {
		s := l.state()
		return s.acked >= from+n && s.lastRead.After(now)
	})
}

// checkAllPresent stops the load and checks that every acknowledged insert
// is in the table, read through addr.
func (l *insertLoad) checkAllPresent(t *testing.T, addr string) {
	t.Helper()
	l.halt()
	l.mu.Lock()
	acked := append([]int64(nil), l.acked...)
	l.mu.Unlock()
	var rows [][]any
	wait.For(t, 20*time.Second, "the table to be readable at the end", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		rows, _, err = queryRows(ctx, addr, 0, "SELECT k FROM ha ORDER BY k")
		return err == nil
	})
	have := map[int64]bool{}
	for _, r := range rows {
		if k, ok := r[0].(int64); ok {
			have[k] = true
		}
	}
	var missing []int64
	for _, k := range acked {
		if !have[k] {
			missing = append(missing, k)
		}
	}
	sort.Slice(missing, func(i, j int) bool { return missing[i] < missing[j] })
	if len(missing) > 0 {
		t.Fatalf("%d of %d acknowledged inserts are missing, e.g. %v", len(missing), len(acked), missing[:min(len(missing), 10)])
	}
	t.Logf("all %d acknowledged inserts are present (%d rows)", len(acked), len(rows))
}

// clusterEndpoint is the router's cluster endpoint: it routes to whichever
// instance holds the writer lease.
func (h *haCluster) clusterEndpoint(t *testing.T) string {
	return h.comp(t, "router").ClusterEndpoint
}

// TestControlHALeaderKilled: the leading control plane is SIGKILLed under
// a steady load of inserts and queries through the cluster endpoint;
// another one leads within a few seconds, writes and reads go on, and every
// acknowledged insert is there at the end.
func TestControlHALeaderKilled(t *testing.T) {
	h := startHACluster(t)
	leader := h.waitLeader(t, nil, 10*time.Second, "one control plane to lead")
	addr := h.clusterEndpoint(t)
	l := startInsertLoad(t, addr)
	l.waitMore(t, 20, 20*time.Second, "before the kill")

	killed := time.Now()
	h.kill(t, leader)
	next := h.waitLeader(t, map[string]bool{leader: true}, 10*time.Second, "another control plane to lead after "+leader+"'s SIGKILL")
	t.Logf("%s led; SIGKILLed, %s leads %s later", leader, next, time.Since(killed).Round(10*time.Millisecond))
	l.waitMore(t, 50, 20*time.Second, "after the leader's SIGKILL")

	// Restarted on its data directory, the killed one rejoins: all three
	// answer, and still exactly one leads.
	if out, err := exec.Command(binary, "restart", leader, "--dir", h.u.dir).CombinedOutput(); err != nil {
		t.Fatalf("borealis restart %s: %v\n%s", leader, err, out)
	}
	wait.For(t, 20*time.Second, leader+" to answer again after its restart", func() bool {
		for _, c := range h.f.ControlPlanes() {
			if c.ID != leader {
				continue
			}
			conn, err := grpc.NewClient(c.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return false
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			resp, err := pb.NewControlPlaneClient(conn).ControlPlaneStatus(ctx, &pb.ControlPlaneStatusRequest{})
			return err == nil && resp.GetLeader() != nil && len(resp.GetMembers()) == 3
		}
		return false
	})
	if l := h.waitLeader(t, nil, 10*time.Second, "one leader among the three"); l != next {
		t.Logf("the lead moved from %s to %s", next, l)
	}
	l.waitMore(t, 20, 20*time.Second, "after "+leader+" rejoined")
	s := l.state()
	t.Logf("%d inserts acknowledged, %d failed, %d reads", s.acked, s.failed, s.reads)
	l.checkAllPresent(t, addr)
}

// TestControlHAAZLost: a whole AZ that does not hold the writer dies at
// once: its control plane and both its storage nodes. Writes go on, with
// two control planes and four storage nodes.
func TestControlHAAZLost(t *testing.T) {
	h := startHACluster(t)
	writerAZ := h.comp(t, "writer").AZ
	// The AZ after the writer's that holds no replica either, so that the
	// loss costs the cluster nothing but the AZ itself.
	az := ""
	for _, cand := range []string{"c", "b", "a"} {
		if cand != writerAZ && cand != h.comp(t, "r1").AZ {
			az = cand
			break
		}
	}
	var ids []string
	for _, c := range h.f.Components {
		if c.AZ == az && (c.Role == "control" || c.Role == "storage") {
			ids = append(ids, c.ID)
		}
	}
	if len(ids) != 3 {
		t.Fatalf("AZ %s has %v, want a control plane and two storage nodes", az, ids)
	}
	addr := h.clusterEndpoint(t)
	l := startInsertLoad(t, addr)
	l.waitMore(t, 20, 20*time.Second, "before the AZ's loss")

	h.kill(t, ids...)
	t.Logf("SIGKILLed AZ %s: %v (the writer is in AZ %s)", az, ids, writerAZ)
	skip := map[string]bool{}
	for _, id := range ids {
		skip[id] = true
	}
	leader := h.waitLeader(t, skip, 10*time.Second, "a control plane outside AZ "+az+" to lead")
	l.waitMore(t, 50, 20*time.Second, "with AZ "+az+" gone")
	s := l.state()
	t.Logf("%s leads; %d inserts acknowledged, %d failed, %d reads", leader, s.acked, s.failed, s.reads)
	l.checkAllPresent(t, addr)
}

// leaseTTL is `borealis db --lease-ttl`'s default, as the binary's help
// gives it.
func leaseTTL(t *testing.T) time.Duration {
	t.Helper()
	out, _ := exec.Command(binary, "db", "--help").CombinedOutput()
	m := regexp.MustCompile(`--lease-ttl duration[^\n]*\(default ([0-9a-z.]+)\)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("db --help gives no default for --lease-ttl:\n%s", out)
	}
	d, err := time.ParseDuration(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestControlHATwoLost: two of the three control planes are SIGKILLed, so
// the catalog has no majority. The writer cannot renew its lease and stops
// acknowledging within the lease's TTL (and a margin for the last commit
// in flight); the replica keeps answering queries at the last VDL it has.
func TestControlHATwoLost(t *testing.T) {
	ttl := leaseTTL(t)
	h := startHACluster(t)
	writer := h.comp(t, "writer")
	replica := h.comp(t, "r1")
	l := startInsertLoad(t, writer.Addr)
	l.waitMore(t, 20, 20*time.Second, "before the kill")
	// The replica has what the writer acknowledged before the kill.
	before := l.state().acked
	wait.For(t, 10*time.Second, "the replica to apply the inserts", func() bool {
		rows, _, err := queryRows(context.Background(), replica.Addr, 0, "SELECT count(*) FROM ha")
		return err == nil && len(rows) == 1 && rows[0][0].(int64) >= int64(before)
	})

	var kill []string
	for _, c := range h.f.ControlPlanes() {
		if c.AZ != writer.AZ {
			kill = append(kill, c.ID)
		}
	}
	killed := time.Now()
	h.kill(t, kill...)
	t.Logf("SIGKILLed control planes %v; writer lease TTL %s", kill, ttl)

	// The writer stops acknowledging: wait until it has been silent for
	// twice the TTL, then check when it last acknowledged.
	margin := time.Second
	wait.For(t, ttl+margin+20*time.Second, "the writer to stop acknowledging inserts", func() bool {
		s := l.state()
		return time.Since(killed) > ttl+margin && time.Since(s.lastAck) > 2*ttl+time.Second
	})
	s := l.state()
	if after := s.lastAck.Sub(killed); after > ttl+margin {
		t.Fatalf("the writer acknowledged an insert %s after two control planes died, past its lease's %s TTL + %s", after.Round(time.Millisecond), ttl, margin)
	}
	t.Logf("the last insert was acknowledged %s after the kill; %d acknowledged in all; then: %s", s.lastAck.Sub(killed).Round(time.Millisecond), s.acked, s.lastErr)

	// The replica answers queries, with every insert acknowledged before
	// the kill, again and again.
	var count int64
	answered := 0
	wait.For(t, 20*time.Second, "the replica to answer five queries in a row without a catalog majority", func() bool {
		rows, _, err := queryRows(context.Background(), replica.Addr, 0, "SELECT count(*) FROM ha")
		if err != nil {
			t.Logf("replica: %v", err)
			answered = 0
			return false
		}
		count = rows[0][0].(int64)
		answered++
		return answered >= 5
	})
	if count < int64(before) {
		t.Fatalf("the replica counts %d rows, fewer than the %d acknowledged before the kill", count, before)
	}
	t.Logf("the replica answers: %d rows (%d acknowledged in all)", count, s.acked)
}
