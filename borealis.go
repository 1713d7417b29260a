// Package borealis opens SQL databases on Borealis volumes from Go programs,
// in process, as the volume's writer, through database/sql and the ncruces
// SQLite driver:
//
//	import (
//		"database/sql"
//
//		"github.com/borealis-db/borealis"
//		_ "github.com/ncruces/go-sqlite3/driver"
//	)
//
//	db, err := sql.Open("sqlite3", borealis.DSN("127.0.0.1:7100", "main"))
//
// The first connection takes the volume's writer lease from the control
// plane, bumps the volume epoch (fencing any other writer) and runs crash
// recovery, exactly as `borealis db --role writer` does; later connections
// share that writer. A COMMIT returns once the transaction is durable on a
// write quorum of every PG it touched; a read on these connections returns
// only durable data, waiting for it if it must. Connections of ReaderDSN
// read at the durable LSN and never wait. Close releases the lease; if the
// lease is lost (or another writer fences this one), the in-process writer
// stops and its connections fail until the volume is opened again.
package borealis

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"

	pb "github.com/borealis-db/borealis/api/borealispb"
	ctlplane "github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/instance"
	"github.com/borealis-db/borealis/internal/sqlvfs"
)

// StartTimeout bounds the start of an in-process writer: waiting for the
// lease of a crashed writer to expire, and recovery.
var StartTimeout = time.Minute

var (
	mu        sync.Mutex
	once      sync.Once
	instances = map[string]*writer{}
)

// writer is this program's writer of a volume, with its connection to the
// control plane.
type writer struct {
	w    *instance.Writer
	conn *grpc.ClientConn
}

func (w *writer) close() error {
	err := w.w.Close()
	if cerr := w.conn.Close(); err == nil {
		err = cerr
	}
	return err
}

// DSN is the database/sql data source name (for the "sqlite3" driver of
// github.com/ncruces/go-sqlite3/driver) of the volume named volume of the
// cluster whose control plane listens at control. It carries the pragmas the
// volume's VFS needs: journal_mode=MEMORY (no journal file ever reaches
// storage) and IMMEDIATE transactions (a transaction takes the writer turn
// at BEGIN).
func DSN(control, volume string) string {
	return dsn(control, volume, false)
}

// ReaderDSN is DSN for read-only connections: each read transaction is
// pinned at the volume durable LSN when it starts, so it sees every
// acknowledged commit and never one that is not durable, never waits for a
// writer, and keeps answering while writes stall. The volume's writer in
// this process is started as for DSN.
func ReaderDSN(control, volume string) string {
	return dsn(control, volume, true)
}

func dsn(control, volume string, reader bool) string {
	once.Do(func() { sqlvfs.SetOpener(open) })
	q := url.Values{}
	q.Set("vfs", sqlvfs.VFSName)
	q.Set("control", control)
	if reader {
		q.Set("mode", "ro")
	} else {
		q.Set("_txlock", "immediate")
	}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", sqlvfs.DefaultBusyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(memory)")
	return "file:" + url.PathEscape(volume) + "?" + q.Encode()
}

func open(control, volume string) (string, error) {
	host, _ := os.Hostname()
	conn, err := ctlplane.Dial(control)
	if err != nil {
		return "", fmt.Errorf("borealis: control plane address %q: %w", control, err)
	}
	w, err := instance.NewWriter(instance.WriterConfig{
		Volume:  volume,
		Ctl:     pb.NewControlClient(conn),
		Control: control,
		ID:      fmt.Sprintf("go-%s-%d", host, os.Getpid()),
	})
	if err != nil {
		conn.Close()
		return "", err
	}
	inst := &writer{w: w, conn: conn}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		inst.close()
		return "", fmt.Errorf("borealis: open volume %s at %s: %w", volume, control, err)
	}
	mu.Lock()
	instances[control+"/"+volume] = inst
	mu.Unlock()
	return w.DB().Name(), nil
}

// Close stops this program's writer of a volume opened through DSN: it
// releases the writer lease so that another writer can take over at once.
// Close the *sql.DB first.
func Close(control, volume string) error {
	key := control + "/" + volume
	mu.Lock()
	inst := instances[key]
	delete(instances, key)
	mu.Unlock()
	sqlvfs.ForgetControl(control, volume)
	if inst == nil {
		return nil
	}
	return inst.close()
}
