package dbserver

import (
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/sqlvfs"
)

// rowsJSON is the "types" and "rows" of a reply as the server wrote them.
func rowsJSON(t *testing.T, reply []byte) (types []string, rows string) {
	t.Helper()
	var r struct {
		Types []string        `json:"types"`
		Rows  json.RawMessage `json:"rows"`
	}
	if err := json.Unmarshal(reply, &r); err != nil {
		t.Fatalf("reply %s: %v", reply, err)
	}
	return r.Types, string(r.Rows)
}

// A REAL is written as a REAL, with a point or an exponent, whole or not;
// an INTEGER without one, every digit kept; on /v1/query and on a
// /v1/execute statement that returns rows alike.
func TestRealsKeepTheirPoint(t *testing.T) {
	ti := startTestInstance(t, Config{}, sqlvfs.Options{})
	const q = `SELECT 2.0, CAST(3 AS REAL), -0.0, 1, 9007199254740993, 1e300, 0.1, ` +
		`0.1 + 0.2, 1e21, 1e20, 1.5e-7, -2.5, 9e999, -9e999, 9223372036854775807, -9223372036854775808`
	const wantRows = `[[2.0,3.0,-0.0,1,9007199254740993,1e+300,0.1,` +
		`0.30000000000000004,1e+21,100000000000000000000.0,1.5e-7,-2.5,{"real":"Infinity"},{"real":"-Infinity"},9223372036854775807,-9223372036854775808]]`
	wantTypes := []string{"REAL", "REAL", "REAL", "INTEGER", "INTEGER", "REAL", "REAL",
		"REAL", "REAL", "REAL", "REAL", "REAL", "REAL", "REAL", "INTEGER", "INTEGER"}
	st, b, _ := ti.call(t, http.MethodPost, "/v1/query", query(q))
	if st != http.StatusOK {
		t.Fatalf("HTTP %d %s", st, b)
	}
	if types, rows := rowsJSON(t, b); rows != wantRows || !reflect.DeepEqual(types, wantTypes) {
		t.Fatalf("query: types %q rows %s\nwant types %q rows %s", types, rows, wantTypes, wantRows)
	}
	st, b, _ = ti.call(t, http.MethodPost, "/v1/execute", exec(q))
	if st != http.StatusOK {
		t.Fatalf("HTTP %d %s", st, b)
	}
	var resp struct {
		Results []json.RawMessage `json:"results"`
	}
	if err := json.Unmarshal(b, &resp); err != nil || len(resp.Results) != 1 {
		t.Fatalf("execute: %s", b)
	}
	if types, rows := rowsJSON(t, resp.Results[0]); rows != wantRows || !reflect.DeepEqual(types, wantTypes) {
		t.Fatalf("execute: types %q rows %s\nwant types %q rows %s", types, rows, wantTypes, wantRows)
	}
}

// A column declared REAL holds 2 as 2.0, and a declared column's type is its
// declared type, whatever its values; the class of each value is in its
// JSON form.
func TestDeclaredColumnsKeepTheirType(t *testing.T) {
	ti := startTestInstance(t, Config{}, sqlvfs.Options{})
	ti.ok(t, "/v1/execute", txn(
		`CREATE TABLE t(k INTEGER PRIMARY KEY, r REAL, f DOUBLE PRECISION, n NUMERIC, i INTEGER, v TEXT, a)`,
		`INSERT INTO t VALUES (1, 2, 3, 2.0, 4, 5, 6), (2, 2.5, -0.0, 2.5, 'x', 7.0, 7.0), (3, NULL, NULL, NULL, 8.5, NULL, 'z')`,
	), nil)
	st, b, _ := ti.call(t, http.MethodPost, "/v1/query", query(`SELECT r, f, n, i, v, a FROM t ORDER BY k`))
	if st != http.StatusOK {
		t.Fatalf("HTTP %d %s", st, b)
	}
	// NUMERIC stores 2.0 as the INTEGER 2; INTEGER stores 8.5 as it is,
	// and 'x' as text; TEXT stores 5 as '5'; SQLite stores a whole REAL
	// in a record as an integer, so -0.0 comes back 0.0. The column with
	// no declared type, a, has values of three classes: ANY.
	wantTypes := []string{"REAL", "DOUBLE PRECISION", "NUMERIC", "INTEGER", "TEXT", "ANY"}
	const wantRows = `[[2.0,3.0,2,4,"5",6],[2.5,0.0,2.5,"x","7.0",7.0],[null,null,null,8.5,null,"z"]]`
	if types, rows := rowsJSON(t, b); rows != wantRows || !reflect.DeepEqual(types, wantTypes) {
		t.Fatalf("types %q rows %s\nwant types %q rows %s", types, rows, wantTypes, wantRows)
	}
	// RETURNING, on /v1/execute, the same.
	var resp ExecuteResponse
	ti.ok(t, "/v1/execute", exec(`UPDATE t SET r = r + 1 WHERE k = 1 RETURNING r`), &resp)
	if got, _ := json.Marshal(resp.Results[0].Types); len(resp.Results) != 1 || string(got) != `["REAL"]` {
		t.Fatalf("RETURNING types %s", got)
	}
	st, b, _ = ti.call(t, http.MethodPost, "/v1/execute", exec(`UPDATE t SET r = r + 1 WHERE k = 1 RETURNING r`))
	if st != http.StatusOK || !strings.Contains(string(b), `"rows":[[4.0]]`) {
		t.Fatalf("RETURNING: HTTP %d %s", st, b)
	}
}

