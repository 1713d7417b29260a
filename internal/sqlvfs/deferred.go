package sqlvfs

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/ncruces/go-sqlite3"
)

// Deferred durability. A writer connection normally waits, in the Unlock
// that ends its write transaction, until its commit is durable: COMMIT
// returns acknowledged. That wait holds the connection, so a server that
// ran every commit on one connection would run one quorum round trip at a
// time, and a server with a pool of them makes SQLite drop its page cache
// on every connection each time another one commits.
//
// DeferDurability lets one connection carry every commit instead: while it
// is on, a transaction ends without waiting (the writer turn passes on at
// once, as always), and the LSN it had to wait for is kept. The caller takes
// it when it is done with the connection, gives the connection back, and
// only then waits, with DB.WaitDurable, before it tells anyone of the
// outcome. Nothing reaches a client earlier than before; only the wait moves
// out of the connection.

// DeferDurability turns deferred durability on for conn, a connection of
// DB.Writer, and returns what turns it off again: it returns the highest
// LSN that the transactions run meanwhile left to wait for (0 if none).
// done must be called before conn goes back to its pool, so that no other
// user of the pool gets a connection that does not wait.
func DeferDurability(conn *sql.Conn) (done func() (uint64, error), err error) {
	var f *file
	err = conn.Raw(func(dc any) error {
		c, err := rawOf(dc)
		if err != nil {
			return err
		}
		ff, err := fileOf(c)
		if err != nil {
			return err
		}
		if ff.reader {
			return fmt.Errorf("sqlvfs: deferred durability on a read connection")
		}
		f = ff
		f.deferred, f.undurable = true, 0
		return nil
	})
	if err != nil {
		return nil, err
	}
	return func() (uint64, error) {
		var lsn uint64
		err := conn.Raw(func(any) error {
			lsn = f.undurable
			f.deferred, f.undurable = false, 0
			return nil
		})
		return lsn, err
	}, nil
}

// WaitDurable waits until lsn, which a connection under DeferDurability left
// to wait for, is durable. Its failure is an *UnacknowledgedError, as COMMIT's
// would have been, and every writer connection reads its pages again from
// its next transaction on.
func (db *DB) WaitDurable(ctx context.Context, lsn uint64) error {
	vol := db.d.volume()
	if lsn <= vol.VDL() {
		return nil
	}
	if err := vol.WaitDurable(ctx, lsn); err != nil {
		db.d.cacheGen.Add(1)
		return &UnacknowledgedError{LSN: lsn, Err: err}
	}
	return nil
}

// rawOf returns the SQLite connection of a database/sql driver connection.
func rawOf(dc any) (*sqlite3.Conn, error) {
	c, ok := dc.(interface{ Raw() *sqlite3.Conn })
	if !ok {
		return nil, fmt.Errorf("sqlvfs: %T is not a go-sqlite3 connection", dc)
	}
	return c.Raw(), nil
}
