package router

import (
	"bytes"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/wait"
)

// readerCluster is a writer and replicas, registered, behind a router.
func readerCluster(t *testing.T, replicas ...string) (*harness, *fakeInstance, map[string]*fakeInstance) {
	t.Helper()
	ctl := startControl(t)
	w := newInstance(t, "w1", RoleWriter)
	ctl.set(w.record(1))
	rs := map[string]*fakeInstance{}
	for _, id := range replicas {
		rs[id] = newInstance(t, id, RoleReplica)
		ctl.set(rs[id].record(1))
	}
	return newHarness(t, ctl, nil), w, rs
}

const selectOne = `{"sql":"SELECT 1"}`

// Queries spread over the replicas; one whose handler is held has an
// outstanding request, so the next queries go to the other.
func TestReaderLeastOutstanding(t *testing.T) {
	h, w, rs := readerCluster(t, "r1", "r2")
	h.waitCandidates(t, "r1", "r2")

	got := map[string]int{}
	for range 10 {
		rep := query(t, h, selectOne)
		if rep.status != http.StatusOK {
			t.Fatalf("HTTP %d %s", rep.status, rep.body)
		}
		got[rep.instance]++
	}
	if got["r1"] == 0 || got["r2"] == 0 || got["r1"]+got["r2"] != 10 {
		t.Fatalf("10 queries on idle replicas went %v, want both replicas used", got)
	}

	// The next query to reach either replica is held there.
	var armed atomic.Bool
	var held atomic.Value // the id of the replica holding it
	release := make(chan struct{})
	for id, r := range rs {
		r.setOnQuery(func(w http.ResponseWriter, _ *http.Request, _ []byte) {
			if armed.CompareAndSwap(true, false) {
				held.Store(id)
				<-release
			}
			writeJSON(w, http.StatusOK, map[string]any{"answered_by": id})
		})
	}
	armed.Store(true)
	heldReply := make(chan reply, 1)
	go func() { heldReply <- query(t, h, selectOne) }()
	wait.For(t, within, "a replica to hold a query", func() bool { return held.Load() != nil })
	holder := held.Load().(string)
	other := map[string]string{"r1": "r2", "r2": "r1"}[holder]

	for range 6 {
		expect(t, query(t, h, selectOne), http.StatusOK, other)
	}
	st := h.r.Status()
	for _, s := range st.Replicas {
		if want := map[bool]int64{true: 1, false: 0}[s.ID == holder]; s.Outstanding != want {
			t.Fatalf("replica %s has %d outstanding, want %d", s.ID, s.Outstanding, want)
		}
	}
	close(release)
	expect(t, <-heldReply, http.StatusOK, holder)
	if w.queries.Load() != 0 {
		t.Fatal("a query went to the writer while replicas were healthy")
	}
}

// A replica lagging more than MaxLag, or whose stream is stale, takes no
// queries; with none left, they go to the writer.
func TestReaderSkipsLaggingAndStaleReplicas(t *testing.T) {
	h, _, rs := readerCluster(t, "r1", "r2", "r3")
	rs["r1"].setHealth(func(h *sqlclient.Health) { h.Replica.LagMS = 5000; h.Replica.LagLSN = 900 })
	rs["r2"].setHealth(func(h *sqlclient.Health) { h.Replica.Stream = "stale"; h.Replica.LagMS = 3000 })
	h.waitCandidates(t, "r3")

	for range 5 {
		expect(t, query(t, h, selectOne), http.StatusOK, "r3")
	}
	if rs["r1"].queries.Load()+rs["r2"].queries.Load() != 0 {
		t.Fatal("a lagging or stale replica got a query")
	}
	why := map[string]string{}
	// Every replica polled at least once (a candidate set of r3 alone
	// is also what one not polled yet gives).
	wait.For(t, within, "r1 and r2 polled", func() bool {
		for _, s := range h.r.Status().Replicas {
			why[s.ID] = s.Why
		}
		return why["r1"] != "not polled yet" && why["r2"] != "not polled yet"
	})
	if !strings.Contains(why["r1"], "lag 5000 ms above the 1s bound") || !strings.Contains(why["r2"], "stream stale") || why["r3"] != "" {
		t.Fatalf("why not candidates: %q", why)
	}

	// Within MaxLag is fine.
	rs["r3"].setHealth(func(h *sqlclient.Health) { h.Replica.LagMS = 900 })
	rs["r1"].setHealth(func(h *sqlclient.Health) { h.Replica.LagMS = 1000 })
	h.waitCandidates(t, "r1", "r3")

	// Nothing left: the writer answers.
	for _, id := range []string{"r1", "r3"} {
		rs[id].setHealth(func(h *sqlclient.Health) { h.Replica.LagMS = 1001 })
	}
	h.waitCandidates(t)
	expect(t, query(t, h, selectOne), http.StatusOK, "w1")
}

