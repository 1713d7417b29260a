package dbserver

import (
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"math"
	"strings"
	"time"

	"github.com/borealis-db/borealis/internal/sqlclient"
)

// readRows reads and closes rows: at most Config.MaxRows of them. Each value
// is in its JSON form (jsonValue), which keeps its storage class: a REAL
// always has a point or an exponent, an INTEGER never. A column's type is
// its declared type, or for a column without one (an expression) the class
// of its values (columnClass).
func (s *Instance) readRows(rows *sql.Rows) (*QueryResponse, error) {
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	ctypes, _ := rows.ColumnTypes()
	n := len(cols)
	resp := &QueryResponse{Columns: cols, Types: make([]string, n), Rows: [][]any{}}
	// classes are the classes of the values of the columns with no declared
	// type so far; nil when every column has one.
	var classes []columnClass
	for i := range cols {
		if i < len(ctypes) {
			resp.Types[i] = strings.ToUpper(ctypes[i].DatabaseTypeName())
		}
		if resp.Types[i] == "" && classes == nil {
			classes = make([]columnClass, n)
		}
	}
	for i := range classes {
		if resp.Types[i] != "" {
			classes[i] = classDeclared
		}
	}
	var reals realTexts
	// Rows take their values from chunks of a few rows' worth (growing with
	// the result, up to rowsPerChunk), and Scan reuses ptrs: a row costs no
	// allocation of its own.
	ptrs := make([]any, n)
	var chunk []any
	for rows.Next() {
		if len(resp.Rows) >= s.cfg.MaxRows {
			return nil, errTooManyRows(s.cfg.MaxRows)
		}
		if len(chunk) < n {
			chunk = make([]any, n*min(max(len(resp.Rows), 1), rowsPerChunk))
		}
		vals := chunk[:n:n]
		chunk = chunk[n:]
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		for i, v := range vals {
			var c columnClass
			vals[i], c = jsonValue(v, &reals)
			if classes != nil {
				classes[i] = classes[i].with(c)
			}
		}
		resp.Rows = append(resp.Rows, vals)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	reals.finish()
	for i, c := range classes {
		if c != classDeclared {
			resp.Types[i] = c.String()
		}
	}
	return resp, rows.Close()
}

// rowsPerChunk bounds the rows whose values readRows allocates at once.
const rowsPerChunk = 256

// infinities in their JSON form, {"real": "Infinity"}, shared by every
// value that is one.
var (
	posInfJSON = json.RawMessage(`{"real":"Infinity"}`)
	negInfJSON = json.RawMessage(`{"real":"-Infinity"}`)
)

// jsonValue is the value v that database/sql scanned in the form the API
// writes it, and its storage class. A REAL becomes the text
// sqlclient.AppendReal writes (2.0, -0.0, 1e+300), made by reals (and
// complete once reals.finish has run); integers, text and NULL stay as they
// are.
func jsonValue(v any, reals *realTexts) (any, columnClass) {
	switch x := v.(type) {
	case int64:
		return v, classInteger
	case string:
		return v, classText
	case nil:
		return nil, classNull
	case float64:
		switch {
		case math.IsInf(x, 1):
			return &posInfJSON, classReal
		case math.IsInf(x, -1):
			return &negInfJSON, classReal
		case math.IsNaN(x):
			// SQLite stores no NaN (it becomes NULL).
			return nil, classNull
		}
		return reals.add(x), classReal
	case []byte:
		return map[string]string{"base64": base64.StdEncoding.EncodeToString(x)}, classBlob
	case time.Time:
		// The driver makes a time of text that looks like one (and of any
		// value in a column declared DATE, DATETIME, TIME or TIMESTAMP).
		return x.Format(time.RFC3339Nano), classText
	case bool:
		// The driver makes a bool of 0 or 1 in a column declared BOOLEAN.
		return v, classInteger
	}
	return v, classMixed
}

// realTexts makes the JSON text of a result's REALs. Each REAL is a
// *json.Number in a chunk of them, which encoding/json writes as it is; the
// texts of a chunk's REALs are one string, made once the chunk is full or
// by finish. A REAL costs no allocation of its own.
type realTexts struct {
	chunk []json.Number // the chunk being filled
	text  []byte        // the texts of its REALs that have none yet, one after the other
	ends  []int         // where each of those ends in text
}

// add returns the value of the REAL x, which has its text once its chunk is
// full or finish has run.
func (r *realTexts) add(x float64) *json.Number {
	if len(r.chunk) == cap(r.chunk) {
		r.finish()
		// A new chunk: the values handed out point into the old one.
		r.chunk = make([]json.Number, 0, min(max(2*cap(r.chunk), 4), rowsPerChunk))
	}
	r.text = sqlclient.AppendReal(r.text, x)
	r.ends = append(r.ends, len(r.text))
	r.chunk = append(r.chunk, "")
	return &r.chunk[len(r.chunk)-1]
}

// finish gives their text to the values of the chunk being filled that
// have none yet.
func (r *realTexts) finish() {
	if len(r.ends) == 0 {
		return
	}
	all := string(r.text)
	vals := r.chunk[len(r.chunk)-len(r.ends):]
	start := 0
	for i, end := range r.ends {
		vals[i] = json.Number(all[start:end])
		start = end
	}
	r.text, r.ends = r.text[:0], r.ends[:0]
}

// columnClass is the storage class of a column's values, for a column with
// no declared type: the class every non-NULL value has, classMixed when
// they differ, classNull when every value is NULL, and classNone when there
// are no rows. classDeclared marks a column that has a declared type.
type columnClass uint8

const (
	classNone columnClass = iota
	classNull
	classInteger
	classReal
	classText
	classBlob
	classMixed
	classDeclared
)

// with is c after one more value, of class v (never classDeclared).
func (c columnClass) with(v columnClass) columnClass {
	switch {
	case c == v, c == classDeclared, v == classNull && c != classNone:
		return c
	case c == classNone, c == classNull:
		return v
	}
	return classMixed
}

// String is the column's type as /v1/query reports it: INTEGER, REAL,
// TEXT, BLOB, ANY (values of different classes), NULL (only NULLs) or ""
// (no rows).
func (c columnClass) String() string {
	switch c {
	case classNull:
		return "NULL"
	case classInteger:
		return "INTEGER"
	case classReal:
		return "REAL"
	case classText:
		return "TEXT"
	case classBlob:
		return "BLOB"
	case classMixed:
		return "ANY"
	}
	return ""
}
