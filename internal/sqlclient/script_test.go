package sqlclient

import (
	"encoding/json"
	"math"
	"reflect"
	"testing"
)

func TestSplit(t *testing.T) {
	for _, tc := range []struct {
		script string
		want   []string
		rest   string
	}{
		{"SELECT 1", nil, "SELECT 1"},
		{"SELECT 1;", []string{"SELECT 1"}, ""},
		{"  SELECT 1 ;\n  SELECT 2;  ", []string{"SELECT 1", "SELECT 2"}, "  "},
		{";;SELECT 1;;", []string{"SELECT 1"}, ""},
		{"INSERT INTO t VALUES ('a;b', \"c;d\", `e;f`, [g;h]);", []string{"INSERT INTO t VALUES ('a;b', \"c;d\", `e;f`, [g;h])"}, ""},
		{"SELECT 'it''s; here';", []string{"SELECT 'it''s; here'"}, ""},
		{"SELECT 1 -- a comment; not the end\n, 2;", []string{"SELECT 1 -- a comment; not the end\n, 2"}, ""},
		{"SELECT /* ; */ 1;", []string{"SELECT /* ; */ 1"}, ""},
		{"-- only a comment;\n;SELECT 1;", []string{"SELECT 1"}, ""},
		{"/* only */;", nil, ""},
		{"SELECT 1; SELECT 'unfinished; still", []string{"SELECT 1"}, " SELECT 'unfinished; still"},
		{"SELECT 1; /* open; comment", []string{"SELECT 1"}, " /* open; comment"},
		{"SELECT 1; -- trailing", []string{"SELECT 1"}, " -- trailing"},
		{"BEGIN; INSERT INTO t VALUES (1); COMMIT;", []string{"BEGIN", "INSERT INTO t VALUES (1)", "COMMIT"}, ""},
		// A trigger's body holds statements: it ends at END followed by ';'.
		{"CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE u SET n = n + 1; DELETE FROM v; END; SELECT 1;",
			[]string{"CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE u SET n = n + 1; DELETE FROM v; END", "SELECT 1"}, ""},
		{"create temp trigger if not exists tr after delete on t begin select 1; end ;",
			[]string{"create temp trigger if not exists tr after delete on t begin select 1; end"}, ""},
		{"CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE u SET n = 1;", nil, "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE u SET n = 1;"},
		// END is special only in a trigger.
		{"SELECT CASE WHEN 1 THEN 2 END; SELECT 3;", []string{"SELECT CASE WHEN 1 THEN 2 END", "SELECT 3"}, ""},
		{"CREATE TABLE trigger_log(a); SELECT 1;", []string{"CREATE TABLE trigger_log(a)", "SELECT 1"}, ""},
		{"SELECT 'héllo; wörld';", []string{"SELECT 'héllo; wörld'"}, ""},
	} {
		got, rest := Split(tc.script)
		if !reflect.DeepEqual(got, tc.want) || rest != tc.rest {
			t.Errorf("Split(%q) = %q, rest %q; want %q, rest %q", tc.script, got, rest, tc.want, tc.rest)
		}
	}
}

func TestBlank(t *testing.T) {
	for s, want := range map[string]bool{
		"":                  true,
		"  \n\t":            true,
		"-- comment":        true,
		"/* done */ -- x\n": true,
		"/* open":           false,
		"'":                 false,
		"SELECT":            false,
	} {
		if Blank(s) != want {
			t.Errorf("Blank(%q) = %v", s, !want)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		kind Kind
		name string
	}{
		{"SELECT 1", Read, ""},
		{"  select * from t", Read, ""},
		{"-- why\nSELECT 1", Read, ""},
		{"/* x */ VALUES (1), (2)", Read, ""},
		{"WITH x AS (SELECT 1) SELECT * FROM x", Read, ""},
		{"WITH RECURSIVE c(n) AS (VALUES(1) UNION ALL SELECT n+1 FROM c WHERE n < 5) SELECT n FROM c", Read, ""},
		{"WITH x AS (SELECT 1), y(a) AS NOT MATERIALIZED (SELECT 2) INSERT INTO t SELECT * FROM x", Write, ""},
		{"WITH old AS (SELECT k FROM t) DELETE FROM t WHERE k IN old", Write, ""},
		{"EXPLAIN QUERY PLAN SELECT * FROM t", Read, ""},
		{"EXPLAIN INSERT INTO t VALUES (1)", Read, ""},
		{"PRAGMA integrity_check", Read, ""},
		{"PRAGMA table_info(t)", Read, ""},
		{"pragma user_version = 3", Write, ""},
		{"INSERT INTO t VALUES (1)", Write, ""},
		{"REPLACE INTO t VALUES (1)", Write, ""},
		{"UPDATE t SET a = 'SELECT'", Write, ""},
		{"CREATE TABLE t(a)", Write, ""},
		{"DELETE FROM t", Write, ""},
		{"BEGIN", Begin, ""},
		{"begin immediate transaction", Begin, ""},
		{"COMMIT", Commit, ""},
		{"END TRANSACTION", Commit, ""},
		{"ROLLBACK", Rollback, ""},
		{"ROLLBACK TRANSACTION", Rollback, ""},
		{"ROLLBACK TO sp1", Write, ""},
		{"ROLLBACK TRANSACTION TO SAVEPOINT sp1", Write, ""},
		{"SAVEPOINT sp1", Savepoint, "sp1"},
		{`SAVEPOINT "my ""sp"""`, Savepoint, `my "sp"`},
		{"RELEASE sp1", Release, "sp1"},
		{"RELEASE SAVEPOINT [sp 2]", Release, "sp 2"},
		{"", Write, ""},
	} {
		kind, name := Classify(tc.sql)
		if kind != tc.kind || name != tc.name {
			t.Errorf("Classify(%q) = %v %q; want %v %q", tc.sql, kind, name, tc.kind, tc.name)
		}
	}
}

func TestKeyword(t *testing.T) {
	for stmt, want := range map[string]string{"vacuum": "VACUUM", " /* x */ VACUUM INTO 'f'": "VACUUM", "-- only": "", "'x'": "", ";\n; COMMIT": "COMMIT"} {
		if got := Keyword(stmt); got != want {
			t.Errorf("Keyword(%q) = %q, want %q", stmt, got, want)
		}
	}
}

func TestInfinitiesAsParams(t *testing.T) {
	out, err := encodeParams([]any{math.Inf(1), float32(math.Inf(-1)), float32(0.5), 2.5})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(out)
	if string(b) != `[{"real":"Infinity"},{"real":"-Infinity"},0.5,2.5]` {
		t.Fatalf("encoded %s", b)
	}
	if _, err := encodeParams([]any{math.NaN()}); err == nil {
		t.Fatal("NaN encoded")
	}
	for raw, want := range map[string]float64{`{"real":"Infinity"}`: math.Inf(1), `{"real":"-Infinity"}`: math.Inf(-1)} {
		v, err := decodeValue(json.RawMessage(raw))
		if err != nil || v != want {
			t.Fatalf("decodeValue(%s) = %v, %v", raw, v, err)
		}
	}
}