// A replica whose health poll fails takes no queries until one succeeds; a
// replica that is not ready takes none either.
func TestReaderSkipsUnpolledAndUnreadyReplicas(t *testing.T) {
	h, _, rs := readerCluster(t, "r1", "r2")
	h.waitCandidates(t, "r1", "r2")
	rs["r1"].setHealthStatus(http.StatusInternalServerError)
	rs["r2"].setHealth(func(h *sqlclient.Health) { h.Ready = false; h.Status = "recovering" })
	h.waitCandidates(t)
	expect(t, query(t, h, selectOne), http.StatusOK, "w1")
	for _, s := range h.r.Status().Replicas {
		want := map[string]string{"r1": "health poll failed", "r2": "not ready: recovering"}[s.ID]
		if !strings.HasPrefix(s.Why, want) {
			t.Fatalf("replica %s: why %q, want %q...", s.ID, s.Why, want)
		}
	}
	rs["r1"].setHealthStatus(0)
	h.waitCandidates(t, "r1")
	expect(t, query(t, h, selectOne), http.StatusOK, "r1")
}

// min_lsn picks replicas that have applied it; above every replica's VDL,
// the writer answers. The body goes unchanged.
func TestReaderMinLSN(t *testing.T) {
	h, w, rs := readerCluster(t, "r1", "r2")
	rs["r1"].setHealth(func(h *sqlclient.Health) { h.VDL = 100 })
	rs["r2"].setHealth(func(h *sqlclient.Health) { h.VDL = 120 })
	h.waitCandidates(t, "r1", "r2")
	wait.For(t, within, "the replicas' VDLs polled", func() bool {
		st := h.r.Status()
		return st.Replicas[0].VDL == 100 && st.Replicas[1].VDL == 120
	})

	above := `{"sql":"SELECT * FROM t WHERE id = ?","params":[3],"min_lsn":150}`
	expect(t, query(t, h, above), http.StatusOK, "w1")
	if string(w.body()) != above {
		t.Fatalf("the writer got %q, want %q unchanged", w.body(), above)
	}
	for range 4 {
		expect(t, query(t, h, `{"sql":"SELECT 1","min_lsn":110}`), http.StatusOK, "r2")
		expect(t, query(t, h, `{"sql":"SELECT 1","min_lsn":120}`), http.StatusOK, "r2")
	}
	got := map[string]int{}
	for range 4 {
		got[query(t, h, `{"min_lsn":100,"sql":"SELECT 1"}`).instance]++
	}
	if got["r1"] == 0 || got["r2"] == 0 {
		t.Fatalf("min_lsn 100 went %v, want both replicas", got)
	}
	if w.queries.Load() != 1 {
		t.Fatalf("the writer got %d queries, want 1", w.queries.Load())
	}
	// Above every VDL polled, the first try still goes to a replica (it
	// may have applied it since its last poll, and a real one waits for
	// it); one that answers lagging sends the query to the writer, not to
	// another replica.
	before := rs["r1"].queries.Load() + rs["r2"].queries.Load()
	expect(t, query(t, h, above), http.StatusOK, "w1")
	if n := rs["r1"].queries.Load() + rs["r2"].queries.Load() - before; n != 1 {
		t.Fatalf("a query above every replica's VDL tried %d replicas, want 1", n)
	}

	for _, bad := range []string{`{"sql":"SELECT 1","min_lsn":"5"}`, `{"sql":"SELECT 1","min_lsn":-1}`, `not json`, ``} {
		rep := query(t, h, bad)
		if rep.status != http.StatusBadRequest || rep.code != CodeBadRequest {
			t.Fatalf("body %q: HTTP %d %s, want 400 bad_request", bad, rep.status, rep.body)
		}
	}
}

