package dbserver

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

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
	// LSN is durable and covers the commit: a query with "min_lsn": LSN,
	// on any instance, sees it.
	LSN uint64 `json:"lsn"`
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
	// Writer, on a replica's not_writer and lagging, is the writer's SQL
	// endpoint.
	Writer string `json:"writer,omitempty"`
}

func (e *APIError) Error() string { return e.Code + ": " + e.Message }

func apiErr(status int, code, format string, args ...any) *APIError {
	return &APIError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Handler returns the SQL API of the instance. The request bodies it holds
// at once add up to at most BodyBudgetBodies times Config.MaxBodyBytes
// (see bodyBudget): /v1/execute's large bodies share all of it but
// QueryBodyBudgetBodies times the cap, which /v1/query's have to
// themselves, so that reads keep answering while writes holding their
// bodies stall. Each Handler has its own budgets, so an instance serves one.
func (s *Instance) Handler() http.Handler {
	perBody := s.cfg.MaxBodyBytes
	writes, reads := int64(math.MaxInt64), int64(math.MaxInt64)
	if perBody <= math.MaxInt64/BodyBudgetBodies {
		writes = (BodyBudgetBodies - QueryBodyBudgetBodies) * perBody
		reads = QueryBodyBudgetBodies * perBody
	}
	h := &apiHandler{ServeMux: http.NewServeMux(), bodies: newBodyBudget(writes), queryBodies: newBodyBudget(reads), bodyIdle: BodyIdleTimeout}
	mux := h.ServeMux
	mux.HandleFunc("POST /v1/execute", func(w http.ResponseWriter, r *http.Request) { s.handleExecute(w, r, h, h.bodies) })
	mux.HandleFunc("POST /v1/query", func(w http.ResponseWriter, r *http.Request) { s.handleQuery(w, r, h, h.queryBodies) })
	mux.HandleFunc("GET /v1/health", s.handleHealth)
	mux.HandleFunc("POST /v1/wait", s.handleWait)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, apiErr(http.StatusNotFound, CodeBadRequest, "no endpoint %s %s; the API has POST /v1/execute, POST /v1/query and GET /v1/health", r.Method, r.URL.Path))
	})
	allowed := map[string]string{"/v1/execute": "POST", "/v1/query": "POST", "/v1/health": "GET", "/v1/wait": "POST"}
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		if m, ok := allowed[r.URL.Path]; ok {
			w.Header().Set("Allow", m)
			writeErr(w, apiErr(http.StatusMethodNotAllowed, CodeBadRequest, "%s %s: this endpoint takes %s", r.Method, r.URL.Path, m))
			return
		}
		writeErr(w, apiErr(http.StatusNotFound, CodeBadRequest, "no endpoint %s %s; the API has POST /v1/execute, POST /v1/query and GET /v1/health", r.Method, r.URL.Path))
	})
	return h
}

// apiHandler is the API's mux with the budgets of its request bodies:
// bodies for /v1/execute, queryBodies for /v1/query.
type apiHandler struct {
	*http.ServeMux
	bodies, queryBodies *bodyBudget
	// bodyIdle is how long a body may go without a byte arriving
	// (BodyIdleTimeout; tests shorten it).
	bodyIdle time.Duration
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, e *APIError) {
	writeJSON(w, e.Status, ErrorBody{Error: *e})
}

// requestContext bounds everything a request does, from waiting for room
// to read its body to writing its reply, by Config.RequestTimeout.
func (s *Instance) requestContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(r.Context(), s.cfg.RequestTimeout, errRequestTimeout)
}

