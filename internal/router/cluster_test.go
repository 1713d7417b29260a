package router

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/wait"
)

// The cluster endpoint forwards to the writer record with the highest
// epoch, and follows a new one after a refresh.
func TestClusterForwardsToWriterAndFollowsNewEpoch(t *testing.T) {
	ctl := startControl(t)
	w1 := newInstance(t, "w1", RoleWriter)
	r1 := newInstance(t, "r1", RoleReplica)
	ctl.set(w1.record(1), r1.record(1))
	h := newHarness(t, ctl, nil)

	body := `{"statements":[{"sql":"INSERT INTO t VALUES (?)","params":[1]}],"transaction":true}`
	rep := do(t, http.MethodPost, h.cluster.URL+"/v1/execute", body)
	expect(t, rep, http.StatusOK, "w1")
	if got := string(w1.body()); got != body {
		t.Fatalf("the writer got body %q, want %q unchanged", got, body)
	}
	var out struct{ LSN uint64 }
	if err := json.Unmarshal(rep.body, &out); err != nil || out.LSN != 7 {
		t.Fatalf("the writer's reply did not come through: %s (%v)", rep.body, err)
	}
	// Queries on the cluster endpoint go to the writer too.
	expect(t, do(t, http.MethodPost, h.cluster.URL+"/v1/query", `{"sql":"SELECT 1"}`), http.StatusOK, "w1")
	if r1.queries.Load() != 0 {
		t.Fatal("the cluster endpoint sent a query to a replica")
	}

	// A failover: a new writer registers with a higher epoch, while the
	// old one's record has not expired.
	w2 := newInstance(t, "w2", RoleWriter)
	ctl.set(w2.record(2))
	wait.For(t, within, "the cluster endpoint to follow w2", func() bool {
		return execute(t, h.cluster.URL).instance == "w2"
	})
	expect(t, execute(t, h.cluster.URL), http.StatusOK, "w2")
	st := h.r.Status()
	if st.Writer == nil || st.Writer.ID != "w2" || st.Writer.Epoch != 2 || len(st.Others) != 1 || st.Others[0].ID != "w1" {
		t.Fatalf("status: writer %+v, others %+v; want w2 at epoch 2, and w1 among the others", st.Writer, st.Others)
	}
}

func TestClusterNoWriter(t *testing.T) {
	ctl := startControl(t)
	r1 := newInstance(t, "r1", RoleReplica)
	ctl.set(r1.record(1))
	const failoverWait = 400 * time.Millisecond
	h := newHarness(t, ctl, func(c *Config) { c.FailoverWait = failoverWait })

	// It waits for a writer, up to FailoverWait, and then gives up.
	began := time.Now()
	rep := execute(t, h.cluster.URL)
	took := time.Since(began)
	if rep.status != http.StatusServiceUnavailable || rep.code != CodeNoWriter || !strings.Contains(rep.message, `volume "main" has no writer`) || !strings.Contains(rep.message, "waited") {
		t.Fatalf("got HTTP %d %s, want 503 no_writer naming the volume and saying how long it waited", rep.status, rep.body)
	}
	if took < failoverWait {
		t.Fatalf("answered no_writer after %s, before the %s FailoverWait", took, failoverWait)
	}
	if rep.instance != "" {
		t.Fatalf("the router's own refusal names instance %q", rep.instance)
	}
	if r1.executes.Load() != 0 {
		t.Fatal("the cluster endpoint sent a write to a replica")
	}
}