// A replica answering 503 lagging sends the query on: to the next replica,
// then to the writer. (Their polls say they have applied min_lsn; a
// replica that fell back since, say by a resync, refuses anyway.)
func TestReaderRetriesLaggingOnWriter(t *testing.T) {
	h, w, rs := readerCluster(t, "r1", "r2")
	for _, r := range rs {
		r.setHealth(func(h *sqlclient.Health) { h.VDL = 100 })
	}
	h.waitCandidates(t, "r1", "r2")
	wait.For(t, within, "the replicas' VDLs polled", func() bool {
		st := h.r.Status()
		return st.Replicas[0].VDL == 100 && st.Replicas[1].VDL == 100
	})
	lagging := func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		writeError(w, http.StatusServiceUnavailable, "lagging", "has not applied LSN 90 within 2s")
	}
	rs["r1"].setOnQuery(lagging)
	body := `{"sql":"SELECT 1","min_lsn":90}`
	for range 4 {
		expect(t, query(t, h, body), http.StatusOK, "r2")
	}
	if n := rs["r2"].queries.Load(); n != 4 {
		t.Fatalf("r2 answered %d queries, want all 4 (r1 refuses)", n)
	}

	rs["r2"].setOnQuery(lagging)
	before := rs["r1"].queries.Load() + rs["r2"].queries.Load()
	expect(t, query(t, h, body), http.StatusOK, "w1")
	if n := rs["r1"].queries.Load() + rs["r2"].queries.Load() - before; n != 2 {
		t.Fatalf("the query tried %d replicas before the writer, want 2", n)
	}
	if string(w.body()) != body {
		t.Fatalf("the writer got %q, want %q", w.body(), body)
	}

	// The writer's own 503 comes back as it is.
	w.setOnQuery(lagging)
	rep := query(t, h, body)
	if rep.status != http.StatusServiceUnavailable || rep.code != "lagging" || rep.instance != "w1" {
		t.Fatalf("got HTTP %d from %q %s, want the writer's 503 lagging", rep.status, rep.instance, rep.body)
	}
}

// A replica whose connection fails sends the query on, and takes none
// until a health poll succeeds.
func TestReaderRetriesFailedConnection(t *testing.T) {
	h, _, rs := readerCluster(t, "r1")
	h.waitCandidates(t, "r1")
	rs["r1"].setOnQuery(func(http.ResponseWriter, *http.Request, []byte) { panic(http.ErrAbortHandler) })
	expect(t, query(t, h, selectOne), http.StatusOK, "w1")
	if rs["r1"].queries.Load() != 1 {
		t.Fatalf("r1 got %d queries, want 1", rs["r1"].queries.Load())
	}
	rs["r1"].setOnQuery(nil)
	// The next poll puts it back.
	h.waitCandidates(t, "r1")
	expect(t, query(t, h, selectOne), http.StatusOK, "r1")
}

