package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/wait"
)

// The failover tests (issue 9) run a writer "writer" in AZ a and replicas
// in the other AZs, all of them members that change role as the control
// plane's failovers decide, and the router in front; they kill, pause and
// hand over the writer on real processes.

// failoverCluster is a replica cluster whose instances change roles: ids
// and addresses stay, the writer moves.
type failoverCluster struct {
	*replicaCluster
	ctl pb.ControlClient
}

// startFailoverCluster starts the control plane, six storage nodes, the
// writer in AZ a, one replica in each of AZs b and c (r1, r2), or those of
// replicas, and the router.
func startFailoverCluster(t *testing.T, o replicaClusterOpts) *failoverCluster {
	t.Helper()
	o.writerArgs = append([]string{"--az", "a"}, o.writerArgs...)
	if o.replicas == nil {
		o.replicas = []replicaSpec{{id: "r1", az: "b"}, {id: "r2", az: "c"}}
	}
	o.router = true
	rc := startReplicaCluster(t, o)
	return &failoverCluster{replicaCluster: rc, ctl: cpDial(t, rc.cl.ControlAddr)}
}

// addr is the SQL address of the instance id, whatever its role now.
func (fc *failoverCluster) addr(id string) string {
	if id == "writer" {
		return fc.writer
	}
	return fc.replicas[id]
}

// instanceIDs are every database instance's id.
func (fc *failoverCluster) instanceIDs() []string {
	return append([]string{"writer"}, fc.ids...)
}

// writerState is the volume's writer state now, as the control plane's
// WatchWriter gives it first.
func (fc *failoverCluster) writerState() (*pb.WriterState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	stream, err := fc.ctl.WatchWriter(ctx, &pb.WatchWriterRequest{Volume: "main"})
	if err != nil {
		return nil, err
	}
	return stream.Recv()
}

// mustWriterState is writerState once it has a registered writer.
func (fc *failoverCluster) mustWriterState(t *testing.T) *pb.WriterState {
	t.Helper()
	var st *pb.WriterState
	wait.For(t, 10*time.Second, "the control plane to name a registered writer", func() bool {
		s, err := fc.writerState()
		if err != nil || s.Writer == nil || s.Holder == "" {
			return false
		}
		st = s
		return true
	})
	return st
}

// routerWriter is the writer the router's cluster endpoint sends to now.
func (fc *failoverCluster) routerWriter() string {
	st, err := routerHealth(fc.clusterEP)
	if err != nil || st.Writer == nil {
		return ""
	}
	return st.Writer.ID
}

// waitPromoted waits until a writer other than from, at an epoch above
// fromEpoch, holds the lease and serves: registered in the catalog, its
// failover done, its /v1/health saying it is a ready writer, and the
// router's cluster endpoint sending to it. It returns the writer state.
func (fc *failoverCluster) waitPromoted(t *testing.T, from string, fromEpoch uint64, within time.Duration) *pb.WriterState {
	t.Helper()
	var st *pb.WriterState
	last := ""
	wait.For(t, within, fmt.Sprintf("a writer other than %s above epoch %d, serving and followed by the router", from, fromEpoch), func() bool {
		s, err := fc.writerState()
		if err != nil {
			last = err.Error()
			return false
		}
		if f := s.Failover; f != nil {
			if d := fmt.Sprintf("failover round %d %s: %s -> %s, %s %s", f.Round, f.Kind, f.From, f.Target, f.State, f.Why); d != last {
				last = d
				t.Logf("%s", d)
			}
		}
		if s.Writer == nil || s.Holder == "" || s.Holder == from || s.Epoch <= fromEpoch || s.Writer.Id != s.Holder {
			return false
		}
		if f := s.Failover; f != nil && f.State != "done" && f.State != "failed" {
			return false
		}
		h, err := health(fc.addr(s.Holder))
		if err != nil || h.Role != "writer" || !h.Ready || h.Epoch != s.Epoch {
			return false
		}
		if fc.routerWriter() != s.Holder {
			return false
		}
		st = s
		return true
	})
	return st
}

// waitReplicaOf waits until the instance id serves as a replica streaming
// from the writer at writerAddr.
func (fc *failoverCluster) waitReplicaOf(t *testing.T, id, writerAddr string, within time.Duration) {
	t.Helper()
	var last string
	wait.For(t, within, fmt.Sprintf("%s to follow the writer at %s as a replica", id, writerAddr), func() bool {
		h, err := health(fc.addr(id))
		if err != nil {
			return false
		}
		ok := h.Role == "replica" && h.Ready && h.Replica != nil && h.Replica.Stream == "streaming" && h.Replica.Writer == writerAddr
		d := fmt.Sprintf("role %q, ready %v, status %q", h.Role, h.Ready, h.Status)
		if r := h.Replica; r != nil {
			d += fmt.Sprintf(", stream %s from %s at epoch %d, %d resyncs", r.Stream, r.Writer, r.Epoch, r.Resyncs)
		}
		if !ok && d != last {
			last = d
			t.Logf("%s: %s", id, d)
		}
		return ok
	})
}

