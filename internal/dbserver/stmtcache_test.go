package dbserver

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/ncruces/go-sqlite3"

	"github.com/borealis-db/borealis/internal/sqlvfs"
)

func memConn(t *testing.T) *sqlite3.Conn {
	t.Helper()
	c, err := sqlite3.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Exec("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	return c
}

func stmtsOf(c *sqlite3.Conn) int {
	n := 0
	for range c.Stmts() {
		n++
	}
	return n
}

func memRows(t *testing.T, c *sqlite3.Conn) int {
	t.Helper()
	st, _, err := c.Prepare("SELECT count(*) FROM t")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.Step()
	return st.ColumnInt(0)
}

func TestStmtCacheReusesAWriteAndClosesCleanly(t *testing.T) {
	c := memConn(t)
	var sc stmtCache
	ctx := context.Background()
	const ins = "INSERT INTO t(k, v) VALUES (?, ?)"
	for k := int64(1); k <= 3; k++ {
		if err := sc.execCached(ctx, c, ins, []any{k, fmt.Sprint("v", k)}); err != nil {
			t.Fatal(err)
		}
	}
	if n := stmtsOf(c); n != 1 {
		t.Fatalf("%d statements open after 3 runs of one INSERT; want 1 kept", n)
	}
	if got := memRows(t, c); got != 3 {
		t.Fatalf("%d rows, want 3", got)
	}

	// The wrong number of parameters runs nothing.
	var pc paramCountError
	if err := sc.execCached(ctx, c, ins, []any{int64(9)}); !errors.As(err, &pc) || pc.want != 2 || pc.got != 1 {
		t.Fatalf("one parameter of two: %v", err)
	}
	// Several statements in one string are never run or kept.
	if err := sc.execCached(ctx, c, "DELETE FROM t; DELETE FROM t WHERE k = 1", nil); !errors.Is(err, errNotCacheable) {
		t.Fatalf("two statements: %v", err)
	}
	if got := memRows(t, c); got != 3 {
		t.Fatalf("%d rows after refused statements, want 3", got)
	}

	// A failed run is not kept; the next one prepares again and works.
	if err := sc.execCached(ctx, c, ins, []any{int64(1), "dup"}); err == nil {
		t.Fatal("a duplicate key was inserted")
	}
	if sc.get(c, ins) != nil {
		t.Fatal("a statement that failed was kept")
	}
	if err := sc.execCached(ctx, c, ins, []any{int64(4), nil}); err == nil {
		t.Fatal("NULL went into a NOT NULL column")
	}
	if err := sc.execCached(ctx, c, ins, []any{int64(4), "four"}); err != nil {
		t.Fatal(err)
	}

	// After a schema change SQLite prepares the kept statement again.
	if err := c.Exec("ALTER TABLE t ADD COLUMN w INTEGER DEFAULT 7"); err != nil {
		t.Fatal(err)
	}
	if err := sc.execCached(ctx, c, ins, []any{int64(5), "five"}); err != nil {
		t.Fatal(err)
	}

	// At most stmtCacheSize statements are kept.
	for i := range stmtCacheSize + 5 {
		if err := sc.execCached(ctx, c, fmt.Sprintf("UPDATE t SET w = %d WHERE k = ?", i), []any{int64(1)}); err != nil {
			t.Fatal(err)
		}
	}
	if n := stmtsOf(c); n != stmtCacheSize {
		t.Fatalf("%d statements open; want the bound, %d", n, stmtCacheSize)
	}
	// SQLite refuses to close a connection with statements open: drop
	// closes them all.
	sc.drop(c)
	if err := c.Close(); err != nil {
		t.Fatalf("close after drop: %v", err)
	}
}

func TestCacheableWrites(t *testing.T) {
	for q, want := range map[string]bool{
		"INSERT INTO t VALUES (?)":                           true,
		"  update t set v = 1":                               true,
		"DELETE FROM t WHERE k = 1":                          true,
		"REPLACE INTO t VALUES (1, 'a')":                     true,
		"INSERT INTO t VALUES (1) RETURNING k":               false,
		"SELECT 1":                                           false,
		"CREATE TABLE u(x)":                                  false,
		"WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x": false,
		"VACUUM": false,
	} {
		if got := cacheable(q); got != want {
			t.Errorf("cacheable(%q) = %v, want %v", q, got, want)
		}
	}
}

// Over the API, a repeated INSERT runs as one statement kept on the writer
// connection, once the policy is armed; the database then closes cleanly:
// SQLite refuses to close a connection with statements open, and the close
// hook closes them first.
func TestWriterKeepsItsInsertPreparedAndClosesCleanly(t *testing.T) {
	ti := startTestInstance(t, Config{}, sqlvfs.Options{})
	ti.ok(t, "/v1/execute", `{"statements":[{"sql":"CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)"}]}`, nil)
	const ins = "INSERT INTO kv(k, v) VALUES (?, ?)"
	for k := 1; k <= 5; k++ {
		ti.ok(t, "/v1/execute", fmt.Sprintf(`{"statements":[{"sql":%q,"params":[%d,"v%d"]}]}`, ins, k, k), nil)
	}
	db := ti.DB()
	conn, err := db.Writer.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var kept, open int
	if err := rawConn(conn, func(c *sqlite3.Conn) {
		if preparedWrites.get(c, ins) != nil {
			kept++
		}
		open = stmtsOf(c)
		if _, ok := armed.Load(c); !ok {
			kept = -1
		}
	}); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if kept != 1 || open != 1 {
		t.Fatalf("after 5 INSERTs: kept %d (-1: the policy was not armed), %d statements open; want the one INSERT", kept, open)
	}
	var rows int
	ti.ok(t, "/v1/query", `{"sql":"SELECT count(*) FROM kv"}`, nil)
	if err := db.Reader.QueryRow("SELECT count(*) FROM kv").Scan(&rows); err != nil || rows != 5 {
		t.Fatalf("%d rows, %v; want 5", rows, err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	preparedWrites.mu.Lock()
	defer preparedWrites.mu.Unlock()
	for c, cs := range preparedWrites.conns {
		if cs.byQuery[ins] != nil {
			t.Fatalf("connection %p closed with its statement kept", c)
		}
	}
}