func TestReaderNoReplicaNoWriter(t *testing.T) {
	ctl := startControl(t)
	r1 := newInstance(t, "r1", RoleReplica)
	r1.setHealth(func(h *sqlclient.Health) { h.Replica.Stream = "stale"; h.Replica.LagMS = 3000 })
	ctl.set(r1.record(1))
	h := newHarness(t, ctl, nil)
	wait.For(t, within, "r1 polled", func() bool { return r1.polls.Load() > 0 })
	// With no writer (a failover), nothing commits: a stale replica
	// serves what it applied, however long ago it last heard the writer.
	expect(t, query(t, h, selectOne), http.StatusOK, "r1")
	r1.setHealth(func(h *sqlclient.Health) { h.Ready = false; h.Status = "starting" })
	wait.For(t, within, "r1 not ready", func() bool {
		for _, s := range h.r.Status().Replicas {
			if s.ID == "r1" && !s.Candidate {
				return true
			}
		}
		return false
	})
	rep := query(t, h, selectOne)
	if rep.status != http.StatusServiceUnavailable || rep.code != CodeNoWriter || !strings.HasPrefix(rep.message, "no replica can take queries, and volume") {
		t.Fatalf("got HTTP %d %s, want 503 no_writer saying no replica could take it", rep.status, rep.body)
	}
}

// The reader endpoint never writes.
func TestReaderRefusesWrites(t *testing.T) {
	h, w, rs := readerCluster(t, "r1")
	h.waitCandidates(t, "r1")
	rep := execute(t, h.reader.URL)
	if rep.status != http.StatusConflict || rep.code != CodeNotWriter || !strings.Contains(rep.message, "cluster.example:7100") {
		t.Fatalf("got HTTP %d %s, want 409 not_writer naming the cluster endpoint", rep.status, rep.body)
	}
	rep = do(t, http.MethodGet, h.reader.URL+"/v1/query", "")
	if rep.status != http.StatusMethodNotAllowed || rep.code != CodeBadRequest {
		t.Fatalf("GET /v1/query: HTTP %d %s, want 405", rep.status, rep.body)
	}
	if w.executes.Load()+rs["r1"].executes.Load()+w.queries.Load()+rs["r1"].queries.Load() != 0 {
		t.Fatal("a refused request reached an instance")
	}
}

// A query body above ReplayBodyBytes is buffered whole and goes unchanged;
// one above MaxBodyBytes is refused.
func TestReaderLargeQueryBody(t *testing.T) {
	h, _, rs := readerCluster(t, "r1")
	h.waitCandidates(t, "r1")
	big := `{"sql":"SELECT ?","params":["` + strings.Repeat("y", 3<<20) + `"],"min_lsn":0}`
	expect(t, query(t, h, big), http.StatusOK, "r1")
	if !bytes.Equal(rs["r1"].body(), []byte(big)) {
		t.Fatalf("r1 got %d bytes, want the %d sent", len(rs["r1"].body()), len(big))
	}
	if n := len(h.r.bigBodies); n != 0 {
		t.Fatalf("%d big body slots still taken", n)
	}

	small := newHarness(t, h.ctl, func(c *Config) { c.MaxBodyBytes = 2 << 20 })
	rep := query(t, small, big)
	if rep.status != http.StatusRequestEntityTooLarge || rep.code != CodeBodyTooLarge {
		t.Fatalf("HTTP %d %s, want 413 body_too_large", rep.status, rep.body)
	}
}

// An instance that leaves the catalog is no longer polled.
func TestStopsPollingDepartedInstances(t *testing.T) {
	h, _, rs := readerCluster(t, "r1", "r2")
	h.waitCandidates(t, "r1", "r2")
	h.ctl.remove("r1")
	h.waitCandidates(t, "r2")
	// Let a poll of r1 that was under way land.
	settle := rs["r2"].polls.Load() + 3
	wait.For(t, within, "r2 polled 3 more times", func() bool { return rs["r2"].polls.Load() >= settle })
	n := rs["r1"].polls.Load()
	more := rs["r2"].polls.Load() + 5
	wait.For(t, within, "r2 polled 5 more times", func() bool { return rs["r2"].polls.Load() >= more })
	if got := rs["r1"].polls.Load(); got != n {
		t.Fatalf("r1 was polled %d times after it left the catalog", got-n)
	}
	for range 4 {
		expect(t, query(t, h, selectOne), http.StatusOK, "r2")
	}
}