// A column with no declared type (an expression) has as its type the class
// all its non-NULL values share, ANY when they differ, NULL when they are
// all NULL, and "" when there are no rows: never the first row's class
// alone.
func TestExpressionColumnTypes(t *testing.T) {
	ti := startTestInstance(t, Config{}, sqlvfs.Options{})
	for _, tc := range []struct {
		sql, types, rows string
	}{
		{`SELECT x FROM (SELECT 1 AS x UNION ALL SELECT 2.5 UNION ALL SELECT 'a')`, `["ANY"]`, `[[1],[2.5],["a"]]`},
		{`SELECT x FROM (SELECT 1 AS x UNION ALL SELECT 2.0)`, `["ANY"]`, `[[1],[2.0]]`},
		{`SELECT x FROM (SELECT NULL AS x UNION ALL SELECT 2.0 UNION ALL SELECT NULL)`, `["REAL"]`, `[[null],[2.0],[null]]`},
		{`SELECT x FROM (SELECT 1 AS x UNION ALL SELECT NULL UNION ALL SELECT 3)`, `["INTEGER"]`, `[[1],[null],[3]]`},
		{`SELECT x FROM (SELECT 'a' AS x UNION ALL SELECT 'b')`, `["TEXT"]`, `[["a"],["b"]]`},
		{`SELECT x FROM (SELECT NULL AS x UNION ALL SELECT x'00ff')`, `["BLOB"]`, `[[null],[{"base64":"AP8="}]]`},
		{`SELECT x FROM (SELECT x'00' AS x UNION ALL SELECT '00')`, `["ANY"]`, `[[{"base64":"AA=="}],["00"]]`},
		{`SELECT NULL, NULL + 1`, `["NULL","NULL"]`, `[[null,null]]`},
		{`SELECT 1, 2.0 WHERE 0`, `["",""]`, `[]`},
		{`SELECT 9e999 UNION ALL SELECT 1.5`, `["REAL"]`, `[[{"real":"Infinity"}],[1.5]]`},
		// Each column on its own.
		{`SELECT k, k * 1.0, CASE k WHEN 2 THEN 'two' ELSE k END FROM (SELECT 1 AS k UNION ALL SELECT 2)`,
			`["INTEGER","REAL","ANY"]`, `[[1,1.0,1],[2,2.0,"two"]]`},
	} {
		st, b, _ := ti.call(t, http.MethodPost, "/v1/query", query(tc.sql))
		if st != http.StatusOK {
			t.Fatalf("%s: HTTP %d %s", tc.sql, st, b)
		}
		types, rows := rowsJSON(t, b)
		if got, _ := json.Marshal(types); string(got) != tc.types || rows != tc.rows {
			t.Errorf("%s:\ntypes %s rows %s\nwant  %s rows %s", tc.sql, got, rows, tc.types, tc.rows)
		}
	}
}

