package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// runCLI runs the borealis binary with args and stdin, and returns what it
// printed on stdout and stderr and its exit code.
func runCLI(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("borealis %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// cliSQL runs `borealis sql` with args and stdin (runCLI).
func cliSQL(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runCLI(t, stdin, append([]string{"sql"}, args...)...)
}

// TestSQLCommandOnUp runs `borealis sql` against the writer of a real `up`
// cluster: scripts with -e, tables and JSON, a transaction, the server's
// errors, statements on stdin, dot commands and --endpoint.
func TestSQLCommandOnUp(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	u := startUp(t, dir, "--base-port", fmt.Sprint(freeBasePort(t)))
	f := u.waitReady()
	ok := func(stdin string, args ...string) string {
		t.Helper()
		out, errOut, code := cliSQL(t, stdin, append([]string{"--dir", dir}, args...)...)
		if code != 0 {
			t.Fatalf("sql %v: exit %d\n%s%s", args, code, out, errOut)
		}
		return out
	}

	if out := ok("", "-e", `CREATE TABLE acct(id INTEGER PRIMARY KEY, owner TEXT NOT NULL UNIQUE, balance REAL, photo BLOB);
		INSERT INTO acct(owner, balance, photo) VALUES ('alice', 100, x'DEADBEEF'), ('bob', 20.5, NULL);
		-- a comment; with a semicolon
		INSERT INTO acct(owner, balance) VALUES ('semi;colon', 0)`); out != "" {
		t.Fatalf("writes printed %q", out)
	}
	table := ok("", "-e", "SELECT id, owner, balance, photo FROM acct ORDER BY id")
	want := "id  owner       balance  photo\n" +
		"--  ----------  -------  -----------\n" +
		" 1  alice         100.0  X'DEADBEEF'\n" +
		" 2  bob            20.5  NULL\n" +
		" 3  semi;colon      0.0  NULL\n"
	if table != want {
		t.Fatalf("table:\n%s\nwant:\n%s", table, want)
	}

	// Wide characters, a long blob and an infinity, as the server sends
	// them: the table measures the header as its cells, summarizes the blob
	// and prints Inf; --json prints the infinity as the API does.
	table = ok("", "-e", "SELECT '日本' AS 名前, 1e300*1e10 AS inf, zeroblob(1048576) AS b")
	want = "名前  inf  b\n" +
		"----  ---  ---------------------------------------\n" +
		"日本  Inf  <blob 1048576 bytes: 0000000000000000…>\n"
	if table != want {
		t.Fatalf("table:\n%s\nwant:\n%s", table, want)
	}
	if out := ok("", "--json", "-e", "SELECT 1e300*1e10 AS x, -1e300*1e10 AS y"); !strings.Contains(out, `"rows":[[{"real":"Infinity"},{"real":"-Infinity"}]]`) {
		t.Fatalf("--json of infinities: %q", out)
	}

	// A transfer in one transaction, then the balances as JSON.
	ok("", "-e", "BEGIN; UPDATE acct SET balance = balance - 10 WHERE owner = 'alice'; UPDATE acct SET balance = balance + 10 WHERE owner = 'bob'; COMMIT;")
	// A rolled-back transaction sends nothing.
	ok("", "-e", "BEGIN; DELETE FROM acct; ROLLBACK;")
	var res struct {
		Columns []string `json:"columns"`
		Types   []string `json:"types"`
		Rows    [][]any  `json:"rows"`
	}
	out := ok("", "--json", "-e", "SELECT owner, balance, photo FROM acct ORDER BY id")
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("--json printed %q: %v", out, err)
	}
	wantRows := [][]any{{"alice", 90.0, map[string]any{"base64": "3q2+7w=="}}, {"bob", 30.5, nil}, {"semi;colon", 0.0, nil}}
	if !reflect.DeepEqual(res.Columns, []string{"owner", "balance", "photo"}) || len(res.Types) != 3 || !reflect.DeepEqual(res.Rows, wantRows) {
		t.Fatalf("--json: %s", out)
	}
	out = ok("", "--json", "-e", "INSERT INTO acct(owner) VALUES ('carol')")
	if strings.TrimSpace(out) != `{"results":[{"rows_affected":1,"last_insert_id":4}]}` {
		t.Fatalf("--json of an insert: %q", out)
	}

	// The server's errors, with their codes, and a non-zero exit.
	for _, tc := range []struct{ script, want string }{
		{"SELECT * FROM nope", "sql_error"},
		{"INSERT INTO acct(owner) VALUES ('alice')", "constraint_violation"},
		{"SELECT 1; INSERT INTO acct(owner) VALUES ('bob'); INSERT INTO acct(owner) VALUES ('dave')", "UNIQUE constraint failed"},
	} {
		_, errOut, code := cliSQL(t, "", "--dir", dir, "-e", tc.script)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Fatalf("%s: exit %d, stderr %q; want an error with %q", tc.script, code, errOut, tc.want)
		}
	}
	// The failed script stopped at its error: dave was not inserted.
	if out := ok("", "-e", "SELECT count(*) AS n FROM acct WHERE owner = 'dave'"); out != "n\n-\n0\n" {
		t.Fatalf("after the failed script: %q", out)
	}

	// Statements and dot commands on stdin, as a script would pipe them.
	out = ok("CREATE TABLE notes(k INTEGER PRIMARY KEY, body TEXT);\nINSERT INTO notes(body)\n  VALUES ('one'), ('two');\n.tables\nSELECT count(*) AS notes FROM notes;\n.schema notes\n.status\n")
	for _, s := range []string{
		"acct   notes\n",
		"notes\n-----\n    2\n",
		"CREATE TABLE notes(k INTEGER PRIMARY KEY, body TEXT);\n",
		"role      writer\n", "volume    main", "ready     true\n",
	} {
		if !strings.Contains(out, s) {
			t.Fatalf("stdin script output lacks %q:\n%s", s, out)
		}
	}
	// Statements on stdin stop at the first error too.
	_, errOut, code := cliSQL(t, "INSERT INTO notes(body) VALUES ('three');\nSELECT * FROM nope;\nINSERT INTO notes(body) VALUES ('four');\n", "--dir", dir)
	if code == 0 || !strings.Contains(errOut, "no such table: nope") {
		t.Fatalf("stdin error: exit %d, %q", code, errOut)
	}

	// --endpoint instead of --dir reaches the same writer.
	writer, found := f.Find("writer")
	if !found {
		t.Fatalf("cluster.json lists no writer: %+v", f.Components)
	}
	out, errOut, code = cliSQL(t, "", "--endpoint", "http://"+writer.Addr, "--json", "-e", "SELECT group_concat(body, ',') AS b FROM notes")
	if code != 0 || !strings.Contains(out, `"rows":[["one,two,three"]]`) {
		t.Fatalf("--endpoint: exit %d, %q %q", code, out, errOut)
	}

	// A directory without a running cluster is named in a clear error.
	_, errOut, code = cliSQL(t, "", "--dir", t.TempDir(), "-e", "SELECT 1")
	if code == 0 || !strings.Contains(errOut, "no running cluster in") || !strings.Contains(errOut, "borealis up") {
		t.Fatalf("no cluster: exit %d, %q", code, errOut)
	}
}

