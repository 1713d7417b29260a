package dbserver

import (
	"context"
	"errors"
	"sync"

	"github.com/ncruces/go-sqlite3"

	"github.com/borealis-db/borealis/internal/sqlclient"
)

// stmtCache keeps prepared statements of the writer connection, so that a
// write a client sends again (the same INSERT with other parameters) is not
// parsed and planned again. It holds only plain INSERT, UPDATE, DELETE and
// REPLACE statements without RETURNING: the ones execOne runs without
// rows. SQLite prepares them again by itself after a schema change, and runs
// the authorizer again then.
//
// Every use is inside conn.Raw, which gives one goroutine the connection at
// a time. SQLite will not close a connection with statements open, so they
// are closed as it closes (the policy's sqlvfs.Options.OnClose).
type stmtCache struct {
	mu    sync.Mutex
	conns map[*sqlite3.Conn]*connStmts
}

// preparedWrites is the statement cache of every writer connection of the
// process; connections are keyed by their SQLite handle, dropped as they
// close.
var preparedWrites stmtCache

// connStmts are one connection's statements, the oldest first out.
type connStmts struct {
	byQuery map[string]*sqlite3.Stmt
	order   []string
}

// stmtCacheSize bounds the statements kept per connection.
const stmtCacheSize = 64

// cacheable reports whether q is a write that runs without rows: its first
// keyword says so, and it has no RETURNING (mayReturnRows' test for those).
func cacheable(q string) bool {
	switch sqlclient.Keyword(q) {
	case "INSERT", "UPDATE", "DELETE", "REPLACE":
		return !hasReturning(q)
	}
	return false
}

// get returns q's statement on c, or nil.
func (sc *stmtCache) get(c *sqlite3.Conn, q string) *sqlite3.Stmt {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if cs := sc.conns[c]; cs != nil {
		return cs.byQuery[q]
	}
	return nil
}

// put keeps st as q's statement on c, closing the oldest beyond the bound.
func (sc *stmtCache) put(c *sqlite3.Conn, q string, st *sqlite3.Stmt) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.conns == nil {
		sc.conns = map[*sqlite3.Conn]*connStmts{}
	}
	cs := sc.conns[c]
	if cs == nil {
		cs = &connStmts{byQuery: map[string]*sqlite3.Stmt{}}
		sc.conns[c] = cs
	}
	if old := cs.byQuery[q]; old != nil {
		old.Close()
	} else {
		cs.order = append(cs.order, q)
	}
	cs.byQuery[q] = st
	if len(cs.order) > stmtCacheSize {
		oldest := cs.order[0]
		cs.order = cs.order[1:]
		cs.byQuery[oldest].Close()
		delete(cs.byQuery, oldest)
	}
}

// drop closes every statement kept on c.
func (sc *stmtCache) drop(c *sqlite3.Conn) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if cs := sc.conns[c]; cs != nil {
		for _, st := range cs.byQuery {
			st.Close()
		}
		delete(sc.conns, c)
	}
}

// execCached runs q with args as a statement kept on c, preparing it the
// first time. A statement that fails is not kept: SQLite may have left it in
// any state.
func (sc *stmtCache) execCached(ctx context.Context, c *sqlite3.Conn, q string, args []any) error {
	st := sc.get(c, q)
	if st == nil {
		var tail string
		var err error
		st, tail, err = c.Prepare(q)
		if err != nil {
			return err
		}
		if st == nil || !noSQL(tail) {
			// Several statements, or none: the caller's checks refuse
			// those before they come here; never keep one.
			st.Close()
			return errNotCacheable
		}
		sc.put(c, q, st)
	}
	if n := st.BindCount(); n != len(args) {
		return paramCountError{want: n, got: len(args), named: mayHaveNamedParams(q)}
	}
	if old := c.SetInterrupt(ctx); old != ctx {
		defer c.SetInterrupt(old)
	}
	err := bindAll(st, args)
	if err == nil {
		err = st.Exec()
	}
	if cerr := st.ClearBindings(); err == nil {
		err = cerr
	}
	if err != nil {
		sc.mu.Lock()
		if cs := sc.conns[c]; cs != nil && cs.byQuery[q] == st {
			delete(cs.byQuery, q)
			for i, o := range cs.order {
				if o == q {
					cs.order = append(cs.order[:i], cs.order[i+1:]...)
					break
				}
			}
		}
		sc.mu.Unlock()
		st.Close()
	}
	return err
}

// errNotCacheable: the statement takes execOne's general path.
var errNotCacheable = errors.New("dbserver: not a cacheable statement")

// bindAll binds the API's parameter values (see sqlValue) in order.
func bindAll(st *sqlite3.Stmt, args []any) error {
	for i, a := range args {
		id := i + 1
		var err error
		switch v := a.(type) {
		case nil:
			err = st.BindNull(id)
		case bool:
			err = st.BindBool(id, v)
		case int64:
			err = st.BindInt64(id, v)
		case float64:
			err = st.BindFloat(id, v)
		case string:
			err = st.BindText(id, v)
		case []byte:
			err = st.BindBlob(id, v)
		default:
			return errNotCacheable
		}
		if err != nil {
			return err
		}
	}
	return nil
}