// A writer refusing in words that say it ran nothing (a replica's
// not_writer, a writer's not_ready) makes the router send the request to
// the writer the catalog names next; a writer's own not_writer (fenced,
// perhaps mid-commit) on a write is outcome_unknown, and not sent again.
func TestClusterRetriesAfterUnrunRefusal(t *testing.T) {
	ctl := startControl(t)
	w1 := newInstance(t, "w1", RoleWriter)
	w2 := newInstance(t, "w2", RoleWriter)
	ctl.set(w1.record(1))
	// No periodic refresh within the test: only the retry's.
	h := newHarness(t, ctl, func(c *Config) { c.Refresh = time.Hour })
	wait.For(t, within, "w1 as the writer", func() bool { return h.writerID() == "w1" })

	w1.setOnExecute(func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		// Back as a replica, and a new writer has registered.
		ctl.remove("w1")
		ctl.set(w2.record(2))
		writeError(w, http.StatusConflict, CodeNotWriter, "instance w1 is a read replica of volume main and never writes; send writes to the writer at %s", w2.endpoint())
	})
	body := `{"statements":[{"sql":"INSERT INTO t VALUES (1)"}]}`
	expect(t, do(t, http.MethodPost, h.cluster.URL+"/v1/execute", body), http.StatusOK, "w2")
	if w1.executes.Load() != 1 || w2.executes.Load() != 1 || string(w2.body()) != body {
		t.Fatalf("w1 got %d writes, w2 %d (body %q); want one each, the same body", w1.executes.Load(), w2.executes.Load(), w2.body())
	}

	// Not waiting (a negative FailoverWait): sent once more only, so two
	// writers that both refuse give the second refusal.
	h2 := newHarness(t, ctl, func(c *Config) { c.Refresh = time.Hour; c.FailoverWait = -1 })
	wait.For(t, within, "w2 as the writer", func() bool { return h2.writerID() == "w2" })
	w2.setOnExecute(func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		ctl.set(w1.record(3))
		writeError(w, http.StatusServiceUnavailable, CodeNotReady, "the writer of volume main is not ready: stepping down")
	})
	w1.setOnExecute(func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		writeError(w, http.StatusServiceUnavailable, CodeNotReady, "the writer of volume main is not ready: recovering")
	})
	rep := execute(t, h2.cluster.URL)
	if rep.status != http.StatusServiceUnavailable || rep.code != CodeNotReady || rep.instance != "w1" {
		t.Fatalf("got HTTP %d from %q %s, want w1's own 503 not_ready", rep.status, rep.instance, rep.body)
	}
	if w1.executes.Load() != 2 || w2.executes.Load() != 2 {
		t.Fatalf("w1 got %d writes, w2 %d; want 2 each (the request sent once more)", w1.executes.Load(), w2.executes.Load())
	}

	// A writer's own not_writer: fenced, maybe after it ran the write.
	w1.setOnExecute(func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		writeError(w, http.StatusConflict, CodeNotWriter, "this instance is no longer the writer of volume main: volume: fenced")
	})
	h.r.writers.Refresh(t.Context())
	wait.For(t, within, "w1 as the writer", func() bool { return h.writerID() == "w1" })
	before := w1.executes.Load() + w2.executes.Load()
	rep = execute(t, h.cluster.URL)
	if rep.status != http.StatusBadGateway || rep.code != CodeOutcomeUnknown || !strings.Contains(rep.message, "may or may not have been applied") || !strings.Contains(rep.message, "fenced") {
		t.Fatalf("got HTTP %d %s, want 502 outcome_unknown with the writer's words", rep.status, rep.body)
	}
	if n := w1.executes.Load() + w2.executes.Load() - before; n != 1 {
		t.Fatalf("the write reached the writers %d times, want once", n)
	}
	// A query refused so is sent again: it changes nothing.
	w2.setOnQuery(func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		writeJSON(w, http.StatusOK, map[string]any{"answered_by": "w2"})
	})
	w1.setOnQuery(func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		ctl.remove("w1")
		ctl.set(w2.record(4))
		writeError(w, http.StatusConflict, CodeNotWriter, "this instance is no longer the writer of volume main: volume: fenced")
	})
	expect(t, do(t, http.MethodPost, h.cluster.URL+"/v1/query", `{"sql":"SELECT 1"}`), http.StatusOK, "w2")
}

// A writer whose connection is refused: the router refreshes and retries
// on the new writer, since the request never reached the old one.
func TestClusterRetriesWhenWriterUnreachable(t *testing.T) {
	ctl := startControl(t)
	w1 := newInstance(t, "w1", RoleWriter)
	w2 := newInstance(t, "w2", RoleWriter)
	ctl.set(w1.record(1))
	h := newHarness(t, ctl, func(c *Config) { c.Refresh = time.Hour; c.FailoverWait = 400 * time.Millisecond })
	wait.For(t, within, "w1 as the writer", func() bool { return h.writerID() == "w1" })

	w1.srv.Close()
	ctl.remove("w1")
	ctl.set(w2.record(2))
	expect(t, execute(t, h.cluster.URL), http.StatusOK, "w2")

	// With no writer left that can be reached, once the wait is over: 503
	// no_writer, naming the one it tried.
	w2.srv.Close()
	rep := execute(t, h.cluster.URL)
	if rep.status != http.StatusServiceUnavailable || rep.code != CodeNoWriter || !strings.Contains(rep.message, "w2") || !strings.Contains(rep.message, "waited") {
		t.Fatalf("got HTTP %d %s, want 503 no_writer naming w2 and the wait", rep.status, rep.body)
	}

	// Not waiting at all (a negative FailoverWait): 502 unavailable, after
	// one retry.
	h2 := newHarness(t, ctl, func(c *Config) { c.Refresh = time.Hour; c.FailoverWait = -1 })
	rep = execute(t, h2.cluster.URL)
	if rep.status != http.StatusBadGateway || rep.code != CodeUnavailable || !strings.Contains(rep.message, "w2") {
		t.Fatalf("got HTTP %d %s, want 502 unavailable naming w2", rep.status, rep.body)
	}
}

