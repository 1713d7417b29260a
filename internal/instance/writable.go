package instance

import (
	"context"
	"errors"
	"fmt"

	"github.com/borealis-db/borealis/internal/sqlvfs"
	"github.com/borealis-db/borealis/internal/volume"
)

// NotReadyError is a writer's refusal while it does not serve: it starts,
// waits for the lease or for storage, or stopped.
type NotReadyError struct {
	Volume string
	// Status is the writer's status (see Writer.Status).
	Status string
}

func (e *NotReadyError) Error() string {
	return fmt.Sprintf("the writer of volume %s is not ready: %s", e.Volume, e.Status)
}

// NotWriterError is a writer's refusal once storage fenced it: another
// writer took over the volume.
type NotWriterError struct {
	Volume string
	// Err is the volume client's (volume.ErrFenced).
	Err error
}

func (e *NotWriterError) Error() string {
	return fmt.Sprintf("this instance is no longer the writer of volume %s: %v", e.Volume, e.Err)
}

func (e *NotWriterError) Unwrap() error { return e.Err }

// PendingCommitError is a writer's refusal of a write while an earlier
// commit, whose outcome is unknown, is still not durable (storage is
// unavailable).
type PendingCommitError struct {
	// LSN is the earlier commit's.
	LSN uint64
	Err error
}

func (e *PendingCommitError) Error() string {
	return fmt.Sprintf("an earlier commit (LSN %d) is still not acknowledged, and writes wait for it: %v", e.LSN, e.Err)
}

func (e *PendingCommitError) Unwrap() error { return e.Err }

// Readable returns the database to query, or a *NotReadyError.
func (w *Writer) Readable() (*sqlvfs.DB, error) {
	w.mu.Lock()
	db, st, leased := w.db, w.status, w.lease != nil
	lost, once := w.lost, w.lostOnce
	w.mu.Unlock()
	if !w.ready.Load() || db == nil {
		return nil, &NotReadyError{Volume: w.cfg.Volume, Status: st}
	}
	if leased && !w.leaseValid() {
		// The lease may have expired in etcd, and a new writer may serve:
		// a read here could miss its commits. keepLease may not have run
		// since (this process was paused); end the attempt now.
		why := fmt.Sprintf("the writer lease was not renewed within its time to live (%s)", w.cfg.LeaseTTL)
		go w.loseLease(lost, once, why, nil)
		return nil, &NotReadyError{Volume: w.cfg.Volume, Status: why}
	}
	return db, nil
}

// Writable returns the database to write to, or a *NotReadyError, a
// *NotWriterError or a *PendingCommitError. After a commit that was not
// acknowledged (NoteUnacknowledged), it first waits (up to the write
// timeout) until that commit is durable: new writes would otherwise pile up
// behind it, each with an unknown outcome.
func (w *Writer) Writable(ctx context.Context) (*sqlvfs.DB, error) {
	db, err := w.Readable()
	if err != nil {
		return nil, err
	}
	if why := w.draining.Load(); why != nil {
		return nil, &NotReadyError{Volume: w.cfg.Volume, Status: *why}
	}
	w.mu.Lock()
	vol, limbo := w.vol, w.limbo
	w.mu.Unlock()
	if limbo == 0 || vol == nil || vol.VDL() >= limbo {
		return db, nil
	}
	wctx, cancel := context.WithTimeout(ctx, w.cfg.WriteTimeout)
	defer cancel()
	if err := vol.WaitDurable(wctx, limbo); err != nil {
		if errors.Is(err, volume.ErrFenced) {
			w.Fenced(err)
			return nil, &NotWriterError{Volume: w.cfg.Volume, Err: err}
		}
		return nil, &PendingCommitError{LSN: limbo, Err: err}
	}
	w.mu.Lock()
	if w.limbo == limbo {
		w.limbo = 0
	}
	w.mu.Unlock()
	return db, nil
}

// NoteUnacknowledged records a commit whose outcome is unknown: it was not
// acknowledged in time, and later writes wait for it (see Writable).
func (w *Writer) NoteUnacknowledged(lsn uint64) {
	w.mu.Lock()
	w.limbo = max(w.limbo, lsn)
	w.mu.Unlock()
}

// Fenced is called when storage refuses this writer's epoch: another
// writer took over. The writer stops serving: Run starts again, a writer
// from Start shuts down.
func (w *Writer) Fenced(err error) {
	w.mu.Lock()
	once, lost := w.lostOnce, w.lost
	w.mu.Unlock()
	if once != nil {
		once.Do(func() {
			w.log.Error("fenced: another writer took over the volume", "err", err)
			w.ready.Store(false)
			close(lost)
			w.mu.Lock()
			restarts := w.restarts
			w.mu.Unlock()
			if !restarts {
				// Not inline: the caller still holds a connection, and
				// closing the database waits for it.
				go w.shutdown()
			}
		})
	}
}
