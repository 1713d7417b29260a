package dbserver

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/sqlvfs"
)

// The policy refuses files and lasting settings (TestErrorCodes), but not
// what the API offers: reading settings and the schema, checks, VACUUM,
// and the database's own user_version.
func TestPolicyKeepsWhatTheAPIOffers(t *testing.T) {
	ti := startTestInstance(t, Config{}, sqlvfs.Options{})
	ti.ok(t, "/v1/execute", txn(`CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT)`, `CREATE INDEX t_name ON t(name)`,
		`INSERT INTO t(name) VALUES ('a'), ('b')`), nil)
	ti.ok(t, "/v1/execute", exec(`DELETE FROM t WHERE name = 'a'`, `VACUUM`, `PRAGMA user_version = 7`, `PRAGMA optimize`), nil)
	for q, want := range map[string]string{
		`PRAGMA user_version`:                                     `[[7]]`,
		`PRAGMA integrity_check`:                                  `[["ok"]]`,
		`PRAGMA quick_check(10)`:                                  `[["ok"]]`,
		`PRAGMA foreign_key_check(t)`:                             `[]`,
		`SELECT name FROM pragma_table_info('t')`:                 `[["id"],["name"]]`,
		`SELECT name FROM pragma_index_list('t')`:                 `[["t_name"]]`,
		`SELECT name FROM pragma_index_info('t_name')`:            `[["name"]]`,
		`SELECT count(*) FROM pragma_table_list WHERE name = 't'`: `[[1]]`,
		`SELECT name FROM t`:                                      `[["b"]]`,
	} {
		var r QueryResponse
		ti.ok(t, "/v1/query", query(q), &r)
		if got, _ := json.Marshal(r.Rows); string(got) != want {
			t.Errorf("%s: %s, want %s", q, got, want)
		}
	}
	var r QueryResponse
	ti.ok(t, "/v1/query", query(`PRAGMA table_info(t)`), &r)
	if len(r.Rows) != 2 {
		t.Errorf("PRAGMA table_info(t): %v", r.Rows)
	}
	// A PRAGMA's rows come back from /v1/execute too, in either form.
	var resp ExecuteResponse
	ti.ok(t, "/v1/execute", exec(`PRAGMA table_info = t`, `PRAGMA integrity_check(5)`), &resp)
	if len(resp.Results) != 2 || resp.Results[0].QueryResponse == nil || len(resp.Results[0].Rows) != 2 ||
		resp.Results[1].QueryResponse == nil || len(resp.Results[1].Rows) != 1 {
		t.Errorf("PRAGMAs on /v1/execute: %+v", resp.Results)
	}
}

// Numbered and named placeholders take their values by position, and SQL
// with a ':' or '$' but no placeholder takes none.
func TestNamedParameters(t *testing.T) {
	ti := startTestInstance(t, Config{}, sqlvfs.Options{})
	ti.ok(t, "/v1/execute", exec(`CREATE TABLE t(name TEXT, n INTEGER)`), nil)
	ti.ok(t, "/v1/execute", js(ExecuteRequest{Statements: []Statement{
		{SQL: `INSERT INTO t(name, n) VALUES (:name, @n)`, Params: raw(`"a"`, `1`)},
		{SQL: `INSERT INTO t(n, name) VALUES (?2, ?1)`, Params: raw(`"b"`, `2`)},
		{SQL: `INSERT INTO t(name, n) VALUES ('12:30 $x', ?)`, Params: raw(`3`)},
	}}), nil)
	var r QueryResponse
	ti.ok(t, "/v1/query", js(Statement{SQL: `SELECT name, n FROM t WHERE n >= $min ORDER BY n`, Params: raw(`1`)}), &r)
	if got, _ := json.Marshal(r.Rows); string(got) != `[["a",1],["b",2],["12:30 $x",3]]` {
		t.Fatalf("rows %s", got)
	}
}

// Each statement of /v1/execute reports what it did itself: no count or
// rowid left over from an earlier statement (SQLite keeps both across
// statements that change no rows, and pooled connections across requests),
// and the rows a SELECT or RETURNING produces.
func TestExecuteReportsEachStatement(t *testing.T) {
	ti := startTestInstance(t, Config{}, sqlvfs.Options{})
	var resp ExecuteResponse
	ti.ok(t, "/v1/execute", txn(
		`CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)`,
		`INSERT INTO t(v) VALUES ('a'), ('b'), ('c'), ('d'), ('e')`,
		`SELECT count(*) AS n FROM t`,
		`CREATE TABLE u(x)`,
		`UPDATE t SET v = upper(v) WHERE id <= 2`,
		`UPDATE t SET v = v WHERE id > 100`,
		`INSERT INTO t(v) VALUES ('f') RETURNING id, v`,
		`DELETE FROM t WHERE id >= 5 RETURNING id`,
	), &resp)
	got, _ := json.Marshal(resp.Results)
	want := `[{"rows_affected":0,"last_insert_id":0},` +
		`{"rows_affected":5,"last_insert_id":5},` +
		`{"rows_affected":0,"last_insert_id":0,"columns":["n"],"types":["INTEGER"],"rows":[[5]]},` +
		`{"rows_affected":0,"last_insert_id":0},` +
		`{"rows_affected":2,"last_insert_id":0},` +
		`{"rows_affected":0,"last_insert_id":0},` +
		`{"rows_affected":1,"last_insert_id":6,"columns":["id","v"],"types":["INTEGER","TEXT"],"rows":[[6,"f"]]},` +
		`{"rows_affected":2,"last_insert_id":0,"columns":["id"],"types":["INTEGER"],"rows":[[5],[6]]}]`
	if string(got) != want {
		t.Fatalf("results\n%s\nwant\n%s", got, want)
	}
	// The next request on the pooled connection starts from nothing.
	ti.ok(t, "/v1/execute", exec(`SELECT 1 AS one`), &resp)
	if got, _ := json.Marshal(resp.Results); string(got) != `[{"rows_affected":0,"last_insert_id":0,"columns":["one"],"types":["INTEGER"],"rows":[[1]]}]` {
		t.Fatalf("a SELECT after the inserts: %s", got)
	}
}

