package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/wait"
)

// seqWriter appends rows 1, 2, 3, ... to the table seq, three rows a
// transaction, one transaction at a time: every state the writer ever has
// is rows 1..n with n a multiple of three.
type seqWriter struct {
	addr    string
	mu      sync.Mutex
	acked   int64  // rows 1..acked are acknowledged
	lsn     uint64 // the LSN of the last acknowledgement
	sent    int64  // the highest row sent
	hist    []seqAck
	err     error
	stopped atomic.Bool
	done    chan struct{}
}

const seqBatch = 3

// seqAck is an acknowledgement: rows 1..n, with the reply's LSN.
type seqAck struct {
	n   int64
	lsn uint64
}

// ackedAt returns how many rows were acknowledged with a reply LSN at or
// below lsn: a read at lsn or above shows them all.
func (w *seqWriter) ackedAt(lsn uint64) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var n int64
	for _, a := range w.hist {
		if a.lsn <= lsn {
			n = max(n, a.n)
		}
	}
	return n
}

func seqValue(k int64) string { return fmt.Sprintf("%0200d", k) }

// seqState is the query that describes a state of seq.
const seqState = "SELECT count(*), coalesce(max(k), 0), coalesce(sum(k), 0), coalesce(sum(v = printf('%.200d', k)), 0) FROM seq"

