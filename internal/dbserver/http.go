package dbserver

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/sqlvfs"
	"github.com/borealis-db/borealis/internal/volume"
)

// Error codes of the SQL API. They are part of the API: never renamed.
const (
	CodeSQL                = "sql_error"
	CodeConstraint         = "constraint_violation"
	CodeBadRequest         = "bad_request"
	CodeBadParameter       = "bad_parameter"
	CodeBodyTooLarge       = "body_too_large"
	CodeStorageUnavailable = "storage_unavailable"
	CodeNotWriter          = "not_writer"
	CodeReadOnly           = "read_only"
	CodeNotReady           = "not_ready"
	CodeTooManyRows        = "too_many_rows"
	CodeBusy               = "busy"
	CodeTimeout            = "timeout"
	CodeInternal           = "internal"
)

// infinities are the REAL values JSON numbers cannot carry, as the API
// writes them: {"real": "Infinity"}.
var infinities = map[string]float64{"Infinity": math.Inf(1), "-Infinity": math.Inf(-1)}

// Statement is one SQL statement with its parameters.
type Statement struct {
	SQL    string            `json:"sql"`
	Params []json.RawMessage `json:"params,omitempty"`
}

// ExecuteRequest is the body of POST /v1/execute.
type ExecuteRequest struct {
	Statements  []Statement `json:"statements"`
	Transaction bool        `json:"transaction"`
}

// ExecResult is the outcome of one statement of /v1/execute.
type ExecResult struct {
	// RowsAffected: rows the statement itself inserted, updated or deleted
	// (0 for any other statement).
	RowsAffected int64 `json:"rows_affected"`
	// LastInsertID: the rowid of the last row the statement inserted, or 0.
	LastInsertID int64 `json:"last_insert_id"`
	// Set, with its columns, types and rows, for a statement that returns
	// rows: a SELECT, or an INSERT, UPDATE or DELETE with RETURNING.
	*QueryResponse
}

// ExecuteResponse is the reply of POST /v1/execute.
type ExecuteResponse struct {
	Results []ExecResult `json:"results"`
}

// QueryResponse is the reply of POST /v1/query.
type QueryResponse struct {
	Columns []string `json:"columns"`
	Types   []string `json:"types"`
	Rows    [][]any  `json:"rows"`
}

// ErrorBody is the body of every error reply.
type ErrorBody struct {
	Error APIError `json:"error"`
}

// APIError is an error with a stable code.
type APIError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *APIError) Error() string { return e.Code + ": " + e.Message }

func apiErr(status int, code, format string, args ...any) *APIError {
	return &APIError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Handler returns the SQL API of the instance.
func (s *Instance) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/execute", s.handleExecute)
	mux.HandleFunc("POST /v1/query", s.handleQuery)
	mux.HandleFunc("GET /v1/health", s.handleHealth)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, apiErr(http.StatusNotFound, CodeBadRequest, "no endpoint %s %s; the API has POST /v1/execute, POST /v1/query and GET /v1/health", r.Method, r.URL.Path))
	})
	allowed := map[string]string{"/v1/execute": "POST", "/v1/query": "POST", "/v1/health": "GET"}
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		if m, ok := allowed[r.URL.Path]; ok {
			w.Header().Set("Allow", m)
			writeErr(w, apiErr(http.StatusMethodNotAllowed, CodeBadRequest, "%s %s: this endpoint takes %s", r.Method, r.URL.Path, m))
			return
		}
		writeErr(w, apiErr(http.StatusNotFound, CodeBadRequest, "no endpoint %s %s; the API has POST /v1/execute, POST /v1/query and GET /v1/health", r.Method, r.URL.Path))
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, e *APIError) {
	writeJSON(w, e.Status, ErrorBody{Error: *e})
}

// decode reads a JSON body of at most MaxBodyBytes into v.
func (s *Instance) decode(w http.ResponseWriter, r *http.Request, v any) *APIError {
	body := http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return apiErr(http.StatusRequestEntityTooLarge, CodeBodyTooLarge,
				"request body is larger than %d bytes (%s), this instance's limit, which borealis db --max-body sets (default %s: a string or blob may be up to %s, and a blob parameter travels in base64, 4/3 of its size)",
				s.cfg.MaxBodyBytes, sizeText(s.cfg.MaxBodyBytes), sizeText(DefaultMaxBodyBytes), sizeText(MaxValueBytes))
		}
		return apiErr(http.StatusBadRequest, CodeBadRequest, "request body is not valid JSON for this endpoint: %v", err)
	}
	if dec.More() {
		return apiErr(http.StatusBadRequest, CodeBadRequest, "request body has data after the JSON object")
	}
	return nil
}

