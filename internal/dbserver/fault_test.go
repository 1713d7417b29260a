package dbserver

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/sqlvfs"
)

// Storage loses its write quorum (three of six nodes crash) under the
// paths a request can take: a plain insert, an insert with RETURNING (run
// under a savepoint), and a transaction. Each fails with
// storage_unavailable within the write timeout, reads show exactly the
// acknowledged rows, and nothing is lost: with the nodes back, the pending
// commits land (their outcome was reported unknown) and writes go on.
func TestWritesAcrossLostQuorum(t *testing.T) {
	ti := startTestInstance(t, Config{WriteTimeout: time.Second}, sqlvfs.Options{})
	ti.ok(t, "/v1/execute", exec(`CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)`, `INSERT INTO t(v) VALUES ('acked')`), nil)
	count := func() string {
		var r QueryResponse
		ti.ok(t, "/v1/query", query(`SELECT count(*), group_concat(v, ',') FROM t`), &r)
		b, _ := json.Marshal(r.Rows)
		return string(b)
	}
	if got := count(); got != `[[1,"acked"]]` {
		t.Fatalf("before: %s", got)
	}
	for _, i := range []int{0, 2, 4} { // one per AZ
		ti.nodes[i].stop()
	}
	st, b, _ := ti.call(t, "POST", "/v1/execute", exec(`INSERT INTO t(v) VALUES ('returning') RETURNING id`))
	if st != 503 || !strings.Contains(string(b), "storage_unavailable") || !strings.Contains(string(b), "outcome is unknown") {
		t.Fatalf("insert with RETURNING and no write quorum: HTTP %d %s", st, b)
	}
	// Later writes wait for the pending commit, then fail the same way.
	st, b, _ = ti.call(t, "POST", "/v1/execute", txn(`INSERT INTO t(v) VALUES ('txn1')`, `INSERT INTO t(v) VALUES ('txn2')`))
	if st != 503 || !strings.Contains(string(b), "storage_unavailable") {
		t.Fatalf("transaction with no write quorum: HTTP %d %s", st, b)
	}
	if got := count(); got != `[[1,"acked"]]` {
		t.Fatalf("reads with no write quorum show %s, want only the acknowledged row", got)
	}
	for _, i := range []int{0, 2, 4} {
		ti.nodes[i].start(nil)
	}
	// The first write after the nodes are back waits for what was pending.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, b, _ = ti.call(t, "POST", "/v1/execute", exec(`INSERT INTO t(v) VALUES ('after')`))
		if st == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes did not resume with the nodes back: HTTP %d %s", st, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	got := count()
	t.Logf("rows after the nodes came back: %s", got)
	// The RETURNING insert was submitted and commits; the transaction
	// waited behind it and was refused before it committed, or committed
	// after it: either way no row is lost or half there.
	if got != `[[3,"acked,returning,after"]]` && got != `[[5,"acked,returning,txn1,txn2,after"]]` {
		t.Fatalf("after the nodes came back: %s", got)
	}
	var r QueryResponse
	ti.ok(t, "/v1/query", query(`PRAGMA integrity_check`), &r)
	if b, _ := json.Marshal(r.Rows); string(b) != `[["ok"]]` {
		t.Fatalf("integrity_check: %s", b)
	}
}