// rejoin restarts the killed instance id and waits until it follows the
// writer at writerAddr as a replica: a dead writer comes back as one.
func (fc *failoverCluster) rejoin(t *testing.T, id, writerAddr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := fc.cl.Restart(ctx, id); err != nil {
		t.Fatalf("restart %s: %v", id, err)
	}
	fc.waitReplicaOf(t, id, writerAddr, 20*time.Second)
}

// outcome is what became of one write.
type outcome int

const (
	acked   outcome = iota // 200: it committed
	refused                // refused before it ran: it did not commit
	unknown                // it may or may not have committed
)

// classify tells a write's outcome from its error. Only refusals that
// mean the statements never ran are "refused": a router or instance that
// was not the writer, was not ready, had no writer, or was locked. The
// rest (the router's unavailable and outcome_unknown, a commit that timed
// out on storage, a broken connection, the client's own timeout) may have
// committed.
func classify(err error) outcome {
	if err == nil {
		return acked
	}
	switch sqlclient.Code(err) {
	case "not_writer", "not_ready", "no_writer", "busy":
		return refused
	}
	return unknown
}

// txLoad inserts unique keys from several goroutines, through one
// endpoint, each key into two tables in one transaction: a partial
// transaction would show as a key in one table only. It records each
// key's outcome and when each acknowledgement arrived.
type txLoad struct {
	addr string
	stop chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex
	outcomes map[int64]outcome
	ackTimes []time.Time
	lastErr  map[string]int // error texts (trimmed) by count, for the log
}

// txLoadTables creates the two tables a txLoad writes.
func txLoadTables(t *testing.T, addr string) {
	t.Helper()
	mustExec(t, addr, true,
		st("CREATE TABLE fa(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"),
		st("CREATE TABLE fb(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
}

// startTxLoad starts workers goroutines inserting through addr; worker w
// inserts keys w, w+workers, w+2*workers... so that no two collide.
func startTxLoad(t *testing.T, addr string, workers int) *txLoad {
	t.Helper()
	l := &txLoad{addr: addr, stop: make(chan struct{}), outcomes: map[int64]outcome{}, lastErr: map[string]int{}}
	for w := 1; w <= workers; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for k := int64(w); ; k += int64(workers) {
				select {
				case <-l.stop:
					return
				default:
				}
				// Longer than the router's failover wait, so that a write
				// held through a failover is answered by the router.
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				v := fmt.Sprintf("key %d ", k) + strings.Repeat("x", 100)
				_, err := execLSN(ctx, addr, true,
					st("INSERT INTO fa VALUES(?, ?)", k, v),
					st("INSERT INTO fb VALUES(?, ?)", k, v))
				cancel()
				o := classify(err)
				l.mu.Lock()
				l.outcomes[k] = o
				if o == acked {
					l.ackTimes = append(l.ackTimes, time.Now())
				} else {
					msg := err.Error()
					if len(msg) > 120 {
						msg = msg[:120]
					}
					l.lastErr[msg]++
				}
				l.mu.Unlock()
				if o != acked {
					// Not a tight loop while there is no writer.
					select {
					case <-l.stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
				}
			}
		}()
	}
	t.Cleanup(l.halt)
	return l
}

// halt stops the load and waits for its writes in flight.
func (l *txLoad) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// acks is how many writes were acknowledged so far.
func (l *txLoad) acks() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.ackTimes)
}

// waitAcks waits until n more writes than now are acknowledged.
func (l *txLoad) waitAcks(t *testing.T, n int, within time.Duration, what string) {
	t.Helper()
	from := l.acks()
	wait.For(t, within, fmt.Sprintf("%d more acknowledged writes %s", n, what), func() bool { return l.acks() >= from+n })
}

// longestGap is the longest time between two acknowledgements (or from
// `from` to the first) within [from, to], and when it began.
func (l *txLoad) longestGap(from, to time.Time) (gap time.Duration, at time.Time) {
	l.mu.Lock()
	times := append([]time.Time(nil), l.ackTimes...)
	l.mu.Unlock()
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	prev := from
	for _, a := range times {
		if a.Before(from) || a.After(to) {
			continue
		}
		if d := a.Sub(prev); d > gap {
			gap, at = d, prev
		}
		prev = a
	}
	if d := to.Sub(prev); d > gap {
		gap, at = d, prev
	}
	return gap, at
}

// counts is how many writes had each outcome.
func (l *txLoad) counts() (nAcked, nRefused, nUnknown int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, o := range l.outcomes {
		switch o {
		case acked:
			nAcked++
		case refused:
			nRefused++
		default:
			nUnknown++
		}
	}
	return
}

// errorSummary is the distinct errors the load saw, most frequent first.
func (l *txLoad) errorSummary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	type ec struct {
		msg string
		n   int
	}
	var es []ec
	for m, n := range l.lastErr {
		es = append(es, ec{m, n})
	}
	sort.Slice(es, func(i, j int) bool { return es[i].n > es[j].n })
	var b strings.Builder
	for i, e := range es {
		if i == 8 {
			fmt.Fprintf(&b, "\n  ... %d more kinds", len(es)-i)
			break
		}
		fmt.Fprintf(&b, "\n  %dx %s", e.n, e.msg)
	}
	return b.String()
}