// params turns JSON parameters into SQLite values: integral numbers into
// integers, other numbers into reals, strings, booleans (as 0/1), null, and
// {"base64": "..."} into a blob.
func params(raw []json.RawMessage) ([]any, *APIError) {
	out := make([]any, len(raw))
	for i, r := range raw {
		var v any
		dec := json.NewDecoder(strings.NewReader(string(r)))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return nil, apiErr(http.StatusBadRequest, CodeBadParameter, "parameter %d: %v", i+1, err)
		}
		switch x := v.(type) {
		case nil, string, bool:
			out[i] = x
		case json.Number:
			if n, err := x.Int64(); err == nil {
				out[i] = n
			} else if f, err := x.Float64(); err == nil && !math.IsInf(f, 0) {
				out[i] = f
			} else {
				return nil, apiErr(http.StatusBadRequest, CodeBadParameter, "parameter %d: %s is not a number SQLite can hold", i+1, x)
			}
		case map[string]any:
			if r, ok := x["real"].(string); ok && len(x) == 1 {
				f, ok := infinities[r]
				if !ok {
					return nil, apiErr(http.StatusBadRequest, CodeBadParameter, `parameter %d: {"real": %q}: want "Infinity" or "-Infinity" (finite numbers are plain JSON numbers)`, i+1, r)
				}
				out[i] = f
				continue
			}
			b64, ok := x["base64"].(string)
			if !ok || len(x) != 1 {
				return nil, apiErr(http.StatusBadRequest, CodeBadParameter, `parameter %d: an object parameter must be {"base64": "..."} (a blob) or {"real": "Infinity"} (or "-Infinity")`, i+1)
			}
			b, err := base64.StdEncoding.DecodeString(b64)
			if err != nil {
				return nil, apiErr(http.StatusBadRequest, CodeBadParameter, "parameter %d: bad base64: %v", i+1, err)
			}
			out[i] = b
		default:
			return nil, apiErr(http.StatusBadRequest, CodeBadParameter, "parameter %d: %T is not a SQL value (use a number, string, boolean, null or {\"base64\": ...})", i+1, v)
		}
	}
	return out, nil
}

func (s *Instance) handleExecute(w http.ResponseWriter, r *http.Request) {
	var req ExecuteRequest
	if e := s.decode(w, r, &req); e != nil {
		writeErr(w, e)
		return
	}
	if len(req.Statements) == 0 {
		writeErr(w, apiErr(http.StatusBadRequest, CodeBadRequest, "no statements"))
		return
	}
	args := make([][]any, len(req.Statements))
	for i, st := range req.Statements {
		if noSQL(st.SQL) {
			writeErr(w, apiErr(http.StatusBadRequest, CodeBadRequest, "statement %d is empty (nothing but spaces, semicolons or comments)", i+1))
			return
		}
		a, e := params(st.Params)
		if e != nil {
			e.Message = fmt.Sprintf("statement %d: %s", i+1, e.Message)
			writeErr(w, e)
			return
		}
		args[i] = a
	}
	if req.Transaction {
		for i, st := range req.Statements {
			switch k, _ := sqlclient.Classify(st.SQL); k {
			case sqlclient.Begin, sqlclient.Commit, sqlclient.Rollback:
				writeErr(w, apiErr(http.StatusBadRequest, CodeBadRequest, "statement %d is %s, but \"transaction\": true already runs the statements in one transaction", i+1, strings.ToUpper(k.String())))
				return
			}
		}
	}
	ctx, cancel := context.WithTimeoutCause(r.Context(), s.cfg.RequestTimeout, errRequestTimeout)
	defer cancel()
	db, e := s.writable(ctx)
	if e != nil {
		writeErr(w, e)
		return
	}
	res, e := s.execute(ctx, db, req, args)
	if e != nil {
		writeErr(w, e)
		return
	}
	writeJSON(w, http.StatusOK, ExecuteResponse{Results: res})
}