// readRequest reads r's body, of at most Config.MaxBodyBytes, under the
// bodies budget and decodes it into v (an *executeBody or a *queryBody).
// release gives back what the body took of the budget: the caller calls it
// when the values decoded from the body are no longer needed: before it
// writes a reply that may be large (a client reading it slowly holds no
// budget), or when it returns. It may be called more than once; a panic
// while the body is read or decoded gives the room back itself.
//
// A small body (up to smallBody, by its Content-Length, or a chunked one
// that ends within smallBody bytes) takes nothing from the budget and never
// waits: its memory is bounded by its size and the connections, and a
// SELECT 1 must not wait behind uploads that have not arrived. A larger
// body takes its whole size before it reads a byte (the cap, when the size
// is not announced, until the body is read; a chunked body's first
// smallBody bytes are read before), waiting for room, first come first
// served, until ctx ends. Charging bytes as they arrive instead would let
// five large uploads each hold four fifths of their body and none finish.
// Once it has room, a body must keep arriving: a read that waits longer
// than the handler's body idle timeout for its next byte fails the request
// with timeout, and the whole body must arrive within ctx, so a stalled
// upload gives its room back after the idle timeout, not the request's.
//
// The body is read whole into one buffer of its announced size and decoded
// from there, each parameter straight into its SQL value (see param), so a
// request holds about two copies of its values at most: the body and the
// values. A json.Decoder would have read it into a buffer grown by
// doubling, and RawMessage parameters decoded again through interface{}
// made a 42.7 MiB body with a 32 MiB blob cost 416 MiB of allocations.
func (s *Instance) readRequest(ctx context.Context, w http.ResponseWriter, r *http.Request, h *apiHandler, bodies *bodyBudget, v any) (release func(), e *APIError) {
	var held int64 // of the budget, given back by release
	var once sync.Once
	release = func() { once.Do(func() { bodies.release(held) }) }
	defer func() {
		// A panic reading or decoding the body (the server recovers it and
		// drops the connection) must not keep its room for good: the
		// caller never got release.
		if p := recover(); p != nil {
			release()
			panic(p)
		}
	}()
	limit := s.cfg.MaxBodyBytes
	size := r.ContentLength // -1: not announced (chunked)
	if size > limit {
		// Refused before reading it, without taking any budget.
		return release, s.bodyTooLarge()
	}
	rc := http.NewResponseController(w)
	defer rc.SetReadDeadline(time.Time{})
	in := &bodyReader{r: http.MaxBytesReader(w, r.Body, limit), rc: rc, ctx: ctx, idle: h.bodyIdle}
	take := func(n int64) *APIError {
		if err := bodies.acquire(ctx, n); err != nil {
			return s.bodiesBusy(w, ctx, r.URL.Path, bodies, n)
		}
		held = n
		return nil
	}
	var body []byte
	var err error
	switch {
	case size >= 0 && size <= smallBody:
		body, err = readBody(in, size)
	case size >= 0:
		if e := take(size); e != nil {
			return release, e
		}
		body, err = readBody(in, size)
	default:
		body, err = readAll(nil, io.LimitReader(in, smallBody+1))
		if err == nil && len(body) > smallBody {
			if e := take(limit); e != nil {
				return release, e
			}
			body, err = readAll(body, in)
			bodies.release(held - int64(len(body)))
			held = int64(len(body))
		}
	}
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			return release, s.bodyTooLarge()
		}
		if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
			got := fmt.Sprintf("%d bytes of it arrived", len(body))
			if size >= 0 {
				got = fmt.Sprintf("%d of its %d bytes arrived", len(body), size)
			}
			// (A read that fails cancels ctx: the server's doing.)
			if in.idleDeadline && errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(context.Cause(ctx), errRequestTimeout) {
				return release, apiErr(http.StatusServiceUnavailable, CodeTimeout, "the request body stopped arriving: no byte of it came for %s, the instance's body idle timeout: %s", in.idle, got)
			}
			return release, apiErr(http.StatusServiceUnavailable, CodeTimeout, "the request body did not arrive within the instance's request timeout (%s): %s", s.cfg.RequestTimeout, got)
		}
		return release, apiErr(http.StatusBadRequest, CodeBadRequest, "reading the request body: %v", err)
	}
	if err := decodeBody(body, v); err != nil {
		if errors.Is(err, errDataAfter) {
			return release, apiErr(http.StatusBadRequest, CodeBadRequest, "request body has data after the JSON object")
		}
		return release, apiErr(http.StatusBadRequest, CodeBadRequest, "request body is not valid JSON for this endpoint: %v", err)
	}
	return release, nil
}

// bodyReader reads a request body with a read deadline before each read:
// the body idle timeout from now, or ctx's deadline if that comes first.
type bodyReader struct {
	r    io.Reader
	rc   *http.ResponseController
	ctx  context.Context
	idle time.Duration
	// idleDeadline: the last deadline set was the idle timeout's.
	idleDeadline bool
}

