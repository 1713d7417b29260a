package dbserver

import (
	"strings"

	"github.com/ncruces/go-sqlite3"

	"github.com/borealis-db/borealis/internal/sqlvfs"
)

// CodeNotAllowed refuses SQL that the API does not run for its callers.
const CodeNotAllowed = "not_allowed"

// withPolicy makes every connection of the instance's pools refuse, through
// SQLite's authorizer, what a remote caller of a pooled connection must not
// do:
//   - ATTACH (and VACUUM INTO, which attaches its target): SQLite would open
//     any file the server can reach, with any VFS, and create it.
//   - PRAGMAs that set a value, other than the database's own user_version
//     and application_id on the writer: a setting outlives the request in
//     the pooled connection and would change what the next caller's
//     statements do (query_only(0) on a read connection, journal_mode,
//     busy_timeout, foreign_keys...). Reading a setting, and the PRAGMAs
//     that take a table or index name or a row limit, stay allowed.
func withPolicy(opts sqlvfs.Options) sqlvfs.Options {
	opts.OnConnect = func(c *sqlite3.Conn, reader bool) error {
		return c.SetAuthorizer(func(action sqlite3.AuthorizerActionCode, name3rd, name4th, schema, inner string) sqlite3.AuthorizerReturnCode {
			if allowed(action, name3rd, name4th, reader) {
				return sqlite3.AUTH_OK
			}
			return sqlite3.AUTH_DENY
		})
	}
	return opts
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

func allowed(action sqlite3.AuthorizerActionCode, name3rd, name4th string, reader bool) bool {
	switch action {
	case sqlite3.AUTH_ATTACH:
		// Plain VACUUM attaches an empty name: a private temporary database.
		return name3rd == ""
	case sqlite3.AUTH_PRAGMA:
		name := strings.ToLower(name3rd)
		if name4th == "" || pragmasWithNames[name] {
			return true
		}
		return !reader && pragmasOfTheData[name]
	}
	return true
}
