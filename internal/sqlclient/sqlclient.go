// Package sqlclient is a small client of a Borealis database instance's SQL
// API over HTTP (POST /v1/execute, POST /v1/query, GET /v1/health).
//
// Values. Parameters go out as JSON: integers as numbers, floats as
// numbers with a point or an exponent (2.0, not 2, so that SQLite takes
// them as REALs; see AppendReal) and infinities as {"real":"Infinity"},
// strings, booleans, nil as null, and []byte as {"base64":"..."}, the form in
// which the server returns blobs. Row values come back as int64 (a JSON
// number with no point or exponent: an INTEGER, every digit kept, beyond
// 2^53 too), float64 (a number with one: a REAL, which the server always
// writes so, 2.0 and -0.0 included), string, []byte (a blob) or nil.
package sqlclient

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
)

// Client talks to one database instance. The zero HTTP uses
// http.DefaultClient.
type Client struct {
	// Endpoint is the instance's base URL, such as http://127.0.0.1:7110; a
	// bare host:port is taken as http.
	Endpoint string
	HTTP     *http.Client
}

// Statement is one SQL statement with its positional parameters.
type Statement struct {
	SQL    string `json:"sql"`
	Params []any  `json:"params,omitempty"`
}

// Result is what one statement of an Execute did.
type Result struct {
	RowsAffected int64 `json:"rows_affected"`
	LastInsertID int64 `json:"last_insert_id"`
	// Rows are the rows the statement returned (a SELECT, or RETURNING);
	// nil for a statement that returns none.
	Rows *Rows `json:"-"`
}

// wireRows is a result set as the server sends it.
type wireRows struct {
	Columns []string            `json:"columns"`
	Types   []string            `json:"types"`
	Rows    [][]json.RawMessage `json:"rows"`
}

func (w *wireRows) decode() (*Rows, error) {
	rows := &Rows{Columns: w.Columns, Types: w.Types, Rows: make([][]any, len(w.Rows))}
	for i, r := range w.Rows {
		row := make([]any, len(r))
		for j, raw := range r {
			v, err := decodeValue(raw)
			if err != nil {
				return nil, fmt.Errorf("row %d column %d: %w", i+1, j+1, err)
			}
			row[j] = v
		}
		rows.Rows[i] = row
	}
	return rows, nil
}

// Rows is the whole result of a query.
type Rows struct {
	Columns []string
	// Types are the column types as the server reports them.
	Types []string
	Rows  [][]any
}

// Health is the instance's GET /v1/health.
type Health struct {
	Role     string `json:"role"`
	Volume   string `json:"volume"`
	VolumeID uint64 `json:"volume_id"`
	Epoch    uint64 `json:"epoch"`
	VDL      uint64 `json:"vdl"`
	Ready    bool   `json:"ready"`
	// Status says what the instance is doing, such as "ready", or what it
	// waits for while it is not.
	Status string      `json:"status,omitempty"`
	Stats  HealthStats `json:"stats"`

	// ID and AZ name the instance; Endpoint is the SQL endpoint it
	// registered in the catalog.
	ID       string `json:"id,omitempty"`
	AZ       string `json:"az,omitempty"`
	Endpoint string `json:"endpoint,omitempty"`
	// ReadPoint is the oldest read point the instance pins; on the writer,
	// the volume's PGMRPL (the minimum over it and every live replica),
	// which it sends to storage.
	ReadPoint uint64 `json:"read_point"`
	// Replica is set on a replica (role "replica"): its VDL above is the
	// one it has applied.
	Replica *ReplicaHealth `json:"replica,omitempty"`
	// Replicas, on the writer, are the replicas subscribed to its redo
	// stream.
	Replicas []StreamHealth `json:"replicas,omitempty"`
	// Roles counts the instance's changes of role by failovers, with what
	// its last promotion took.
	Roles *RoleHealth `json:"roles,omitempty"`
}

// RoleHealth is an instance's history of failovers.
type RoleHealth struct {
	Promotions uint64 `json:"promotions"`
	StepDowns  uint64 `json:"step_downs"`
	// LastPromotion's steps, in milliseconds.
	LastPromotion *PromotionHealth `json:"last_promotion,omitempty"`
}