func (s *Instance) execute(ctx context.Context, db *sqlvfs.DB, req ExecuteRequest, args [][]any) ([]ExecResult, *APIError) {
	conn, err := db.Writer.Conn(ctx)
	if err != nil {
		return nil, s.classify(ctx, nil, err, "")
	}
	defer conn.Close()
	if err := armPolicy(conn, false); err != nil {
		return nil, s.classify(ctx, conn, err, "")
	}
	var tainted bool
	defer func() {
		if tainted {
			discard(conn)
		}
	}()
	s.stats.executes.Add(1)
	type preparer interface {
		PrepareContext(context.Context, string) (*sql.Stmt, error)
	}
	var ex preparer = conn
	var tx *sql.Tx
	// One statement is atomic by itself: no BEGIN and COMMIT around it.
	if req.Transaction && len(req.Statements) > 1 {
		if tx, err = conn.BeginTx(ctx, nil); err != nil {
			return nil, s.classify(ctx, conn, err, "BEGIN")
		}
		ex = tx
	}
	results := make([]ExecResult, 0, len(req.Statements))
	for i, st := range req.Statements {
		err := checkParamCount(conn, st.SQL, len(args[i]))
		var out ExecResult
		if err == nil {
			out, err = s.execOne(ctx, conn, ex, st.SQL, args[i])
		}
		if err != nil {
			tainted = errors.Is(err, errTempObject)
			ownTxn := false
			if tx != nil {
				_ = tx.Rollback()
			} else if open, _ := inTransaction(conn); open {
				// The statements' own BEGIN: end it, or it would keep the
				// writer turn after the request.
				ownTxn = true
				_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
			}
			e := s.classify(ctx, conn, err, "")
			if len(req.Statements) > 1 {
				e.Message = fmt.Sprintf("statement %d: %s", i+1, e.Message)
				switch {
				case ownTxn:
					e.Message += " (the transaction the statements began was rolled back)"
				case !req.Transaction && i > 0:
					e.Message += " (statements before it ran in their own transactions, and those committed)"
				}
			}
			return nil, e
		}
		results = append(results, out)
	}
	if tx != nil {
		if err := tx.Commit(); err != nil {
			return nil, s.classify(ctx, conn, err, "COMMIT")
		}
	} else if open, err := inTransaction(conn); err != nil || open {
		// A BEGIN without its COMMIT would keep the writer turn after the
		// request: every other writer would wait for it.
		_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
		return nil, apiErr(http.StatusBadRequest, CodeBadRequest, "the statements left a transaction open (BEGIN without COMMIT or ROLLBACK); a transaction must end in the request that began it, so it was rolled back")
	}
	return results, nil
}

// noSQL reports whether SQLite would find no statement in q: nothing but
// spaces, semicolons and comments (an unfinished block comment included)
// before the end or a NUL, where SQLite stops reading. Such a string must
// not reach the driver: it prepares it to a statement with no SQLite
// statement behind it, whose NumInput panics inside database/sql, which then
// never gives the connection back, so the request never answers.
func noSQL(q string) bool {
	if i := strings.IndexByte(q, 0); i >= 0 {
		q = q[:i]
	}
	for i := 0; i < len(q); {
		switch c := q[i]; {
		case c == ';':
			i++
		case c == ' ', c == '\t', c == '\n', c == '\f', c == '\r':
			// SQLite's tokenizer starts a space at these, and then takes a
			// vertical tab too; a vertical tab first is an illegal token.
			for i++; i < len(q) && strings.IndexByte(" \t\n\v\f\r", q[i]) >= 0; i++ {
			}
		case strings.HasPrefix(q[i:], "--"):
			// The comment ends before its newline, which starts a space.
			j := strings.IndexByte(q[i:], '\n')
			if j < 0 {
				return true
			}
			i += j
		case strings.HasPrefix(q[i:], "/*") && i+2 < len(q):
			// "/*" at the very end is a slash to SQLite, not a comment.
			j := strings.Index(q[i+2:], "*/")
			if j < 0 {
				return true
			}
			i += 2 + j + 2
		default:
			return false
		}
	}
	return true
}

