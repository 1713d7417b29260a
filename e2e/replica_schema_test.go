package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/borealis-db/borealis/internal/sqlclient"
)

// TestReplicaSchemaChanges: CREATE TABLE, ALTER TABLE ADD COLUMN, CREATE
// INDEX, DROP TABLE and a CREATE TABLE of the same name with other
// columns, each made on the writer, are seen by every pooled connection of
// both replicas that asks with the change's LSN as min_lsn, connections
// that cached the schema before the change included. A replica refuses
// DDL as not_writer, naming the writer.
func TestReplicaSchemaChanges(t *testing.T) {
	rc := startReplicaCluster(t, replicaClusterOpts{
		replicas: []replicaSpec{{id: "r1", az: "b", extra: []string{"--min-lsn-wait", "5s"}}, {id: "r2", az: "c", extra: []string{"--min-lsn-wait", "5s"}}},
	})
	const conns = 6
	// onEvery runs q with min_lsn lsn on conns concurrent requests to each
	// replica (so on several pooled connections at once) and checks each
	// answer, or each error, with check.
	onEvery := func(step string, lsn uint64, q string, check func(rows [][]any, err error) error) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan string, conns*len(rc.ids))
		for _, id := range rc.ids {
			for range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rows, _, err := queryRows(context.Background(), rc.replicas[id], lsn, q)
					if e := check(rows, err); e != nil {
						errs <- fmt.Sprintf("%s: %s: %q (min_lsn %d): %v", step, id, q, lsn, e)
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Fatal(e)
		}
	}
	answers := func(want string) func([][]any, error) error {
		return func(rows [][]any, err error) error {
			if err != nil {
				return err
			}
			if got := fmt.Sprint(rows); got != want {
				return fmt.Errorf("answered %s, want %s", got, want)
			}
			return nil
		}
	}
	fails := func(code, text string) func([][]any, error) error {
		return func(rows [][]any, err error) error {
			if sqlclient.Code(err) != code || !strings.Contains(err.Error(), text) {
				return fmt.Errorf("answered %v, %v; want %s with %q", rows, err, code, text)
			}
			return nil
		}
	}
	// Every pooled connection reads the schema before the first change.
	lsn := mustExec(t, rc.writer, false, st("CREATE TABLE base(x)"))
	onEvery("warm-up", lsn, "SELECT count(*) FROM sqlite_schema", answers("[[1]]"))
	onEvery("before CREATE TABLE", lsn, "SELECT count(*) FROM s", fails("sql_error", "no such table"))

	lsn = mustExec(t, rc.writer, true,
		st("CREATE TABLE s(a INTEGER PRIMARY KEY, b TEXT NOT NULL)"),
		st("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 300) INSERT INTO s SELECT x, printf('b%04d', x) FROM c"))
	onEvery("CREATE TABLE", lsn, "SELECT count(*), sum(a), max(b) FROM s", answers("[[300 45150 b0300]]"))

	lsn = mustExec(t, rc.writer, true,
		st("ALTER TABLE s ADD COLUMN c INTEGER NOT NULL DEFAULT 7"),
		st("UPDATE s SET c = a * 2 WHERE a % 2 = 0"))
	// Odd a keep the default 7 (150 rows), even a have 2a: 2 * (2+4+...+300).
	onEvery("ADD COLUMN", lsn, "SELECT sum(c), (SELECT c FROM s WHERE a = 1), (SELECT c FROM s WHERE a = 2) FROM s", answers(fmt.Sprintf("[[%d 7 4]]", 150*7+2*22650)))

	onEvery("before CREATE INDEX", lsn, "SELECT count(*) FROM s INDEXED BY s_c WHERE c > 0", fails("sql_error", "no such index"))
	lsn = mustExec(t, rc.writer, false, st("CREATE INDEX s_c ON s(c, b)"))
	onEvery("CREATE INDEX", lsn, "SELECT count(*), min(b) FROM s INDEXED BY s_c WHERE c > 100", answers("[[125 b0052]]"))
	onEvery("CREATE INDEX plan", lsn, "EXPLAIN QUERY PLAN SELECT b FROM s WHERE c = 8",
		func(rows [][]any, err error) error {
			if err != nil {
				return err
			}
			if s := fmt.Sprint(rows); !strings.Contains(s, "s_c") {
				return fmt.Errorf("the plan %s does not use the new index", s)
			}
			return nil
		})

	lsn = mustExec(t, rc.writer, false, st("DROP TABLE s"))
	onEvery("DROP TABLE", lsn, "SELECT count(*) FROM s", fails("sql_error", "no such table"))
	onEvery("DROP TABLE schema", lsn, "SELECT group_concat(name) FROM sqlite_schema", answers("[[base]]"))

	lsn = mustExec(t, rc.writer, true,
		st("CREATE TABLE s(z TEXT PRIMARY KEY, n INTEGER)"),
		st("INSERT INTO s VALUES('one', 1), ('two', 2)"))
	onEvery("CREATE TABLE again", lsn, "SELECT group_concat(z || n, ',') FROM (SELECT * FROM s ORDER BY z)", answers("[[one1,two2]]"))
	onEvery("CREATE TABLE again, old column", lsn, "SELECT a FROM s", fails("sql_error", "no such column"))

	// DDL on a replica is refused, naming the writer.
	for _, id := range rc.ids {
		_, err := execLSN(context.Background(), rc.replicas[id], false, st("CREATE TABLE nope(x)"))
		var e *sqlclient.Error
		if sqlclient.Code(err) != "not_writer" || !strings.Contains(err.Error(), rc.writer) {
			t.Fatalf("DDL on %s: %v; want not_writer naming the writer %s", id, err, rc.writer)
		}
		if !errors.As(err, &e) || e.Status != 409 {
			t.Fatalf("DDL on %s: %v; want HTTP 409", id, err)
		}
		integrityOKAt(t, rc.replicas[id], lsn)
	}
}