// PromotionHealth is what a promotion took.
type PromotionHealth struct {
	LeaseMS    float64 `json:"lease_ms"`
	EpochMS    float64 `json:"epoch_ms"`
	RecoveryMS float64 `json:"recovery_ms"`
	OpenMS     float64 `json:"open_ms"`
	VDL        uint64  `json:"vdl"`
	Warm       bool    `json:"warm"`
}

// ReplicaHealth is a replica's replication state.
type ReplicaHealth struct {
	// Stream is "streaming" (attached to the writer's redo stream and
	// current), "connecting" (never attached yet) or "stale" (the stream
	// broke: the replica serves reads at its last applied VDL and
	// reconnects).
	Stream string `json:"stream"`
	// WriterVDL is the newest VDL the writer told the replica of.
	WriterVDL uint64 `json:"writer_vdl"`
	// LagLSN is WriterVDL minus the applied VDL.
	LagLSN uint64 `json:"lag_lsn"`
	// LagMS is how long the replica has been behind: 0 when it has applied
	// every commit the writer acknowledged as far as it knows, otherwise
	// the milliseconds since the oldest commit it has not applied was
	// acknowledged (and, while stale, since it last heard the writer).
	LagMS float64 `json:"lag_ms"`
	// Writer is the writer's SQL endpoint, where writes go.
	Writer string `json:"writer,omitempty"`
	// Epoch is the epoch of the stream it follows.
	Epoch uint64 `json:"epoch"`
	// Resyncs counts the times it dropped its cache to resume at a newer
	// VDL after missing MTRs.
	Resyncs uint64 `json:"resyncs"`
}

// StreamHealth is one replica subscribed to the writer's redo stream.
type StreamHealth struct {
	ID        string `json:"id"`
	Applied   uint64 `json:"applied"`
	ReadFloor uint64 `json:"read_floor"`
	// BytesSent and MTRsSent count what the writer sent it on this
	// subscription.
	BytesSent uint64 `json:"bytes_sent"`
	MTRsSent  uint64 `json:"mtrs_sent"`
}

// HealthStats are counters since the instance started.
type HealthStats struct {
	Commits uint64 `json:"commits"`
	// RedoBytes: redo shipped to storage. FullPageBytes: what shipping the
	// whole dirty pages of the same commits would have taken.
	RedoBytes uint64 `json:"redo_bytes"`
	// RedoRecords: the redo records the writer made (each shipped to
	// every segment of its PG).
	RedoRecords   uint64 `json:"redo_records"`
	FullPageBytes uint64 `json:"full_page_bytes"`
	Executes      uint64 `json:"executes"`
	Queries       uint64 `json:"queries"`
	// CacheHits and CacheMisses count the page reads of the database the
	// instance serves now, served by its page cache or by storage.
	CacheHits   uint64 `json:"cache_hits"`
	CacheMisses uint64 `json:"cache_misses"`
	// PageSize is the database's page size in bytes.
	PageSize int `json:"page_size,omitempty"`
}

// Error is a refusal from the server (a non-2xx reply).
type Error struct {
	Status  int    // HTTP status
	Code    string // such as "sql_error", "read_only", "not_ready", "busy"
	Message string
	// Writer is the writer's SQL endpoint, on a replica's not_writer and
	// lagging.
	Writer string
}

func (e *Error) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("HTTP %d: %s", e.Status, e.Message)
	}
	return e.Code + ": " + e.Message
}

// Code returns the server's error code of err, or "" if err is not an
// *Error.
func Code(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// Execute runs statements on the writer, all in one transaction if
// transaction is set. It returns once the commit is durable.
func (c *Client) Execute(ctx context.Context, statements []Statement, transaction bool) ([]Result, error) {
	body, err := appendExecute(nil, statements, transaction)
	if err != nil {
		return nil, err
	}
	var reply executeReply
	if err := c.do(ctx, http.MethodPost, "/v1/execute", body, &reply); err != nil {
		return nil, err
	}
	return reply.results(len(statements))
}

// Query runs one read-only statement on a read connection and returns all
// its rows.
func (c *Client) Query(ctx context.Context, sql string, params ...any) (*Rows, error) {
	body, err := appendStatement(nil, Statement{SQL: sql, Params: params})
	if err != nil {
		return nil, err
	}
	var reply wireRows
	if err := c.do(ctx, http.MethodPost, "/v1/query", body, &reply); err != nil {
		return nil, err
	}
	return reply.decode()
}

// Health asks the instance how it stands.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var h Health
	// An instance that is not ready may say so with a non-2xx status and
	// the health object itself, which is worth more than the status alone.
	if err := c.doStatus(ctx, http.MethodGet, "/v1/health", nil, &h, true); err != nil {
		return nil, err
	}
	return &h, nil
}

