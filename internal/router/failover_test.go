package router

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	dbinstance "github.com/borealis-db/borealis/internal/instance"
	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/wait"
)

// These tests run the router with a refresh of an hour: it lists the
// catalog and polls health once, at its start, so that everything it
// learns after that comes through the WatchWriter stream.

// metricValue is a metric of the router's (a counter's or gauge's value,
// a histogram's count), summed over the series whose labels include
// those given.
func metricValue(t *testing.T, r *Router, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := r.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					found = found || l.GetName() == labels[i] && l.GetValue() == labels[i+1]
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

// watchHarness is a router following w1 through a live WatchWriter
// stream.
func watchHarness(t *testing.T, mod func(*Config)) (*harness, *fakeControl, *fakeInstance) {
	t.Helper()
	ctl := startWatchControl(t)
	w1 := newInstance(t, "w1", RoleWriter)
	ctl.set(w1.record(1))
	ctl.serving(w1, 1)
	h := newHarness(t, ctl, func(c *Config) {
		c.Refresh = time.Hour
		c.FailoverWait = within
		if mod != nil {
			mod(c)
		}
	})
	wait.For(t, within, "the router to follow w1 through the stream", func() bool {
		st := h.r.Status()
		return st.Following.Source == SourceWatch && st.Writer != nil && st.Writer.ID == "w1"
	})
	return h, ctl, w1
}

// waitHeld waits until n requests wait for a writer.
func waitHeld(t *testing.T, h *harness, n int) {
	t.Helper()
	wait.For(t, within, "requests held for a writer", func() bool {
		return metricValue(t, h.r, "borealis_router_failover_waiting") == float64(n)
	})
}

// A switchover under a steady load of writes: each is answered by the old
// writer or the new one, none fails, and once the router follows the new
// writer every new request goes there.
func TestWatchWriterChangeUnderLoad(t *testing.T) {
	h, ctl, w1 := watchHarness(t, nil)
	w2 := newInstance(t, "w2", RoleWriter)
	var stepping atomic.Bool
	w1.setOnExecute(func(w http.ResponseWriter, _ *http.Request, b []byte) {
		if stepping.Load() {
			writeError(w, http.StatusServiceUnavailable, CodeNotReady, "%s", (&dbinstance.NotReadyError{Volume: "main", Status: "stepping down: handing the writer role over to w2"}).Error())
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"answered_by": "w1"})
	})

	var wg sync.WaitGroup
	stop := make(chan struct{})
	var ok atomic.Int64
	failures := make(chan string, 8)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				rep := execute(t, h.cluster.URL)
				if rep.status != http.StatusOK || (rep.instance != "w1" && rep.instance != "w2") {
					select {
					case failures <- string(rep.body):
					default:
					}
					return
				}
				ok.Add(1)
			}
		})
	}
	wait.For(t, within, "writes through w1", func() bool { return w1.executes.Load() >= 20 })
	// The old writer drains and refuses new requests unrun; the new one
	// takes over.
	stepping.Store(true)
	ctl.failingOver(FailoverDraining, "w2", "")
	ctl.setWriter(func(st *pb.WriterState) { st.Failover.State = FailoverPromoting })
	ctl.serving(w2, 2)
	wait.For(t, within, "writes through w2", func() bool { return w2.executes.Load() >= 20 })
	close(stop)
	wg.Wait()
	select {
	case f := <-failures:
		t.Fatalf("a write failed during the switchover: %s", f)
	default:
	}
	// Every new request goes to w2.
	before := w1.executes.Load()
	for range 10 {
		expect(t, execute(t, h.cluster.URL), http.StatusOK, "w2")
	}
	if w1.executes.Load() != before {
		t.Fatal("a request went to the old writer after the router followed the new one")
	}
	st := h.r.Status()
	if st.Writer == nil || st.Writer.ID != "w2" || st.Following.WriterID != "w2" || st.Following.WriterEpoch != 2 || st.Following.WriterChanges != 1 || st.Following.Holder != "w2" || st.Following.LeaseEpoch != 2 {
		t.Fatalf("status: writer %+v, following %+v; want w2 at epoch 2, one change", st.Writer, st.Following)
	}
	if n := metricValue(t, h.r, "borealis_router_writer_changes_total"); n != 1 {
		t.Fatalf("borealis_router_writer_changes_total %v, want 1", n)
	}
	if e := metricValue(t, h.r, "borealis_router_writer_epoch"); e != 2 {
		t.Fatalf("borealis_router_writer_epoch %v, want 2", e)
	}
	if n := metricValue(t, h.r, "borealis_router_outcome_unknown_total"); n != 0 {
		t.Fatalf("%v writes had an unknown outcome, want none", n)
	}
}

