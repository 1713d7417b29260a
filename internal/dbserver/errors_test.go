package dbserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/borealis-db/borealis/internal/sqlvfs"
)

const (
	errTestMaxBody = 1024
	errTestMaxRows = 100
)

// call sends body to path and returns the status, the raw reply and its
// headers.
func (ti *testInstance) call(t *testing.T, method, path, body string) (int, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, ti.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := ti.Client.Do(req)
	if err != nil {
		// A handler that panics makes net/http drop the connection.
		t.Fatalf("%s %s %s: %v", method, path, body, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the reply: %v", method, path, err)
	}
	return resp.StatusCode, b, resp.Header
}

// ok posts body and fails the test unless it is answered with 200; the reply
// is decoded into out.
func (ti *testInstance) ok(t *testing.T, path, body string, out any) {
	t.Helper()
	st, b, _ := ti.call(t, http.MethodPost, path, body)
	if st != http.StatusOK {
		t.Fatalf("POST %s %s: HTTP %d %s", path, body, st, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("POST %s: reply %s: %v", path, b, err)
		}
	}
}

// state is what a write could have changed: every row of t, and the number
// of MTRs the database has submitted to storage.
type state struct {
	rows    string
	commits uint64
}

func (ti *testInstance) state(t *testing.T) state {
	t.Helper()
	var q QueryResponse
	ti.ok(t, "/v1/query", `{"sql":"SELECT id, name, n FROM t ORDER BY id"}`, &q)
	rows, _ := json.Marshal(q.Rows)
	return state{rows: string(rows), commits: ti.DB().Stats().Commits}
}

func js(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func statements(sqls []string) []Statement {
	st := make([]Statement, len(sqls))
	for i, q := range sqls {
		st[i] = Statement{SQL: q}
	}
	return st
}

func exec(sqls ...string) string { return js(ExecuteRequest{Statements: statements(sqls)}) }

func txn(sqls ...string) string {
	return js(ExecuteRequest{Statements: statements(sqls), Transaction: true})
}

func query(q string) string { return js(Statement{SQL: q}) }

type errCase struct {
	name   string
	method string // POST when empty
	path   string
	body   string
	status int
	code   string
	// mention are substrings the message must contain (case-insensitively):
	// what a client needs to know to fix the request.
	mention []string
	// committed is the number of rows named 'own' the request is
	// documented to leave behind despite the error (statements before the
	// failing one in a request without "transaction": true, each its own
	// commit); 0 for every other error: nothing may be stored.
	committed int
}

// Every error a client can provoke comes back with its stable code, the
// documented HTTP status and a message that says what was wrong; an
// /v1/execute that fails stores nothing (beyond statements the API says
// committed on their own), and the instance goes on serving: a write and a
// read after each error succeed.
func TestErrorCodes(t *testing.T) {
	ti := startTestInstance(t, Config{MaxBodyBytes: errTestMaxBody, MaxRows: errTestMaxRows},
		// Short: a leaked writer turn then fails the next write quickly as
		// busy instead of stalling it; nothing else holds the turn here.
		sqlvfs.Options{BusyTimeout: 50 * time.Millisecond})
	ti.ok(t, "/v1/execute", txn(
		`CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, n INTEGER NOT NULL DEFAULT 0)`,
		`INSERT INTO t(name) VALUES ('a'), ('b'), ('c')`,
	), nil)

	const (
		E = "/v1/execute"
		Q = "/v1/query"
	)
	// Files the SQL below tries to make on the server; none may appear.
	outsideDir := t.TempDir()
	outside := func(name string) string { return filepath.Join(outsideDir, name) }
	defer func() {
		if made, _ := os.ReadDir(outsideDir); len(made) > 0 {
			t.Errorf("SQL made files on the server: %v", made)
		}
	}()
	bigSQL := fmt.Sprintf(`INSERT INTO t(name) VALUES ('%s')`, strings.Repeat("x", errTestMaxBody))
	cases := []errCase{
		// sql_error
		{name: "syntax error", path: E, body: exec(`INSERTT INTO t(name) VALUES ('z')`),
			status: 400, code: CodeSQL, mention: []string{"syntax error", "INSERTT"}},
		{name: "missing table", path: E, body: exec(`INSERT INTO nope(name) VALUES ('z')`),
			status: 400, code: CodeSQL, mention: []string{"no such table: nope"}},
		{name: "missing column", path: E, body: exec(`UPDATE t SET nope = 1`),
			status: 400, code: CodeSQL, mention: []string{"no such column: nope"}},
		{name: "missing table half-way through a transaction", path: E,
			body:   txn(`INSERT INTO t(name) VALUES ('z1')`, `UPDATE t SET n = n + 1`, `INSERT INTO nope VALUES (1)`),
			status: 400, code: CodeSQL, mention: []string{"statement 3", "no such table: nope"}},
		{name: "COMMIT without a transaction", path: E, body: exec(`COMMIT`),
			status: 400, code: CodeSQL, mention: []string{"no transaction is active"}},
		{name: "query syntax error", path: Q, body: query(`SELEC 1`),
			status: 400, code: CodeSQL, mention: []string{"syntax error", "SELEC"}},
		{name: "query missing table", path: Q, body: query(`SELECT * FROM nope`),
			status: 400, code: CodeSQL, mention: []string{"no such table: nope"}},

		// constraint_violation
		{name: "UNIQUE", path: E, body: exec(`INSERT INTO t(name) VALUES ('a')`),
			status: 409, code: CodeConstraint, mention: []string{"UNIQUE constraint failed: t.name"}},
		{name: "NOT NULL", path: E, body: exec(`INSERT INTO t(name) VALUES (NULL)`),
			status: 409, code: CodeConstraint, mention: []string{"NOT NULL constraint failed: t.name"}},
		{name: "PRIMARY KEY via parameter", path: E,
			body:   js(ExecuteRequest{Statements: []Statement{{SQL: `INSERT INTO t(id, name) VALUES (?, ?)`, Params: raw(`1`, `"z"`)}}}),
			status: 409, code: CodeConstraint, mention: []string{"UNIQUE constraint failed: t.id"}},
		{name: "UNIQUE half-way through a transaction", path: E,
			body: txn(`INSERT INTO t(name) VALUES ('z1')`, `UPDATE t SET n = n + 1`, `DELETE FROM t WHERE name = 'b'`,
				`INSERT INTO t(name) VALUES ('c')`, `INSERT INTO t(name) VALUES ('z2')`),
			status: 409, code: CodeConstraint, mention: []string{"statement 4", "UNIQUE constraint failed: t.name"}},
		{name: "NOT NULL half-way through a transaction", path: E,
			body:   txn(`INSERT INTO t(name) VALUES ('z1')`, `UPDATE t SET n = NULL WHERE name = 'a'`),
			status: 409, code: CodeConstraint, mention: []string{"statement 2", "NOT NULL constraint failed: t.n"}},
		{name: "UNIQUE half-way through the statements' own BEGIN", path: E,
			body:   exec(`BEGIN`, `INSERT INTO t(name) VALUES ('z1')`, `INSERT INTO t(name) VALUES ('a')`, `COMMIT`),
			status: 409, code: CodeConstraint, mention: []string{"statement 3", "UNIQUE constraint failed", "rolled back"}},
		{name: "UNIQUE after a statement that committed by itself", path: E,
			body:   exec(`INSERT INTO t(name) VALUES ('own')`, `INSERT INTO t(name) VALUES ('a')`),
			status: 409, code: CodeConstraint, mention: []string{"statement 2", "UNIQUE constraint failed", "committed"},
			committed: 1},

		// bad_request
		{name: "malformed JSON", path: E, body: `{"statements":[{"sql":"INSERT INTO t(name) VALUES ('z')"}`,
			status: 400, code: CodeBadRequest, mention: []string{"not valid JSON"}},
		{name: "empty body", path: E, body: ``,
			status: 400, code: CodeBadRequest, mention: []string{"not valid JSON", "EOF"}},
		{name: "unknown field", path: E, body: `{"statements":[{"sql":"INSERT INTO t(name) VALUES ('z')"}],"transation":true}`,
			status: 400, code: CodeBadRequest, mention: []string{`unknown field "transation"`}},
		{name: "unknown field of a statement", path: E, body: `{"statements":[{"sql":"INSERT INTO t(name) VALUES (?)","args":["z"]}]}`,
			status: 400, code: CodeBadRequest, mention: []string{`unknown field "args"`}},
		{name: "field of the wrong type", path: E, body: `{"statements":[{"sql":"INSERT INTO t(name) VALUES ('z')"}],"transaction":"yes"}`,
			status: 400, code: CodeBadRequest, mention: []string{"transaction"}},
		{name: "params not a list", path: E, body: `{"statements":[{"sql":"INSERT INTO t(name) VALUES (?)","params":{"name":"z"}}]}`,
			status: 400, code: CodeBadRequest, mention: []string{"params"}},
		{name: "data after the object", path: E, body: exec(`INSERT INTO t(name) VALUES ('z')`) + ` {}`,
			status: 400, code: CodeBadRequest, mention: []string{"data after the JSON object"}},
		{name: "no statements", path: E, body: `{"statements":[]}`,
			status: 400, code: CodeBadRequest, mention: []string{"no statements"}},
		{name: "statements missing", path: E, body: `{}`,
			status: 400, code: CodeBadRequest, mention: []string{"no statements"}},
		{name: "blank statement", path: E, body: exec(`INSERT INTO t(name) VALUES ('z')`, " \n\t"),
			status: 400, code: CodeBadRequest, mention: []string{"statement 2 is empty"}},
		// SQLite finds no statement in these; they once reached the driver,
		// whose panic inside database/sql left the request hanging forever.
		{name: "only a semicolon", path: E, body: exec(` ; ;`),
			status: 400, code: CodeBadRequest, mention: []string{"statement 1 is empty"}},
		{name: "only a comment, in a transaction", path: E, body: txn(`INSERT INTO t(name) VALUES ('z')`, "-- nothing\n/* at all */;"),
			status: 400, code: CodeBadRequest, mention: []string{"statement 2 is empty", "comments"}},
		{name: "unfinished comment", path: E, body: exec(`/* INSERT INTO t(name) VALUES ('z')`),
			status: 400, code: CodeBadRequest, mention: []string{"statement 1 is empty"}},
		{name: "NUL before the SQL", path: E, body: exec("\x00INSERT INTO t(name) VALUES ('z')"),
			status: 400, code: CodeBadRequest, mention: []string{"statement 1 is empty"}},
		{name: "query only a comment", path: Q, body: query(`/* nothing */ -- at all`),
			status: 400, code: CodeBadRequest, mention: []string{"sql is empty"}},
		{name: "query only semicolons", path: Q, body: query(`;;`),
			status: 400, code: CodeBadRequest, mention: []string{"sql is empty"}},
		{name: "BEGIN inside a transaction", path: E, body: txn(`INSERT INTO t(name) VALUES ('z')`, `BEGIN`),
			status: 400, code: CodeBadRequest, mention: []string{"statement 2 is BEGIN", `"transaction": true`}},
		{name: "COMMIT inside a transaction", path: E, body: txn(`INSERT INTO t(name) VALUES ('z')`, `COMMIT`, `INSERT INTO t(name) VALUES ('a')`),
			status: 400, code: CodeBadRequest, mention: []string{"statement 2 is COMMIT"}},
		{name: "ROLLBACK inside a transaction", path: E, body: txn(`INSERT INTO t(name) VALUES ('z')`, `ROLLBACK`),
			status: 400, code: CodeBadRequest, mention: []string{"statement 2 is ROLLBACK"}},
		{name: "BEGIN without COMMIT", path: E, body: exec(`BEGIN`, `INSERT INTO t(name) VALUES ('z')`),
			status: 400, code: CodeBadRequest, mention: []string{"left a transaction open", "rolled back"}},
		{name: "two statements in one entry", path: E, body: exec(`INSERT INTO t(name) VALUES ('z1'); INSERT INTO t(name) VALUES ('z2')`),
			status: 400, code: CodeBadRequest, mention: []string{"more than one SQL statement"}},
		{name: "two statements in a query", path: Q, body: query(`SELECT 1; SELECT 2`),
			status: 400, code: CodeBadRequest, mention: []string{"more than one SQL statement"}},
		{name: "query BEGIN", path: Q, body: query(`BEGIN`),
			status: 400, code: CodeBadRequest, mention: []string{"BEGIN is transaction control", "/v1/execute"}},
		{name: "query COMMIT", path: Q, body: query(`COMMIT`),
			status: 400, code: CodeBadRequest, mention: []string{"COMMIT is transaction control"}},
		{name: "query SAVEPOINT", path: Q, body: query(`SAVEPOINT sp`),
			status: 400, code: CodeBadRequest, mention: []string{"SAVEPOINT is transaction control"}},
		{name: "query without sql", path: Q, body: `{"params":[1]}`,
			status: 400, code: CodeBadRequest, mention: []string{"sql is empty"}},
		{name: "query malformed JSON", path: Q, body: `{"sql":`,
			status: 400, code: CodeBadRequest, mention: []string{"not valid JSON"}},
		{name: "query unknown field", path: Q, body: `{"sql":"SELECT 1","statements":[]}`,
			status: 400, code: CodeBadRequest, mention: []string{`unknown field "statements"`}},
		{name: "unknown endpoint", path: "/v1/exec", body: exec(`INSERT INTO t(name) VALUES ('z')`),
			status: 404, code: CodeBadRequest, mention: []string{"/v1/exec", "POST /v1/execute"}},
		{name: "execute with GET", method: http.MethodGet, path: E,
			status: 405, code: CodeBadRequest, mention: []string{"GET /v1/execute", "takes POST"}},
		{name: "health with POST", path: "/v1/health", body: `{}`,
			status: 405, code: CodeBadRequest, mention: []string{"POST /v1/health", "takes GET"}},

		// bad_parameter
		{name: "object parameter", path: E,
			body:   js(ExecuteRequest{Statements: []Statement{{SQL: `INSERT INTO t(name) VALUES (?)`, Params: raw(`{"name":"z"}`)}}}),
			status: 400, code: CodeBadParameter, mention: []string{"statement 1", "parameter 1", "base64"}},
		{name: "array parameter in the second statement", path: E,
			body: js(ExecuteRequest{Transaction: true, Statements: []Statement{
				{SQL: `INSERT INTO t(name) VALUES (?)`, Params: raw(`"z1"`)},
				{SQL: `INSERT INTO t(name, n) VALUES (?, ?)`, Params: raw(`"z2"`, `[1]`)},
			}}),
			status: 400, code: CodeBadParameter, mention: []string{"statement 2", "parameter 2", "not a SQL value"}},
		{name: "bad base64", path: E,
			body:   js(ExecuteRequest{Statements: []Statement{{SQL: `INSERT INTO t(name) VALUES (?)`, Params: raw(`{"base64":"%%"}`)}}}),
			status: 400, code: CodeBadParameter, mention: []string{"parameter 1", "base64"}},
		{name: "number out of range", path: E,
			body:   js(ExecuteRequest{Statements: []Statement{{SQL: `INSERT INTO t(name, n) VALUES ('z', ?)`, Params: raw(`1e999`)}}}),
			status: 400, code: CodeBadParameter, mention: []string{"parameter 1", "1e999"}},
		{name: "too many parameters", path: E,
			body:   js(ExecuteRequest{Statements: []Statement{{SQL: `INSERT INTO t(name) VALUES (?)`, Params: raw(`"z"`, `1`)}}}),
			status: 400, code: CodeBadParameter, mention: []string{"wrong number of parameters", "takes 1", "got 2"}},
		{name: "too many parameters in the second statement of a transaction", path: E,
			body: js(ExecuteRequest{Transaction: true, Statements: []Statement{
				{SQL: `INSERT INTO t(name) VALUES (?)`, Params: raw(`"z1"`)},
				{SQL: `UPDATE t SET n = ? WHERE name = ?`, Params: raw(`1`, `"a"`, `"b"`)},
			}}),
			status: 400, code: CodeBadParameter, mention: []string{"statement 2", "takes 2", "got 3"}},
		{name: "too few parameters", path: E,
			body:   js(ExecuteRequest{Statements: []Statement{{SQL: `INSERT INTO t(name, n) VALUES (?, ?)`, Params: raw(`"z"`)}}}),
			status: 400, code: CodeBadParameter, mention: []string{"wrong number of parameters", "takes 2", "got 1"}},
		// The driver cannot count numbered and named placeholders for
		// database/sql; SQLite would bind NULL to those left without a value.
		{name: "too few named parameters", path: E,
			body:   js(ExecuteRequest{Statements: []Statement{{SQL: `INSERT INTO t(name, n) VALUES (:name, :n)`, Params: raw(`"z"`)}}}),
			status: 400, code: CodeBadParameter, mention: []string{"wrong number of parameters", "takes 2", "got 1"}},
		{name: "too many named parameters in a transaction", path: E,
			body: js(ExecuteRequest{Transaction: true, Statements: []Statement{
				{SQL: `INSERT INTO t(name) VALUES ('z1')`},
				{SQL: `UPDATE t SET n = @n WHERE name = $name`, Params: raw(`1`, `"a"`, `"b"`)},
			}}),
			status: 400, code: CodeBadParameter, mention: []string{"statement 2", "takes 2", "got 3"}},
		{name: "numbered parameters with a gap", path: E,
			body:   js(ExecuteRequest{Statements: []Statement{{SQL: `INSERT INTO t(name, n) VALUES (?1, ?3)`, Params: raw(`"z"`, `1`)}}}),
			status: 400, code: CodeBadParameter, mention: []string{"takes 3", "got 2"}},
		{name: "query with too few named parameters", path: Q,
			body:   js(Statement{SQL: `SELECT :a, :b`, Params: raw(`1`)}),
			status: 400, code: CodeBadParameter, mention: []string{"takes 2", "got 1"}},
		{name: "query object parameter", path: Q,
			body:   js(Statement{SQL: `SELECT * FROM t WHERE name = ?`, Params: raw(`{"x":1}`)}),
			status: 400, code: CodeBadParameter, mention: []string{"parameter 1"}},
		{name: "query parameter without placeholder", path: Q,
			body:   js(Statement{SQL: `SELECT 1`, Params: raw(`1`)}),
			status: 400, code: CodeBadParameter, mention: []string{"wrong number of parameters", "takes 0", "got 1"}},

		// body_too_large
		{name: "body too large", path: E, body: exec(bigSQL),
			status: 413, code: CodeBodyTooLarge, mention: []string{fmt.Sprint(errTestMaxBody), "bytes"}},
		{name: "query body too large", path: Q, body: query(`SELECT '` + strings.Repeat("x", errTestMaxBody) + `'`),
			status: 413, code: CodeBodyTooLarge, mention: []string{fmt.Sprint(errTestMaxBody)}},

		// too_many_rows
		{name: "too many rows", path: Q, body: query(rowsCTE(errTestMaxRows + 1)),
			status: 400, code: CodeTooManyRows, mention: []string{fmt.Sprintf("more than %d rows", errTestMaxRows), "LIMIT"}},
		// RETURNING's changes are made before its first row comes back.
		{name: "too many rows returned by an insert", path: E,
			body:   exec(fmt.Sprintf(`INSERT INTO t(name) SELECT 'r' || value FROM generate_series(1, %d) RETURNING id`, errTestMaxRows+1)),
			status: 400, code: CodeTooManyRows, mention: []string{fmt.Sprintf("more than %d rows", errTestMaxRows)}},
		{name: "too many rows returned in a transaction", path: E,
			body:   txn(`INSERT INTO t(name) VALUES ('z1')`, fmt.Sprintf(`INSERT INTO t(name) SELECT 'r' || value FROM generate_series(1, %d) RETURNING id`, errTestMaxRows+1)),
			status: 400, code: CodeTooManyRows, mention: []string{"statement 2", fmt.Sprintf("more than %d rows", errTestMaxRows)}},

		// read_only
		{name: "INSERT on query", path: Q, body: query(`INSERT INTO t(name) VALUES ('z')`),
			status: 400, code: CodeReadOnly, mention: []string{"readonly", "/v1/execute"}},
		{name: "UPDATE on query", path: Q, body: query(`UPDATE t SET n = n + 1`),
			status: 400, code: CodeReadOnly, mention: []string{"readonly", "/v1/execute"}},
		{name: "INSERT RETURNING on query", path: Q, body: query(`INSERT INTO t(name) VALUES ('z') RETURNING id`),
			status: 400, code: CodeReadOnly, mention: []string{"readonly", "/v1/execute"}},
		{name: "CREATE TABLE on query", path: Q, body: query(`CREATE TABLE u(x)`),
			status: 400, code: CodeReadOnly, mention: []string{"readonly", "/v1/execute"}},
		// A pooled read connection's temp database would outlive the query.
		{name: "CREATE TEMP TABLE on query", path: Q, body: query(`CREATE TEMP TABLE u(x)`),
			status: 403, code: CodeNotAllowed, mention: []string{"TEMP"}},

		// not_allowed: files on the server, and settings that would stay on
		// a pooled connection.
		{name: "ATTACH a server file on execute", path: E, body: exec(`ATTACH '` + outside("a.db") + `' AS f`),
			status: 403, code: CodeNotAllowed, mention: []string{"not authorized", "ATTACH"}},
		{name: "ATTACH a server file in a transaction", path: E,
			body:   txn(`INSERT INTO t(name) VALUES ('z1')`, `ATTACH '`+outside("b.db")+`' AS f`, `CREATE TABLE f.x(a)`),
			status: 403, code: CodeNotAllowed, mention: []string{"statement 2", "ATTACH"}},
		{name: "ATTACH a server file on query", path: Q, body: query(`ATTACH '` + outside("c.db") + `' AS f`),
			status: 403, code: CodeNotAllowed, mention: []string{"ATTACH"}},
		{name: "VACUUM INTO a server file", path: E, body: exec(`VACUUM INTO '` + outside("d.db") + `'`),
			status: 403, code: CodeNotAllowed, mention: []string{"VACUUM INTO"}},
		{name: "query_only off on a read connection", path: Q, body: query(`PRAGMA query_only(0)`),
			status: 403, code: CodeNotAllowed, mention: []string{"PRAGMA"}},
		{name: "query_only off, the = form", path: Q, body: query(`pragma QUERY_ONLY = 0`),
			status: 403, code: CodeNotAllowed, mention: []string{"PRAGMA"}},
		{name: "journal_mode on execute", path: E, body: exec(`PRAGMA journal_mode = DELETE`),
			status: 403, code: CodeNotAllowed, mention: []string{"PRAGMA"}},
		{name: "busy_timeout on execute", path: E, body: exec(`PRAGMA busy_timeout = 0`),
			status: 403, code: CodeNotAllowed, mention: []string{"PRAGMA"}},
		{name: "user_version on query", path: Q, body: query(`PRAGMA user_version = 3`),
			status: 400, code: CodeReadOnly, mention: []string{"/v1/execute"}},
		// Refused before: the read connections' query_only still holds.
		// An attached file whose name is an expression or a parameter
		// reaches the authorizer with no name at all.
		{name: "ATTACH an expression", path: E, body: exec(`ATTACH '` + outside("e.db") + `' || '' AS f`),
			status: 403, code: CodeNotAllowed, mention: []string{"ATTACH"}},
		{name: "ATTACH an expression on query", path: Q, body: query(`ATTACH '` + outside("f.db") + `?mode=ro' || '' AS f`),
			status: 403, code: CodeNotAllowed, mention: []string{"ATTACH"}},
		{name: "ATTACH a parameter", path: E,
			body:   js(ExecuteRequest{Statements: []Statement{{SQL: `ATTACH ? AS f`, Params: raw(strconv.Quote(outside("g.db")))}}}),
			status: 403, code: CodeNotAllowed, mention: []string{"ATTACH"}},
		// "= ''" reaches the authorizer like a read.
		{name: "query_only set to empty on query", path: Q, body: query(`PRAGMA query_only = ''`),
			status: 403, code: CodeNotAllowed, mention: []string{"PRAGMA"}},
		{name: "journal_mode set to empty on execute", path: E, body: exec(`PRAGMA main.journal_mode = ""`),
			status: 403, code: CodeNotAllowed, mention: []string{"PRAGMA"}},
		{name: "schema_version set to empty", path: E, body: exec(`/* x */ PRAGMA "schema_version"('')`),
			status: 403, code: CodeNotAllowed, mention: []string{"PRAGMA"}},
		// A PRAGMA behind a leading ';' or EXPLAIN, and the reads of a
		// setting, which the authorizer cannot tell from "= ''".
		{name: "a PRAGMA behind a semicolon", path: E, body: exec("\n;PRAGMA foreign_keys=''"),
			status: 403, code: CodeNotAllowed, mention: []string{"PRAGMA"}},
		{name: "a PRAGMA behind EXPLAIN", path: Q, body: query(`EXPLAIN PRAGMA query_only=''`),
			status: 403, code: CodeNotAllowed, mention: []string{"PRAGMA"}},
		{name: "reading a setting", path: Q, body: query(`PRAGMA journal_mode`),
			status: 403, code: CodeNotAllowed, mention: []string{"PRAGMA"}},
		// A COMMIT behind a semicolon would end the request's transaction.
		{name: "COMMIT behind a semicolon in a transaction", path: E,
			body:   txn(`INSERT INTO t(name) VALUES ('z1')`, `;COMMIT`, `INSERT INTO nope VALUES (1)`),
			status: 400, code: CodeBadRequest, mention: []string{"COMMIT"}},
		// A TEMP trigger named temp.x on a main table looks like a
		// CREATE TRIGGER in main to the authorizer.
		{name: "a TEMP trigger named temp.x", path: E,
			body:   exec(`CREATE TRIGGER temp.tr AFTER INSERT ON main.t BEGIN UPDATE main.t SET name = 'pwned' WHERE id = new.id; END`),
			status: 403, code: CodeNotAllowed, mention: []string{"TEMP"}},
		{name: "a TEMP trigger named temp.x in a transaction", path: E,
			body:   txn(`INSERT INTO t(name) VALUES ('z1')`, `CREATE TRIGGER "temp".tr2 BEFORE DELETE ON t BEGIN SELECT RAISE(IGNORE); END`),
			status: 403, code: CodeNotAllowed, mention: []string{"statement 2", "TEMP"}},
		// A value larger than the API's cap fails cleanly instead of
		// exhausting the connection's memory.
		{name: "a huge value", path: Q, body: query(`SELECT length(randomblob(300000000))`),
			status: 400, code: CodeSQL, mention: []string{"too big"}},
		{name: "a huge value in a transaction", path: E,
			body:   txn(`INSERT INTO t(name) VALUES ('z1')`, `SELECT length(randomblob(300000000))`),
			status: 400, code: CodeSQL, mention: []string{"statement 2", "too big"}},
		// TEMP objects outlive the request on the pooled connection.
		{name: "CREATE TEMP TABLE on execute", path: E, body: exec(`CREATE TEMP TABLE t(id INTEGER PRIMARY KEY, name TEXT)`),
			status: 403, code: CodeNotAllowed, mention: []string{"TEMP"}},
		{name: "CREATE TABLE temp.x on execute", path: E, body: exec(`CREATE TABLE temp.x(a)`),
			status: 403, code: CodeNotAllowed, mention: []string{"TEMP"}},
		{name: "CREATE TEMP TRIGGER", path: E, body: exec(`CREATE TEMP TRIGGER tr AFTER INSERT ON main.t BEGIN UPDATE main.t SET n = 99; END`),
			status: 403, code: CodeNotAllowed, mention: []string{"TEMP"}},
		{name: "CREATE TEMP VIEW", path: E, body: exec(`CREATE TEMP VIEW v AS SELECT 1`),
			status: 403, code: CodeNotAllowed, mention: []string{"TEMP"}},
		// Refused before: the read connections' query_only still holds.
		{name: "an insert on query after trying to lift query_only", path: Q, body: query(`INSERT INTO t(name) VALUES ('zz')`),
			status: 400, code: CodeReadOnly, mention: []string{"/v1/execute"}},
	}

	before := ti.state(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			method := c.method
			if method == "" {
				method = http.MethodPost
			}
			st, b, h := ti.call(t, method, c.path, c.body)
			checkErr(t, st, b, h, c.status, c.code, c.mention...)

			if c.committed == 0 {
				before = ti.unchangedAndServing(t, before)
				return
			}
			after := ti.state(t)
			var n struct{ Rows [][]int64 }
			ti.ok(t, Q, query(`SELECT count(*) FROM t WHERE name = 'own'`), &n)
			if n.Rows[0][0] != int64(c.committed) || after.commits != before.commits+uint64(c.committed) {
				t.Fatalf("want exactly the %d statement(s) before the failing one committed: rows named 'own' %v, commits %d -> %d",
					c.committed, n.Rows, before.commits, after.commits)
			}
			ti.ok(t, E, exec(`DELETE FROM t WHERE name = 'own'`), nil)
			before = ti.unchangedAndServing(t, ti.state(t))
		})
	}

	// The writer turn is taken by a transaction that does not end while the
	// requests run, so they cannot get it however long they wait: busy,
	// after the busy timeout, every time. Writes share the instance's one
	// writer connection, so a request meets the held turn waiting for it.
	t.Run("busy", func(t *testing.T) {
		ctx := context.Background()
		w := ti.DB().Writer
		holder, err := w.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer holder.Close()
		if _, err := holder.ExecContext(ctx, `BEGIN IMMEDIATE`); err != nil {
			t.Fatal(err)
		}
		if _, err := holder.ExecContext(ctx, `INSERT INTO t(name) VALUES ('held')`); err != nil {
			t.Fatal(err)
		}
		bodies := []string{
			exec(`INSERT INTO t(name) VALUES ('z')`),
			txn(`INSERT INTO t(name) VALUES ('z1')`, `UPDATE t SET n = n + 1`),
			exec(`SELECT count(*) FROM t`),
		}
		for _, body := range bodies {
			st, b, h := ti.call(t, http.MethodPost, E, body)
			checkErr(t, st, b, h, http.StatusServiceUnavailable, CodeBusy, "locked: another transaction held the writer turn", "retry")
		}
		// Reads need no writer turn, and do not see the holder's
		// uncommitted row.
		if during := ti.state(t); during != before {
			t.Fatalf("while the writer turn was held:\nbefore %+v\nduring %+v", before, during)
		}
		if _, err := holder.ExecContext(ctx, `ROLLBACK`); err != nil {
			t.Fatal(err)
		}
		holder.Close()
		before = ti.unchangedAndServing(t, before)
	})

	t.Run("not ready", func(t *testing.T) {
		resume := ti.notReady("waiting for the writer lease: held by w2")
		for _, c := range []struct{ path, body string }{
			{E, exec(`INSERT INTO t(name) VALUES ('z')`)},
			{E, txn(`INSERT INTO t(name) VALUES ('z1')`, `UPDATE t SET n = n + 1`)},
			{Q, query(`SELECT count(*) FROM t`)},
		} {
			st, b, h := ti.call(t, http.MethodPost, c.path, c.body)
			checkErr(t, st, b, h, http.StatusServiceUnavailable, CodeNotReady, "not ready", "waiting for the writer lease")
		}
		st, b, _ := ti.call(t, http.MethodGet, "/v1/health", "")
		var hl Health
		if err := json.Unmarshal(b, &hl); err != nil || st != http.StatusServiceUnavailable || hl.Ready {
			t.Fatalf("health while not ready: HTTP %d %s (%v)", st, b, err)
		}
		resume()
		before = ti.unchangedAndServing(t, before)
	})
}