// A request arriving while the volume has no writer (a failover under
// way) waits for one, and is sent to it once its record appears.
func TestClusterWaitsForAWriterToRegister(t *testing.T) {
	ctl := startControl(t)
	r1 := newInstance(t, "r1", RoleReplica)
	ctl.set(r1.record(1))
	h := newHarness(t, ctl, func(c *Config) { c.FailoverWait = within })
	wait.For(t, within, "the first listing", func() bool { return ctl.lists.Load() > 0 && len(h.r.Status().Replicas) == 1 })

	w1 := newInstance(t, "w1", RoleWriter)
	const after = 300 * time.Millisecond
	began := time.Now()
	registered := time.AfterFunc(after, func() { ctl.set(w1.record(2)) })
	defer registered.Stop()
	body := `{"statements":[{"sql":"INSERT INTO t VALUES (1)"}]}`
	expect(t, do(t, http.MethodPost, h.cluster.URL+"/v1/execute", body), http.StatusOK, "w1")
	if took := time.Since(began); took < after {
		t.Fatalf("answered after %s, before the writer registered (%s)", took, after)
	}
	if w1.executes.Load() != 1 || string(w1.body()) != body || r1.executes.Load() != 0 {
		t.Fatalf("w1 got %d writes (body %q), r1 %d; want the one write, unchanged, at w1", w1.executes.Load(), w1.body(), r1.executes.Load())
	}
}

// A request whose writer refuses connections (it died, its record not yet
// expired) waits, and goes to the new writer once the catalog names it.
func TestClusterWaitsWhileTheWriterRefusesConnections(t *testing.T) {
	ctl := startControl(t)
	w1 := newInstance(t, "w1", RoleWriter)
	w2 := newInstance(t, "w2", RoleWriter)
	ctl.set(w1.record(1))
	h := newHarness(t, ctl, func(c *Config) { c.FailoverWait = within })
	wait.For(t, within, "w1 as the writer", func() bool { return h.writerID() == "w1" })

	w1.srv.Close() // its port refuses connections
	const after = 300 * time.Millisecond
	began := time.Now()
	promoted := time.AfterFunc(after, func() { ctl.set(w2.record(2)) })
	defer promoted.Stop()
	expect(t, execute(t, h.cluster.URL), http.StatusOK, "w2")
	if took := time.Since(began); took < after {
		t.Fatalf("answered after %s, before the new writer registered (%s)", took, after)
	}
	if w2.executes.Load() != 1 {
		t.Fatalf("w2 got %d writes, want 1", w2.executes.Load())
	}
}

// A request whose writer refuses connections waits for the same endpoint
// to answer again, as a writer restarting in place would.
func TestClusterWaitsForTheSameWriterToComeBack(t *testing.T) {
	ctl := startControl(t)
	w1 := newInstance(t, "w1", RoleWriter)
	ctl.set(w1.record(1))
	h := newHarness(t, ctl, func(c *Config) { c.FailoverWait = within })
	wait.For(t, within, "w1 as the writer", func() bool { return h.writerID() == "w1" })

	addr := w1.srv.Listener.Addr().String()
	w1.srv.Close()
	back := make(chan error, 1)
	restarted := time.AfterFunc(300*time.Millisecond, func() {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			back <- err
			return
		}
		srv := &http.Server{Handler: http.HandlerFunc(w1.serve)}
		t.Cleanup(func() { srv.Close() })
		back <- nil
		srv.Serve(lis)
	})
	defer restarted.Stop()
	rep := execute(t, h.cluster.URL)
	if err := <-back; err != nil {
		t.Skipf("cannot listen on %s again: %v", addr, err)
	}
	expect(t, rep, http.StatusOK, "w1")
	if w1.executes.Load() != 1 {
		t.Fatalf("w1 got %d writes, want 1", w1.executes.Load())
	}
}