// tableKeys reads every key of table through addr, retrying while the
// endpoint has no writer to answer.
func tableKeys(t *testing.T, addr, table string) map[int64]bool {
	t.Helper()
	var rows [][]any
	var last error
	wait.For(t, 30*time.Second, "the keys of "+table+" to be readable", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rows, _, last = queryRows(ctx, addr, 0, "SELECT k FROM "+table+" ORDER BY k")
		if last != nil {
			t.Logf("reading %s: %v", table, last)
		}
		return last == nil
	})
	keys := map[int64]bool{}
	for _, r := range rows {
		k, ok := r[0].(int64)
		if !ok {
			t.Fatalf("%s holds key %v, not an integer", table, r[0])
		}
		keys[k] = true
	}
	return keys
}

// directKeys is where the keys the tests write outside a txLoad begin.
const directKeys = 1 << 40

// check stops the load and checks the tables read through addr: every
// acknowledged key is in both, no key is in one table only (a partial
// transaction), no refused write committed, and the database's integrity
// check passes. Writes of unknown outcome may be in or out, in both tables
// alike. It returns the keys of fa, to check the writes made outside the
// load (at directKeys and above).
func (l *txLoad) check(t *testing.T, addr string) map[int64]bool {
	t.Helper()
	l.halt()
	a, b := tableKeys(t, addr, "fa"), tableKeys(t, addr, "fb")
	var onlyA, onlyB, missing, ghosts []int64
	for k := range a {
		if !b[k] {
			onlyA = append(onlyA, k)
		}
	}
	for k := range b {
		if !a[k] {
			onlyB = append(onlyB, k)
		}
	}
	l.mu.Lock()
	unknownIn, unknownOut := 0, 0
	for k, o := range l.outcomes {
		switch o {
		case acked:
			if !a[k] || !b[k] {
				missing = append(missing, k)
			}
		case refused:
			if a[k] || b[k] {
				ghosts = append(ghosts, k)
			}
		default:
			if a[k] {
				unknownIn++
			} else {
				unknownOut++
			}
		}
	}
	var strays []int64
	for k := range a {
		if _, ok := l.outcomes[k]; !ok && k < directKeys {
			strays = append(strays, k)
		}
	}
	l.mu.Unlock()
	for _, s := range [][]int64{onlyA, onlyB, missing, ghosts, strays} {
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	}
	nAcked, nRefused, nUnknown := l.counts()
	t.Logf("load: %d writes acknowledged, %d refused, %d of unknown outcome (%d committed, %d not); %d rows; errors seen:%s",
		nAcked, nRefused, nUnknown, unknownIn, unknownOut, len(a), l.errorSummary())
	var errs []error
	if len(missing) > 0 {
		errs = append(errs, fmt.Errorf("%d of %d acknowledged writes are missing, e.g. %v", len(missing), nAcked, head(missing)))
	}
	if len(onlyA) > 0 || len(onlyB) > 0 {
		errs = append(errs, fmt.Errorf("partial transactions: keys only in fa %v, only in fb %v", head(onlyA), head(onlyB)))
	}
	if len(ghosts) > 0 {
		errs = append(errs, fmt.Errorf("%d refused writes committed anyway, e.g. %v", len(ghosts), head(ghosts)))
	}
	if len(strays) > 0 {
		errs = append(errs, fmt.Errorf("%d keys nobody wrote, e.g. %v", len(strays), head(strays)))
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	integrityOKAt(t, addr, 0)
	return a
}

func head(s []int64) []int64 { return s[:min(len(s), 10)] }

// directWrite sends one insert straight to an instance's SQL endpoint (not
// the router) and returns its HTTP status (0 if none came) and error.
func directWrite(addr string, k int64) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v := fmt.Sprintf("direct %d", k)
	_, err := execLSN(ctx, addr, true, st("INSERT INTO fa VALUES(?, ?)", k, v), st("INSERT INTO fb VALUES(?, ?)", k, v))
	if err == nil {
		return http.StatusOK, nil
	}
	var e *sqlclient.Error
	if errors.As(err, &e) {
		return e.Status, err
	}
	return 0, err
}

// firstAckAfter is when the first write acknowledged after t0 was (zero if
// none yet).
func (l *txLoad) firstAckAfter(t0 time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first time.Time
	for _, a := range l.ackTimes {
		if a.After(t0) && (first.IsZero() || a.Before(first)) {
			first = a
		}
	}
	return first
}

// waitFollowers waits until every instance but the writer holder follows
// it as a replica.
func (fc *failoverCluster) waitFollowers(t *testing.T, holder string, within time.Duration) {
	t.Helper()
	for _, id := range fc.instanceIDs() {
		if id != holder {
			fc.waitReplicaOf(t, id, fc.addr(holder), within)
		}
	}
}