// A request arriving while a failover has no writer ready waits, and goes
// to the promoted writer once the stream says it serves: the stream alone
// wakes it (the refresh is an hour).
func TestWatchHoldsRequestUntilTheNewWriterIsReady(t *testing.T) {
	h, ctl, w1 := watchHarness(t, nil)
	ctl.failingOver(FailoverPromoting, "r1", "recovering")
	wait.For(t, within, "the router to see no writer", func() bool { return h.r.Status().Writer == nil })

	r1 := newInstance(t, "r1", RoleWriter) // the promoted replica, as a writer now
	body := `{"statements":[{"sql":"INSERT INTO t VALUES (?)","params":[42]}]}`
	replies := make(chan reply, 1)
	go func() { replies <- do(t, http.MethodPost, h.cluster.URL+"/v1/execute", body) }()
	waitHeld(t, h, 1)
	ctl.serving(r1, 2)
	rep := <-replies
	expect(t, rep, http.StatusOK, "r1")
	if r1.executes.Load() != 1 || string(r1.body()) != body || w1.executes.Load() != 0 {
		t.Fatalf("r1 got %d writes (body %q), w1 %d; want the one write, unchanged, at r1", r1.executes.Load(), r1.body(), w1.executes.Load())
	}
	if n := metricValue(t, h.r, "borealis_router_failover_wait_seconds", "outcome", WaitSent); n != 1 {
		t.Fatalf("failover waits sent: %v, want 1", n)
	}
	if n := metricValue(t, h.r, "borealis_router_failover_waiting"); n != 0 {
		t.Fatalf("%v requests still counted as waiting", n)
	}
}

// A stepping-down writer refuses requests before running them, with
// not_ready or, back as a replica, not_writer: the router holds them and
// sends them to the new writer.
func TestWatchResendsUnrunRefusalToTheNewWriter(t *testing.T) {
	for _, tc := range []struct {
		name    string
		status  int
		code    string
		message string
	}{
		{"not_ready", http.StatusServiceUnavailable, CodeNotReady, (&dbinstance.NotReadyError{Volume: "main", Status: "stepping down"}).Error()},
		{"not_writer", http.StatusConflict, CodeNotWriter, "instance w1 is a read replica of volume main and never writes; send writes to the writer at (not known yet)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, ctl, w1 := watchHarness(t, nil)
			w2 := newInstance(t, "w2", RoleWriter)
			w1.setOnExecute(func(w http.ResponseWriter, _ *http.Request, _ []byte) {
				writeError(w, tc.status, tc.code, "%s", tc.message)
			})
			body := `{"statements":[{"sql":"INSERT INTO t VALUES (7)"}]}`
			replies := make(chan reply, 1)
			go func() { replies <- do(t, http.MethodPost, h.cluster.URL+"/v1/execute", body) }()
			waitHeld(t, h, 1)
			wait.For(t, within, "w1 to refuse the request", func() bool { return w1.executes.Load() >= 1 })
			ctl.serving(w2, 2)
			expect(t, <-replies, http.StatusOK, "w2")
			if w2.executes.Load() != 1 || string(w2.body()) != body {
				t.Fatalf("w2 got %d writes (body %q), want the one write, unchanged", w2.executes.Load(), w2.body())
			}
			if n := metricValue(t, h.r, "borealis_router_resent_total"); n < 1 {
				t.Fatalf("borealis_router_resent_total %v, want at least 1", n)
			}
		})
	}
}

// A write whose body reached a writer that died before answering has an
// unknown outcome: 502 outcome_unknown, and it is not sent to the new
// writer.
func TestWatchWriteThatReachedADeadWriterIsNotResent(t *testing.T) {
	h, ctl, w1 := watchHarness(t, nil)
	w2 := newInstance(t, "w2", RoleWriter)
	w1.setOnExecute(func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		ctl.serving(w2, 2)
		panic(http.ErrAbortHandler) // the connection drops without an answer
	})
	rep := execute(t, h.cluster.URL)
	if rep.status != http.StatusBadGateway || rep.code != CodeOutcomeUnknown || !strings.Contains(rep.message, "outcome is unknown") || !strings.Contains(rep.message, "did not send it again") {
		t.Fatalf("got HTTP %d %s, want 502 outcome_unknown saying it was not sent again", rep.status, rep.body)
	}
	if w1.executes.Load() != 1 || w2.executes.Load() != 0 {
		t.Fatalf("w1 got %d writes, w2 %d; want the one write at w1 only", w1.executes.Load(), w2.executes.Load())
	}
	if n := metricValue(t, h.r, "borealis_router_outcome_unknown_total"); n != 1 {
		t.Fatalf("borealis_router_outcome_unknown_total %v, want 1", n)
	}
	// The next write goes to the new writer, once the router follows it
	// (the watch may tell it a moment after the old one dropped the
	// connection).
	wait.For(t, within, "the router to follow w2", func() bool {
		st := h.r.Status()
		return st.Writer != nil && st.Writer.ID == "w2"
	})
	expect(t, execute(t, h.cluster.URL), http.StatusOK, "w2")
}