func (b *bodyReader) Read(p []byte) (int, error) {
	d, end := time.Now().Add(b.idle), time.Time{}
	if dl, ok := b.ctx.Deadline(); ok {
		end = dl
	}
	b.idleDeadline = b.idle > 0 && (end.IsZero() || d.Before(end))
	if !b.idleDeadline {
		d = end
	}
	_ = b.rc.SetReadDeadline(d)
	return b.r.Read(p)
}

// readBody reads a body of size bytes from r.
func readBody(r io.Reader, size int64) ([]byte, error) {
	body := make([]byte, size)
	n, err := io.ReadFull(r, body)
	return body[:n], err
}

// readAll appends what r holds to b, as io.ReadAll does.
func readAll(b []byte, r io.Reader) ([]byte, error) {
	if b == nil {
		b = make([]byte, 0, 512)
	}
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return b, err
		}
	}
}

func (s *Instance) bodyTooLarge() *APIError {
	return apiErr(http.StatusRequestEntityTooLarge, CodeBodyTooLarge,
		"request body is larger than %d bytes (%s), this instance's limit, which borealis db --max-body sets (default %s: a string or blob may be up to %s, and a blob parameter travels in base64, 4/3 of its size)",
		s.cfg.MaxBodyBytes, FormatSize(s.cfg.MaxBodyBytes), FormatSize(int64(DefaultMaxBodyBytes)), FormatSize(MaxValueBytes))
}

// bodiesBusy is the refusal of a request that found no room in the bodies
// budget (see bodyBudget) before ctx ended.
func (s *Instance) bodiesBusy(w http.ResponseWriter, ctx context.Context, path string, bodies *bodyBudget, size int64) *APIError {
	w.Header().Set("Retry-After", "1")
	return apiErr(http.StatusServiceUnavailable, CodeBusy,
		"the instance is reading and decoding as many large request bodies for %s as it holds at once (%d bytes, %s: their share of the %d times borealis db --max-body %s it holds in all), and this request's body (%d bytes, %s) found no room before %s; retry, or send smaller requests (a body of up to %s never waits)",
		path, bodies.size, FormatSize(bodies.size), BodyBudgetBodies, FormatSize(s.cfg.MaxBodyBytes), size, FormatSize(size), waitEnd(ctx, s.cfg.RequestTimeout), FormatSize(smallBody))
}

func waitEnd(ctx context.Context, timeout time.Duration) string {
	if errors.Is(context.Cause(ctx), errRequestTimeout) {
		return fmt.Sprintf("the request timeout (%s)", timeout)
	}
	return fmt.Sprintf("the request ended (%v)", context.Cause(ctx))
}

// executeBody is the body of POST /v1/execute as the server decodes it (see
// ExecuteRequest); queryBody, of POST /v1/query (see Statement).
type (
	executeBody struct {
		Statements  []statementBody `json:"statements"`
		Transaction bool            `json:"transaction"`
	}
	statementBody struct {
		SQL    string  `json:"sql"`
		Params []param `json:"params"`
	}
	queryBody struct {
		statementBody
		MinLSN uint64 `json:"min_lsn"`
	}
)

// The fields of each object of a body, checked by knownFields: a client's
// misspelt "transation": true must not run the statements one by one.
var (
	executeFields   = fieldSet{names: []string{"statements", "transaction"}, arrays: map[string]fieldSet{"statements": statementFields}}
	statementFields = fieldSet{names: []string{"sql", "params"}}
	queryFields     = fieldSet{names: []string{"sql", "params", "min_lsn"}}
)

// args are st's parameters as SQLite values, or the first that is not one.
func (st *statementBody) args() ([]any, *APIError) {
	out := make([]any, len(st.Params))
	for i, p := range st.Params {
		if p.err != "" {
			return nil, apiErr(http.StatusBadRequest, CodeBadParameter, "parameter %d: %s", i+1, p.err)
		}
		out[i] = p.v
	}
	return out, nil
}

