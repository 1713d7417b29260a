package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/ncruces/go-sqlite3"

	"github.com/borealis-db/borealis/internal/sqlclient"
)

// sqlWire records the requests the CLI makes and answers each with a
// canned reply: the CLI is tested as a client of the wire protocol.
type sqlWire struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []string // "PATH BODY"
	// reply gives the status and body for a request.
	reply func(path string, body map[string]any) (int, string)
}

func newSQLWire(t *testing.T, reply func(path string, body map[string]any) (int, string)) *sqlWire {
	w := &sqlWire{reply: reply}
	w.Server = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var body map[string]any
		json.Unmarshal(b, &body)
		w.mu.Lock()
		w.reqs = append(w.reqs, r.URL.Path+" "+string(b))
		w.mu.Unlock()
		status, out := w.reply(r.URL.Path, body)
		rw.WriteHeader(status)
		io.WriteString(rw, out)
	}))
	t.Cleanup(w.Close)
	return w
}

func (w *sqlWire) requests() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.reqs...)
}

// okReply answers execute with one result per statement and query with a
// two-column row.
func okReply(path string, body map[string]any) (int, string) {
	switch path {
	case "/v1/execute":
		n := len(body["statements"].([]any))
		return 200, `{"results":[` + strings.TrimSuffix(strings.Repeat(`{"rows_affected":1,"last_insert_id":7},`, n), ",") + `]}`
	case "/v1/query":
		return 200, `{"columns":["k","v"],"types":["INTEGER","TEXT"],"rows":[[1,"one"],[22,"twenty-two"]]}`
	case "/v1/health":
		return 200, `{"role":"writer","volume":"main","volume_id":1,"epoch":3,"vdl":12345,"ready":true,"stats":{"commits":4,"redo_bytes":2048,"full_page_bytes":65536,"queries":9}}`
	}
	return 404, ""
}

func runSQL(t *testing.T, w *sqlWire, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := sqlCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(io.Discard)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(append([]string{"--endpoint", w.URL}, args...))
	cmd.SetContext(context.Background())
	err := cmd.Execute()
	return out.String(), err
}

