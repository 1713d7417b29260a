package sqlclient

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// appendExecute appends the JSON body of POST /v1/execute to b. It writes
// the common values itself, without encoding/json's reflection, and what
// encodeParams made of the rest through their MarshalJSON.
func appendExecute(b []byte, statements []Statement, transaction bool) ([]byte, error) {
	b = append(b, `{"statements":[`...)
	for i, s := range statements {
		if i > 0 {
			b = append(b, ',')
		}
		var err error
		if b, err = appendStatement(b, s); err != nil {
			return nil, fmt.Errorf("statement %d: %w", i+1, err)
		}
	}
	b = append(b, `],"transaction":`...)
	b = strconv.AppendBool(b, transaction)
	return append(b, '}'), nil
}

// appendStatement appends {"sql": ..., "params": [...]}: a statement of
// an execute body, or the whole body of a query.
func appendStatement(b []byte, s Statement) ([]byte, error) {
	params, err := encodeParams(s.Params)
	if err != nil {
		return nil, err
	}
	b = append(b, `{"sql":`...)
	b = appendJSONString(b, s.SQL)
	if len(params) > 0 {
		b = append(b, `,"params":[`...)
		for i, p := range params {
			if i > 0 {
				b = append(b, ',')
			}
			if b, err = appendJSONValue(b, p); err != nil {
				return nil, fmt.Errorf("parameter %d: %w", i+1, err)
			}
		}
		b = append(b, ']')
	}
	return append(b, '}'), nil
}

// appendJSONValue appends one parameter as encodeParams left it.
func appendJSONValue(b []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case bool:
		return strconv.AppendBool(b, v), nil
	case string:
		return appendJSONString(b, v), nil
	case int:
		return strconv.AppendInt(b, int64(v), 10), nil
	case int64:
		return strconv.AppendInt(b, v, 10), nil
	case int32:
		return strconv.AppendInt(b, int64(v), 10), nil
	case uint64:
		return strconv.AppendUint(b, v, 10), nil
	}
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(b, j...), nil
}

// appendJSONString appends s as a JSON string, as encoding/json writes it
// (HTML characters escaped, invalid UTF-8 as U+FFFD). A string of plain
// printable ASCII, the common case, is copied as it is.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			j, _ := json.Marshal(s) // a string always encodes
			return append(b, j...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// executeReply is the reply of POST /v1/execute.
type executeReply struct {
	Results []struct {
		RowsAffected int64 `json:"rows_affected"`
		LastInsertID int64 `json:"last_insert_id"`
		wireRows
	} `json:"results"`
}

// results are the reply's results, one for each of n statements.
func (r *executeReply) results(n int) ([]Result, error) {
	results := make([]Result, len(r.Results))
	for i, res := range r.Results {
		results[i] = Result{RowsAffected: res.RowsAffected, LastInsertID: res.LastInsertID}
		if len(res.Columns) > 0 {
			rows, err := res.wireRows.decode()
			if err != nil {
				return nil, fmt.Errorf("statement %d: %w", i+1, err)
			}
			results[i].Rows = rows
		}
	}
	if len(results) != n {
		return results, fmt.Errorf("the server returned %d results for %d statements", len(results), n)
	}
	return results, nil
}

// decodeJSON decodes the one JSON value in b into v.
func decodeJSON(b []byte, v any) error {
	if len(bytes.TrimSpace(b)) == 0 {
		return errors.New("empty reply")
	}
	return json.Unmarshal(b, v)
}