// decodeBody decodes the JSON object in body into v, refusing fields v
// does not have (as json.Decoder.DisallowUnknownFields would) and anything
// after the object. json.Unmarshal decodes body in place; a Decoder would
// first copy it into a buffer of its own.
func decodeBody(body []byte, v any) error {
	if len(bytes.TrimLeft(body, " \t\r\n")) == 0 {
		return io.EOF
	}
	if decodeFast(body, v) {
		return nil
	}
	return decodeSlow(body, v)
}

// decodeSlow is decodeBody through encoding/json: what a body means, and
// the errors of a bad one.
func decodeSlow(body []byte, v any) error {
	if err := json.Unmarshal(body, v); err != nil {
		if se, ok := errors.AsType[*json.SyntaxError](err); ok && se.Offset > 0 && json.Valid(body[:se.Offset-1]) {
			return errDataAfter
		}
		if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok && te.Field != "" {
			// Not in the words of the server's own Go types.
			return fmt.Errorf("field %q: want %s, not a JSON %s", te.Field, jsonKind(te.Type.Kind()), te.Value)
		}
		return err
	}
	fields := queryFields
	if _, ok := v.(*executeBody); ok {
		fields = executeFields
	}
	return knownFields(body, fields)
}

var errDataAfter = errors.New("data after the JSON object")

func jsonKind(k reflect.Kind) string {
	switch k {
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "an array"
	case reflect.Struct:
		return "an object"
	}
	return k.String()
}

// param is one parameter, decoded straight from the body into a SQLite
// value: an integral number into an integer (refused beyond 64 bits),
// another number into a real, a
// string, a boolean (as 0/1), null, {"real": "Infinity"} (or "-Infinity")
// into an infinite real and {"base64": "..."} into a blob. A value that is
// none of these keeps why in err, so that the request's reply can name the
// parameter.
type param struct {
	v   any
	err string
}

// UnmarshalJSON decodes one parameter. data is valid JSON: the decoder has
// checked the whole body before it calls this.
func (p *param) UnmarshalJSON(data []byte) error {
	p.v, p.err = sqlValue(bytes.TrimSpace(data))
	return nil
}

func sqlValue(data []byte) (any, string) {
	switch data[0] {
	case 'n':
		return nil, ""
	case 't':
		return true, ""
	case 'f':
		return false, ""
	case '"':
		return jsonString(data), ""
	case '[':
		return nil, `an array is not a SQL value (use a number, string, boolean, null or {"base64": ...})`
	case '{':
		return objectValue(data)
	}
	num := string(data)
	n, err := strconv.ParseInt(num, 10, 64)
	if err == nil {
		return n, ""
	}
	if errors.Is(err, strconv.ErrRange) {
		// An integer SQLite cannot hold: as a REAL it would silently
		// lose its low digits (9223372036854775808 is stored as
		// 9.22337203685478e+18).
		return nil, num + " is an integer beyond SQLite's 64-bit range (-9223372036854775808 to 9223372036854775807); send it as a string, or as a real with a fraction or an exponent (such as 9.3e18) to store it approximately"
	}
	if f, err := strconv.ParseFloat(num, 64); err == nil && !math.IsInf(f, 0) {
		return f, ""
	}
	return nil, num + " is not a number SQLite can hold"
}

// objectValue is the value of an object parameter: {"real": "Infinity"} or
// {"base64": "..."}.
func objectValue(data []byte) (any, string) {
	members := map[string][]byte{}
	eachMember(data, func(key string, val []byte) { members[key] = val })
	if r, ok := members["real"]; ok && len(members) == 1 && r[0] == '"' {
		name := jsonString(r)
		f, ok := infinities[name]
		if !ok {
			return nil, fmt.Sprintf(`{"real": %q}: want "Infinity" or "-Infinity" (finite numbers are plain JSON numbers)`, name)
		}
		return f, ""
	}
	b64, ok := members["base64"]
	if !ok || len(members) != 1 || b64[0] != '"' {
		return nil, `an object parameter must be {"base64": "..."} (a blob) or {"real": "Infinity"} (or "-Infinity")`
	}
	var b []byte
	var err error
	if lit := b64[1 : len(b64)-1]; bytes.IndexByte(lit, '\\') < 0 {
		// Decoded from the body itself: no string in between.
		b = make([]byte, base64.StdEncoding.DecodedLen(len(lit)))
		var n int
		n, err = base64.StdEncoding.Decode(b, lit)
		b = b[:n]
	} else {
		b, err = base64.StdEncoding.DecodeString(jsonString(b64))
	}
	if err != nil {
		return nil, fmt.Sprintf("bad base64: %v", err)
	}
	return b, ""
}