// TestBenchSQLJSON runs `borealis bench sql --json` end to end (it starts its
// own cluster, writer included) and checks the report's shape.
func TestBenchSQLJSON(t *testing.T) {
	cmd := exec.Command(binary, "bench", "sql", "--json", "--duration", "300ms", "--dir", t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bench sql: %v\n%s\n%s", err, out, stderr.String())
	}
	var rep struct {
		Floor       *float64 `json:"floor_p50_ms"`
		QuorumFloor *float64 `json:"quorum_floor_p50_ms"`
		Insert      []struct {
			Clients  int      `json:"clients"`
			TPS      *float64 `json:"tps"`
			P50      *float64 `json:"p50_ms"`
			P99      *float64 `json:"p99_ms"`
			Redo     *float64 `json:"redo_bytes_per_txn"`
			FullPage *float64 `json:"full_page_bytes_per_txn"`
			CPU      *struct {
				Writer         float64 `json:"writer"`
				StoragePerNode float64 `json:"storage_per_node"`
				Control        float64 `json:"control"`
				Client         float64 `json:"client"`
				Total          float64 `json:"total"`
			} `json:"cpu_us_per_txn"`
			PerRecord *float64 `json:"storage_cpu_us_per_record_per_node"`
			Disk      *float64 `json:"disk_bytes_per_txn_per_node"`
			CtxSw     *float64 `json:"context_switches_per_txn"`
		} `json:"insert"`
		Select []struct {
			Clients int      `json:"clients"`
			QPS     *float64 `json:"qps"`
			P50     *float64 `json:"p50_ms"`
			P99     *float64 `json:"p99_ms"`
		} `json:"select"`
		Space *struct {
			Live      int64            `json:"live_bytes"`
			Footprint map[string]int64 `json:"footprint_bytes_by_node"`
			Ratio     float64          `json:"footprint_over_live"`
		} `json:"space"`
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("bench output is not a JSON object: %v\n%s", err, out)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("more than one JSON object:\n%s", out)
	}
	levels := []int{1, 8, 32, 64}
	if rep.Floor == nil || *rep.Floor <= 0 || rep.QuorumFloor == nil || *rep.QuorumFloor <= 0 || len(rep.Insert) != len(levels) || len(rep.Select) != len(levels) {
		t.Fatalf("report: %s", out)
	}
	for i, l := range rep.Insert {
		if l.Clients != levels[i] || l.TPS == nil || *l.TPS <= 0 || l.P50 == nil || l.P99 == nil || *l.P99 < *l.P50 ||
			l.Redo == nil || *l.Redo <= 0 || l.FullPage == nil || *l.FullPage <= 0 {
			t.Fatalf("insert level %d: %s", i, out)
		}
		// Every process of the cluster is on this machine, so each is
		// metered; the writer and the nodes did work in every level (the
		// client may use less than one clock tick, 10 ms, in a short level).
		if c := l.CPU; c == nil || c.Writer <= 0 || c.StoragePerNode <= 0 || c.Client < 0 ||
			c.Total < c.Writer+6*c.StoragePerNode+c.Control+c.Client-1e-6 || l.PerRecord == nil || *l.PerRecord <= 0 || l.Disk == nil || *l.Disk <= 0 || l.CtxSw == nil || *l.CtxSw <= 0 {
			t.Fatalf("insert level %d's costs: %s", i, out)
		}
	}
	if sp := rep.Space; sp == nil || sp.Live <= 0 || len(sp.Footprint) != 6 || sp.Ratio <= 0 {
		t.Fatalf("space: %s", out)
	}
	for i, l := range rep.Select {
		if l.Clients != levels[i] || l.QPS == nil || *l.QPS <= 0 || l.P50 == nil || l.P99 == nil || *l.P99 < *l.P50 {
			t.Fatalf("select level %d: %s", i, out)
		}
	}
	if !strings.Contains(stderr.String(), "INSERT: 64 clients") || !strings.Contains(stderr.String(), "SELECT: 64 clients") {
		t.Fatalf("no progress on stderr:\n%s", stderr.String())
	}
}