// sqlclient, the Go client, gets REALs as float64 and INTEGERs as int64 from
// the server, -0.0 and integers beyond 2^53 included, and sends float64
// parameters as REALs: a round trip keeps every value's class.
func TestClientRoundTripKeepsClasses(t *testing.T) {
	ti := startTestInstance(t, Config{}, sqlvfs.Options{})
	c := &sqlclient.Client{Endpoint: ti.URL, HTTP: ti.Client}
	ctx := context.Background()
	negZero := math.Copysign(0, -1)
	params := []any{2.0, int64(2), negZero, int64(9007199254740993), 1e300, 0.1, float32(0.1), math.Inf(1), int64(math.MinInt64)}
	q := `SELECT 2.0, CAST(3 AS REAL), -0.0, 1, 9007199254740993`
	for i := range params {
		q += ", ?" + strconv.Itoa(i+1) + ", typeof(?" + strconv.Itoa(i+1) + ")"
	}
	rows, err := c.Query(ctx, q, params...)
	if err != nil {
		t.Fatal(err)
	}
	want := []any{2.0, 3.0, negZero, int64(1), int64(9007199254740993),
		2.0, "real", int64(2), "integer", negZero, "real", int64(9007199254740993), "integer",
		1e300, "real", 0.1, "real", 0.1, "real", math.Inf(1), "real", int64(math.MinInt64), "integer"}
	if len(rows.Rows) != 1 || !reflect.DeepEqual(rows.Rows[0], want) {
		t.Fatalf("rows %#v\nwant %#v", rows.Rows, want)
	}
	for _, i := range []int{2, 9} {
		if !math.Signbit(rows.Rows[0][i].(float64)) {
			t.Errorf("value %d: %v lost its sign", i+1, rows.Rows[0][i])
		}
	}
	// Through a table and back, by Execute and Query.
	if _, err := c.Execute(ctx, []sqlclient.Statement{
		{SQL: `CREATE TABLE t(a, r REAL)`},
		{SQL: `INSERT INTO t VALUES (?, ?), (?, ?)`, Params: []any{2.0, 2.0, int64(2), int64(2)}},
	}, true); err != nil {
		t.Fatal(err)
	}
	res, err := c.Execute(ctx, []sqlclient.Statement{{SQL: `SELECT a, r FROM t ORDER BY rowid`}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := res[0].Rows; got == nil || !reflect.DeepEqual(got.Rows, [][]any{{2.0, 2.0}, {int64(2), 2.0}}) ||
		!reflect.DeepEqual(got.Types, []string{"ANY", "REAL"}) {
		t.Fatalf("execute: %+v", got)
	}
}

// jsonValue writes every REAL as one: a number with a point or an exponent
// that reads back as the same float64, sign included, and for a finite x
// the same digits encoding/json writes.
func TestJSONValueOfReals(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	vals := []float64{0, math.Copysign(0, -1), 1, -1, 2, 1e20, 1e21, 1e-6, 1e-7, 123456.75, math.MaxFloat64, math.SmallestNonzeroFloat64, 9007199254740993}
	for range 5000 {
		vals = append(vals, math.Float64frombits(rnd.Uint64()), float64(rnd.Int64N(1<<40)), rnd.NormFloat64())
	}
	var reals realTexts
	var finite []float64
	var out []any
	for _, x := range vals {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			continue
		}
		v, c := jsonValue(x, &reals)
		if c != classReal {
			t.Fatalf("%v: class %v", x, c)
		}
		finite = append(finite, x)
		out = append(out, v)
	}
	reals.finish()

	for i, x := range finite {
		b, err := json.Marshal(out[i])
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		if !strings.ContainsAny(s, ".e") {
			t.Fatalf("%v is written %s: no point or exponent", x, s)
		}
		if y, err := strconv.ParseFloat(s, 64); err != nil || y != x || math.Signbit(y) != math.Signbit(x) {
			t.Fatalf("%v is written %s, which reads back as %v (%v)", x, s, y, err)
		}
		plain, _ := json.Marshal(x)
		if s != string(plain) && s != string(plain)+".0" {
			t.Fatalf("%v is written %s; encoding/json writes %s", x, s, plain)
		}
	}
	// Every value gets its own text, across chunks.
	var r realTexts
	var got []any
	for i := range 1000 {
		got = append(got, r.add(float64(i)+0.5))
	}
	r.finish()
	r.finish() // again: nothing to do
	for i, v := range got {
		if b, _ := json.Marshal(v); string(b) != strconv.Itoa(i)+".5" {
			t.Fatalf("value %d is %s", i, b)
		}
	}
}

// Integers and text cost nothing on the way to their JSON form.
func TestJSONValueOfIntegersAndTextAllocatesNothing(t *testing.T) {
	var reals realTexts
	vals := []any{int64(123456789), "text", nil}
	if n := testing.AllocsPerRun(100, func() {
		for _, v := range vals {
			jsonValue(v, &reals)
		}
	}); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}