// The helpers below walk JSON that json.Unmarshal has already checked, so
// they look only for where things end. A string is skipped with
// bytes.IndexByte, which matters in a body that is mostly one blob.

// fieldSet is the fields of an object, and those of the objects in the
// arrays some of its fields hold.
type fieldSet struct {
	names  []string
	arrays map[string]fieldSet
}

// knownFields reports the first field of the object in data (valid JSON),
// or of an object nested as fs says, that fs does not name. Names match as
// encoding/json matches them to struct fields: ignoring case.
func knownFields(data []byte, fs fieldSet) error {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return nil
	}
	var err error
	eachMember(data, func(key string, val []byte) {
		if err != nil {
			return
		}
		i := slices.IndexFunc(fs.names, func(n string) bool { return strings.EqualFold(n, key) })
		if i < 0 {
			err = fmt.Errorf("json: unknown field %q", key)
			return
		}
		if inner, ok := fs.arrays[fs.names[i]]; ok && val[0] == '[' {
			eachElement(val, func(elem []byte) {
				if err == nil {
					err = knownFields(elem, inner)
				}
			})
		}
	})
	return err
}

// eachMember calls f with each member of the object in data, its key
// decoded and its value as JSON.
func eachMember(data []byte, f func(key string, val []byte)) {
	i := jsonSpace(data, 1)
	for i < len(data) && data[i] != '}' {
		end := jsonValueEnd(data, i)
		key := jsonString(data[i:end])
		i = jsonSpace(data, end)
		i = jsonSpace(data, i+1) // the ':'
		end = jsonValueEnd(data, i)
		f(key, data[i:end])
		i = jsonSpace(data, end)
		if i < len(data) && data[i] == ',' {
			i = jsonSpace(data, i+1)
		}
	}
}

// eachElement calls f with each element of the array in data.
func eachElement(data []byte, f func(elem []byte)) {
	i := jsonSpace(data, 1)
	for i < len(data) && data[i] != ']' {
		end := jsonValueEnd(data, i)
		f(data[i:end])
		i = jsonSpace(data, end)
		if i < len(data) && data[i] == ',' {
			i = jsonSpace(data, i+1)
		}
	}
}

// jsonString decodes the string literal lit.
func jsonString(lit []byte) string {
	if s := lit[1 : len(lit)-1]; bytes.IndexByte(s, '\\') < 0 && utf8.Valid(s) {
		return string(s)
	}
	// Escapes, or bytes encoding/json replaces with U+FFFD.
	var s string
	_ = json.Unmarshal(lit, &s)
	return s
}

func jsonSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

