package dbserver

import (
	"container/list"
	"context"
	"database/sql"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/borealis-db/borealis/internal/sqlvfs"
)

// CodeNotAllowed refuses SQL that the API does not run for its callers.
const CodeNotAllowed = "not_allowed"

// The API runs remote callers' SQL on pooled connections, so it refuses
// what would reach outside the volume or outlive the request:
//   - ATTACH, in any form (a file name built by an expression or bound as
//     a parameter reaches the authorizer as no name at all), and VACUUM
//     INTO: SQLite would open, or create, any file the server can reach.
//     Plain VACUUM attaches a private temporary database; it runs with an
//     authorizer that lets that one through (see execOne).
//   - TEMP tables, indexes, views and triggers: they stay on the pooled
//     connection and change what later callers' statements do.
//   - PRAGMAs that have a setter, other than the database's own
//     user_version and application_id: a setting stays on the pooled
//     connection (query_only, journal_mode, foreign_keys, busy_timeout...).
//     The authorizer sees "= ”" exactly like a plain read, and a PRAGMA
//     can hide behind EXPLAIN or a leading ';' from any look at the text,
//     so these are refused by name, reads included. What stays: the
//     PRAGMAs that only read (the schema: table_info, index_list...; the
//     checks: integrity_check...; and lists such as database_list), and
//     user_version and application_id (set on the writer; on a read
//     connection query_only refuses the write).
//   - A TEMP trigger made as "CREATE TRIGGER temp.x ... ON main.t" reaches
//     the authorizer as an ordinary CREATE_TRIGGER; execOne looks for TEMP
//     objects after a CREATE and throws the connection away.
//
// The authorizer is set by the first request on a connection (armPolicy):
// the driver reads PRAGMA query_only on a new connection after its connect
// hook, which the policy refuses. It is set once, not at every request:
// setting an authorizer expires every statement prepared on the connection,
// which would make stmtCache's statements prepare again at each run. The
// connect hook caps the length of a value, so that a request meets
// SQLITE_TOOBIG long before the connection's memory runs out (SQLITE_NOMEM
// makes the driver panic with the connection held, which would hang the
// request and keep the writer turn). The close hook forgets what was kept
// of the connection.
func withPolicy(opts sqlvfs.Options) sqlvfs.Options {
	opts.OnConnect = func(c *sqlite3.Conn, reader bool) error {
		c.Limit(sqlite3.LIMIT_LENGTH, MaxRowBytes)
		return nil
	}
	opts.OnClose = func(c *sqlite3.Conn) {
		preparedWrites.drop(c)
		armed.Delete(c)
	}
	return opts
}

// The API's size limits, which must agree: a value the API stores must fit
// in a request body, or a client could store it only by building it in SQL.
const (
	// MaxValueBytes is the largest string or blob the API stores: each
	// connection has 256 MiB of memory, and a statement may hold a few
	// copies of a value. It is fixed, not a flag: raising it would need
	// more memory per connection, and lowering it would refuse rows
	// already stored.
	MaxValueBytes = 32 << 20
	// MaxRowBytes is SQLite's LIMIT_LENGTH on every pooled connection. It
	// bounds a row's record as well as each value, so it is the largest
	// value with room for the rest of its row (the record header, the key,
	// a few small columns): with the limit at MaxValueBytes alone, a
	// MaxValueBytes blob could be bound but never stored.
	MaxRowBytes = MaxValueBytes + 64<<10
	// DefaultMaxBodyBytes is the default cap on a request body (borealis db
	// --max-body). The largest value, sent as a blob parameter, travels in
	// base64, 4/3 of its size (42.7 MiB for MaxValueBytes, a little more for
	// MaxRowBytes); the rest is room for the statement and the JSON around
	// it. A string parameter of ordinary text takes about its own size.
	DefaultMaxBodyBytes = 48 << 20
	// BodyBudgetBodies is how many bodies of the largest size
	// (Config.MaxBodyBytes) the instance reads and decodes at once: the
	// large request bodies it holds, from the moment it starts reading one
	// until its statements have run, add up to at most this many times the
	// body cap. A request holds its body and the values decoded from it, at
	// most about twice its size, so by default that memory stays under
	// about 400 MiB however many clients send at once. Requests beyond wait
	// for room, as they wait for a pooled connection; see bodyBudget.
	BodyBudgetBodies = 4
	// QueryBodyBudgetBodies of them are /v1/query's alone: writes that hold
	// their bodies while they wait out a lost write quorum (up to
	// --write-timeout) never leave a large read without room.
	QueryBodyBudgetBodies = 1
	// smallBody is the largest body that takes nothing from the budget and
	// never waits for room (see readRequest): a query or a small write
	// must not wait behind large uploads, stalled or not. What such bodies
	// hold is bounded by the connections the server has open, 64 KiB
	// each on top of the buffers and goroutine every connection has.
	smallBody = 64 << 10
	// BodyIdleTimeout is how long a request body that has started to be
	// read may go without a byte arriving (as MySQL's net_read_timeout or
	// nginx's client_body_timeout): a client that announces a large body
	// and stalls holds its room in the budget for this long, not for the
	// whole request timeout. The request timeout still bounds the whole
	// body.
	BodyIdleTimeout = 10 * time.Second
)

