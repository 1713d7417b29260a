package dbserver

import (
	"fmt"
	"testing"

	"github.com/borealis-db/borealis/internal/sqlvfs"
)

// TestExecuteCountsWithReturning: a statement with RETURNING reports the
// same rows_affected and last_insert_id as the same statement without it,
// alone (autocommit, where it runs under a savepoint), in a transaction,
// and among other statements of a request that is not one.
func TestExecuteCountsWithReturning(t *testing.T) {
	ti := startTestInstance(t, Config{}, sqlvfs.Options{})
	ti.ok(t, "/v1/execute", exec(`CREATE TABLE t(k INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)`), nil)

	// AUTOINCREMENT: a rowid is never taken again, so the next insert's is
	// known.
	var next int64 = 1
	type counts struct{ affected, lastID int64 }
	// run posts body and returns the counts of its statements.
	run := func(t *testing.T, body string) []counts {
		t.Helper()
		var resp ExecuteResponse
		ti.ok(t, "/v1/execute", body, &resp)
		var out []counts
		for _, r := range resp.Results {
			out = append(out, counts{r.RowsAffected, r.LastInsertID})
		}
		return out
	}
	check := func(t *testing.T, what string, got []counts, want ...counts) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: counts (rows_affected, last_insert_id) %v, want %v", what, got, want)
		}
	}

	for _, tc := range []struct {
		name string
		// body makes the request from its statements.
		body func(sqls ...string) string
	}{
		{"alone", exec},
		{"in a transaction", txn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Each statement is run plain and with RETURNING; a
			// transaction of one statement is that statement alone, so a
			// transaction has a plain insert before it.
			prefix := []string{}
			var pre []counts
			if tc.name != "alone" {
				prefix = []string{`INSERT INTO t(v) VALUES ('first')`}
			}
			do := func(sql string) []counts {
				t.Helper()
				if len(prefix) > 0 {
					pre = []counts{{1, next}}
					next++
				}
				got := run(t, tc.body(append(prefix, sql)...))
				if len(got) != len(prefix)+1 {
					t.Fatalf("%s: %d results", sql, len(got))
				}
				check(t, "the insert before "+sql, got[:len(prefix)], pre...)
				return got[len(prefix):]
			}
			for i, sfx := range []string{"", " RETURNING k"} {
				tag := fmt.Sprintf("'%s%d'", tc.name, i)
				got := do(`INSERT INTO t(v) VALUES (` + tag + `)` + sfx)
				check(t, "INSERT one row"+sfx, got, counts{1, next})
				next++
				got = do(`INSERT INTO t(v) VALUES (` + tag + `), (` + tag + `), (` + tag + `)` + sfx)
				check(t, "INSERT three rows"+sfx, got, counts{3, next + 2})
				next += 3
				got = do(`UPDATE t SET v = v || '!' WHERE v = ` + tag + ` AND k > (SELECT min(k) FROM t WHERE v = ` + tag + `)` + sfx)
				check(t, "UPDATE three rows"+sfx, got, counts{3, 0})
				got = do(`UPDATE t SET v = 'none' WHERE k < 0` + sfx)
				check(t, "UPDATE no row"+sfx, got, counts{0, 0})
				got = do(`DELETE FROM t WHERE v = ` + tag + ` || '!' AND k > (SELECT min(k) FROM t WHERE v = ` + tag + ` || '!')` + sfx)
				check(t, "DELETE two rows"+sfx, got, counts{2, 0})
			}
		})
	}

	// The k that RETURNING returns is the last_insert_id reported.
	var resp ExecuteResponse
	ti.ok(t, "/v1/execute", exec(`INSERT INTO t(v) VALUES ('r') RETURNING k`), &resp)
	if len(resp.Results) != 1 || resp.Results[0].QueryResponse == nil || len(resp.Results[0].Rows) != 1 {
		t.Fatalf("INSERT RETURNING k: %+v", resp)
	}
	r := resp.Results[0]
	if k := fmt.Sprint(r.Rows[0][0]); k != fmt.Sprint(next) || r.LastInsertID != next || r.RowsAffected != 1 {
		t.Errorf("INSERT RETURNING k returned k = %s, and reported rows_affected %d, last_insert_id %d", k, r.RowsAffected, r.LastInsertID)
	}

	// Statements that are not a transaction, each in its own.
	got := run(t, exec(`INSERT INTO t(v) VALUES ('x') RETURNING k`, `INSERT INTO t(v) VALUES ('y')`, `UPDATE t SET v = 'w' WHERE v IN ('x', 'y') RETURNING k`))
	check(t, "three statements, no transaction", got, counts{1, next + 1}, counts{1, next + 2}, counts{2, 0})
}
