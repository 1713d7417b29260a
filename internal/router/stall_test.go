package router

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/wait"
)

// stallTimeout is the health poll timeout of the stall tests; with the
// harness's 20 ms refresh, a replica that stops answering is found unfit
// within stallNotice.
const (
	stallTimeout = 250 * time.Millisecond
	stallNotice  = 20*time.Millisecond + stallTimeout
	// stallSlack is what a slow (or -race) run may add to stallNotice.
	stallSlack = time.Second
)

// stallCluster is readerCluster with health polls bounded by stallTimeout.
func stallCluster(t *testing.T, replicas ...string) (*harness, *fakeInstance, map[string]*fakeInstance) {
	t.Helper()
	ctl := startControl(t)
	w := newInstance(t, "w1", RoleWriter)
	ctl.set(w.record(1))
	rs := map[string]*fakeInstance{}
	for _, id := range replicas {
		rs[id] = newInstance(t, id, RoleReplica)
		ctl.set(rs[id].record(1))
	}
	return newHarness(t, ctl, func(c *Config) { c.HealthTimeout = stallTimeout }), w, rs
}

// holdQueries makes fi take every query and never answer it (until the
// test ends), and returns how many it holds.
func holdQueries(t *testing.T, fi *fakeInstance) *atomic.Int64 {
	t.Helper()
	var held atomic.Int64
	forever := make(chan struct{})
	t.Cleanup(func() { close(forever) })
	fi.setOnQuery(func(http.ResponseWriter, *http.Request, []byte) {
		held.Add(1)
		<-forever
	})
	return &held
}

// A query a replica holds when it stops answering goes to the next
// replica, or to the writer, once a health poll finds the replica unfit:
// the poll times out (SIGSTOP: the kernel still takes the connection and
// the request), fails, or says the replica lags or no longer streams. The
// body is sent again unchanged.
func TestReaderQueryLeavesReplicaTurnedUnfit(t *testing.T) {
	unfit := map[string]func(t *testing.T, fi *fakeInstance){
		"poll times out": func(t *testing.T, fi *fakeInstance) { fi.stall(t) },
		"poll fails":     func(_ *testing.T, fi *fakeInstance) { fi.setHealthStatus(http.StatusInternalServerError) },
		"lagging": func(_ *testing.T, fi *fakeInstance) {
			fi.setHealth(func(h *sqlclient.Health) { h.Replica.LagMS = 5000 })
		},
		"stream stale": func(_ *testing.T, fi *fakeInstance) {
			fi.setHealth(func(h *sqlclient.Health) { h.Replica.Stream = "stale"; h.Replica.LagMS = 3000 })
		},
	}
	for name, makeUnfit := range unfit {
		t.Run(name+", to the next replica", func(t *testing.T) {
			h, w, rs := stallCluster(t, "r1", "r2")
			// Only r1 takes the query at first.
			rs["r2"].setHealth(func(h *sqlclient.Health) { h.Ready = false })
			h.waitCandidates(t, "r1")
			held := holdQueries(t, rs["r1"])
			body := `{"sql":"SELECT ?","params":["` + strings.Repeat("x", 2000) + `"]}`
			replied := make(chan reply, 1)
			go func() { replied <- query(t, h, body) }()
			wait.For(t, within, "r1 to hold the query", func() bool { return held.Load() == 1 })
			rs["r2"].setHealth(func(h *sqlclient.Health) { h.Ready = true })
			h.waitCandidates(t, "r1", "r2")

			start := time.Now()
			makeUnfit(t, rs["r1"])
			rep := awaitReply(t, replied, stallNotice+stallSlack)
			t.Logf("answered %s after r1 turned unfit", time.Since(start).Round(time.Millisecond))
			expect(t, rep, http.StatusOK, "r2")
			if got := string(rs["r2"].body()); got != body {
				t.Fatalf("r2 got a body of %d bytes, want the %d sent", len(got), len(body))
			}
			if n := rs["r1"].queries.Load(); n != 1 {
				t.Fatalf("r1 got %d queries, want 1", n)
			}
			if n := w.queries.Load(); n != 0 {
				t.Fatalf("the writer got %d queries, want none", n)
			}
			st := h.r.Status()
			if o := st.Replicas[0].Outstanding; o != 0 {
				t.Fatalf("r1 has %d queries outstanding after its query went on", o)
			}
			if st.Replicas[0].Candidate {
				t.Fatal("r1 is still a candidate")
			}
		})
	}

	t.Run("poll times out, to the writer", func(t *testing.T) {
		h, w, rs := stallCluster(t, "r1")
		h.waitCandidates(t, "r1")
		held := holdQueries(t, rs["r1"])
		replied := make(chan reply, 1)
		go func() { replied <- query(t, h, selectOne) }()
		wait.For(t, within, "r1 to hold the query", func() bool { return held.Load() == 1 })

		start := time.Now()
		rs["r1"].stall(t)
		rep := awaitReply(t, replied, stallNotice+stallSlack)
		t.Logf("answered %s after r1 stalled", time.Since(start).Round(time.Millisecond))
		expect(t, rep, http.StatusOK, "w1")
		if got := string(w.body()); got != selectOne {
			t.Fatalf("the writer got %q, want %q", got, selectOne)
		}
	})

	// Several queries held at once, on both replicas, when both stop: each
	// tries the other (which holds it too) and then the writer.
	t.Run("both replicas stall, to the writer", func(t *testing.T) {
		h, w, rs := stallCluster(t, "r1", "r2")
		h.waitCandidates(t, "r1", "r2")
		held1, held2 := holdQueries(t, rs["r1"]), holdQueries(t, rs["r2"])
		const n = 6
		replied := make(chan reply, n)
		for range n {
			go func() { replied <- query(t, h, selectOne) }()
		}
		wait.For(t, within, "the replicas to hold the queries", func() bool { return held1.Load()+held2.Load() == n })
		start := time.Now()
		rs["r1"].stall(t)
		rs["r2"].stall(t)
		for range n {
			// The second replica tried may be found unfit by its first
			// poll to time out, or (having taken the query before) by one
			// more.
			expect(t, awaitReply(t, replied, 2*stallNotice+stallSlack), http.StatusOK, "w1")
		}
		t.Logf("all answered %s after both stalled", time.Since(start).Round(time.Millisecond))
		if got := w.queries.Load(); got != n {
			t.Fatalf("the writer answered %d queries, want %d", got, n)
		}
	})
}