// execOne runs one statement on conn through p (conn, or a transaction on
// it). It is prepared first, which refuses a string of several statements:
// run as a script, a COMMIT inside one would end the request's transaction
// behind its back. It runs as a query, so that rows it returns (SELECT,
// RETURNING) come back; its counts come from the connection, since SQLite's
// change count is not reset by statements that change no rows, and the last
// insert rowid would otherwise be another request's.
func (s *Instance) execOne(ctx context.Context, conn *sql.Conn, p interface {
	PrepareContext(context.Context, string) (*sql.Stmt, error)
}, q string, args []any) (ExecResult, error) {
	var out ExecResult
	st, err := p.PrepareContext(ctx, q)
	if err != nil {
		return out, err
	}
	defer st.Close()
	var before int64
	var autocommit bool
	vacuum := sqlclient.Keyword(q) == "VACUUM"
	if err := rawConn(conn, func(c *sqlite3.Conn) {
		before = c.TotalChanges()
		autocommit = c.GetAutocommit()
		c.SetLastInsertRowID(0)
		if vacuum {
			c.SetAuthorizer(vacuumAuthorizer)
		}
	}); err != nil {
		return out, err
	}
	if vacuum {
		defer rawConn(conn, func(c *sqlite3.Conn) { c.SetAuthorizer(writerAuthorizer) })
	}
	if mayReturnRows(q) && !vacuum {
		// A write with RETURNING has made its changes before its first row
		// comes back; if reading the rows fails (too many of them), a
		// savepoint takes the changes back, where autocommit would have
		// kept them.
		own := autocommit
		if own {
			if _, err := conn.ExecContext(ctx, "SAVEPOINT borealis_statement"); err != nil {
				return out, err
			}
		}
		res, err := queryRows(ctx, s, st, args)
		if own {
			if err != nil {
				_, _ = conn.ExecContext(context.Background(), "ROLLBACK TO borealis_statement")
				_, _ = conn.ExecContext(context.Background(), "RELEASE borealis_statement")
				return out, err
			}
			if _, err := conn.ExecContext(ctx, "RELEASE borealis_statement"); err != nil {
				return out, err
			}
		}
		if err != nil {
			return out, err
		}
		if len(res.Columns) > 0 {
			out.QueryResponse = res
		}
	} else if _, err := st.ExecContext(ctx, args...); err != nil {
		// Exec: a query's rows machinery costs ~5% of the writer's
		// throughput on one-row INSERTs.
		return out, err
	}
	if sqlclient.Keyword(q) == "CREATE" {
		if err := refuseTempObjects(conn); err != nil {
			return out, err
		}
	}
	err = rawConn(conn, func(c *sqlite3.Conn) {
		if c.TotalChanges() != before {
			out.RowsAffected = c.Changes()
		}
		out.LastInsertID = c.LastInsertRowID()
	})
	return out, err
}

// mayReturnRows reports whether q can produce rows: a read (SELECT, WITH
// ... SELECT, VALUES, EXPLAIN), a PRAGMA, or anything with RETURNING. A false
// yes costs only the query path; every statement that returns rows says
// one of these.
func mayReturnRows(q string) bool {
	if k, _ := sqlclient.Classify(q); k == sqlclient.Read || sqlclient.Keyword(q) == "PRAGMA" {
		return true
	}
	for i := 0; i+len("returning") <= len(q); i++ {
		if strings.EqualFold(q[i:i+len("returning")], "returning") {
			return true
		}
	}
	return false
}

// errRequestTimeout is the cause of a request's context ending at
// Config.RequestTimeout.
var errRequestTimeout = errors.New("request timeout")

// errTempObject: a statement made a TEMP object the authorizer could not
// see (see withPolicy).
var errTempObject = errors.New("not authorized: the statement made a TEMP object, which the API refuses (it would stay on a pooled connection)")

// refuseTempObjects reports errTempObject if conn holds a TEMP object;
// execute then throws the connection away, the object with it.
func refuseTempObjects(conn *sql.Conn) error {
	return rawConnErr(conn, func(c *sqlite3.Conn) error {
		st, _, err := c.Prepare("SELECT 1 FROM temp.sqlite_schema LIMIT 1")
		if err != nil {
			return err
		}
		temp := st.Step()
		st.Close()
		if temp {
			return errTempObject
		}
		return nil
	})
}

