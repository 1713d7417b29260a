package sqlclient

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A Conn sends what a Client sends, byte for byte, and decodes replies the
// same.
func TestConnSendsWhatAClientSends(t *testing.T) {
	s := newServer(t, 200, `{"results":[{"rows_affected":1,"last_insert_id":42},{"rows_affected":0,"last_insert_id":0,"columns":["a"],"types":["REAL"],"rows":[[2.0]]}]}`)
	stmts := []Statement{
		{SQL: "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", Params: []any{
			int64(1) << 60, 2.0, "plain", "é \"q\" \\ <&> \x01 \xff", true, nil, []byte{0, 1, 255},
			float32(0.5), math.Inf(-1), json.Number("12"), uint8(7)}},
		{SQL: "SELECT a FROM t WHERE b = '<x>'"},
	}
	want, err := s.client().Execute(context.Background(), stmts, true)
	if err != nil {
		t.Fatal(err)
	}
	clientBody := s.body
	c, err := Dial(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := c.Execute(context.Background(), stmts, true)
	if err != nil {
		t.Fatal(err)
	}
	if string(s.body) != string(clientBody) {
		t.Fatalf("Conn sent %s\nClient sent %s", s.body, clientBody)
	}
	if s.method != "POST" || s.path != "/v1/execute" || s.contentType != "application/json" {
		t.Fatalf("request %s %s (%s)", s.method, s.path, s.contentType)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Conn decoded %#v\nClient decoded %#v", got, want)
	}
}

// JSON strings are written as encoding/json writes them.
func TestStringsAreEncodedAsEncodingJSONDoes(t *testing.T) {
	for _, s := range []string{"", "abc", `a"b`, `a\b`, "a\nb", "\x00", "<script>&", "é", "日本", "\xff\xfe", "\u2028", strings.Repeat("x", 1000)} {
		want, _ := json.Marshal(s)
		if got := appendJSONString(nil, s); string(got) != string(want) {
			t.Errorf("%q: got %s, want %s", s, got, want)
		}
	}
}

// One connection serves every request, whatever the replies' framing:
// Content-Length, chunked, an error, an empty body.
func TestConnReusesItsConnection(t *testing.T) {
	var conns atomic.Int32
	big := strings.Repeat("x", 100<<10)
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		switch r.URL.Path {
		case "/v1/query":
			if strings.Contains(r.Header.Get("Accept"), "json") {
				// Larger than net/http's buffer: sent chunked.
				io.WriteString(w, `{"columns":["a"],"types":["TEXT"],"rows":[["`+big+`"]]}`)
				return
			}
		case "/v1/execute":
			w.WriteHeader(400)
			io.WriteString(w, `{"error":{"code":"sql_error","message":"x"}}`)
			return
		}
		w.WriteHeader(500)
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	s.Start()
	defer s.Close()
	c, err := Dial(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 5; i++ {
		rows, err := c.Query(context.Background(), "SELECT")
		if err != nil {
			t.Fatal(err)
		}
		if len(rows.Rows) != 1 || len(rows.Rows[0]) != 1 || rows.Rows[0][0] != big {
			t.Fatalf("rows %v", rows.Columns)
		}
		if _, err := c.Execute(context.Background(), []Statement{{SQL: "INSERT"}}, true); Code(err) != "sql_error" {
			t.Fatal(err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for 10 sequential requests", n)
	}
}

// When the server closes an idle connection, a query is sent again on a new
// one; a write that got no answer is not, since the server may have run it.
func TestConnAfterTheServerClosedItsConnection(t *testing.T) {
	var executes atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/v1/execute" {
			executes.Add(1)
			io.WriteString(w, `{"results":[{"rows_affected":1,"last_insert_id":1}]}`)
			return
		}
		io.WriteString(w, `{"columns":["1"],"types":["INTEGER"],"rows":[[1]]}`)
	}))
	defer s.Close()
	c, err := Dial(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if _, err := c.Query(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	s.CloseClientConnections()
	if rows, err := c.Query(ctx, "SELECT 1"); err != nil || rows.Rows[0][0] != int64(1) {
		t.Fatalf("query after the server closed the connection: %v, %v", rows, err)
	}
	s.CloseClientConnections()
	// The write either could not be written (the close was seen first) and
	// went out again on a new connection, or was written and got no answer:
	// then it fails, and is not sent again.
	_, err = c.Execute(ctx, []Statement{{SQL: "INSERT"}}, true)
	if n := executes.Load(); (err == nil) != (n == 1) || n > 1 {
		t.Fatalf("execute after the server closed the connection: err %v, and the server ran it %d times", err, n)
	}
	before := executes.Load()
	if _, err := c.Execute(ctx, []Statement{{SQL: "INSERT"}}, true); err != nil {
		t.Fatal(err)
	}
	if n := executes.Load(); n != before+1 {
		t.Fatalf("the server ran %d executes, want %d", n, before+1)
	}
}

// A request ends when its context does.
func TestConnStopsWithItsContext(t *testing.T) {
	release := make(chan struct{})
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	defer s.Close()
	defer close(release)
	c, err := Dial(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Query(ctx, "SELECT 1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the context's deadline", err)
	}
}

func TestDialRefusesWhatItCannotSpeak(t *testing.T) {
	for _, e := range []string{"https://127.0.0.1:1", "http://127.0.0.1:1/prefix"} {
		if _, err := Dial(e); err == nil {
			t.Errorf("Dial(%q) succeeded", e)
		}
	}
	for _, e := range []string{"127.0.0.1:1", "http://127.0.0.1:1/", "http://localhost"} {
		if _, err := Dial(e); err != nil {
			t.Errorf("Dial(%q): %v", e, err)
		}
	}
}
