package e2e

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/wait"
)

// TestFailoverZombieWriter SIGSTOPs the writer past its lease, with writes
// in flight to it directly and through the cluster endpoint. A replica is
// promoted and takes writes. Resumed, the old writer never acknowledges a
// write sent to it after it woke (each is refused, by its lease guard or
// storage's fence, then as a replica), it steps down to a replica of the new
// writer, and every write either writer acknowledged is there.
func TestFailoverZombieWriter(t *testing.T) {
	fc := startFailoverCluster(t, replicaClusterOpts{})
	txLoadTables(t, fc.clusterEP)
	l := startTxLoad(t, fc.clusterEP, 3)
	l.waitAcks(t, 20, 20*time.Second, "before the pause")
	old := fc.mustWriterState(t)
	if old.Holder != "writer" {
		t.Fatalf("the writer lease is held by %s, not the writer", old.Holder)
	}
	zombie := fc.addr("writer")

	// Writes straight to the old writer, running as it is stopped: those in
	// flight then are answered after it wakes, and may be acknowledged only
	// if they committed before the pause (then they must be there).
	var (
		directMu     sync.Mutex
		directAcked  []int64
		directStop   = make(chan struct{})
		directDone   = make(chan struct{})
		directNextID atomic.Int64
	)
	directNextID.Store(directKeys)
	go func() {
		defer close(directDone)
		for {
			select {
			case <-directStop:
				return
			default:
			}
			k := directNextID.Add(1)
			if status, _ := directWrite(zombie, k); status == http.StatusOK {
				directMu.Lock()
				directAcked = append(directAcked, k)
				directMu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		select {
		case <-directStop:
		default:
			close(directStop)
		}
		<-directDone
	})

	// Let a few go through, then stop sending new ones: the one in flight
	// is what the pause catches.
	wait.For(t, 10*time.Second, "writes acknowledged directly by the writer", func() bool {
		directMu.Lock()
		defer directMu.Unlock()
		return len(directAcked) >= 5
	})
	close(directStop)
	if err := fc.cl.Signal("writer", syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			fc.cl.Signal("writer", syscall.SIGCONT)
		}
	})
	// The dead writer's lease expires, and a replica is promoted.
	promoted := fc.waitPromoted(t, "writer", old.Epoch, 20*time.Second)
	t.Logf("writer SIGSTOPped; %s serves at epoch %d %s later", promoted.Holder, promoted.Epoch, time.Since(stopped).Round(time.Millisecond))
	newWriter := promoted.Holder
	// The promoted writer takes writes through the cluster endpoint. (The
	// load's writes the router had sent to the stopped writer hang until
	// it wakes: the router does not answer them when the writer changes.)
	var promotedAcks []int64
	for i := int64(0); i < 10; i++ {
		k := 3*directKeys + i
		mustExec(t, fc.clusterEP, true, st("INSERT INTO fa VALUES(?, 'new writer')", k), st("INSERT INTO fb VALUES(?, 'new writer')", k))
		promotedAcks = append(promotedAcks, k)
	}
	t.Logf("%d writes acknowledged through the cluster endpoint while the old writer is stopped, %s into the pause", len(promotedAcks), time.Since(stopped).Round(time.Millisecond))

	// Hold the pause for three lease TTLs at least, long past any renewal
	// the old writer could have hoped for.
	time.Sleep(time.Until(stopped.Add(3 * time.Second)))
	if err := fc.cl.Signal("writer", syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed = true
	woke := time.Now()
	t.Logf("the old writer resumed after a %s pause", woke.Sub(stopped).Round(time.Millisecond))

	// From the moment it wakes, several writers at once ask it to commit,
	// until it says it is a replica: not one may be acknowledged.
	var (
		wg       sync.WaitGroup
		sent     atomic.Int64
		accepted atomic.Int64
		codesMu  sync.Mutex
		codes    = map[string]int{}
		woken    []int64
		nextK    atomic.Int64
	)
	nextK.Store(2 * directKeys)
	deadline := woke.Add(10 * time.Second)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				k := nextK.Add(1)
				status, err := directWrite(zombie, k)
				sent.Add(1)
				if status == http.StatusOK {
					accepted.Add(1)
					t.Errorf("the resumed old writer acknowledged insert %d, sent %s after it woke", k, time.Since(woke).Round(time.Millisecond))
					continue
				}
				codesMu.Lock()
				codes[refusalKind(status, err)]++
				woken = append(woken, k)
				codesMu.Unlock()
				if h, herr := health(zombie); herr == nil && h.Role == "replica" {
					return
				}
			}
		}()
	}
	wg.Wait()
	<-directDone
	t.Logf("%d writes sent to the resumed old writer, %d acknowledged; refusals: %v", sent.Load(), accepted.Load(), codes)

	// The old writer did not take the lease back on waking. (On a loaded
	// machine the new writer may miss a renewal of its 1 s lease and take
	// the lease again at a newer epoch; that is no zombie's doing.)
	if s := fc.mustWriterState(t); s.Holder == "writer" || s.Epoch < promoted.Epoch {
		t.Fatalf("after the old writer woke, the lease is %s's at epoch %d; want another's, at %d or above", s.Holder, s.Epoch, promoted.Epoch)
	} else if s.Holder != newWriter || s.Epoch != promoted.Epoch {
		t.Logf("the lease moved on since the promotion: %s's at epoch %d", s.Holder, s.Epoch)
		newWriter = s.Holder
	}
	// It follows the new writer as a replica, having stepped down once.
	fc.waitReplicaOf(t, "writer", fc.addr(newWriter), 10*time.Second)
	h := mustHealth(t, zombie)
	if h.Roles == nil || h.Roles.StepDowns < 1 {
		t.Fatalf("the old writer follows as a replica, but its health counts no step-down: %+v", h.Roles)
	}
	t.Logf("the old writer is a replica %s after it woke: %+v", time.Since(woke).Round(time.Millisecond), *h.Roles)

	l.waitAcks(t, 20, 20*time.Second, "through the cluster endpoint after the old writer woke")
	// Both writers' acknowledged commits: the old writer's direct ones
	// (before the pause), the new writer's during it, and the load's
	// through either.
	directMu.Lock()
	acks := append(append([]int64(nil), directAcked...), promotedAcks...)
	directMu.Unlock()
	a := l.check(t, fc.clusterEP)
	for _, k := range acks {
		if !a[k] {
			t.Fatalf("insert %d, acknowledged outside the load, is missing", k)
		}
	}
	for _, k := range woken {
		if a[k] {
			t.Fatalf("insert %d, refused by the resumed old writer, committed", k)
		}
	}
	t.Logf("all %d writes made outside the load (before the pause, directly to the old writer, and during it, through the new one) are there, none of the %d it refused once awake", len(acks), len(woken))
}