// discard closes conn for good instead of returning it to the pool. It
// must run after any transaction on conn has ended.
func discard(conn *sql.Conn) {
	// database/sql closes a connection whose Raw returns ErrBadConn.
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
}

func queryRows(ctx context.Context, s *Instance, st *sql.Stmt, args []any) (*QueryResponse, error) {
	rows, err := st.QueryContext(ctx, args...)
	if err != nil {
		return nil, err
	}
	return s.readRows(rows)
}

// rawConn runs f on conn's SQLite connection.
func rawConn(conn *sql.Conn, f func(*sqlite3.Conn)) error {
	return rawConnErr(conn, func(c *sqlite3.Conn) error { f(c); return nil })
}

func rawConnErr(conn *sql.Conn, f func(*sqlite3.Conn) error) error {
	return conn.Raw(func(dc any) error {
		rc, ok := dc.(interface{ Raw() *sqlite3.Conn })
		if !ok {
			return fmt.Errorf("dbserver: %T is not a go-sqlite3 connection", dc)
		}
		return f(rc.Raw())
	})
}

// paramCountError: the statement's placeholders and the parameters sent
// differ in number.
type paramCountError struct {
	want, got int
	named     bool // the statement may have numbered or named placeholders
}

func (e paramCountError) Error() string {
	if e.named {
		return fmt.Sprintf("wrong number of parameters: the statement takes %d (the highest ?NNN, or one per distinct :name, @name or $name, counted with the plain ?s), got %d", e.want, e.got)
	}
	return fmt.Sprintf("wrong number of parameters: the statement takes %d, got %d", e.want, e.got)
}

// checkParamCount refuses params that do not match q's placeholders when q
// may have numbered or named ones: database/sql counts plain ?s itself, but
// the driver cannot count the others for it, and SQLite binds NULL to any
// left without a value. It prepares q a second time, so only such SQL pays.
func checkParamCount(conn *sql.Conn, q string, n int) error {
	if !mayHaveNamedParams(q) {
		return nil
	}
	var want int
	err := conn.Raw(func(dc any) error {
		rc, ok := dc.(interface{ Raw() *sqlite3.Conn })
		if !ok {
			return fmt.Errorf("dbserver: %T is not a go-sqlite3 connection", dc)
		}
		st, _, err := rc.Raw().Prepare(q)
		if err != nil || st == nil {
			// The statement's own run reports it.
			want = n
			return nil
		}
		want = st.BindCount()
		return st.Close()
	})
	if err != nil {
		return err
	}
	if want != n {
		return paramCountError{want, n, true}
	}
	return nil
}

// mayHaveNamedParams reports whether q holds a character that starts a
// numbered or named placeholder: ':', '@', '$', '#', or '?' before a digit.
func mayHaveNamedParams(q string) bool {
	for i := 0; i < len(q); i++ {
		switch q[i] {
		case ':', '@', '$', '#':
			return true
		case '?':
			if i+1 < len(q) && q[i+1] >= '0' && q[i+1] <= '9' {
				return true
			}
		}
	}
	return false
}

// inTransaction reports whether conn is inside an explicit transaction.
func inTransaction(conn *sql.Conn) (open bool, err error) {
	err = rawConn(conn, func(c *sqlite3.Conn) { open = !c.GetAutocommit() })
	return open, err
}

