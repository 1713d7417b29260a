package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/wait"
)

const (
	// linKeys registers, so that clients often touch the same one.
	linKeys = 3
	// linClients run at once; each does one operation at a time.
	linClients = 6
	// linOpTimeout bounds one operation: more than the router's
	// --failover-wait (10 s by default), so that an operation caught in a
	// failover gets the router's answer rather than our timeout.
	linOpTimeout = 20 * time.Second
)

// linRecorder records the porcupine history of the register workload, its
// times from one monotonic clock (time.Since of one start).
type linRecorder struct {
	t     *testing.T
	ep    string
	start time.Time

	mu  sync.Mutex
	ops []porcupine.Operation
	// nextClient is the next porcupine client id: a client whose write's
	// outcome is unknown goes on under a new id, since its old one has an
	// operation that never returns (Jepsen's treatment of a crashed
	// process), which keeps each id's operations sequential for the
	// visualization.
	nextClient int
	// The outcomes, by kind, and each error's code (or the error itself
	// when it has none).
	writes, reads                int // acknowledged writes, answered reads
	unknownWrites, refusedWrites int
	failedReads                  int
	errs                         map[string]int
	// faults are the faults injected, for the visualization.
	faults []porcupine.Annotation

	stop chan struct{}
	wg   sync.WaitGroup
}

func (r *linRecorder) now() int64 { return int64(time.Since(r.start)) }

func (r *linRecorder) newClient() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextClient++
	return r.nextClient - 1
}

func (r *linRecorder) add(op porcupine.Operation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op)
	switch in, out := op.Input.(linInput), op.Output.(linOutput); {
	case in.write && out.unknown:
		r.unknownWrites++
	case in.write:
		r.writes++
	default:
		r.reads++
	}
}

// failed counts an operation that failed, by its error's code.
func (r *linRecorder) failed(write bool, err error) {
	what := sqlclient.Code(err)
	if what == "" {
		what = err.Error()
		if len(what) > 80 {
			what = what[:80] + "..."
		}
	}
	kind := "read"
	if write {
		kind = "write"
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs[kind+" "+what]++
	switch {
	case !write:
		r.failedReads++
	case classify(err) == refused:
		r.refusedWrites++
	}
}

// client runs operations one after another until stop: a read (SELECT) or
// a write (UPDATE) of a unique value, on a random register, through the
// cluster endpoint.
func (r *linRecorder) client(slot int) {
	defer r.wg.Done()
	cid := r.newClient()
	for seq := 1; ; seq++ {
		select {
		case <-r.stop:
			return
		default:
		}
		key := rand.IntN(linKeys)
		ctx, cancel := context.WithTimeout(context.Background(), linOpTimeout)
		if rand.IntN(2) == 0 {
			call := r.now()
			rows, _, err := queryRows(ctx, r.ep, 0, "SELECT v FROM reg WHERE k = ?", key)
			ret := r.now()
			cancel()
			if err != nil {
				// A read changes nothing: one that failed is left out.
				r.failed(false, err)
				continue
			}
			v, ok := int64(0), false
			if len(rows) == 1 && len(rows[0]) == 1 {
				v, ok = rows[0][0].(int64)
			}
			if !ok {
				r.t.Errorf("SELECT v FROM reg WHERE k = %d answered %v", key, rows)
				continue
			}
			r.add(porcupine.Operation{ClientId: cid, Input: linInput{key: key}, Call: call, Output: linOutput{value: v}, Return: ret})
			continue
		}
		value := int64(slot+1)*1_000_000 + int64(seq)
		call := r.now()
		_, err := execLSN(ctx, r.ep, false, st("UPDATE reg SET v = ? WHERE k = ?", value, key))
		ret := r.now()
		cancel()
		op := porcupine.Operation{ClientId: cid, Input: linInput{key: key, write: true, value: value}, Call: call, Output: linOutput{}, Return: ret}
		switch classify(err) {
		case acked:
			r.add(op)
		case refused:
			// It never ran: not an operation of the history.
			r.failed(true, err)
		case unknown:
			// It may have been applied, at any time after its call.
			r.failed(true, err)
			op.Output, op.Return = linOutput{unknown: true}, linPending
			r.add(op)
			cid = r.newClient()
		}
	}
}

// waitProgress waits until n more writes were acknowledged and n more
// reads answered from now on.
func (r *linRecorder) waitProgress(t *testing.T, n int, what string) {
	t.Helper()
	r.mu.Lock()
	w0, r0 := r.writes, r.reads
	r.mu.Unlock()
	wait.For(t, 30*time.Second, fmt.Sprintf("%d more acknowledged writes and answered reads through the cluster endpoint %s", n, what), func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.writes >= w0+n && r.reads >= r0+n
	})
}

// fault marks a fault in the visualization, from when it began until now.
func (r *linRecorder) fault(tag, desc string, from int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faults = append(r.faults, porcupine.Annotation{Tag: tag, Start: from, End: r.now(), Description: desc, BackgroundColor: "#f9d0c4"})
}