// A write whose connection fails after it was sent may have committed: it
// is not sent again. A query is.
func TestClusterDoesNotRetryWriteThatReachedTheWriter(t *testing.T) {
	ctl := startControl(t)
	w1 := newInstance(t, "w1", RoleWriter)
	w2 := newInstance(t, "w2", RoleWriter)
	ctl.set(w1.record(1))
	h := newHarness(t, ctl, func(c *Config) { c.Refresh = time.Hour })
	wait.For(t, within, "w1 as the writer", func() bool { return h.writerID() == "w1" })

	crash := func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		ctl.remove("w1")
		ctl.set(w2.record(2))
		panic(http.ErrAbortHandler) // the connection drops without an answer
	}
	w1.setOnExecute(crash)
	rep := execute(t, h.cluster.URL)
	if rep.status != http.StatusBadGateway || rep.code != CodeOutcomeUnknown || !strings.Contains(rep.message, "may or may not have been applied") {
		t.Fatalf("got HTTP %d %s, want 502 outcome_unknown saying the write may have been applied", rep.status, rep.body)
	}
	if w2.executes.Load() != 0 {
		t.Fatal("a write that reached a writer was sent again")
	}

	ctl.remove("w2")
	ctl.set(w1.record(3))
	h.r.writers.Refresh(t.Context())
	w1.setOnQuery(crash)
	expect(t, do(t, http.MethodPost, h.cluster.URL+"/v1/query", `{"sql":"SELECT 1"}`), http.StatusOK, "w2")
}

// A body above ReplayBodyBytes is streamed to the writer, and its refusal
// comes back as it is: it cannot be sent twice.
func TestClusterStreamsLargeBodyWithoutRetry(t *testing.T) {
	ctl := startControl(t)
	w1 := newInstance(t, "w1", RoleWriter)
	w2 := newInstance(t, "w2", RoleWriter)
	ctl.set(w1.record(1))
	h := newHarness(t, ctl, func(c *Config) { c.Refresh = time.Hour })
	wait.For(t, within, "w1 as the writer", func() bool { return h.writerID() == "w1" })

	big := `{"statements":[{"sql":"INSERT INTO t VALUES (?)","params":["` + strings.Repeat("x", 2<<20) + `"]}]}`
	expect(t, do(t, http.MethodPost, h.cluster.URL+"/v1/execute", big), http.StatusOK, "w1")
	if !bytes.Equal(w1.body(), []byte(big)) {
		t.Fatalf("the writer got %d bytes, want the %d sent", len(w1.body()), len(big))
	}

	w1.setOnExecute(func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		ctl.remove("w1")
		ctl.set(w2.record(2))
		writeError(w, http.StatusConflict, CodeNotWriter, "instance w1 is a read replica of volume main and never writes; send writes to the writer at w2")
	})
	rep := do(t, http.MethodPost, h.cluster.URL+"/v1/execute", big)
	if rep.status != http.StatusConflict || rep.code != CodeNotWriter || rep.instance != "w1" {
		t.Fatalf("got HTTP %d from %q %s, want w1's 409 not_writer", rep.status, rep.instance, rep.body)
	}
	if w2.executes.Load() != 0 {
		t.Fatal("a streamed body was sent twice")
	}
}

// GET /v1/health on either endpoint is the router's own status.
func TestHealthOnBothEndpoints(t *testing.T) {
	ctl := startControl(t)
	w1 := newInstance(t, "w1", RoleWriter)
	r1 := newInstance(t, "r1", RoleReplica)
	r2 := newInstance(t, "r2", RoleReplica)
	r1.setHealth(func(h *sqlclient.Health) { h.VDL = 42 })
	r2.setHealth(func(h *sqlclient.Health) { h.Replica.Stream = "connecting" })
	ctl.set(w1.record(1), r1.record(1), r2.record(1))
	h := newHarness(t, ctl, nil)
	h.waitCandidates(t, "r1")

	for _, url := range []string{h.cluster.URL, h.reader.URL} {
		rep := do(t, http.MethodGet, url+"/v1/health", "")
		var st Status
		if err := json.Unmarshal(rep.body, &st); err != nil || rep.status != http.StatusOK {
			t.Fatalf("%s/v1/health: HTTP %d %s (%v)", url, rep.status, rep.body, err)
		}
		if st.Volume != "main" || st.Writer == nil || st.Writer.ID != "w1" || st.Writer.Endpoint != w1.endpoint() || st.ClusterEndpoint != "cluster.example:7100" {
			t.Fatalf("%s/v1/health: %s", url, rep.body)
		}
		if len(st.Replicas) != 2 || !st.Replicas[0].Candidate || st.Replicas[0].VDL != 42 || st.Replicas[0].Stream != "streaming" ||
			st.Replicas[1].Candidate || st.Replicas[1].Why != "stream connecting" {
			t.Fatalf("%s/v1/health replicas: %+v", url, st.Replicas)
		}
		if rep.instance != "" {
			t.Fatalf("%s/v1/health was answered by instance %q, not the router", url, rep.instance)
		}
	}
}