func TestSQLRoutesReadsAndWrites(t *testing.T) {
	w := newSQLWire(t, okReply)
	out, err := runSQL(t, w, "", "-e", "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a;b'); SELECT * FROM t; PRAGMA integrity_check; PRAGMA user_version = 2")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`/v1/execute {"statements":[{"sql":"CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)"}],"transaction":false}`,
		`/v1/execute {"statements":[{"sql":"INSERT INTO t VALUES (1, 'a;b')"}],"transaction":false}`,
		`/v1/query {"sql":"SELECT * FROM t"}`,
		`/v1/query {"sql":"PRAGMA integrity_check"}`,
		`/v1/execute {"statements":[{"sql":"PRAGMA user_version = 2"}],"transaction":false}`,
	}
	if got := w.requests(); !reflect.DeepEqual(got, want) {
		t.Fatalf("requests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	table := " k  v\n--  ----------\n 1  one\n22  twenty-two\n"
	if out != table+table {
		t.Fatalf("output:\n%q", out)
	}
}

func TestSQLSendsATransactionAsOneRequestAtCommit(t *testing.T) {
	w := newSQLWire(t, okReply)
	_, err := runSQL(t, w, "", "-e", `BEGIN; INSERT INTO t VALUES (1); UPDATE t SET v = 'x'; COMMIT;
		BEGIN IMMEDIATE; DELETE FROM t; ROLLBACK;
		SAVEPOINT a; INSERT INTO t VALUES (2); SAVEPOINT b; ROLLBACK TO b; RELEASE a;
		INSERT INTO t VALUES (3)`)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`/v1/execute {"statements":[{"sql":"INSERT INTO t VALUES (1)"},{"sql":"UPDATE t SET v = 'x'"}],"transaction":true}`,
		`/v1/execute {"statements":[{"sql":"SAVEPOINT a"},{"sql":"INSERT INTO t VALUES (2)"},{"sql":"SAVEPOINT b"},{"sql":"ROLLBACK TO b"},{"sql":"RELEASE a"}],"transaction":true}`,
		`/v1/execute {"statements":[{"sql":"INSERT INTO t VALUES (3)"}],"transaction":false}`,
	}
	if got := w.requests(); !reflect.DeepEqual(got, want) {
		t.Fatalf("requests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestSQLRefusesWhatATransactionCannotDoHere(t *testing.T) {
	w := newSQLWire(t, okReply)
	for _, tc := range []struct{ script, err string }{
		{"BEGIN; INSERT INTO t VALUES (1)", "(BEGIN without COMMIT): its 1 statement(s) were not sent"},
		{"BEGIN; BEGIN", "cannot start a transaction within a transaction"},
		{"COMMIT", "no transaction is active"},
	} {
		if _, err := runSQL(t, w, "", "-e", tc.script); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Fatalf("%s: err %v", tc.script, err)
		}
	}
	if got := w.requests(); len(got) != 0 {
		t.Fatalf("sent %v", got)
	}
}

func TestSQLStopsAtTheFirstErrorWithTheServersMessage(t *testing.T) {
	w := newSQLWire(t, func(path string, body map[string]any) (int, string) {
		if strings.Contains(body["sql"].(string), "nope") {
			return 400, `{"error":{"code":"sql_error","message":"no such table: nope"}}`
		}
		return okReply(path, body)
	})
	_, err := runSQL(t, w, "", "-e", "SELECT * FROM nope")
	if err == nil || err.Error() != "sql_error: no such table: nope" {
		t.Fatalf("err %v", err)
	}
	_, err = runSQL(t, w, "", "-e", "SELECT 1; SELECT * FROM nope; SELECT 2")
	if err == nil || err.Error() != `"SELECT * FROM nope": sql_error: no such table: nope` {
		t.Fatalf("err %v", err)
	}
	if n := len(w.requests()); n != 3 {
		t.Fatalf("%d requests; the script should stop at the error", n)
	}
}

// A statement taken for a read that writes is refused by the read
// connection (read_only for a write, not_allowed for a PRAGMA that sets a
// value), and then runs on the writer.
func TestSQLRunsAReadOnlyRefusalOnTheWriter(t *testing.T) {
	for _, refusal := range []string{
		`400 {"error":{"code":"read_only","message":"attempt to write a readonly database"}}`,
		`403 {"error":{"code":"not_allowed","message":"not authorized: ..."}}`,
	} {
		status, _ := strconv.Atoi(refusal[:3])
		w := newSQLWire(t, func(path string, body map[string]any) (int, string) {
			if path == "/v1/query" {
				return status, refusal[4:]
			}
			return okReply(path, body)
		})
		if _, err := runSQL(t, w, "", "-e", "PRAGMA user_version(5)"); err != nil {
			t.Fatal(err)
		}
		want := []string{`/v1/query {"sql":"PRAGMA user_version(5)"}`, `/v1/execute {"statements":[{"sql":"PRAGMA user_version(5)"}],"transaction":false}`}
		if got := w.requests(); !reflect.DeepEqual(got, want) {
			t.Fatalf("after %s: requests %v", refusal, got)
		}
	}
}

func TestSQLJSON(t *testing.T) {
	w := newSQLWire(t, func(path string, body map[string]any) (int, string) {
		if path == "/v1/query" {
			return 200, `{"columns":["b","n"],"types":["BLOB",""],"rows":[[{"base64":"AAH/"},null]]}`
		}
		return okReply(path, body)
	})
	out, err := runSQL(t, w, "", "--json", "-e", "SELECT b, n FROM t; INSERT INTO t VALUES (1)")
	if err != nil {
		t.Fatal(err)
	}
	want := `{"columns":["b","n"],"types":["BLOB",""],"rows":[[{"base64":"AAH/"},null]]}` + "\n" +
		`{"results":[{"rows_affected":1,"last_insert_id":7}]}` + "\n"
	if out != want {
		t.Fatalf("output:\n%s\nwant:\n%s", out, want)
	}
}

func TestSQLReadsStatementsAndDotCommandsFromStdin(t *testing.T) {
	w := newSQLWire(t, okReply)
	out, err := runSQL(t, w, "-- a script\nINSERT INTO t\n  VALUES (1);\n.status\nSELECT 1;\nSELECT\n2\n")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`/v1/execute {"statements":[{"sql":"-- a script\nINSERT INTO t\n  VALUES (1)"}],"transaction":false}`,
		`/v1/health `,
		`/v1/query {"sql":"SELECT 1"}`,
		`/v1/query {"sql":"SELECT\n2"}`,
	}
	if got := w.requests(); !reflect.DeepEqual(got, want) {
		t.Fatalf("requests:\n%q\nwant:\n%q", got, want)
	}
	for _, s := range []string{"role      writer", "volume    main (id 1)", "epoch     3", "VDL       12345", "ready     true"} {
		if !strings.Contains(out, s) {
			t.Fatalf(".status output lacks %q:\n%s", s, out)
		}
	}
}