// A failover that produces no writer within the failover wait: 503
// no_writer, saying how long it waited, that the request did not run, and
// what the failover is doing.
func TestWatchFailoverWaitExpires(t *testing.T) {
	h, ctl, w1 := watchHarness(t, func(c *Config) { c.FailoverWait = 200 * time.Millisecond })
	ctl.failingOver(FailoverChoosing, "", "no replica is caught up")
	wait.For(t, within, "the router to see no writer", func() bool { return h.r.Status().Writer == nil })
	rep := execute(t, h.cluster.URL)
	if rep.status != http.StatusServiceUnavailable || rep.code != CodeNoWriter {
		t.Fatalf("got HTTP %d %s, want 503 no_writer", rep.status, rep.body)
	}
	for _, want := range []string{`volume "main" has no writer`, "waited", "--failover-wait 200ms", "was not run", "failover is under way", "no replica is caught up"} {
		if !strings.Contains(rep.message, want) {
			t.Fatalf("no_writer message %q lacks %q", rep.message, want)
		}
	}
	if w1.executes.Load() != 0 {
		t.Fatal("the request went to the old writer")
	}
	if n := metricValue(t, h.r, "borealis_router_failover_wait_seconds", "outcome", WaitExpired); n != 1 {
		t.Fatalf("failover waits expired: %v, want 1", n)
	}

	// A writer that keeps refusing unrun until the wait runs out: the
	// message says what it answered.
	ctl.serving(w1, 3)
	wait.For(t, within, "w1 as the writer again", func() bool { return h.writerID() == "w1" })
	w1.setOnExecute(func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		writeError(w, http.StatusServiceUnavailable, CodeNotReady, "the writer of volume main is not ready: waiting for a write quorum of PG 0")
	})
	rep = execute(t, h.cluster.URL)
	if rep.status != http.StatusServiceUnavailable || rep.code != CodeNoWriter || !strings.Contains(rep.message, "w1") || !strings.Contains(rep.message, "write quorum of PG 0") || !strings.Contains(rep.message, "waited") {
		t.Fatalf("got HTTP %d %s, want 503 no_writer naming w1 and its refusal", rep.status, rep.body)
	}
}

// The stream breaking (a control plane restarting) is opened again, and
// what changed meanwhile is followed.
func TestWatchReconnects(t *testing.T) {
	h, ctl, _ := watchHarness(t, nil)
	w2 := newInstance(t, "w2", RoleWriter)
	opened := ctl.streams.Load()
	ctl.cutStreams()
	wait.For(t, within, "the stream to be opened again", func() bool { return ctl.streams.Load() > opened && h.r.Status().Following.Source == SourceWatch })
	ctl.serving(w2, 2)
	wait.For(t, within, "the router to follow w2", func() bool { return h.writerID() == "w2" })
	expect(t, execute(t, h.cluster.URL), http.StatusOK, "w2")
}

// A control plane without WatchWriter: the router follows the catalog.
func TestWatchUnimplementedFallsBackToTheCatalog(t *testing.T) {
	ctl := startControl(t)
	w1 := newInstance(t, "w1", RoleWriter)
	ctl.set(w1.record(1))
	h := newHarness(t, ctl, nil)
	wait.For(t, within, "the fallback to the catalog", func() bool {
		st := h.r.Status()
		return st.Following.Source == SourceCatalog && st.Following.WatchUnimplemented
	})
	expect(t, execute(t, h.cluster.URL), http.StatusOK, "w1")
	w2 := newInstance(t, "w2", RoleWriter)
	ctl.set(w2.record(2))
	wait.For(t, within, "the router to follow w2 from the catalog", func() bool { return h.writerID() == "w2" })
	wait.For(t, within, "the change to be counted", func() bool {
		return metricValue(t, h.r, "borealis_router_writer_changes_total") == 1
	})
}

// The reader endpoint stops sending queries to a replica as soon as the
// router follows it as the promoted writer, and takes the old writer back
// once it is a replica, without waiting for a refresh.
func TestWatchReaderFollowsRoleChanges(t *testing.T) {
	h, ctl, w1 := watchHarness(t, nil)
	r1 := newInstance(t, "r1", RoleReplica)
	r2 := newInstance(t, "r2", RoleReplica)
	ctl.set(r1.record(1), r2.record(1))
	if err := h.r.refreshSince(t.Context(), time.Now()); err != nil {
		t.Fatal(err)
	}
	h.waitCandidates(t, "r1", "r2")
	r1.setOnExecute(func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		writeJSON(w, http.StatusOK, map[string]any{"answered_by": "r1"})
	})

	// w1 died and came back as a replica; r1 was promoted (its catalog
	// record and health still say replica).
	w1.setHealth(func(hh *sqlclient.Health) {
		hh.Role = RoleReplica
		hh.Replica = &sqlclient.ReplicaHealth{Stream: StreamStreaming}
	})
	rec := w1.record(2)
	rec.Role = RoleReplica
	ctl.set(rec)
	ctl.failingOver(FailoverPromoting, "r1", "")
	ctl.serving(r1, 2)
	h.waitCandidates(t, "r2", "w1")
	rep := query(t, h, `{"sql":"SELECT 1"}`)
	if rep.status != http.StatusOK || (rep.instance != "r2" && rep.instance != "w1") {
		t.Fatalf("a query went to %q (HTTP %d), want a replica: r2 or w1", rep.instance, rep.status)
	}
	expect(t, execute(t, h.cluster.URL), http.StatusOK, "r1")
}
