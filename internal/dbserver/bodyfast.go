package dbserver

import (
	"encoding/json"
	"strconv"
)

// decodeFast decodes a body of the usual shape into v (*executeBody or
// *queryBody) without encoding/json's reflection, and reports whether it
// did. It takes only what json.Unmarshal would decode to the same value
// with no error: valid JSON, each known field once, in its own lower case,
// of its own JSON type. Anything else is left to decodeBody's slow path,
// which is the reference for what a body means and for the errors a bad one
// gets.
func decodeFast(body []byte, v any) bool {
	body = trimJSONSpace(body)
	if len(body) == 0 || body[0] != '{' || !json.Valid(body) {
		return false
	}
	switch v := v.(type) {
	case *executeBody:
		var out executeBody
		var seen [2]bool
		ok := true
		eachMember(body, func(key string, val []byte) {
			switch {
			case !ok:
			case key == "statements" && !seen[0] && val[0] == '[':
				seen[0] = true
				out.Statements = []statementBody{}
				eachElement(val, func(elem []byte) {
					var st statementBody
					if ok = ok && statementFast(elem, &st, nil); ok {
						out.Statements = append(out.Statements, st)
					}
				})
			case key == "transaction" && !seen[1] && (val[0] == 't' || val[0] == 'f'):
				seen[1] = true
				out.Transaction = val[0] == 't'
			default:
				ok = false
			}
		})
		if ok {
			*v = out
		}
		return ok
	case *queryBody:
		var out queryBody
		if !statementFast(body, &out.statementBody, &out.MinLSN) {
			return false
		}
		*v = out
		return true
	}
	return false
}

// statementFast decodes {"sql": "...", "params": [...]} into st, and
// "min_lsn" into minLSN when it is not nil (a query's body).
func statementFast(data []byte, st *statementBody, minLSN *uint64) bool {
	if data[0] != '{' {
		return false
	}
	var seen [3]bool
	ok := true
	eachMember(data, func(key string, val []byte) {
		switch {
		case !ok:
		case key == "sql" && !seen[0] && val[0] == '"':
			seen[0] = true
			st.SQL = jsonString(val)
		case key == "params" && !seen[1] && val[0] == '[':
			seen[1] = true
			st.Params = []param{}
			eachElement(val, func(elem []byte) {
				var p param
				p.v, p.err = sqlValue(elem)
				st.Params = append(st.Params, p)
			})
		case key == "min_lsn" && minLSN != nil && !seen[2] && val[0] >= '0' && val[0] <= '9':
			seen[2] = true
			n, err := strconv.ParseUint(string(val), 10, 64)
			ok = err == nil
			*minLSN = n
		default:
			ok = false
		}
	})
	return ok
}

func trimJSONSpace(b []byte) []byte {
	i := jsonSpace(b, 0)
	j := len(b)
	for j > i && (b[j-1] == ' ' || b[j-1] == '\t' || b[j-1] == '\n' || b[j-1] == '\r') {
		j--
	}
	return b[i:j]
}
