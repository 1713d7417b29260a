package dbserver

import (
	"database/sql"
	"strings"

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
// The authorizer is set at the start of every request (armPolicy): the
// driver reads PRAGMA query_only on a new connection after its connect
// hook, which the policy refuses. The connect hook caps the length of a
// value, so that a request meets SQLITE_TOOBIG long before the connection's
// memory runs out (SQLITE_NOMEM makes the driver panic with the connection
// held, which would hang the request and keep the writer turn).
func withPolicy(opts sqlvfs.Options) sqlvfs.Options {
	opts.OnConnect = func(c *sqlite3.Conn, reader bool) error {
		c.Limit(sqlite3.LIMIT_LENGTH, MaxRowBytes)
		return nil
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
)

var (
	readerAuthorizer = authorizer(true, false)
	writerAuthorizer = authorizer(false, false)
	vacuumAuthorizer = authorizer(false, true)
)

// armPolicy sets the policy's authorizer on conn for this request.
func armPolicy(conn *sql.Conn, reader bool) error {
	a := writerAuthorizer
	if reader {
		a = readerAuthorizer
	}
	return rawConnErr(conn, func(c *sqlite3.Conn) error { return c.SetAuthorizer(a) })
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