// unchangedAndServing fails the test if the database is not as it was
// before a failed request, then checks that the instance still serves: the
// writer turn, the connection and the pools were left fit for the next
// request. It returns the new state.
func (ti *testInstance) unchangedAndServing(t *testing.T, before state) state {
	t.Helper()
	if after := ti.state(t); after != before {
		t.Fatalf("the failed request changed the database:\nbefore %+v\nafter  %+v", before, after)
	}
	var res ExecuteResponse
	ti.ok(t, "/v1/execute", txn(`INSERT INTO t(name) VALUES ('canary')`, `DELETE FROM t WHERE name = 'canary'`, `UPDATE t SET n = n + 1 WHERE id = 1`), &res)
	if len(res.Results) != 3 || res.Results[0].RowsAffected != 1 || res.Results[1].RowsAffected != 1 || res.Results[2].RowsAffected != 1 {
		t.Fatalf("write after the error: %+v", res)
	}
	// Exactly MaxRows rows: the limit is on more, not on as many.
	var q QueryResponse
	ti.ok(t, "/v1/query", query(rowsCTE(errTestMaxRows)), &q)
	if len(q.Rows) != errTestMaxRows {
		t.Fatalf("query after the error: %d rows, want %d", len(q.Rows), errTestMaxRows)
	}
	next := ti.state(t)
	if next.rows == before.rows || next.commits != before.commits+1 {
		t.Fatalf("the write after the error did not land as one commit:\nbefore %+v\nafter  %+v", before, next)
	}
	return next
}