// TestLinearizable runs a register workload (three rows of reg, written by
// UPDATE with unique values and read by SELECT, six clients at once)
// through the router's cluster endpoint while the writer is SIGKILLed
// (then restarted: it rejoins as a replica), switched over to a replica
// (borealis failover), and SIGKILLed again, and checks with porcupine that
// the history is linearizable. A write whose outcome is unknown (502, a
// broken connection, a storage timeout) may have been applied: it is in
// the history with no return (porcupine's infinity); one refused before it
// ran (not_ready, not_writer, no_writer, busy) is not. Failed reads are
// left out: they change nothing.
func TestLinearizable(t *testing.T) {
	fc := startFailoverCluster(t, replicaClusterOpts{})
	stmts := []sqlclient.Statement{st("CREATE TABLE reg(k INTEGER PRIMARY KEY, v INTEGER NOT NULL)")}
	for k := range linKeys {
		stmts = append(stmts, st("INSERT INTO reg(k, v) VALUES(?, 0)", k))
	}
	// Acknowledged before any operation's call: the model's initial 0.
	mustExec(t, fc.clusterEP, true, stmts...)

	r := &linRecorder{t: t, ep: fc.clusterEP, start: time.Now(), errs: map[string]int{}, stop: make(chan struct{})}
	for slot := range linClients {
		r.wg.Add(1)
		go r.client(slot)
	}
	halted := false
	halt := func() {
		if !halted {
			halted = true
			close(r.stop)
			r.wg.Wait()
		}
	}
	defer halt()
	const progress = 50
	r.waitProgress(t, progress, "before the faults")

	kill := func(round int) {
		ws := fc.mustWriterState(t)
		from := r.now()
		if err := fc.cl.Kill(ws.Holder); err != nil {
			t.Fatal(err)
		}
		now := fc.waitPromoted(t, ws.Holder, ws.Epoch, 20*time.Second)
		r.fault("kill", fmt.Sprintf("SIGKILL %s; %s promoted", ws.Holder, now.Holder), from)
		t.Logf("kill %d: SIGKILLed the writer %s (epoch %d); %s serves at epoch %d", round, ws.Holder, ws.Epoch, now.Holder, now.Epoch)
		fc.rejoin(t, ws.Holder, fc.addr(now.Holder))
		r.waitProgress(t, progress, fmt.Sprintf("after kill %d", round))
	}
	kill(1)

	// Every instance follows the new writer, so that the switchover has
	// a replica to hand over to whichever the control plane picks.
	ws := fc.mustWriterState(t)
	fc.waitFollowers(t, ws.Holder, 20*time.Second)
	from := r.now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	f, err := fc.ctl.Switchover(ctx, &pb.SwitchoverRequest{Volume: "main"})
	cancel()
	if err != nil {
		t.Fatalf("switchover: %v", err)
	}
	now := fc.waitPromoted(t, ws.Holder, ws.Epoch, 20*time.Second)
	r.fault("switchover", fmt.Sprintf("switchover %s -> %s", ws.Holder, now.Holder), from)
	if now.Failover.GetKind() != "planned" || now.Failover.GetRound() != f.Round {
		t.Fatalf("after the switchover (round %d), the writer state is %v", f.Round, now)
	}
	t.Logf("switchover: %s handed over to %s (epoch %d)", ws.Holder, now.Holder, now.Epoch)
	r.waitProgress(t, progress, "after the switchover")
	fc.waitFollowers(t, now.Holder, 20*time.Second)

	kill(2)
	halt()

	r.mu.Lock()
	ops := append([]porcupine.Operation(nil), r.ops...)
	faults := r.faults
	var errs []string
	for e, n := range r.errs {
		errs = append(errs, fmt.Sprintf("%s: %d", e, n))
	}
	sort.Strings(errs)
	t.Logf("history: %d operations (%d acknowledged writes, %d of unknown outcome, %d answered reads) over %d client ids; left out: %d refused writes, %d failed reads; errors: %s",
		len(ops), r.writes, r.unknownWrites, r.reads, r.nextClient, r.refusedWrites, r.failedReads, orNone(strings.Join(errs, "; ")))
	r.mu.Unlock()
	// Which fault each write of unknown outcome was caught in (the first
	// that ended after its call), and how many of them a read saw applied.
	caught := make([]int, len(faults))
	seen := map[int64]bool{}
	for _, op := range ops {
		if !op.Input.(linInput).write {
			seen[op.Output.(linOutput).value] = true
		}
	}
	applied := 0
	for _, op := range ops {
		if op.Return != linPending {
			continue
		}
		if seen[op.Input.(linInput).value] {
			applied++
		}
		for i, f := range faults {
			if op.Call <= f.End {
				caught[i]++
				break
			}
		}
	}
	for i, f := range faults {
		t.Logf("%s (%s, %s long): %d writes of unknown outcome", f.Description, f.Tag, time.Duration(f.End-f.Start).Round(time.Millisecond), caught[i])
	}
	t.Logf("%d of the writes of unknown outcome were seen applied by a read", applied)

	start := time.Now()
	res, info := porcupine.CheckOperationsVerbose(linModel, ops, 30*time.Second)
	t.Logf("porcupine: %s in %s", res, time.Since(start).Round(time.Millisecond))
	if res == porcupine.Ok {
		// The checker bites on this very history: a read of a value
		// nobody wrote is rejected.
		for i, op := range ops {
			if !op.Input.(linInput).write {
				bad := append([]porcupine.Operation(nil), ops...)
				bad[i].Output = linOutput{value: -1}
				if got := porcupine.CheckOperationsTimeout(linModel, bad, 30*time.Second); got != porcupine.Illegal {
					t.Fatalf("the history with read %d answering -1 is %s to porcupine, want Illegal", i, got)
				}
				break
			}
		}
		return
	}
	// Written where it outlives the test (t.TempDir is removed with it),
	// so that whoever reads the failure can open it.
	dir, err := os.MkdirTemp("", "lin-porcupine-")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "history.html")
	info.AddAnnotations(faults)
	if err := porcupine.VisualizePath(linModel, info, path); err != nil {
		t.Fatalf("porcupine says %s, and the visualization failed: %v", res, err)
	}
	t.Fatalf("porcupine says the history is %s (Unknown: the check timed out); open %s to see it", res, path)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