// A replica that stops answering while its answer's body is under way
// cannot have the query sent elsewhere (part of the answer went out): the
// client sees the response broken off once a poll finds the replica unfit,
// not a wait for as long as the replica stays stopped, nor an answer that
// ends as if it were whole.
func TestReaderCutsAnswerOfReplicaTurnedUnfit(t *testing.T) {
	for _, withLength := range []bool{false, true} {
		name := map[bool]string{false: "chunked", true: "content-length"}[withLength]
		t.Run(name, func(t *testing.T) {
			h, w, rs := stallCluster(t, "r1")
			h.waitCandidates(t, "r1")
			forever := make(chan struct{})
			t.Cleanup(func() { close(forever) })
			var begun atomic.Bool
			part := `{"rows":[` + strings.Repeat(`[1],`, 16<<10)
			rs["r1"].setOnQuery(func(w http.ResponseWriter, _ *http.Request, _ []byte) {
				w.Header().Set("Content-Type", "application/json")
				if withLength {
					w.Header().Set("Content-Length", "1000000")
				}
				w.WriteHeader(http.StatusOK)
				_, _ = io.WriteString(w, part)
				w.(http.Flusher).Flush()
				begun.Store(true)
				<-forever
			})
			resp, err := http.Post(h.reader.URL+"/v1/query", "application/json", strings.NewReader(selectOne))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.Header.Get(InstanceHeader) != "r1" {
				t.Fatalf("HTTP %d from %q, want 200 from r1", resp.StatusCode, resp.Header.Get(InstanceHeader))
			}
			wait.For(t, within, "r1 to begin its answer", begun.Load)
			read := make(chan error, 1)
			var got atomic.Int64
			go func() {
				n, err := io.Copy(io.Discard, resp.Body)
				got.Store(n)
				read <- err
			}()

			start := time.Now()
			rs["r1"].stall(t)
			select {
			case err := <-read:
				t.Logf("the answer broke off after %d bytes, %s after r1 stalled: %v", got.Load(), time.Since(start).Round(time.Millisecond), err)
				if err == nil {
					t.Fatalf("the answer cut short ended cleanly after %d of the bytes, as if whole", got.Load())
				}
			case <-time.After(stallNotice + stallSlack):
				t.Fatalf("the answer of r1, stalled, still hangs %s after", time.Since(start).Round(time.Millisecond))
			}
			if w.queries.Load() != 0 {
				t.Fatal("a query whose answer had begun went to the writer")
			}
			wait.For(t, within, "r1's query no longer outstanding", func() bool {
				return h.r.Status().Replicas[0].Outstanding == 0
			})
		})
	}
}

// A query that runs long on a healthy replica is not cut: polls, not a
// timeout, end an attempt.
func TestReaderLongQueryOnHealthyReplica(t *testing.T) {
	h, w, rs := stallCluster(t, "r1")
	h.waitCandidates(t, "r1")
	long := 4 * stallNotice
	rs["r1"].setOnQuery(func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		time.Sleep(long)
		writeJSON(w, http.StatusOK, map[string]any{"answered_by": "r1"})
	})
	start := time.Now()
	polls := rs["r1"].polls.Load()
	expect(t, query(t, h, selectOne), http.StatusOK, "r1")
	if took := time.Since(start); took < long {
		t.Fatalf("answered after %s, before r1's %s", took, long)
	}
	if n := rs["r1"].polls.Load() - polls; n < 3 {
		t.Fatalf("r1 was polled %d times during the query, want several", n)
	}
	if rs["r1"].queries.Load() != 1 || w.queries.Load() != 0 {
		t.Fatalf("r1 got %d queries and the writer %d, want 1 and 0", rs["r1"].queries.Load(), w.queries.Load())
	}
}

func awaitReply(t *testing.T, replied <-chan reply, bound time.Duration) reply {
	t.Helper()
	select {
	case rep := <-replied:
		return rep
	case <-time.After(bound):
		t.Fatalf("no answer within %s", bound)
		return reply{}
	}
}