type blobJSON struct {
	Base64 string `json:"base64"`
}

func encodeParams(params []any) ([]any, error) {
	if len(params) == 0 {
		return nil, nil
	}
	out := make([]any, len(params))
	for i, p := range params {
		switch v := p.(type) {
		case []byte:
			// encoding/json would send a base64 string, which the server
			// would store as text.
			out[i] = blobJSON{Base64: base64.StdEncoding.EncodeToString(v)}
		case float64:
			// encoding/json would send 2.0 as 2, which the server would
			// bind as an INTEGER.
			if math.IsNaN(v) {
				return nil, fmt.Errorf("parameter %d: %w", i+1, errNaN)
			}
			out[i] = Real(v)
		case float32:
			if math.IsNaN(float64(v)) {
				return nil, fmt.Errorf("parameter %d: %w", i+1, errNaN)
			}
			out[i] = real32(v)
		case nil, bool, string, json.Number,
			int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
			out[i] = v
		default:
			return nil, fmt.Errorf("parameter %d: %T is not a SQL value (want a number, string, bool, []byte or nil)", i+1, p)
		}
	}
	return out, nil
}

func decodeValue(raw json.RawMessage) (any, error) {
	s := bytes.TrimSpace(raw)
	if len(s) == 0 {
		return nil, errors.New("empty value")
	}
	switch s[0] {
	case 'n':
		return nil, nil
	case '"':
		var str string
		err := json.Unmarshal(s, &str)
		return str, err
	case '{':
		var obj map[string]string
		if err := json.Unmarshal(s, &obj); err != nil || len(obj) != 1 {
			return nil, fmt.Errorf("%s is not a blob or a real", s)
		}
		if r, ok := obj["real"]; ok {
			switch r {
			case "Infinity":
				return math.Inf(1), nil
			case "-Infinity":
				return math.Inf(-1), nil
			}
			return nil, fmt.Errorf("real %q is not Infinity or -Infinity", r)
		}
		b64, ok := obj["base64"]
		if !ok {
			return nil, fmt.Errorf("%s is not a blob or a real", s)
		}
		return base64.StdEncoding.DecodeString(b64)
	case 't', 'f':
		var v bool
		err := json.Unmarshal(s, &v)
		return v, err
	}
	num := string(s)
	if !strings.ContainsAny(num, ".eE") {
		// An INTEGER: the server writes every REAL with a point or an
		// exponent. Parsed as text, not through float64, so that integers
		// beyond 2^53 keep every digit.
		if i, err := strconv.ParseInt(num, 10, 64); err == nil {
			return i, nil
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return nil, fmt.Errorf("unexpected value %s", s)
	}
	return f, nil
}

func (c *Client) url(path string) string {
	base := strings.TrimRight(c.Endpoint, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return base + path
}

// maxErrorBody bounds what is read of a reply that is not the expected JSON.
const maxErrorBody = 64 << 10

func (c *Client) do(ctx context.Context, method, path string, body []byte, reply any) error {
	return c.doStatus(ctx, method, path, body, reply, false)
}

// doStatus with anyStatus takes a non-2xx reply that is not an error
// object as the reply.
func (c *Client) doStatus(ctx context.Context, method, path string, body []byte, reply any, anyStatus bool) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url(path), rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer func() {
		// Drained, so the keep-alive connection is reused.
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
	}()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		err := decodeError(resp.StatusCode, b)
		if e := err.(*Error); anyStatus && e.Code == "" && json.Unmarshal(b, reply) == nil {
			return nil
		}
		return err
	}
	if err := json.NewDecoder(resp.Body).Decode(reply); err != nil {
		return fmt.Errorf("%s %s: bad reply: %w", method, path, err)
	}
	return nil
}

func decodeError(status int, b []byte) error {
	var e struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Writer  string `json:"writer"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil && e.Error != nil && (e.Error.Code != "" || e.Error.Message != "") {
		return &Error{Status: status, Code: e.Error.Code, Message: e.Error.Message, Writer: e.Error.Writer}
	}
	msg := strings.TrimSpace(string(b))
	if msg == "" {
		msg = http.StatusText(status)
	}
	return &Error{Status: status, Message: msg}
}