// refusalKind is a refused write's HTTP status and error code, or what
// kind of failure it was without one.
func refusalKind(status int, err error) string {
	if c := sqlclient.Code(err); c != "" {
		return fmt.Sprintf("%d %s", status, c)
	}
	msg := err.Error()
	return "no reply: " + msg[:min(len(msg), 80)]
}

// TestFailoverZombieInFlightWritesAnswered: writes the router sent to the
// writer just after it was SIGSTOPped (it still held the lease, so the
// router had no other to send them to) are caught in the failover. Once a
// replica is promoted at a higher epoch, the old writer can commit nothing
// more (storage fences its epoch), so the router has all it needs to
// answer them outcome_unknown: it must, within its --failover-wait, rather
// than hold the clients for as long as the old writer stays stopped.
func TestFailoverZombieInFlightWritesAnswered(t *testing.T) {
	const failoverWait = 10 * time.Second // the router's default --failover-wait
	fc := startFailoverCluster(t, replicaClusterOpts{})
	txLoadTables(t, fc.clusterEP)
	old := fc.mustWriterState(t)

	if err := fc.cl.Signal("writer", syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			fc.cl.Signal("writer", syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	type answer struct {
		k    int64
		err  error
		took time.Duration
	}
	const n = 3
	answers := make(chan answer, n)
	for i := int64(0); i < n; i++ {
		k := 4*directKeys + i
		go func() {
			sent := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 2*failoverWait)
			defer cancel()
			_, err := execLSN(ctx, fc.clusterEP, true, st("INSERT INTO fa VALUES(?, 'in flight')", k), st("INSERT INTO fb VALUES(?, 'in flight')", k))
			answers <- answer{k, err, time.Since(sent)}
		}()
	}
	promoted := fc.waitPromoted(t, "writer", old.Epoch, 20*time.Second)
	t.Logf("%s serves at epoch %d %s after the SIGSTOP", promoted.Holder, promoted.Epoch, time.Since(stopped).Round(time.Millisecond))

	// The old writer stays stopped until every write is answered, or
	// until the failover wait and a margin have passed.
	limit := time.After(time.Until(stopped.Add(failoverWait + 3*time.Second)))
	var late []int64
	for got := 0; got < n; got++ {
		select {
		case a := <-answers:
			t.Logf("write %d answered %s after it was sent: %v", a.k, a.took.Round(time.Millisecond), a.err)
		case <-limit:
			late = append(late, int64(n-got))
			got = n
		}
	}
	resume()
	if len(late) > 0 {
		// What the late ones get once the old writer wakes: never an
		// acknowledgement.
		for i := int64(0); i < late[0]; i++ {
			select {
			case a := <-answers:
				t.Logf("write %d answered %s after it was sent, once the old writer woke: %v", a.k, a.took.Round(time.Millisecond), a.err)
				if a.err == nil {
					t.Errorf("write %d was acknowledged by the woken old writer", a.k)
				}
			case <-time.After(failoverWait):
				t.Logf("a write is still unanswered %s after the old writer woke", failoverWait)
			}
		}
		t.Fatalf("%d of %d writes sent through the cluster endpoint to the writer just after its SIGSTOP are still unanswered %s later, though %s was promoted %s after the SIGSTOP: the router holds writes to a fenced writer for as long as it stays stopped",
			late[0], n, time.Since(stopped).Round(time.Millisecond), promoted.Holder, time.Duration(promoted.Failover.DoneUnixMs-stopped.UnixMilli())*time.Millisecond)
	}
}