// jsonValueEnd is the index just after the value that starts at data[i].
func jsonValueEnd(data []byte, i int) int {
	switch data[i] {
	case '"':
		return jsonStringEnd(data, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(data); {
			switch data[j] {
			case '"':
				j = jsonStringEnd(data, j)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
			j++
		}
		return len(data)
	}
	j := i
	for j < len(data) && strings.IndexByte(",]} \t\r\n", data[j]) < 0 {
		j++
	}
	return j
}

// jsonStringEnd is the index just after the string that starts at data[i].
func jsonStringEnd(data []byte, i int) int {
	for j := i + 1; j < len(data); j++ {
		k := bytes.IndexByte(data[j:], '"')
		if k < 0 {
			break
		}
		j += k
		escaped := false
		for b := j - 1; data[b] == '\\'; b-- {
			escaped = !escaped
		}
		if !escaped {
			return j + 1
		}
	}
	return len(data)
}

func (s *Instance) handleExecute(w http.ResponseWriter, r *http.Request, h *apiHandler, bodies *bodyBudget) {
	ctx, cancel := s.requestContext(r)
	defer cancel()
	var req executeBody
	release, e := s.readRequest(ctx, w, r, h, bodies, &req)
	defer release()
	if e != nil {
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
		a, e := st.args()
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
	release()
	writeJSON(w, http.StatusOK, ExecuteResponse{Results: res, LSN: s.durableLSN()})
}

// execute runs a request's statements on a writer connection. The
// connection defers durability (see sqlvfs.DeferDurability): it goes back
// to the pool as soon as the statements are done, so the next request's
// transaction runs on it (with SQLite's page cache still warm) while this
// one's commit becomes durable, and only then does this request answer.
func (s *Instance) execute(ctx context.Context, db *sqlvfs.DB, req executeBody, args [][]any) ([]ExecResult, *APIError) {
	// The one writer connection is held for a transaction's whole length:
	// waiting for it is waiting for the writer turn, bounded as SQLite's
	// own wait for a lock is.
	busy := db.BusyTimeout()
	cctx, cancel := context.WithTimeout(ctx, busy)
	conn, err := db.Writer.Conn(cctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return nil, apiErr(http.StatusServiceUnavailable, CodeBusy, "the database is locked: another transaction held the writer turn for the whole busy timeout (%s); retry", busy)
		}
		return nil, s.classify(ctx, nil, err, "")
	}
	done, err := sqlvfs.DeferDurability(conn)
	if err != nil {
		conn.Close()
		return nil, s.classify(ctx, conn, err, "")
	}
	defer func() {
		// A panic in the statements (the HTTP server recovers it) must not
		// keep the one writer connection, or every later write would wait
		// out its busy timeout: it is thrown away, and the pool opens
		// another.
		if r := recover(); r != nil {
			_, _ = done()
			discard(conn)
			conn.Close()
			panic(r)
		}
	}()
	res, e, tainted := s.executeOn(ctx, conn, req, args)
	lsn, err := done()
	if tainted {
		discard(conn)
	}
	conn.Close()
	if err == nil {
		// Also after a failed statement: the statements before it may have
		// committed in their own transactions, and the reply says so.
		err = db.WaitDurable(context.Background(), lsn)
	}
	if err != nil && e == nil {
		e = s.classify(ctx, nil, err, "")
	}
	return res, e
}

// executeOn runs the statements on conn; tainted says the connection must
// not go back to the pool.
func (s *Instance) executeOn(ctx context.Context, conn *sql.Conn, req executeBody, args [][]any) (_ []ExecResult, _ *APIError, tainted bool) {
	if err := armPolicy(conn, false); err != nil {
		return nil, s.classify(ctx, conn, err, ""), false
	}
	s.stats.executes.Add(1)
	type preparer interface {
		PrepareContext(context.Context, string) (*sql.Stmt, error)
	}
	var ex preparer = conn
	var tx *sql.Tx
	// One statement is atomic by itself: no BEGIN and COMMIT around it.
	if req.Transaction && len(req.Statements) > 1 {
		var err error
		if tx, err = conn.BeginTx(ctx, nil); err != nil {
			return nil, s.classify(ctx, conn, err, "BEGIN"), false
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
			return nil, e, tainted
		}
		results = append(results, out)
	}
	if tx != nil {
		if err := tx.Commit(); err != nil {
			return nil, s.classify(ctx, conn, err, "COMMIT"), false
		}
	} else if open, err := inTransaction(conn); err != nil || open {
		// A BEGIN without its COMMIT would keep the writer turn after the
		// request: every other writer would wait for it.
		_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
		return nil, apiErr(http.StatusBadRequest, CodeBadRequest, "the statements left a transaction open (BEGIN without COMMIT or ROLLBACK); a transaction must end in the request that began it, so it was rolled back"), false
	}
	return results, nil, false
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
	if cacheable(q) {
		if out, err := s.execFast(ctx, conn, q, args); !errors.Is(err, errNotCacheable) {
			return out, err
		}
	}
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
	// The counts are the statement's, read as soon as it is done: the
	// driver zeroes the last insert rowid before every statement it runs
	// on the connection, the RELEASE of the savepoint below included.
	counts := func() error {
		return rawConn(conn, func(c *sqlite3.Conn) {
			if c.TotalChanges() != before {
				out.RowsAffected = c.Changes()
			}
			out.LastInsertID = c.LastInsertRowID()
		})
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
		if err == nil {
			err = counts()
		}
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
	} else if err := counts(); err != nil {
		return out, err
	}
	if sqlclient.Keyword(q) == "CREATE" {
		if err := refuseTempObjects(conn); err != nil {
			return out, err
		}
	}
	return out, nil
}

// execFast runs a write without rows as a statement the connection keeps
// prepared (see stmtCache), with its counts as execOne reads them; it
// fails with errNotCacheable, having run nothing, if q must take execOne's
// general path.
func (s *Instance) execFast(ctx context.Context, conn *sql.Conn, q string, args []any) (ExecResult, error) {
	var out ExecResult
	err := rawConnErr(conn, func(c *sqlite3.Conn) error {
		before := c.TotalChanges()
		c.SetLastInsertRowID(0)
		if err := preparedWrites.execCached(ctx, c, q, args); err != nil {
			return err
		}
		if c.TotalChanges() != before {
			out.RowsAffected = c.Changes()
		}
		out.LastInsertID = c.LastInsertRowID()
		return nil
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
	return hasReturning(q)
}

// hasReturning reports whether q holds the word RETURNING anywhere (a false
// yes, in a string or a name, only sends q down the query path).
func hasReturning(q string) bool {
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

func (s *Instance) handleQuery(w http.ResponseWriter, r *http.Request, h *apiHandler, bodies *bodyBudget) {
	ctx, cancel := s.requestContext(r)
	defer cancel()
	var req queryBody
	release, e := s.readRequest(ctx, w, r, h, bodies, &req)
	defer release()
	if e != nil {
		writeErr(w, e)
		return
	}
	if noSQL(req.SQL) {
		writeErr(w, apiErr(http.StatusBadRequest, CodeBadRequest, "sql is empty (nothing but spaces, semicolons or comments)"))
		return
	}
	args, e := req.args()
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
	if e := s.reach(ctx, req.MinLSN); e != nil {
		writeErr(w, e)
		return
	}
	resp, e := s.query(ctx, db, req.SQL, args)
	if e != nil {
		writeErr(w, e)
		return
	}
	release()
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
	// A failure the volume gave this statement's transaction comes first,
	// whatever SQLite made of it: a page it could not read may surface as
	// an I/O error, or as a schema it could not check ("no such table" on
	// a replica whose connection held an older schema).
	var cause error
	if conn != nil {
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
	case errors.Is(cause, sqlvfs.ErrSnapshotTooOld), volume.BelowGCHorizon(cause):
		return apiErr(http.StatusConflict, CodeSnapshotTooOld, "%sthe query's read point is too old: %v; run it again, at a newer read point", prefix, cause)
	case errors.Is(cause, volume.ErrFenced):
		s.fenced(cause)
		return apiErr(http.StatusConflict, CodeNotWriter, "%sthis instance is no longer the writer of volume %s: %v", prefix, s.cfg.Volume, cause)
	case errors.Is(cause, volume.ErrClosed), strings.Contains(err.Error(), "sql: database is closed"):
		// The instance stopped (lease lost, shutting down) under the request.
		return apiErr(http.StatusServiceUnavailable, CodeNotReady, "%sthe writer of volume %s stopped while the request ran: %v", prefix, s.cfg.Volume, cause)
	case cause != err && !errors.Is(err, sqlite3.IOERR) && !errors.Is(err, sqlite3.CANTOPEN):
		// SQLite's own error stems from a page it could not read.
		return apiErr(http.StatusServiceUnavailable, CodeStorageUnavailable, "%sa page could not be read: %v", prefix, cause)
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
		return apiErr(http.StatusBadRequest, CodeSQL, "%s%s: the API stores a string or blob of up to %s, in a row of at most %d bytes (the value with %s for the rest of its row)", prefix, sqliteMessage(err), FormatSize(MaxValueBytes), MaxRowBytes, FormatSize(MaxRowBytes-MaxValueBytes))
	case isSQLiteError(err):
		return apiErr(http.StatusBadRequest, CodeSQL, "%s%s", prefix, sqliteMessage(err))
	}
	return apiErr(http.StatusInternalServerError, CodeInternal, "%s%v", prefix, err)
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
