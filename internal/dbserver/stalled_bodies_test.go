package dbserver

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/sqlvfs"
	"github.com/borealis-db/borealis/internal/wait"
)

// quickPost posts body to url+path and returns the reply's status and
// error code, failing t if no reply comes within ten seconds: far less
// than the request timeouts of these tests, so a request that waited for
// room behind uploads fails it.
func quickPost(t *testing.T, url, path string, body []byte, chunked bool) (int, string) {
	t.Helper()
	var r io.Reader = bytes.NewReader(body)
	if chunked {
		r = io.MultiReader(r) // no length: sent chunked
	}
	req, err := http.NewRequest(http.MethodPost, url+path, r)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("POST %s (%d bytes, chunked %v) while uploads held the budget: %v", path, len(body), chunked, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e ErrorBody
	_ = json.Unmarshal(b, &e)
	return resp.StatusCode, e.Error.Code
}

// TestSmallBodiesPassStalledUploads: clients that announce the largest
// body and send none of it (the review's proof), to /v1/execute and to
// /v1/query, hold the whole budget, and more wait; an 18-byte SELECT 1 is
// still answered at once, sent with a length or chunked, and so is a small
// write.
func TestSmallBodiesPassStalledUploads(t *testing.T) {
	const maxBody = 1 << 20
	h := notReadyInstance(Config{MaxBodyBytes: maxBody, RequestTimeout: 5 * time.Minute}).Handler().(*apiHandler)
	h.bodyIdle = time.Hour // only what readRequest admits is under test
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	for _, b := range []struct {
		path   string
		budget *bodyBudget
	}{{"/v1/execute", h.bodies}, {"/v1/query", h.queryBodies}} {
		for range b.budget.size/maxBody + 1 {
			startUploadTo(t, srv.URL, b.path, maxBody) // headers only
		}
		wait.For(t, 10*time.Second, "the stalled uploads to "+b.path+" to hold its budget, one waiting", func() bool {
			used, waiting := b.budget.inUse()
			return used == b.budget.size && waiting == 1
		})
	}

	selectOne := []byte(`{"sql":"SELECT 1"}`)
	if len(selectOne) != 18 {
		t.Fatalf("%d bytes", len(selectOne))
	}
	for _, c := range []struct {
		path    string
		body    []byte
		chunked bool
	}{
		{"/v1/query", selectOne, false},
		{"/v1/query", selectOne, true},
		{"/v1/execute", insertBody(t, smallBody), false},
		{"/v1/execute", insertBody(t, smallBody), true},
	} {
		if st, code := quickPost(t, srv.URL, c.path, c.body, c.chunked); st != http.StatusServiceUnavailable || code != CodeNotReady {
			t.Errorf("%s, %d bytes (chunked %v): HTTP %d %s; want not_ready, once read", c.path, len(c.body), c.chunked, st, code)
		}
	}
}

// TestStalledUploadGivesBackItsRoom: a large body that stops arriving
// fails with timeout after the body idle timeout, not the (much longer)
// request timeout, and its room goes to a body that arrives.
func TestStalledUploadGivesBackItsRoom(t *testing.T) {
	const maxBody = 1 << 20
	h := notReadyInstance(Config{MaxBodyBytes: maxBody, RequestTimeout: 5 * time.Minute}).Handler().(*apiHandler)
	h.bodyIdle = 300 * time.Millisecond
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	var stalled []*upload
	for i := range h.bodies.size / maxBody {
		u := startUpload(t, srv.URL, maxBody)
		if i == 0 {
			// Some of it, then nothing.
			if _, err := u.body.Write([]byte(`{"statements": [`)); err != nil {
				t.Fatal(err)
			}
		}
		stalled = append(stalled, u)
	}
	body := insertBody(t, maxBody)
	next := startUpload(t, srv.URL, int64(len(body)))
	go func() { next.body.Write(body); next.body.Close() }()

	start := time.Now()
	for i, u := range stalled {
		r := u.answered(t)
		if r.code != CodeTimeout || !strings.Contains(r.msg, "body idle timeout") || !strings.Contains(r.msg, fmt.Sprintf("of its %d bytes arrived", maxBody)) {
			t.Errorf("stalled upload %d: %+v; want timeout naming the body idle timeout and what arrived", i, r)
		}
	}
	if r := next.answered(t); r.code != CodeNotReady {
		t.Fatalf("the upload behind the stalled ones: %+v; want not_ready, once read", r)
	}
	if took := time.Since(start); took > time.Minute {
		t.Fatalf("the stalled uploads held their room for %s", took)
	}
	wait.For(t, 10*time.Second, "the budget to be given back", func() bool {
		used, waiting := h.bodies.inUse()
		return used == 0 && waiting == 0
	})
}

// TestQueriesAnswerWhileLargeWritesStall: during a quorum loss, large
// INSERTs that have their bodies wait out --write-timeout holding all of
// /v1/execute's budget, and more wait for room; /v1/query, small or large,
// still answers at once (the README's "reads keep answering while writes
// stall").
func TestQueriesAnswerWhileLargeWritesStall(t *testing.T) {
	const maxBody = 256 << 10
	const writeTimeout = 5 * time.Second
	ti := startTestInstance(t, Config{WriteTimeout: writeTimeout, MaxBodyBytes: maxBody}, sqlvfs.Options{})
	h := ti.Instance.Handler().(*apiHandler)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	ti.ok(t, "/v1/execute", exec(`CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)`, `INSERT INTO t(v) VALUES ('acked')`), nil)
	for _, i := range []int{0, 2, 4} {
		ti.nodes[i].stop()
	}
	var writes []*upload
	for range h.bodies.size/maxBody + 1 {
		body := insertBody(t, maxBody)
		u := startUpload(t, srv.URL, int64(len(body)))
		go func() { u.body.Write(body); u.body.Close() }()
		writes = append(writes, u)
	}
	wait.For(t, 10*time.Second, "the large writes to hold /v1/execute's budget, one waiting", func() bool {
		used, waiting := h.bodies.inUse()
		return used == h.bodies.size && waiting == 1
	})
	large := query("SELECT count(*), length('" + strings.Repeat("x", 2*smallBody) + "') FROM t")
	for _, q := range []string{query("SELECT count(*) FROM t"), large} {
		st, code := quickPost(t, srv.URL, "/v1/query", []byte(q), false)
		if st != http.StatusOK {
			t.Errorf("a %d-byte query while large writes stall: HTTP %d %s", len(q), st, code)
		}
	}
	for i, u := range writes {
		select {
		case r := <-u.reply:
			t.Fatalf("write %d was answered before the queries were (they waited for the stalled writes' room): %+v", i, r)
		default:
		}
	}
	for i, u := range writes {
		if r := u.answered(t); r.code != CodeStorageUnavailable {
			t.Errorf("write %d with no write quorum: %+v", i, r)
		}
	}
}
