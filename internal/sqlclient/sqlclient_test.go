package sqlclient

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
)

// server answers every request with status and body, and keeps what it was
// sent.
type server struct {
	*httptest.Server
	method, path, contentType string
	body                      []byte
}

func newServer(t *testing.T, status int, reply string) *server {
	s := &server{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.method, s.path, s.contentType = r.Method, r.URL.Path, r.Header.Get("Content-Type")
		s.body, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, reply)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) client() *Client { return &Client{Endpoint: s.URL} }

// sent decodes the request body generically, so that the test sees exactly
// what went on the wire.
func (s *server) sent(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(s.body, &m); err != nil {
		t.Fatalf("request body %q: %v", s.body, err)
	}
	return m
}

func TestExecuteEncodesStatementsAndParams(t *testing.T) {
	s := newServer(t, 200, `{"results":[{"rows_affected":1,"last_insert_id":42},{"rows_affected":3,"last_insert_id":0}]}`)
	res, err := s.client().Execute(context.Background(), []Statement{
		{SQL: "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)", Params: []any{int64(1) << 60, 2.5, "x", true, nil, []byte{0, 1, 255}}},
		{SQL: "DELETE FROM t"},
	}, true)
	if err != nil {
		t.Fatal(err)
	}
	if s.method != "POST" || s.path != "/v1/execute" || s.contentType != "application/json" {
		t.Fatalf("request %s %s (%s)", s.method, s.path, s.contentType)
	}
	want := map[string]any{
		"transaction": true,
		"statements": []any{
			map[string]any{"sql": "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)",
				"params": []any{float64(1 << 60), 2.5, "x", true, nil, map[string]any{"base64": "AAH/"}}},
			map[string]any{"sql": "DELETE FROM t"},
		},
	}
	if got := s.sent(t); !reflect.DeepEqual(got, want) {
		t.Fatalf("sent %v\nwant %v", got, want)
	}
	// A large integer goes out with every digit, not through a float.
	if !strings.Contains(string(s.body), "1152921504606846976") {
		t.Fatalf("2^60 lost digits: %s", s.body)
	}
	if len(res) != 2 || res[0] != (Result{RowsAffected: 1, LastInsertID: 42}) || res[1].RowsAffected != 3 {
		t.Fatalf("results %+v", res)
	}
}

func TestExecuteWithoutTransactionSaysSo(t *testing.T) {
	s := newServer(t, 200, `{"results":[{"rows_affected":0,"last_insert_id":0}]}`)
	if _, err := s.client().Execute(context.Background(), []Statement{{SQL: "CREATE TABLE t(a)"}}, false); err != nil {
		t.Fatal(err)
	}
	if got := s.sent(t); got["transaction"] != false {
		t.Fatalf("sent %v", got)
	}
}

func TestExecuteChecksTheResultCount(t *testing.T) {
	s := newServer(t, 200, `{"results":[]}`)
	_, err := s.client().Execute(context.Background(), []Statement{{SQL: "DELETE FROM t"}}, false)
	if err == nil || !strings.Contains(err.Error(), "0 results for 1 statements") {
		t.Fatalf("err %v", err)
	}
}

func TestQueryDecodesEveryKindOfValue(t *testing.T) {
	s := newServer(t, 200, `{"columns":["i","r","t","b","n","big"],"types":["INTEGER","REAL","TEXT","BLOB","",""],
		"rows":[[1,2.5,"x",{"base64":"AAH/"},null,9007199254740993],[-7,1e3,"",{"base64":""},null,-1]]}`)
	rows, err := s.client().Query(context.Background(), "SELECT * FROM t WHERE a = ? AND b = ?", 7, "y")
	if err != nil {
		t.Fatal(err)
	}
	if s.method != "POST" || s.path != "/v1/query" {
		t.Fatalf("request %s %s", s.method, s.path)
	}
	if got, want := s.sent(t), (map[string]any{"sql": "SELECT * FROM t WHERE a = ? AND b = ?", "params": []any{7.0, "y"}}); !reflect.DeepEqual(got, want) {
		t.Fatalf("sent %v", got)
	}
	if !reflect.DeepEqual(rows.Columns, []string{"i", "r", "t", "b", "n", "big"}) || rows.Types[1] != "REAL" {
		t.Fatalf("columns %v types %v", rows.Columns, rows.Types)
	}
	want := [][]any{
		{int64(1), 2.5, "x", []byte{0, 1, 255}, nil, int64(9007199254740993)},
		{int64(-7), 1000.0, "", []byte{}, nil, int64(-1)},
	}
	if !reflect.DeepEqual(rows.Rows, want) {
		t.Fatalf("rows %#v\nwant %#v", rows.Rows, want)
	}
}