func createSeq(t *testing.T, addr string) *seqWriter {
	t.Helper()
	lsn := mustExec(t, addr, false, st("CREATE TABLE seq(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
	return &seqWriter{addr: addr, lsn: lsn}
}

// start appends until stop.
func (w *seqWriter) start() {
	w.stopped.Store(false)
	w.done = make(chan struct{})
	go func() {
		defer close(w.done)
		// At most one transaction every 8 ms: enough to move the VDL far
		// in a few seconds, not so many that the machine's two cores do
		// little else.
		pace := time.NewTicker(8 * time.Millisecond)
		defer pace.Stop()
		for !w.stopped.Load() {
			<-pace.C
			w.mu.Lock()
			first := w.acked + 1
			w.sent = w.acked + seqBatch
			w.mu.Unlock()
			var stmts []sqlclient.Statement
			for k := first; k < first+seqBatch; k++ {
				stmts = append(stmts, st("INSERT INTO seq(k, v) VALUES(?, ?)", k, seqValue(k)))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			lsn, err := execLSN(ctx, w.addr, true, stmts...)
			cancel()
			w.mu.Lock()
			if err != nil {
				w.err = fmt.Errorf("rows %d..%d: %w", first, first+seqBatch-1, err)
				w.mu.Unlock()
				return
			}
			w.acked, w.lsn = first+seqBatch-1, lsn
			w.hist = append(w.hist, seqAck{w.acked, lsn})
			w.mu.Unlock()
		}
	}()
}

// stop waits for the transaction in flight and stops; it fails t if the
// writer failed.
func (w *seqWriter) stop(t *testing.T) {
	t.Helper()
	w.stopped.Store(true)
	<-w.done
	if err := w.state().err; err != nil {
		t.Fatalf("the sequential writer: %v", err)
	}
}

// halt waits for the transaction in flight and stops, and returns the
// writer's error, if any (an expected one, when the writer was killed).
func (w *seqWriter) halt() error {
	w.stopped.Store(true)
	<-w.done
	return w.state().err
}

// resetTo makes rows 1..n, acknowledged at lsn, the writer's history (after
// a crash: what recovery kept), for start to go on from.
func (w *seqWriter) resetTo(n int64, lsn uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.acked, w.sent, w.lsn, w.err = n, n, lsn, nil
	w.hist = []seqAck{{n, lsn}}
}

type seqSnapshot struct {
	acked, sent int64
	lsn         uint64
	err         error
}

func (w *seqWriter) state() seqSnapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	return seqSnapshot{acked: w.acked, sent: w.sent, lsn: w.lsn, err: w.err}
}

// waitAcked waits until n rows are acknowledged.
func (w *seqWriter) waitAcked(t *testing.T, n int64, within time.Duration) {
	t.Helper()
	wait.For(t, within, fmt.Sprintf("%d rows acknowledged", n), func() bool {
		s := w.state()
		if s.err != nil {
			t.Fatalf("the sequential writer: %v", s.err)
		}
		return s.acked >= n
	})
}

// checkSeq checks one answer of seqState: a state the writer had, rows
// 1..n for n a multiple of seqBatch, no more than were sent by the end of
// the query (sentAfter) and no fewer than atLeast. It returns n.
func checkSeq(rows [][]any, atLeast, sentAfter int64) (int64, error) {
	if len(rows) != 1 {
		return 0, fmt.Errorf("answered %v", rows)
	}
	v, ok := ints(rows[0])
	if !ok {
		return 0, fmt.Errorf("answered %v", rows[0])
	}
	n := v[1]
	switch {
	case v[0] != n || v[2] != n*(n+1)/2:
		return n, fmt.Errorf("not rows 1..n: count %d, max %d, sum %d", v[0], v[1], v[2])
	case v[3] != n:
		return n, fmt.Errorf("%d of rows 1..%d have the wrong value", n-v[3], n)
	case n%seqBatch != 0:
		return n, fmt.Errorf("rows 1..%d: part of a transaction of %d rows", n, seqBatch)
	case n > sentAfter:
		return n, fmt.Errorf("rows 1..%d, more than the %d sent", n, sentAfter)
	case n < atLeast:
		return n, fmt.Errorf("rows 1..%d, fewer than the %d acknowledged at or below its min_lsn", n, atLeast)
	}
	return n, nil
}

// seqQuery queries seqState at addr with min_lsn and checks the answer
// against the writer's history.
func (w *seqWriter) query(ctx context.Context, addr string, withMin bool) (int64, error) {
	before := w.state()
	var minLSN uint64
	var atLeast int64
	if withMin {
		minLSN, atLeast = before.lsn, before.acked
	}
	rows, _, err := queryRows(ctx, addr, minLSN, seqState)
	if err != nil {
		return 0, err
	}
	return checkSeq(rows, atLeast, w.state().sent)
}

// sameAsWriter checks that the replica at addr holds exactly the writer's
// seq once it has applied lsn. With upTo > 0, only rows 1..upTo are
// compared (the writer goes on appending).
func sameAsWriter(t *testing.T, writer, addr string, lsn uint64, upTo ...int64) {
	t.Helper()
	dump, params := "SELECT k, v FROM seq ORDER BY k", []any(nil)
	if len(upTo) > 0 {
		dump, params = "SELECT k, v FROM seq WHERE k <= ? ORDER BY k", []any{upTo[0]}
	}
	want := mustQuery(t, writer, lsn, dump, params...)
	got := mustQuery(t, addr, lsn, dump, params...)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the replica at %s holds %d rows of seq at LSN %d, the writer %d, and they differ", addr, len(got), lsn, len(want))
	}
}

// TestReplicaFaults: a replica SIGSTOPped for 10 s while the writer
// commits answers, once resumed, only states the writer had, never
// going back, until it has caught up with the writer, and then holds the
// writer's rows. With the writer SIGKILLed under load, a replica is
// promoted on its own (issue 9): the other replica follows it at its new
// epoch, and so does the old writer, started again, as a replica; while
// that goes on, the replicas answer only states the writer had; the
// promoted writer keeps every acknowledged commit and every commit a
// replica showed, takes writes, and the other two see them.
func TestReplicaFaults(t *testing.T) {
	// A failover cluster has the router, whose cluster endpoint following
	// the promoted writer is part of what makes a promotion done.
	fc := startFailoverCluster(t, replicaClusterOpts{
		writerArgs: []string{"--lease-ttl", "2s"},
		replicas: []replicaSpec{
			{id: "r1", az: "b", extra: []string{"--min-lsn-wait", "500ms"}},
			{id: "r2", az: "c", extra: []string{"--min-lsn-wait", "500ms"}},
		},
	})
	rc := fc.replicaCluster
	w := createSeq(t, rc.writer)
	w.start()
	defer func() {
		if !w.stopped.Load() {
			w.stopped.Store(true)
			<-w.done
		}
	}()
	w.waitAcked(t, 30, 10*time.Second)
	ctx := context.Background()

	t.Run("replica stopped for 10s", func(t *testing.T) {
		// r2 serves before it stops (see TestReplicaResumedStaleSchema for
		// one that had not served since the table was created).
		if _, err := w.query(ctx, rc.replicas["r2"], true); err != nil {
			t.Fatalf("r2 before it stops: %v", err)
		}
		before := w.state()
		if err := rc.cl.Signal("r2", syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		stopped := true
		defer func() {
			if stopped {
				rc.cl.Signal("r2", syscall.SIGCONT)
			}
		}()
		// The fault itself: r2 stays stopped for 10 s, while the writer
		// commits and r1 answers.
		pause := time.NewTimer(10 * time.Second)
		r1 := 0
	paused:
		for {
			select {
			case <-pause.C:
				break paused
			default:
			}
			if _, err := w.query(ctx, rc.replicas["r1"], r1%2 == 0); err != nil {
				t.Fatalf("r1 while r2 is stopped: %v", err)
			}
			r1++
		}
		if err := rc.cl.Signal("r2", syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		stopped = false
		resumed := w.state()
		t.Logf("r2 stopped from row %d to row %d; r1 answered %d queries meanwhile", before.acked, resumed.acked, r1)
		if resumed.acked < before.acked+30 {
			t.Fatalf("only %d rows committed in the 10 s r2 was stopped", resumed.acked-before.acked)
		}
		// From the moment it resumes, whatever r2 answers is a state the
		// writer had, never older than its previous answer, until it has
		// caught up with what the writer had acknowledged at the resume.
		start := time.Now()
		var last int64 = -1
		answers := 0
		errs := map[string]int{}
		for {
			qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			n, err := w.query(qctx, rc.replicas["r2"], false)
			cancel()
			if err != nil {
				code := sqlclient.Code(err)
				if code == "" {
					t.Fatalf("r2 after it resumed: %v", err)
				}
				if errs[code] == 0 {
					t.Logf("r2 after it resumed: %v", err)
				}
				errs[code]++
				// A resumed replica's first queries read at the VDL it
				// had applied when it stopped, which storage may have
				// collected since (its floor's lease ran out): they are
				// refused, never answered wrong.
				if code != "snapshot_too_old" {
					t.Fatalf("r2 after it resumed: %v", err)
				}
			} else {
				answers++
				if n < last {
					t.Fatalf("r2 answered rows 1..%d after rows 1..%d", n, last)
				}
				last = n
				if n >= resumed.acked && answers >= 20 {
					break
				}
			}
			if time.Since(start) > 30*time.Second {
				t.Fatalf("r2 has not caught up 30 s after it resumed: rows 1..%d, the writer had %d", last, resumed.acked)
			}
		}
		t.Logf("r2 caught up in %s: %d answers, the last rows 1..%d; refusals %v", time.Since(start).Round(time.Millisecond), answers, last, errs)
		h := mustHealth(t, rc.replicas["r2"])
		t.Logf("r2 after catching up: stream %s, resyncs %d", h.Replica.Stream, h.Replica.Resyncs)
		now := w.state()
		sameAsWriter(t, rc.writer, rc.replicas["r2"], now.lsn, now.acked)
	})

	t.Run("writer killed", func(t *testing.T) {
		// The writer dies under load, while readers poll both replicas:
		// whatever they answer is a state the writer had, never going back.
		// The replica being promoted may refuse queries with not_ready
		// while it takes the lease and recovers (it is no longer a
		// replica, and not yet a writer); the one that stays a replica
		// answers throughout.
		var (
			wg       sync.WaitGroup
			maxSeen  atomic.Int64
			polls    atomic.Int64
			refusedM sync.Mutex
			refused  = map[string][]string{}
		)
		pctx, stopPolls := context.WithCancel(ctx)
		defer stopPolls()
		for _, id := range rc.ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var last int64
				for pctx.Err() == nil {
					qctx, cancel := context.WithTimeout(pctx, 10*time.Second)
					n, err := w.query(qctx, fc.addr(id), false)
					cancel()
					if pctx.Err() != nil {
						return
					}
					if sqlclient.Code(err) == "not_ready" {
						refusedM.Lock()
						refused[id] = append(refused[id], err.Error())
						refusedM.Unlock()
						// Not a tight loop while it promotes.
						select {
						case <-pctx.Done():
						case <-time.After(20 * time.Millisecond):
						}
						continue
					}
					if err != nil {
						t.Errorf("%s with the writer killed: %v", id, err)
						return
					}
					if n < last {
						t.Errorf("%s answered rows 1..%d after rows 1..%d", id, n, last)
						return
					}
					last = n
					polls.Add(1)
					for {
						m := maxSeen.Load()
						if n <= m || maxSeen.CompareAndSwap(m, n) {
							break
						}
					}
				}
			}()
		}
		w.waitAcked(t, w.state().acked+30, 20*time.Second)
		wh := mustHealth(t, rc.writer)
		if err := rc.cl.Kill("writer"); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		err := w.halt()
		crash := w.state()
		t.Logf("writer killed with rows 1..%d acknowledged, up to %d sent; the client saw: %v", crash.acked, crash.sent, err)

		// A replica is promoted on its own: it holds the lease at a higher
		// epoch, registered as the writer under its own id, its failover
		// done, its /v1/health a ready writer, the router following it.
		st := fc.waitPromoted(t, "writer", wh.Epoch, 30*time.Second)
		holder := st.Holder
		if f := st.Failover; f == nil || f.Kind != "unplanned" || f.From != "writer" || f.Target != holder {
			t.Fatalf("the writer was killed and %s holds the lease, but the failover record is %v", holder, f)
		}
		if _, ok := rc.replicas[holder]; !ok {
			t.Fatalf("%s holds the lease; it is none of the replicas %v", holder, rc.ids)
		}
		newWriter := fc.addr(holder)
		nh := mustHealth(t, newWriter)
		t.Logf("%s promoted %s after the writer's SIGKILL, at epoch %d (was %d), VDL %d (was %d)", holder, time.Since(killed).Round(time.Millisecond), nh.Epoch, wh.Epoch, nh.VDL, wh.VDL)
		if nh.Role != "writer" || nh.Epoch != st.Epoch || nh.VDL < crash.lsn {
			t.Fatalf("%s serves as %q at epoch %d VDL %d; the lease is at epoch %d, and LSN %d was acknowledged", holder, nh.Role, nh.Epoch, nh.VDL, st.Epoch, crash.lsn)
		}
		// The other replica follows the new writer, at its epoch; the old
		// writer, started again, comes back as a replica of it (never a
		// second writer).
		for _, id := range rc.ids {
			if id != holder {
				fc.waitReplicaOf(t, id, newWriter, 20*time.Second)
			}
		}
		fc.rejoin(t, "writer", newWriter)
		for _, id := range fc.instanceIDs() {
			if id == holder {
				continue
			}
			if h := mustHealth(t, fc.addr(id)); h.Replica == nil || h.Replica.Epoch != st.Epoch {
				t.Fatalf("%s follows %s, but not at its epoch %d: %+v", id, holder, st.Epoch, h.Replica)
			}
		}
		stopPolls()
		wg.Wait()
		if t.Failed() {
			return
		}
		for id, errs := range refused {
			if id != holder {
				t.Fatalf("%s stayed a replica, yet refused %d queries while %s was promoted, first: %s", id, len(errs), holder, errs[0])
			}
			t.Logf("%s refused %d queries while it was promoted, first: %s", id, len(errs), errs[0])
		}
		// The promotion's recovery kept every acknowledged transaction,
		// and every one a replica showed.
		rows := mustQuery(t, newWriter, 0, seqState)
		n, err := checkSeq(rows, crash.acked, crash.sent)
		if err != nil {
			t.Fatalf("the promoted writer %s: %v", holder, err)
		}
		if n < maxSeen.Load() {
			t.Fatalf("the promoted writer %s has rows 1..%d, but a replica showed rows 1..%d before the crash: a replica exposed a commit that was not durable", holder, n, maxSeen.Load())
		}
		t.Logf("recovered rows 1..%d (acknowledged %d, sent %d; replicas showed up to %d in %d polls)", n, crash.acked, crash.sent, maxSeen.Load(), polls.Load())

		// The new writer takes writes, and the other two instances, both
		// replicas now, see them.
		w.addr = newWriter
		w.resetTo(n, nh.VDL)
		w.start()
		w.waitAcked(t, n+30, 20*time.Second)
		w.stop(t)
		after := w.state()
		var epochs []string
		for _, id := range fc.instanceIDs() {
			if id == holder {
				continue
			}
			addr := fc.addr(id)
			if m, err := w.query(ctx, addr, true); err != nil || m != after.acked {
				t.Fatalf("%s after the failover: rows 1..%d (%v); want %d", id, m, err, after.acked)
			}
			sameAsWriter(t, newWriter, addr, after.lsn)
			integrityOKAt(t, addr, after.lsn)
			h := mustHealth(t, addr)
			epochs = append(epochs, fmt.Sprintf("%s epoch %d resyncs %d", id, h.Replica.Epoch, h.Replica.Resyncs))
		}
		sort.Strings(epochs)
		t.Logf("after the failover to %s: %s", holder, strings.Join(epochs, ", "))
	})
}