// LargestValueBody is the size of the smallest request body that stores a
// value of MaxValueBytes, a blob parameter in base64 with the shortest
// statement that stores it:
//
//	{"statements":[{"sql":"INSERT INTO t VALUES(?)","params":[{"base64":"..."}]}]}
//
// A body cap (Config.MaxBodyBytes) below it refuses the largest value; the
// default leaves room for a longer statement.
func LargestValueBody() int64 {
	frame := `{"statements":[{"sql":"INSERT INTO t VALUES(?)","params":[{"base64":""}]}]}`
	return int64(len(frame) + base64.StdEncoding.EncodedLen(MaxValueBytes))
}

// bodyBudget bounds the bytes of request bodies the instance holds at once:
// a request with a large body takes its size before it reads the body and
// gives it back when it no longer needs the values decoded from it, so that
// twenty clients sending the largest blob at once cannot make the instance
// decode twenty bodies (1.5 GiB) before the connection pools limit
// anything. A request that does not fit waits, first come first served, so
// a large body is not starved by a stream of smaller ones. Small bodies
// (up to smallBody) do not come here at all (see readRequest).
//
// A request waits for room as long as its request timeout allows, as it
// waits for a pooled connection, and fails with busy only then: while it
// waits it costs a goroutine and its unread bytes in the socket, not the
// instance's memory (a client that sends Expect: 100-continue does not even
// send its body), and a burst of large uploads becomes latency, where a
// short wait would turn it into failures that every client retries at
// once. A body that has room but stops arriving gives it back after
// BodyIdleTimeout.
type bodyBudget struct {
	size int64

	mu      sync.Mutex
	used    int64
	waiters list.List // of *bodyWaiter, in arrival order
}

type bodyWaiter struct {
	n     int64
	ready chan struct{} // closed when the bytes are granted
}

func newBodyBudget(size int64) *bodyBudget { return &bodyBudget{size: size} }

// acquire takes n bytes of the budget, waiting for them until ctx ends; it
// returns the context's cause then. n must not be more than the budget.
func (b *bodyBudget) acquire(ctx context.Context, n int64) error {
	b.mu.Lock()
	if b.used+n <= b.size && b.waiters.Len() == 0 {
		b.used += n
		b.mu.Unlock()
		return nil
	}
	w := &bodyWaiter{n: n, ready: make(chan struct{})}
	e := b.waiters.PushBack(w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-w.ready:
		// Granted as the context ended: give it back.
		b.used -= n
	default:
		b.waiters.Remove(e)
	}
	// Either way, those behind it may fit now.
	b.grantLocked()
	return context.Cause(ctx)
}

// release gives back n bytes taken by acquire.
func (b *bodyBudget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.grantLocked()
	b.mu.Unlock()
}

// grantLocked hands out what is free to the waiters in order, while the
// first fits.
func (b *bodyBudget) grantLocked() {
	for e := b.waiters.Front(); e != nil; e = b.waiters.Front() {
		w := e.Value.(*bodyWaiter)
		if b.used+w.n > b.size {
			return
		}
		b.used += w.n
		b.waiters.Remove(e)
		close(w.ready)
	}
}

// inUse reports the bytes taken and the requests waiting.
func (b *bodyBudget) inUse() (used int64, waiting int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used, b.waiters.Len()
}