func TestSQLDotCommands(t *testing.T) {
	w := newSQLWire(t, func(path string, body map[string]any) (int, string) {
		sql, _ := body["sql"].(string)
		switch {
		case strings.Contains(sql, "SELECT name FROM sqlite_schema"):
			return 200, `{"columns":["name"],"types":["TEXT"],"rows":[["accounts"],["bench"],["t"]]}`
		case strings.Contains(sql, "SELECT sql FROM sqlite_schema"):
			return 200, `{"columns":["sql"],"types":["TEXT"],"rows":[["CREATE TABLE t(a)"],["CREATE INDEX ta ON t(a)"]]}`
		}
		return okReply(path, body)
	})
	out, err := runSQL(t, w, ".tables\n.schema t\n.schema\n.quit\nSELECT 'not run';\n")
	if err != nil {
		t.Fatal(err)
	}
	want := "accounts  bench     t\nCREATE TABLE t(a);\nCREATE INDEX ta ON t(a);\nCREATE TABLE t(a);\nCREATE INDEX ta ON t(a);\n"
	if out != want {
		t.Fatalf("output:\n%q\nwant:\n%q", out, want)
	}
	reqs := w.requests()
	if len(reqs) != 3 || !strings.Contains(reqs[1], `"params":["t"]`) || strings.Contains(reqs[2], "params") {
		t.Fatalf("requests %q", reqs)
	}
	if _, err := runSQL(t, w, "", "-e", ".nope"); err == nil || !strings.Contains(err.Error(), `unknown command ".nope"`) {
		t.Fatalf("err %v", err)
	}
}

func TestSQLEndpointFromClusterFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := sqlEndpoint(dir, ""); err == nil || !strings.Contains(err.Error(), "no running cluster in "+dir) {
		t.Fatalf("err %v", err)
	}
	path := filepath.Join(dir, "cluster.json")
	os.WriteFile(path, []byte(`{"components":[{"role":"control","id":"control","addr":"127.0.0.1:7100"}]}`), 0o644)
	if _, err := sqlEndpoint(dir, ""); err == nil || !strings.Contains(err.Error(), "lists no writer") {
		t.Fatalf("err %v", err)
	}
	os.WriteFile(path, []byte(`{"components":[{"role":"control","id":"control","addr":"127.0.0.1:7100"},{"role":"writer","id":"writer","addr":"127.0.0.1:7110"}]}`), 0o644)
	if ep, err := sqlEndpoint(dir, ""); err != nil || ep != "http://127.0.0.1:7110" {
		t.Fatalf("endpoint %q, %v", ep, err)
	}
	if ep, _ := sqlEndpoint(dir, "http://elsewhere:1"); ep != "http://elsewhere:1" {
		t.Fatalf("--endpoint ignored: %q", ep)
	}
}

func TestSQLNoServer(t *testing.T) {
	w := newSQLWire(t, okReply)
	w.Close()
	_, err := runSQL(t, w, "", "-e", "INSERT INTO t VALUES (1)")
	if err == nil || !strings.Contains(err.Error(), "no answer from the database instance at "+w.URL) || !strings.Contains(err.Error(), "may or may not have committed") {
		t.Fatalf("err %v", err)
	}
}

// A value shows as sqlite3 shows it: an INTEGER without a point, whatever
// its column's declared type, and a REAL always with one.
func TestFormatValue(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{nil, "NULL"},
		{"", ""},
		{"two\nlines\tand a tab", `two\nlines\tand a tab`},
		{math.Inf(1), "Inf"},
		{math.Inf(-1), "-Inf"},
		{int64(-3), "-3"},
		{int64(2), "2"},
		{int64(9007199254740993), "9007199254740993"},
		{2.0, "2.0"},
		{math.Copysign(0, -1), "-0.0"},
		{0.0, "0.0"},
		{2.5, "2.5"},
		{-2.5, "-2.5"},
		{0.1, "0.1"},
		{0.30000000000000004, "0.30000000000000004"},
		{100.0, "100.0"},
		{0.0001, "0.0001"},
		{0.00012345, "0.00012345"},
		{1e-5, "1.0e-05"},
		{-1.5e-7, "-1.5e-07"},
		{1e15, "1000000000000000.0"},
		{1e16, "10000000000000000.0"},
		{1e17, "1.0e+17"},
		{1e20, "1.0e+20"},
		{-1e300, "-1.0e+300"},
		{1.2345678901234567e+19, "1.2345678901234567e+19"},
		{9007199254740993.0, "9007199254740992.0"},
		{5e-324, "5.0e-324"},
		{"héllo", "héllo"},
		{[]byte{0xde, 0xad}, "X'DEAD'"},
	} {
		if got := formatValue(tc.v); got != tc.want {
			t.Errorf("formatValue(%#v) = %q; want %q", tc.v, got, tc.want)
		}
	}
}

