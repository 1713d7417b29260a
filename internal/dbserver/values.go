package dbserver

import (
	"database/sql"
	"encoding/base64"
	"math"
	"strings"
	"time"
)

// readRows reads and closes rows: at most Config.MaxRows of them.
func (s *Instance) readRows(rows *sql.Rows) (*QueryResponse, error) {
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	ctypes, _ := rows.ColumnTypes()
	resp := &QueryResponse{Columns: cols, Types: make([]string, len(cols)), Rows: [][]any{}}
	for i := range cols {
		if i < len(ctypes) {
			resp.Types[i] = strings.ToUpper(ctypes[i].DatabaseTypeName())
		}
	}
	for rows.Next() {
		if len(resp.Rows) >= s.cfg.MaxRows {
			return nil, errTooManyRows(s.cfg.MaxRows)
		}
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		for i, v := range vals {
			vals[i] = jsonValue(v)
			if resp.Types[i] == "" {
				resp.Types[i] = typeOf(v)
			}
		}
		resp.Rows = append(resp.Rows, vals)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return resp, rows.Close()
}

func jsonValue(v any) any {
	switch x := v.(type) {
	case []byte:
		return map[string]string{"base64": base64.StdEncoding.EncodeToString(x)}
	case time.Time:
		return x.Format(time.RFC3339Nano)
	case float64:
		// JSON has no infinities; SQLite stores no NaN (it becomes NULL).
		if math.IsInf(x, 1) {
			return map[string]string{"real": "Infinity"}
		}
		if math.IsInf(x, -1) {
			return map[string]string{"real": "-Infinity"}
		}
		if math.IsNaN(x) {
			return nil
		}
	}
	return v
}

func typeOf(v any) string {
	switch v.(type) {
	case int64:
		return "INTEGER"
	case float64:
		return "REAL"
	case string, time.Time:
		return "TEXT"
	case []byte:
		return "BLOB"
	}
	return "NULL"
}