// FormatSize words a size in bytes, for messages and for flags alike: in
// the largest binary unit it is a whole number of ("48MiB", "1540KiB", a
// form parseable as a flag value), or, when no unit divides it, in the
// largest unit it reaches, to a tenth, the tenth always shown ("42.7MiB",
// and "48.0MiB" for a byte short of 48 MiB: never a figure that looks
// exact and would parse as a flag value; a message that needs the exact
// figure gives the bytes beside it).
func FormatSize[N ~int | ~int64 | ~uint64](size N) string {
	if size < 0 {
		return fmt.Sprintf("%dB", size)
	}
	n := uint64(size)
	units := []struct {
		name string
		size uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}
	for _, u := range units {
		if n >= u.size && n%u.size == 0 {
			return fmt.Sprintf("%d%s", n/u.size, u.name)
		}
	}
	for _, u := range units {
		if n >= u.size {
			return fmt.Sprintf("%.1f%s", float64(n)/float64(u.size), u.name)
		}
	}
	return fmt.Sprintf("%dB", n)
}

var (
	readerAuthorizer = authorizer(true, false)
	writerAuthorizer = authorizer(false, false)
	vacuumAuthorizer = authorizer(false, true)
)

// armed holds the connections (*sqlite3.Conn) whose authorizer is set, and
// to which kind (reader, a bool): setting it again would expire their
// prepared statements. execOne's VACUUM restores the writer's.
var armed sync.Map

// armPolicy sets the policy's authorizer on conn, unless it has it.
func armPolicy(conn *sql.Conn, reader bool) error {
	a := writerAuthorizer
	if reader {
		a = readerAuthorizer
	}
	return rawConnErr(conn, func(c *sqlite3.Conn) error {
		if r, ok := armed.Load(c); ok && r.(bool) == reader {
			return nil
		}
		if err := c.SetAuthorizer(a); err != nil {
			armed.Delete(c)
			return err
		}
		armed.Store(c, reader)
		return nil
	})
}

// authorizer is the policy's authorizer for a read or a writer connection;
// vacuum lets plain VACUUM attach its temporary database.
func authorizer(reader, vacuum bool) func(sqlite3.AuthorizerActionCode, string, string, string, string) sqlite3.AuthorizerReturnCode {
	return func(action sqlite3.AuthorizerActionCode, name3rd, name4th, schema, inner string) sqlite3.AuthorizerReturnCode {
		if allowed(action, name3rd, name4th, schema, reader, vacuum) {
			return sqlite3.AUTH_OK
		}
		return sqlite3.AUTH_DENY
	}
}

// readOnlyPragmas have no setter: whatever their argument, they read.
var readOnlyPragmas = map[string]bool{
	"table_info": true, "table_xinfo": true, "table_list": true,
	"index_info": true, "index_xinfo": true, "index_list": true,
	"foreign_key_list": true, "foreign_key_check": true,
	"integrity_check": true, "quick_check": true,
	"database_list": true, "collation_list": true, "function_list": true,
	"module_list": true, "pragma_list": true, "compile_options": true,
	"data_version": true, "freelist_count": true, "page_count": true,
	"optimize": true,
}

// pragmasOfTheData are settings stored in the database file itself: part of
// the data, written in a transaction like any row.
var pragmasOfTheData = map[string]bool{"user_version": true, "application_id": true}

func allowed(action sqlite3.AuthorizerActionCode, name3rd, name4th, schema string, reader, vacuum bool) bool {
	switch action {
	case sqlite3.AUTH_CREATE_TABLE, sqlite3.AUTH_CREATE_INDEX, sqlite3.AUTH_CREATE_VIEW,
		sqlite3.AUTH_CREATE_TRIGGER, sqlite3.AUTH_CREATE_VTABLE:
		// "CREATE TABLE temp.x" is a CREATE_TABLE in schema temp.
		return !strings.EqualFold(schema, "temp")
	case sqlite3.AUTH_ATTACH:
		return vacuum && name3rd == ""
	case sqlite3.AUTH_CREATE_TEMP_TABLE, sqlite3.AUTH_CREATE_TEMP_INDEX,
		sqlite3.AUTH_CREATE_TEMP_TRIGGER, sqlite3.AUTH_CREATE_TEMP_VIEW:
		return false
	case sqlite3.AUTH_PRAGMA:
		name := strings.ToLower(name3rd)
		return readOnlyPragmas[name] || pragmasOfTheData[name]
	}
	return true
}