func (s *Instance) handleQuery(w http.ResponseWriter, r *http.Request) {
	var req Statement
	if e := s.decode(w, r, &req); e != nil {
		writeErr(w, e)
		return
	}
	if noSQL(req.SQL) {
		writeErr(w, apiErr(http.StatusBadRequest, CodeBadRequest, "sql is empty (nothing but spaces, semicolons or comments)"))
		return
	}
	args, e := params(req.Params)
	if e != nil {
		writeErr(w, e)
		return
	}
	switch k, _ := sqlclient.Classify(req.SQL); k {
	case sqlclient.Begin, sqlclient.Commit, sqlclient.Rollback, sqlclient.Savepoint, sqlclient.Release:
		writeErr(w, apiErr(http.StatusBadRequest, CodeBadRequest, "%s is transaction control; a query runs alone at the VDL, and transactions go to /v1/execute", strings.ToUpper(k.String())))
		return
	}
	db, e := s.readable()
	if e != nil {
		writeErr(w, e)
		return
	}
	ctx, cancel := context.WithTimeoutCause(r.Context(), s.cfg.RequestTimeout, errRequestTimeout)
	defer cancel()
	resp, e := s.query(ctx, db, req.SQL, args)
	if e != nil {
		writeErr(w, e)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Instance) query(ctx context.Context, db *sqlvfs.DB, q string, args []any) (*QueryResponse, *APIError) {
	conn, err := db.Reader.Conn(ctx)
	if err != nil {
		return nil, s.classify(ctx, nil, err, "")
	}
	defer conn.Close()
	defer func() {
		// A read transaction left open would pin this pooled connection at
		// an old read point (and keep storage from collecting below it).
		if open, _ := inTransaction(conn); open {
			_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
		}
	}()
	if err := armPolicy(conn, true); err != nil {
		return nil, s.classify(ctx, conn, err, "")
	}
	s.stats.queries.Add(1)
	if err := checkParamCount(conn, q, len(args)); err != nil {
		return nil, s.classify(ctx, conn, err, "")
	}
	rows, err := conn.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, s.classify(ctx, conn, err, "")
	}
	resp, err := s.readRows(rows)
	if err != nil {
		return nil, s.classify(ctx, conn, err, "")
	}
	return resp, nil
}

// errTooManyRows: a result beyond Config.MaxRows.
type errTooManyRows int

func (e errTooManyRows) Error() string {
	return fmt.Sprintf("the result has more than %d rows; add a LIMIT", int(e))
}

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