func TestQueryWithoutParamsSendsNone(t *testing.T) {
	s := newServer(t, 200, `{"columns":["1"],"types":[""],"rows":[[1]]}`)
	if _, err := s.client().Query(context.Background(), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if got := s.sent(t); !reflect.DeepEqual(got, map[string]any{"sql": "SELECT 1"}) {
		t.Fatalf("sent %v", got)
	}
}

func TestParamsOfNoSQLTypeAreRefusedBeforeSending(t *testing.T) {
	s := newServer(t, 200, `{}`)
	_, err := s.client().Query(context.Background(), "SELECT ?", struct{}{})
	if err == nil || !strings.Contains(err.Error(), "parameter 1: struct {} is not a SQL value") {
		t.Fatalf("err %v", err)
	}
	if s.body != nil {
		t.Fatal("a request was sent")
	}
}

func TestServerErrorsAreDecoded(t *testing.T) {
	for _, tc := range []struct {
		status      int
		body        string
		code, msg   string
		errorString string
	}{
		{400, `{"error":{"code":"sql_error","message":"no such table: nope"}}`, "sql_error", "no such table: nope", "sql_error: no such table: nope"},
		{409, `{"error":{"code":"constraint_violation","message":"UNIQUE constraint failed: t.k"}}`, "constraint_violation", "UNIQUE constraint failed: t.k", "constraint_violation: UNIQUE constraint failed: t.k"},
		{400, `{"error":{"code":"read_only","message":"attempt to write a readonly database"}}`, "read_only", "attempt to write a readonly database", "read_only: attempt to write a readonly database"},
		{503, `{"error":{"code":"storage_unavailable","message":"write quorum lost"}}`, "storage_unavailable", "write quorum lost", "storage_unavailable: write quorum lost"},
		// Not the API's error object: a proxy, or another server on the port.
		{502, "bad gateway\n", "", "bad gateway", "HTTP 502: bad gateway"},
		{404, "", "", "Not Found", "HTTP 404: Not Found"},
	} {
		s := newServer(t, tc.status, tc.body)
		_, err := s.client().Query(context.Background(), "SELECT 1")
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("%d %s: err %v is not an *Error", tc.status, tc.body, err)
		}
		if e.Status != tc.status || e.Code != tc.code || e.Message != tc.msg || e.Error() != tc.errorString || Code(err) != tc.code {
			t.Fatalf("%d %s: got %+v (%q)", tc.status, tc.body, e, e.Error())
		}
	}
}

func TestHealth(t *testing.T) {
	s := newServer(t, 200, `{"role":"writer","volume":"main","volume_id":1,"epoch":3,"vdl":12345,"ready":true,
		"stats":{"commits":10,"redo_bytes":2000,"full_page_bytes":40960,"queries":5}}`)
	h, err := s.client().Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.method != "GET" || s.path != "/v1/health" || len(s.body) != 0 {
		t.Fatalf("request %s %s %q", s.method, s.path, s.body)
	}
	want := Health{Role: "writer", Volume: "main", VolumeID: 1, Epoch: 3, VDL: 12345, Ready: true,
		Stats: HealthStats{Commits: 10, RedoBytes: 2000, FullPageBytes: 40960, Queries: 5}}
	if !reflect.DeepEqual(*h, want) {
		t.Fatalf("health %+v", *h)
	}
}

// An instance still recovering may answer 503 with its health object.
func TestHealthOfAnInstanceNotReady(t *testing.T) {
	s := newServer(t, 503, `{"role":"writer","volume":"main","ready":false}`)
	h, err := s.client().Health(context.Background())
	if err != nil || h.Ready || h.Role != "writer" {
		t.Fatalf("health %+v, %v", h, err)
	}
	s = newServer(t, 503, `{"error":{"code":"not_ready","message":"recovering"}}`)
	if _, err := s.client().Health(context.Background()); Code(err) != "not_ready" {
		t.Fatalf("err %v", err)
	}
}

func TestEndpointForms(t *testing.T) {
	s := newServer(t, 200, `{"role":"writer"}`)
	for _, ep := range []string{s.URL, s.URL + "/", strings.TrimPrefix(s.URL, "http://")} {
		c := &Client{Endpoint: ep}
		if _, err := c.Health(context.Background()); err != nil {
			t.Fatalf("endpoint %q: %v", ep, err)
		}
		if s.path != "/v1/health" {
			t.Fatalf("endpoint %q: path %q", ep, s.path)
		}
	}
}

// The connection is reused after every kind of reply, which the benchmark's
// keep-alive clients depend on.
func TestConnectionsAreReused(t *testing.T) {
	var conns atomic.Int32
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/query" {
			w.WriteHeader(400)
			io.WriteString(w, `{"error":{"code":"sql_error","message":"x"}}`+"\n\n")
			return
		}
		// Trailing space beyond the decoder's buffer: the client must read it
		// for the connection to be reused.
		io.WriteString(w, `{"results":[{"rows_affected":1,"last_insert_id":1}]}`+strings.Repeat(" ", 64<<10))
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	s.Start()
	defer s.Close()
	c := &Client{Endpoint: s.URL, HTTP: s.Client()}
	for i := 0; i < 5; i++ {
		if _, err := c.Execute(context.Background(), []Statement{{SQL: "INSERT"}}, true); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Query(context.Background(), "SELECT"); Code(err) != "sql_error" {
			t.Fatal(err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for 10 sequential requests", n)
	}
}