func rowsCTE(n int) string {
	return fmt.Sprintf(`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < %d) SELECT x FROM c`, n)
}

// checkErr checks an error reply: its HTTP status, that it is the JSON error
// body and nothing else, its code, and that its message names the problem.
func checkErr(t *testing.T, status int, body []byte, h http.Header, wantStatus int, wantCode string, mention ...string) {
	t.Helper()
	if ct := h.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var e ErrorBody
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("HTTP %d: the reply %q is not an error body: %v", status, body, err)
	}
	if status != wantStatus || e.Error.Code != wantCode {
		t.Fatalf("HTTP %d %s (%q), want HTTP %d %s", status, e.Error.Code, e.Error.Message, wantStatus, wantCode)
	}
	t.Logf("HTTP %d %s: %s", status, e.Error.Code, e.Error.Message)
	msg := strings.TrimSpace(e.Error.Message)
	if msg == "" {
		t.Fatalf("%s: empty message", wantCode)
	}
	for _, m := range mention {
		if !strings.Contains(strings.ToLower(msg), strings.ToLower(m)) {
			t.Errorf("%s: message %q does not mention %q", wantCode, msg, m)
		}
	}
}

// noSQL agrees with SQLite: it is true exactly when SQLite prepares the
// string to no statement (the case the driver mishandles).
func TestNoSQL(t *testing.T) {
	c, err := sqlite3.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, q := range []string{
		"", " ", ";", " ;\t;\r\n\v\f", "-- c", "-- c\n", "/* c */", "/* c", "/* c */ -- d\n;", "/**/", "/*/ */",
		"\x00SELECT 1", "/* c \x00 */ SELECT 1", "-- c\x00\nSELECT 1",
		"\v", ";\v", "\t\v", " \v;", "/*", "/*\x00x", ";/*", "/**", "-",
		"SELECT 1", " SELECT 1;", "-- c\nSELECT 1", "/* c */SELECT 1", "- 1", "/ 1", "'x'", "-1", "x",
	} {
		st, _, err := c.Prepare(q)
		if err != nil {
			// Refused by SQLite: an sql_error, which must not be mistaken
			// for an empty statement.
			if noSQL(q) {
				t.Errorf("noSQL(%q) = true, but SQLite refuses it: %v", q, err)
			}
			continue
		}
		if got, want := noSQL(q), st == nil; got != want {
			t.Errorf("noSQL(%q) = %v, but SQLite prepares it to %v", q, got, st)
		}
		st.Close()
	}
}

// noSQL and SQLite agree on every string of up to five characters drawn
// from what can make up an empty statement, and a few that can't.
func TestNoSQLOnEveryShortString(t *testing.T) {
	c, err := sqlite3.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	alphabet := []byte{' ', ';', '-', '/', '*', '\n', '\v', 0, '\f', '\t', 'x'}
	var walk func(q []byte, left int)
	walk = func(q []byte, left int) {
		st, _, err := c.Prepare(string(q))
		empty := err == nil && st == nil
		st.Close()
		if noSQL(string(q)) != empty {
			t.Fatalf("noSQL(%q) = %v; SQLite prepares it to %v (%v)", q, !empty, st, err)
		}
		if left > 0 {
			for _, b := range alphabet {
				walk(append(q, b), left-1)
			}
		}
	}
	walk(nil, 5)
}
