package dbserver

import (
	"net/http"
	"strings"

	"github.com/ncruces/go-sqlite3"

	"github.com/borealis-db/borealis/internal/sqlclient"
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
//   - PRAGMAs that set a value, other than the database's own user_version
//     and application_id on the writer: the setting stays on the pooled
//     connection (query_only(0) on a read connection, journal_mode,
//     busy_timeout, foreign_keys...). The authorizer sees an empty value
//     both for a read and for "= ”", so a PRAGMA with an argument is also
//     refused by pragmaRefusal before it is prepared.
//
// Reading a setting, and the PRAGMAs that take a table or index name or a
// row limit, stay allowed.
func withPolicy(opts sqlvfs.Options) sqlvfs.Options {
	opts.OnConnect = func(c *sqlite3.Conn, reader bool) error {
		return c.SetAuthorizer(authorizer(reader, false))
	}
	return opts
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

// pragmasWithNames are the PRAGMAs whose argument names what to read (a
// table, an index, a row limit) rather than a value to set.
var pragmasWithNames = map[string]bool{
	"table_info": true, "table_xinfo": true, "table_list": true,
	"index_info": true, "index_xinfo": true, "index_list": true,
	"foreign_key_list": true, "foreign_key_check": true,
	"integrity_check": true, "quick_check": true,
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
		if name4th == "" || pragmasWithNames[name] {
			return true
		}
		return !reader && pragmasOfTheData[name]
	}
	return true
}

// pragmaRefusal refuses a PRAGMA that sets a value (see withPolicy) before
// it reaches SQLite, where "= ”" would look like a read.
func pragmaRefusal(q string, reader bool) *APIError {
	name, hasArg, ok := sqlclient.Pragma(q)
	if !ok || !hasArg || pragmasWithNames[name] || (!reader && pragmasOfTheData[name]) {
		return nil
	}
	if pragmasOfTheData[name] {
		return apiErr(http.StatusForbidden, CodeNotAllowed, "PRAGMA %s sets a value: send it to /v1/execute", name)
	}
	return apiErr(http.StatusForbidden, CodeNotAllowed, "PRAGMA %s with a value is not allowed: the setting would stay on a pooled connection and change other requests' statements (user_version and application_id may be set through /v1/execute)", name)
}