// classify turns an error of database/sql, SQLite or the volume into an API
// error. stage names a statement the server issued itself (BEGIN, COMMIT).
func (s *Instance) classify(ctx context.Context, conn *sql.Conn, err error, stage string) *APIError {
	prefix := ""
	if stage != "" {
		prefix = stage + ": "
	}
	if ae, ok := errors.AsType[*APIError](err); ok {
		return apiErr(ae.Status, ae.Code, "%s%s", prefix, ae.Message)
	}
	var cause error
	if conn != nil && (errors.Is(err, sqlite3.IOERR) || errors.Is(err, sqlite3.CANTOPEN)) {
		cause = sqlvfs.ConnError(context.Background(), conn)
	}
	if cause == nil {
		cause = err
	}
	var unavailable *volume.UnavailableError
	var unack *sqlvfs.UnacknowledgedError
	switch {
	case errors.As(cause, &unack) && errors.As(cause, &unavailable):
		s.noteUnacknowledged(unack.LSN)
		return apiErr(http.StatusServiceUnavailable, CodeStorageUnavailable,
			"%sthe commit was not acknowledged: %v. Its outcome is unknown: it is kept, and it commits if storage recovers before the writer restarts; check before retrying. Writes wait until it is durable", prefix, unavailable)
	case errors.As(cause, &unavailable):
		return apiErr(http.StatusServiceUnavailable, CodeStorageUnavailable, "%s%v", prefix, unavailable)
	case errors.Is(cause, volume.ErrFenced):
		s.fenced(cause)
		return apiErr(http.StatusConflict, CodeNotWriter, "%sthis instance is no longer the writer of volume %s: %v", prefix, s.cfg.Volume, cause)
	case errors.Is(cause, volume.ErrClosed), strings.Contains(err.Error(), "sql: database is closed"):
		// The instance stopped (lease lost, shutting down) under the request.
		return apiErr(http.StatusServiceUnavailable, CodeNotReady, "%sthe writer of volume %s stopped while the request ran: %v", prefix, s.cfg.Volume, cause)
	case strings.Contains(err.Error(), "multiple statements"):
		return apiErr(http.StatusBadRequest, CodeBadRequest, "%sone entry holds more than one SQL statement; send each statement as its own entry", prefix)
	case strings.HasPrefix(err.Error(), "sql: expected ") && strings.Contains(err.Error(), " arguments, got "):
		// database/sql counts the parameters against the placeholders.
		var want, got int
		fmt.Sscanf(err.Error(), "sql: expected %d arguments, got %d", &want, &got)
		return apiErr(http.StatusBadRequest, CodeBadParameter, "%s%v", prefix, paramCountError{want: want, got: got})
	case errors.Is(err, errTempObject):
		return apiErr(http.StatusForbidden, CodeNotAllowed, "%s%v", prefix, errTempObject)
	case errors.As(err, new(errTooManyRows)):
		return apiErr(http.StatusBadRequest, CodeTooManyRows, "%s%v", prefix, err)
	case errors.As(err, new(paramCountError)):
		return apiErr(http.StatusBadRequest, CodeBadParameter, "%s%v", prefix, err)
	case errors.Is(err, sqlite3.AUTH):
		return apiErr(http.StatusForbidden, CodeNotAllowed, "%snot authorized: the API refuses ATTACH and VACUUM INTO (they open files on the server), TEMP tables, views, indexes and triggers, and PRAGMAs that have a setter, reads included (a setting would stay on a pooled connection and change other requests' statements); the schema and check PRAGMAs, user_version and application_id are allowed", prefix)
	case errors.Is(err, sqlite3.CONSTRAINT):
		return apiErr(http.StatusConflict, CodeConstraint, "%s%s", prefix, sqliteMessage(err))
	case errors.Is(err, sqlite3.READONLY):
		return apiErr(http.StatusBadRequest, CodeReadOnly, "%s%s: /v1/query runs on a read connection; send statements that write to /v1/execute", prefix, sqliteMessage(err))
	case errors.Is(err, sqlite3.BUSY):
		// The driver words it "invalid _pragma: ..." when a new connection
		// meets the lock; the client needs to know what held it.
		return apiErr(http.StatusServiceUnavailable, CodeBusy, "%sthe database is locked: another transaction held the writer turn for the whole busy timeout, or committed after this connection began reading; retry", prefix)
	case errors.Is(err, sqlite3.IOERR), errors.Is(err, sqlite3.CANTOPEN), errors.Is(err, sqlite3.CORRUPT), errors.Is(err, sqlite3.NOMEM):
		return apiErr(http.StatusInternalServerError, CodeInternal, "%s%v", prefix, cause)
	case errors.Is(context.Cause(ctx), errRequestTimeout):
		return apiErr(http.StatusServiceUnavailable, CodeTimeout, "%sthe request ran longer than the instance's request timeout (%s) and was interrupted; a transaction not yet committing was rolled back, one already waiting for durability has an unknown outcome", prefix, s.cfg.RequestTimeout)
	case ctx.Err() != nil:
		return apiErr(http.StatusServiceUnavailable, CodeStorageUnavailable, "%sthe request ended before it finished: %v", prefix, ctx.Err())
	case errors.Is(err, sqlite3.TOOBIG):
		return apiErr(http.StatusBadRequest, CodeSQL, "%s%s: the API stores a string or blob of up to %s, in a row of at most %d bytes (%s, the value with room for the rest of its row)", prefix, sqliteMessage(err), sizeText(MaxValueBytes), MaxRowBytes, sizeText(MaxRowBytes))
	case isSQLiteError(err):
		return apiErr(http.StatusBadRequest, CodeSQL, "%s%s", prefix, sqliteMessage(err))
	}
	return apiErr(http.StatusInternalServerError, CodeInternal, "%s%v", prefix, err)
}

// sizeText words a size in bytes for messages: "48 MiB", "42.7 MiB",
// "1 KiB", "700 bytes".
func sizeText(n int64) string {
	for _, u := range []struct {
		name string
		size int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size {
			return strings.TrimSuffix(strings.TrimSuffix(fmt.Sprintf("%.1f", float64(n)/float64(u.size)), "0"), ".") + " " + u.name
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

func isSQLiteError(err error) bool {
	var e *sqlite3.Error
	if errors.As(err, &e) {
		return true
	}
	var c sqlite3.ErrorCode
	return errors.As(err, &c)
}

// sqliteMessage is SQLite's own message, without the driver's prefix.
func sqliteMessage(err error) string {
	return strings.TrimPrefix(err.Error(), "sqlite3: ")
}

// Health is the body of GET /v1/health; the client package declares the
// shape, so server and client cannot drift apart.
type Health = sqlclient.Health

// HealthStats are counters since the instance started.
type HealthStats = sqlclient.HealthStats

func (s *Instance) handleHealth(w http.ResponseWriter, r *http.Request) {
	h := s.Health()
	status := http.StatusOK
	if !h.Ready {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, h)
}