// formatReal lays a REAL out as SQLite itself writes it as text, for every
// value whose shortest digits SQLite writes too (where it writes more, it
// writes up to 17 digits; formatReal writes the shortest); and every REAL
// it shows reads back as itself.
func TestFormatRealAsSQLite(t *testing.T) {
	c, err := sqlite3.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, _, err := c.Prepare(`SELECT CAST(? AS TEXT)`)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	sqliteText := func(x float64) string {
		t.Helper()
		if err := st.BindFloat(1, x); err != nil {
			t.Fatal(err)
		}
		if !st.Step() {
			t.Fatal(st.Err())
		}
		s := st.ColumnText(0)
		if err := st.Reset(); err != nil {
			t.Fatal(err)
		}
		return s
	}
	var vals []float64
	for e := -12; e <= 25; e++ {
		p := math.Pow10(e)
		vals = append(vals, p, 1.5*p, -3.25*p, 123.456*p)
	}
	vals = append(vals, 0, 2, 3, 0.1, 0.1+0.2, 1.0/3, 2.0/3, 4.35, 1e300, -1e-300, math.MaxFloat64, math.SmallestNonzeroFloat64*1e300, 9007199254740993)
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		vals = append(vals, math.Float64frombits(rnd.Uint64()), rnd.Float64()*1000, float64(rnd.IntN(1e6))/100)
	}
	compared := 0
	for _, x := range vals {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			continue
		}
		got := formatReal(x)
		if y, err := strconv.ParseFloat(got, 64); err != nil || y != x || math.Signbit(y) != math.Signbit(x) {
			t.Errorf("formatReal(%v) = %q, which reads back as %v, %v", x, got, y, err)
		}
		if !strings.Contains(got, ".") {
			t.Errorf("formatReal(%v) = %q: no point", x, got)
		}
		want := sqliteText(x)
		if significantDigits(want) >= 17 {
			// SQLite writes 17 digits, of which x may need fewer (or others:
			// both read back as x).
			continue
		}
		compared++
		if got != want {
			t.Errorf("formatReal(%v) = %q; SQLite writes %q", x, got, want)
		}
	}
	if compared < len(vals)/3 {
		t.Errorf("compared with SQLite only %d of %d values", compared, len(vals))
	}
}

// significantDigits counts the digits of a number's text, from its first
// nonzero digit to its last, exponent aside.
func significantDigits(num string) int {
	mant, _, _ := strings.Cut(num, "e")
	digits := strings.Trim(strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return r
		}
		return -1
	}, mant), "0")
	return len(digits)
}