// REAL infinities, which JSON numbers cannot carry, go in and come back as
// {"real": "Infinity"}, not as NULL.
func TestInfinities(t *testing.T) {
	ti := startTestInstance(t, Config{}, sqlvfs.Options{})
	ti.ok(t, "/v1/execute", exec(`CREATE TABLE t(x REAL)`), nil)
	ti.ok(t, "/v1/execute", js(ExecuteRequest{Statements: []Statement{
		{SQL: `INSERT INTO t VALUES (?), (?), (9e999), (1.5)`, Params: raw(`{"real":"Infinity"}`, `{"real":"-Infinity"}`)},
	}}), nil)
	var r QueryResponse
	ti.ok(t, "/v1/query", query(`SELECT x FROM t`), &r)
	if got, _ := json.Marshal(r.Rows); string(got) != `[[{"real":"Infinity"}],[{"real":"-Infinity"}],[{"real":"Infinity"}],[1.5]]` {
		t.Fatalf("rows %s", got)
	}
	st, b, _ := ti.call(t, "POST", "/v1/query", js(Statement{SQL: `SELECT ?`, Params: raw(`{"real":"NaN"}`)}))
	if st != 400 || !strings.Contains(string(b), "bad_parameter") {
		t.Fatalf("NaN parameter: %d %s", st, b)
	}
}

// A TEMP trigger planted as "temp.x" is refused and leaves nothing behind
// on any pooled connection: the connection that made it is thrown away.
func TestPlantedTempTriggerIsGone(t *testing.T) {
	ti := startTestInstance(t, Config{}, sqlvfs.Options{})
	ti.ok(t, "/v1/execute", exec(`CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT)`), nil)
	for _, plant := range []string{
		exec(`CREATE TRIGGER temp.tr AFTER INSERT ON main.t BEGIN UPDATE main.t SET name = 'pwned' WHERE id = new.id; END`),
		txn(`INSERT INTO t(name) VALUES ('rolled back')`, `CREATE TRIGGER "temp".tr AFTER INSERT ON t BEGIN UPDATE main.t SET name = 'pwned' WHERE id = new.id; END`),
	} {
		if st, b, _ := ti.call(t, "POST", "/v1/execute", plant); st != 403 {
			t.Fatalf("planting a TEMP trigger: HTTP %d %s", st, b)
		}
	}
	for i := range 20 {
		ti.ok(t, "/v1/execute", js(ExecuteRequest{Statements: []Statement{{SQL: `INSERT INTO t(name) VALUES (?)`, Params: raw(strconv.Quote(fmt.Sprint("mine ", i)))}}}), nil)
	}
	var r QueryResponse
	ti.ok(t, "/v1/query", query(`SELECT count(*) FROM t WHERE name LIKE 'mine %'`), &r)
	if got, _ := json.Marshal(r.Rows); string(got) != `[[20]]` {
		t.Fatalf("rows of ours left as written: %s, want 20", got)
	}
}

// A statement that would run forever is interrupted at the request timeout
// and lets go of the writer turn: the next write goes through.
func TestRunawayStatementIsInterrupted(t *testing.T) {
	ti := startTestInstance(t, Config{RequestTimeout: 300 * time.Millisecond}, sqlvfs.Options{})
	ti.ok(t, "/v1/execute", exec(`CREATE TABLE t(x)`), nil)
	forever := `INSERT INTO t SELECT x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c) WHERE x < 0`
	for _, req := range []struct{ path, body string }{
		{"/v1/execute", exec(forever)},
		{"/v1/query", query(`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c`)},
	} {
		st, b, _ := ti.call(t, "POST", req.path, req.body)
		if st != 503 || !strings.Contains(string(b), `"timeout"`) {
			t.Fatalf("%s: HTTP %d %s", req.path, st, b)
		}
	}
	ti.ok(t, "/v1/execute", exec(`INSERT INTO t VALUES (1)`), nil)
}
