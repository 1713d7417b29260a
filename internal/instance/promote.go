package instance

import (
	"context"
	"fmt"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// PromoteSteps is what a promotion took, step by step.
type PromoteSteps struct {
	// Lease is the wait for the lease (and for the call that grants it);
	// Epoch the call that grants it, which bumps the volume epoch in the
	// same transaction.
	Lease, Epoch time.Duration
	// Recovery fences storage with the new epoch, finds the VDL and
	// truncates above it; Open opens the volume and the database (in place,
	// from the replica's) and serves.
	Recovery, Open time.Duration
	// VDL is the recovered VDL; Warm: the replica had applied all of it,
	// and its page cache was kept.
	VDL  uint64
	Warm bool
}

// StartFrom makes the writer the volume's from a replica of it: it takes
// the lease, stops the replica (which is done with afterwards), recovers
// the volume under the new epoch and promotes the replica's database in
// place, keeping its page cache for every page at or below the recovered
// VDL (sqlvfs.DB.Promote). detaching runs when the replica stops
// following. If the lease is not taken (another instance is the writer, or
// ctx ended), the replica goes on untouched (detached false); a failure
// after that closes the replica's database and releases the lease.
func (w *Writer) StartFrom(ctx context.Context, rep *Replica, detaching func()) (steps PromoteSteps, detached bool, err error) {
	start := time.Now()
	lease, call, err := w.acquireTimed(ctx)
	if err != nil {
		return steps, false, err
	}
	steps.Epoch = call
	steps.Lease = time.Since(start) - call
	rep.catchUp(ctx, 100*time.Millisecond)
	if detaching != nil {
		detaching()
	}
	db, applied := rep.Detach()
	go rep.Retire()
	var adopt *adoption
	if db != nil {
		adopt = &adoption{db: db, applied: applied}
	}
	if err := w.open(ctx, lease, adopt); err != nil {
		w.release(lease)
		if adopt != nil {
			adopt.db.Close() // the replica's, unless open closed it already
		}
		return steps, true, err
	}
	if adopt != nil {
		steps.Recovery, steps.Open, steps.VDL, steps.Warm = adopt.recovery, adopt.openTook, adopt.vdl, adopt.warm
	} else {
		steps.VDL = w.Volume().VDL()
	}
	return steps, true, nil
}

// acquireTimed is acquire, with the duration of the call that succeeded.
func (w *Writer) acquireTimed(ctx context.Context) (*pb.AcquireWriterResponse, time.Duration, error) {
	lease, err := w.acquire(ctx)
	if err != nil {
		return nil, 0, err
	}
	return lease, time.Duration(w.lastAcquire.Load()), nil
}

// Lost is closed when the serving attempt ends (the lease is lost, storage
// fenced the writer, or it handed the role over); nil before it serves.
func (w *Writer) Lost() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lost
}

// Handover hands the writer role over to the replica target, for a planned
// failover: new writes are refused (not ready: the router holds them for
// the new writer), the ones in flight finish, and the lease is released. It returns the VDL handed over at and how long the drain took;
// the writer then stops serving (Lost is closed).
func (w *Writer) Handover(ctx context.Context, target string, timeout time.Duration) (uint64, time.Duration, error) {
	start := time.Now()
	why := fmt.Sprintf("handing the writer role over to %s", target)
	w.draining.Store(&why)
	w.mu.Lock()
	db, vol, lease := w.db, w.vol, w.lease
	w.mu.Unlock()
	if db == nil || vol == nil || lease == nil {
		w.draining.Store(nil)
		return 0, 0, fmt.Errorf("instance: the writer of volume %s does not serve", w.cfg.Volume)
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// The writes in flight hold writer connections until they finish.
	for db.Writer.Stats().InUse > 0 {
		if dctx.Err() != nil {
			w.draining.Store(nil)
			return 0, 0, fmt.Errorf("instance: writes still in flight after %s; the handover is abandoned", timeout)
		}
		time.Sleep(time.Millisecond)
	}
	// Everything up to the VDL is durable and on its way to the target
	// (the stream sends each MTR once durable): the target applies what
	// it received before it promotes (Replica.catchUp), and reads from
	// storage whatever it did not (RedoSince), so its cache stays warm
	// without waiting here for its next report.
	vdl := vol.VDL()
	drained := time.Since(start)
	w.mu.Lock()
	lost, once := w.lost, w.lostOnce
	w.mu.Unlock()
	w.loseLease(lost, once, why, nil)
	return vdl, drained, nil
}