func TestPrintTableAlignsColumns(t *testing.T) {
	var b bytes.Buffer
	printTable(context.Background(), &b, &sqlclient.Rows{
		Columns: []string{"id", "name", "score"},
		Types:   []string{"INTEGER", "TEXT", "REAL"},
		Rows:    [][]any{{int64(1), "ålice", 3.5}, {int64(100), nil, 12.0}, {int64(7), "世界", int64(2)}},
	})
	// Wide characters take two columns; a REAL has a point, an INTEGER
	// none, whatever the column's declared type.
	want := " id  name   score\n---  -----  -----\n  1  ålice    3.5\n100  NULL    12.0\n  7  世界       2\n"
	if b.String() != want {
		t.Fatalf("table:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	printTable(context.Background(), &b, &sqlclient.Rows{Columns: []string{"a"}})
	if b.Len() != 0 {
		t.Fatalf("no rows printed %q", b.String())
	}
}

// Rows a written statement returns (RETURNING) are printed, as a table or
// in --json with the server's shape.
func TestSQLPrintsReturnedRows(t *testing.T) {
	// A read inside BEGIN ... COMMIT goes with the transaction.
	tw := newSQLWire(t, okReply)
	if _, err := runSQL(t, tw, "", "-e", "BEGIN; INSERT INTO t VALUES (1); SELECT * FROM t; COMMIT"); err != nil {
		t.Fatal(err)
	}
	if got := tw.requests(); len(got) != 1 || !strings.Contains(got[0], `"SELECT * FROM t"`) || !strings.Contains(got[0], `"transaction":true`) {
		t.Fatalf("requests %v", got)
	}

	w := newSQLWire(t, func(path string, body map[string]any) (int, string) {
		if path == "/v1/execute" {
			return 200, `{"results":[{"rows_affected":1,"last_insert_id":7,"columns":["id","v"],"types":["INTEGER","TEXT"],"rows":[[7,"x"]]}]}`
		}
		return okReply(path, body)
	})
	out, err := runSQL(t, w, "", "-e", "INSERT INTO t(v) VALUES ('x') RETURNING id, v")
	if err != nil || !strings.Contains(out, "id") || !strings.Contains(out, "7") || !strings.Contains(out, "x") {
		t.Fatalf("table: %q %v", out, err)
	}
	out, err = runSQL(t, w, "", "--json", "-e", "INSERT INTO t(v) VALUES ('x') RETURNING id, v")
	want := `{"results":[{"rows_affected":1,"last_insert_id":7,"columns":["id","v"],"types":["INTEGER","TEXT"],"rows":[[7,"x"]]}]}`
	if err != nil || strings.TrimSpace(out) != want {
		t.Fatalf("json: %s %v\nwant %s", out, err, want)
	}
}

// A header is measured as its cells are, in terminal columns: a wide
// character in it takes two (measured in runes, the padding of the header
// came out negative, and strings.Repeat panicked).
func TestPrintTableWideCharactersInHeaders(t *testing.T) {
	for _, tc := range []struct {
		rows *sqlclient.Rows
		want string
	}{
		{&sqlclient.Rows{Columns: []string{"'日本'"}, Types: []string{""}, Rows: [][]any{{"日本"}}},
			"'日本'\n------\n日本\n"},
		{&sqlclient.Rows{Columns: []string{"名前", "x"}, Types: []string{"", ""}, Rows: [][]any{{int64(1), "a"}, {int64(22), "b"}}},
			"名前  x\n----  -\n   1  a\n  22  b\n"},
		// Combining marks take no column; control characters are escaped.
		{&sqlclient.Rows{Columns: []string{"e\u0301", "k"}, Types: []string{"", ""}, Rows: [][]any{{"e\x1bx", int64(1)}}},
			"e\u0301       k\n------  -\ne\\x1bx  1\n"},
	} {
		var b bytes.Buffer
		if err := printTable(context.Background(), &b, tc.rows); err != nil {
			t.Fatal(err)
		}
		if b.String() != tc.want {
			t.Errorf("table:\n%s\nwant:\n%s", b.String(), tc.want)
		}
	}
}

// The shell prints the table, not a panic, for the statements.
func TestSQLPrintsWideCharacterHeaders(t *testing.T) {
	w := newSQLWire(t, func(path string, body map[string]any) (int, string) {
		return 200, `{"columns":["'日本'"],"types":[""],"rows":[["日本"]]}`
	})
	out, err := runSQL(t, w, "", "-e", "SELECT '日本'")
	if err != nil || out != "'日本'\n------\n日本\n" {
		t.Fatalf("%q, %v", out, err)
	}
}

func TestPrintNameColumnsMeasuresDisplayWidth(t *testing.T) {
	var b bytes.Buffer
	printNameColumns(&b, []string{"表", "ab", "c"}, 10)
	if want := "表  ab  c\n"; b.String() != want {
		t.Fatalf("%q; want %q", b.String(), want)
	}
}

// A long value is cut at maxCellWidth columns and a long blob is
// summarized, so the table is as long as what it shows, not as its widest
// value times its rows.
func TestPrintTableCapsLongValues(t *testing.T) {
	long := strings.Repeat("ab", 1<<19)
	blob := make([]byte, 1<<20)
	copy(blob, []byte{0xde, 0xad})
	rows := &sqlclient.Rows{Columns: []string{"k", "v"}, Types: []string{"INTEGER", ""}}
	rows.Rows = [][]any{{int64(1), long}, {int64(2), blob}, {int64(3), []byte{0xde, 0xad}}, {int64(4), "世界" + long}}
	const n = 100
	for i := 5; i <= n; i++ {
		rows.Rows = append(rows.Rows, []any{int64(i), blob})
	}
	var b bytes.Buffer
	if err := printTable(context.Background(), &b, rows); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	want := []string{
		"  k  v",
		"---  " + strings.Repeat("-", maxCellWidth),
		"  1  " + long[:maxCellWidth-1] + "…",
		"  2  <blob 1048576 bytes: DEAD000000000000…>",
		"  3  X'DEAD'",
		// A wide character is two columns, so 47 more fit, and the '…'.
		"  4  世界" + long[:maxCellWidth-5] + "…",
	}
	if len(lines) != n+3 || lines[n+2] != "" {
		t.Fatalf("%d lines", len(lines))
	}
	for i, l := range want {
		if lines[i] != l {
			t.Errorf("line %d (of %d bytes) starts %q; want %q", i, len(lines[i]), lines[i][:min(len(lines[i]), 80)], l)
		}
	}
	if size := b.Len(); size > n*(5+maxCellWidth*3+1)+200 {
		t.Fatalf("%d bytes for %d rows of at most %d columns", size, n, maxCellWidth)
	}
}

func TestCellText(t *testing.T) {
	for _, tc := range []struct {
		s     string
		limit int
		want  string
		width int
	}{
		{"abc", 3, "abc", 3},
		{"abcd", 3, "ab…", 3},
		{"日本語", 6, "日本語", 6},
		{"日本語", 5, "日本…", 5},
		{"日本語", 4, "日…", 3},
		{"a\nb\tc", -1, `a\nb\tc`, 7},
		// An escape is not cut in two.
		{"a\nb", 3, "a…", 2},
		{"\x7f\u0085", -1, `\x7f\u0085`, 10},
		{"cafe\u0301s", 5, "cafe\u0301s", 5},
		{"", 0, "", 0},
		// Characters that reorder or break the line are escaped, the
		// joiner of an emoji sequence is not.
		{"a\u202eb\u2066c\u200fd", -1, `a\u202eb\u2066c\u200fd`, 22},
		{"x\u2028y\u2029", -1, `x\u2028y\u2029`, 14},
		{"👩\u200d👧", -1, "👩\u200d👧", 4},
		// Characters of no width take bytes: 4 bytes a column at most,
		// with room for the '…'.
		{strings.Repeat("\u200b", 100) + "x", 10, strings.Repeat("\u200b", 12) + "…", 1},
		{strings.Repeat("e\u0301", 10), 10, strings.Repeat("e\u0301", 10), 10},
		{strings.Repeat("e\u0301\u0301", 10), 10, strings.Repeat("e\u0301\u0301", 7) + "e…", 9},
	} {
		if got, n := cellText(tc.s, tc.limit); got != tc.want || n != tc.width {
			t.Errorf("cellText(%q, %d) = %q, %d; want %q, %d", tc.s, tc.limit, got, n, tc.want, tc.width)
		}
		if got, n := cellText(tc.s, tc.limit); n != displayWidth(got) {
			t.Errorf("cellText(%q, %d): width %d, but %q takes %d", tc.s, tc.limit, n, got, displayWidth(got))
		}
	}
}

// A cell of characters of no width is cut at maxCellBytesPerColumn bytes a
// column like a wide one at maxCellWidth columns: a table of such values is
// as long as what it shows.
func TestPrintTableCapsCellBytes(t *testing.T) {
	zw := strings.Repeat("\u200b", 64<<10) + "x"
	rows := &sqlclient.Rows{Columns: []string{"v"}, Types: []string{"TEXT"}}
	const n = 1000
	for range n {
		rows.Rows = append(rows.Rows, []any{zw})
	}
	var b bytes.Buffer
	if err := printTable(context.Background(), &b, rows); err != nil {
		t.Fatal(err)
	}
	if size, most := b.Len(), n*(maxCellBytesPerColumn*maxCellWidth+1)+200; size > most {
		t.Fatalf("%d bytes for %d rows of one %d-byte value; want at most %d", size, n, len(zw), most)
	}
	lines := strings.Split(b.String(), "\n")
	if l := lines[2]; len(l) > maxCellBytesPerColumn*maxCellWidth || !strings.HasSuffix(l, "…") {
		t.Fatalf("a row of %d bytes, ending %q; want at most %d, ending in …", len(l), l[max(0, len(l)-10):], maxCellBytesPerColumn*maxCellWidth)
	}
}

// A table stopped by a signal prints whole the rows it formatted before
// the signal, not those the output buffer happened to have passed on.
func TestPrintTableFlushesWhenInterrupted(t *testing.T) {
	rows := &sqlclient.Rows{Columns: []string{"k", "v"}, Types: []string{"INTEGER", "TEXT"}}
	for i := range 10_000 {
		rows.Rows = append(rows.Rows, []any{int64(i), "row"})
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &onWrite{f: cancel}
	if err := printTable(ctx, out, rows); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v; want context.Canceled", err)
	}
	got := out.b.String()
	// The first write is the buffer's first 4 KiB; the row it cut in two
	// was formatted before the signal, and ends the output.
	if len(got) <= 4096 || !strings.HasSuffix(got, "\n") {
		t.Fatalf("printed %d bytes ending %q; want more than the first 4096, ending with a whole row", len(got), got[max(0, len(got)-20):])
	}
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	last := lines[len(lines)-1]
	if want := fmt.Sprintf("%4d  row", len(lines)-3); last != want {
		t.Fatalf("last line %q; want %q", last, want)
	}
}

// onWrite calls f at the first write to it.
type onWrite struct {
	mu sync.Mutex
	b  bytes.Buffer
	f  func()
}

func (w *onWrite) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f != nil {
		w.f()
		w.f = nil
	}
	return w.b.Write(p)
}

func (w *onWrite) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Len()
}

