package dbserver

import (
	"database/sql"
	"encoding/json"
	"io"
	"testing"

	_ "github.com/ncruces/go-sqlite3/driver" // "sqlite3"
)

// BenchmarkReadRows measures what /v1/query does with a result once SQLite
// has it: readRows scans it and turns each value into its JSON form, and
// writeJSON encodes the reply ("scan+encode"); "encode" is the encoding
// alone. It runs on an in-memory database, without a volume or HTTP, so that
// the values' cost is most of what it measures.
func BenchmarkReadRows(b *testing.B) {
	db, err := sql.Open("sqlite3", ":memory:")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1) // one connection, one in-memory database
	if _, err := db.Exec(`CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT, r REAL);
		WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 1000)
		INSERT INTO t SELECT i, 'value ' || i, i / 8.0 FROM n`); err != nil {
		b.Fatal(err)
	}
	s := &Instance{cfg: Config{MaxRows: 100000}}
	for _, bc := range []struct{ name, sql string }{
		{"1row-int-text", `SELECT k, v FROM t WHERE k = 500`},
		{"1000rows-int-text", `SELECT k, v FROM t`},
		{"1000rows-int-real", `SELECT k, r FROM t`},
		{"1000rows-expr", `SELECT k + 1, v || '' FROM t`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			stmt, err := db.Prepare(bc.sql)
			if err != nil {
				b.Fatal(err)
			}
			defer stmt.Close()
			read := func(b *testing.B) *QueryResponse {
				rows, err := stmt.Query()
				if err != nil {
					b.Fatal(err)
				}
				resp, err := s.readRows(rows)
				if err != nil {
					b.Fatal(err)
				}
				return resp
			}
			encode := func(b *testing.B, resp *QueryResponse) {
				if err := json.NewEncoder(io.Discard).Encode(resp); err != nil {
					b.Fatal(err)
				}
			}
			b.Run("scan+encode", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					encode(b, read(b))
				}
			})
			b.Run("encode", func(b *testing.B) {
				resp := read(b)
				b.ReportAllocs()
				for b.Loop() {
					encode(b, resp)
				}
			})
		})
	}
}