// manyRows is a query reply of n rows.
func manyRows(n int) string {
	var b strings.Builder
	b.WriteString(`{"columns":["k","v"],"types":["INTEGER","TEXT"],"rows":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `[%d,"row"]`, i)
	}
	b.WriteString("]}")
	return b.String()
}

// A signal (the command's context cancelled) or Ctrl-C in the shell stops
// the printing of a long table, not only the request before it.
func TestSQLStopsPrintingWhenInterrupted(t *testing.T) {
	const n = 100_000
	reply := manyRows(n)
	w := newSQLWire(t, func(path string, body map[string]any) (int, string) { return 200, reply })
	full := n * len("99999  row\n")

	// A signal: main's context is cancelled, and the command returns its
	// error, which main reports as "interrupted".
	t.Run("signal", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		out := &onWrite{f: cancel}
		cmd := sqlCmd()
		cmd.SetOut(out)
		cmd.SetErr(io.Discard)
		cmd.SetArgs([]string{"--endpoint", w.URL, "-e", "SELECT * FROM t"})
		cmd.SetContext(ctx)
		if err := cmd.Execute(); !errors.Is(err, context.Canceled) {
			t.Errorf("err %v; want context.Canceled", err)
		}
		if out.Len() > full/10 {
			t.Errorf("printed %d of %d bytes after the signal", out.Len(), full)
		}
	})

	// Ctrl-C in the shell: the statement is interrupted, the shell goes on.
	t.Run("ctrl-c", func(t *testing.T) {
		s := &sqlSession{client: &sqlclient.Client{Endpoint: w.URL}}
		out := &onWrite{f: func() { s.interrupt() }}
		s.out = out
		err := s.run(context.Background(), "SELECT * FROM t")
		if err == nil || !strings.Contains(err.Error(), "interrupted") {
			t.Errorf("err %v; want interrupted", err)
		}
		if out.Len() > full/10 {
			t.Errorf("printed %d of %d bytes after Ctrl-C", out.Len(), full)
		}
	})
}

// JSON has no infinities: --json prints them as the server sends them,
// {"real":"Infinity"}, and a table as sqlite3 does.
func TestSQLPrintsInfinities(t *testing.T) {
	const rows = `"columns":["x"],"types":[""],"rows":[[{"real":"Infinity"}],[{"real":"-Infinity"}],[1.5]]`
	w := newSQLWire(t, func(path string, body map[string]any) (int, string) {
		if path == "/v1/execute" {
			return 200, `{"results":[{"rows_affected":0,"last_insert_id":0,` + rows + `}]}`
		}
		return 200, "{" + rows + "}"
	})
	out, err := runSQL(t, w, "", "--json", "-e", "SELECT 1e300*1e10")
	if want := "{" + rows + "}\n"; err != nil || out != want {
		t.Fatalf("--json: %q, %v; want %q", out, err, want)
	}
	out, err = runSQL(t, w, "", "--json", "-e", "UPDATE t SET x = x RETURNING 1e300*1e10")
	if want := `{"results":[{"rows_affected":0,"last_insert_id":0,` + rows + "}]}\n"; err != nil || out != want {
		t.Fatalf("--json: %q, %v; want %q", out, err, want)
	}
	out, err = runSQL(t, w, "", "-e", "SELECT 1e300*1e10")
	if want := "   x\n----\n Inf\n-Inf\n 1.5\n"; err != nil || out != want {
		t.Fatalf("table: %q, %v; want %q", out, err, want)
	}
}

// A REAL prints as one, 2.0 not 2, in a table and in --json alike, and an
// INTEGER without a point, every digit kept, whatever the column's type
// says (a column of mixed values is ANY).
func TestSQLPrintsRealsAsReals(t *testing.T) {
	const rows = `"columns":["a","b","c","d","e","f","g","h"],"types":["REAL","REAL","REAL","INTEGER","INTEGER","REAL","REAL","ANY"],` +
		`"rows":[[2.0,3.0,-0.0,1,9007199254740993,1e+300,0.1,2],[0.30000000000000004,100000000000000000000.0,1.5e-7,-2,-9223372036854775808,{"real":"-Infinity"},null,2.0]]`
	w := newSQLWire(t, func(path string, body map[string]any) (int, string) {
		return 200, "{" + rows + "}"
	})
	out, err := runSQL(t, w, "", "-e", "SELECT ...")
	want := "                  a        b        c   d                     e         f     g    h\n" +
		"-------------------  -------  -------  --  --------------------  --------  ----  ---\n" +
		"                2.0      3.0     -0.0   1      9007199254740993  1.0e+300   0.1    2\n" +
		"0.30000000000000004  1.0e+20  1.5e-07  -2  -9223372036854775808      -Inf  NULL  2.0\n"
	if err != nil || out != want {
		t.Fatalf("table: %v\n%s\nwant:\n%s", err, out, want)
	}
	out, err = runSQL(t, w, "", "--json", "-e", "SELECT ...")
	if want := "{" + rows + "}\n"; err != nil || out != want {
		t.Fatalf("--json: %v\n%s\nwant:\n%s", err, out, want)
	}
}

// Without --endpoint, `sql` runs on the router's cluster endpoint when
// cluster.json lists one (it follows the writer through a failover), else
// on the writer.
func TestSQLTargetIsTheClusterEndpoint(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cluster.json")
	os.WriteFile(path, []byte(`{"components":[{"role":"writer","id":"writer","addr":"127.0.0.1:7107"},{"role":"router","id":"router","addr":"127.0.0.1:7109","cluster_endpoint":"127.0.0.1:7109","reader_endpoint":"127.0.0.1:7110"}]}`), 0o644)
	tg, err := sqlTargetFor(t.Context(), dir, "", "", false)
	if err != nil || tg.endpoint != "http://127.0.0.1:7109" || tg.kind != "cluster" {
		t.Fatalf("target %+v, %v; want the cluster endpoint", tg, err)
	}
	os.WriteFile(path, []byte(`{"components":[{"role":"writer","id":"writer","addr":"127.0.0.1:7107"}]}`), 0o644)
	tg, err = sqlTargetFor(t.Context(), dir, "", "", false)
	if err != nil || tg.endpoint != "http://127.0.0.1:7107" || tg.kind != "writer" {
		t.Fatalf("target %+v, %v; want the writer", tg, err)
	}
}

// A statement the router answered outcome_unknown (the writer died with it
// under way) says that its outcome is unknown, and the session runs the
// next statement, as the shell does after an error; one it refused with
// no_writer says it did not run.
func TestSQLOutcomeUnknownThenGoesOn(t *testing.T) {
	var n int
	var mu sync.Mutex
	w := newSQLWire(t, func(path string, body map[string]any) (int, string) {
		mu.Lock()
		defer mu.Unlock()
		n++
		switch {
		case path == "/v1/execute" && n == 1:
			return http.StatusBadGateway, `{"error":{"code":"outcome_unknown","message":"the writer w1 (127.0.0.1:7107) failed before it answered: EOF; the write reached it, so its outcome is unknown"}}`
		case path == "/v1/execute" && n == 2:
			return http.StatusServiceUnavailable, `{"error":{"code":"no_writer","message":"volume \"main\" has no writer registered with the control plane; waited 10s (--failover-wait 10s) for one; the request was not run"}}`
		}
		return okReply(path, body)
	})
	var out bytes.Buffer
	s := &sqlSession{client: &sqlclient.Client{Endpoint: w.URL, HTTP: &http.Client{}}, target: sqlTarget{endpoint: w.URL, kind: "cluster"}, out: &out}
	ctx := t.Context()
	err := s.run(ctx, "INSERT INTO t VALUES (1)")
	if err == nil || !strings.Contains(err.Error(), "the outcome of the statement is unknown") || !strings.Contains(err.Error(), "may or may not have committed") || !strings.Contains(err.Error(), "outcome_unknown") {
		t.Fatalf("err %v; want the outcome said to be unknown", err)
	}
	for _, st := range []string{"BEGIN", "INSERT INTO t VALUES (2)", "INSERT INTO t VALUES (3)"} {
		if err := s.run(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.run(ctx, "COMMIT"); err == nil || !strings.HasPrefix(err.Error(), "the transaction did not run: no_writer") {
		t.Fatalf("err %v; want the transaction said not to have run", err)
	}
	if err := s.run(ctx, "SELECT * FROM t"); err != nil {
		t.Fatalf("the session did not go on: %v", err)
	}
	if got := len(w.requests()); got != 3 {
		t.Fatalf("%d requests, want 3: %q", got, w.requests())
	}
}

// .status on the cluster endpoint says which writer the router follows,
// then that writer's own health.
func TestSQLStatusOnTheClusterEndpoint(t *testing.T) {
	writer := newSQLWire(t, okReply)
	rtr := newSQLWire(t, func(path string, _ map[string]any) (int, string) {
		return 200, `{"volume":"main","writer":{"id":"r1","role":"writer","endpoint":"` + strings.TrimPrefix(writer.URL, "http://") + `","epoch":3},"replicas":[],"following":{"source":"watch","writer_changes":2,"failover":{"round":2,"kind":"unplanned","state":"done","target":"r1"}}}`
	})
	var out bytes.Buffer
	s := &sqlSession{client: &sqlclient.Client{Endpoint: rtr.URL, HTTP: &http.Client{}}, target: sqlTarget{endpoint: rtr.URL, kind: "cluster"}, out: &out}
	if _, err := s.dot(t.Context(), ".status"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"follows r1 at epoch 3", "WatchWriter", "2 writer change(s)", "failover 2 (unplanned) done to r1", "endpoint  " + writer.URL + "\n", "role      writer\n", "ready     true\n"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf(".status output lacks %q:\n%s", want, out.String())
		}
	}
}
