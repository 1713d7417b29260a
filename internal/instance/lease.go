package instance

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// ErrYielded: the writer gave way to another instance that holds the
// writer lease or is being promoted to it (WriterConfig.Yield).
var ErrYielded = errors.New("instance: another instance is the writer")

// leaseMargin is how long before the lease could expire in etcd the writer
// stops serving: etcd starts a renewal's TTL when it receives the renewal,
// which is after the writer sent it, so a lease renewed by a call sent at t
// lives at least until t+TTL; the margin covers the clocks' drift over one
// TTL and a goroutine that checks a moment late.
func leaseMargin(ttl time.Duration) time.Duration { return max(ttl/10, 20*time.Millisecond) }

// monoNow is the monotonic clock's reading, which goes on while a process
// is stopped: a writer paused past its lease finds it passed the moment it
// runs again.
var monoBase = time.Now()

func monoNow() int64 { return int64(time.Since(monoBase)) }

// extendLease records that the lease lives at least until sent+TTL.
func (w *Writer) extendLease(sent int64) {
	until := sent + int64(w.cfg.LeaseTTL-leaseMargin(w.cfg.LeaseTTL))
	for {
		cur := w.leaseUntil.Load()
		if until <= cur || w.leaseUntil.CompareAndSwap(cur, until) {
			return
		}
	}
}

// leaseValid reports whether the lease certainly has not expired: the
// writer may serve.
func (w *Writer) leaseValid() bool { return monoNow() < w.leaseUntil.Load() }

// acquire takes the writer lease, waiting while another holder (such as a
// crashed writer whose lease has not yet expired) has it; with a Yield
// that says so, it gives way instead (ErrYielded).
func (w *Writer) acquire(ctx context.Context) (*pb.AcquireWriterResponse, error) {
	delay := 50 * time.Millisecond
	for {
		if y := w.cfg.Yield; y != nil && y() {
			return nil, ErrYielded
		}
		w.setStep("taking the writer lease")
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		sent := monoNow()
		resp, err := w.ctl.AcquireWriter(actx, &pb.AcquireWriterRequest{
			Volume: w.cfg.Volume, Holder: w.cfg.ID, TtlMs: uint32(w.cfg.LeaseTTL.Milliseconds()),
		})
		cancel()
		if err == nil {
			w.lastAcquire.Store(monoNow() - sent)
			w.leaseUntil.Store(0)
			w.extendLease(sent)
			w.log.Info("took the writer lease", "epoch", resp.Epoch, "lease", resp.Lease)
			return resp, nil
		}
		switch status.Code(err) {
		case codes.NotFound, codes.InvalidArgument:
			return nil, fmt.Errorf("instance: volume %s: %s", w.cfg.Volume, status.Convert(err).Message())
		case codes.FailedPrecondition, codes.AlreadyExists, codes.Aborted:
			w.setStatus("waiting for the writer lease: %s", status.Convert(err).Message())
		default:
			w.setStatus("waiting for the control plane at %s: %s", w.cfg.Control, status.Convert(err).Message())
		}
		w.log.Info("waiting for the writer lease", "err", status.Convert(err).Message())
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
}

// keepLease renews the writer lease until it is lost: the control plane
// says it is gone, or the lease may have expired (no renewal sent within
// the last TTL less the margin succeeded: the control plane may have
// expired it, and a new writer may be serving; storage fences this one's
// writes by epoch, but its reads would go stale). Then the writer stops
// serving: Run takes the lease again, with a new epoch and a new recovery;
// a writer from Start shuts down.
//
// It renews four times a TTL, and at once again after a failed call, so
// that one lost or slow call does not cost the lease; Readable and
// Writable refuse from the moment the lease may have expired, whether or
// not this loop has run since (a paused process).
//
// Only the keepLease that closes lost acts on the writer: once the
// attempt has ended otherwise (it failed, was fenced or shut down), what
// its renewal returns concerns a lease that is no longer the writer's,
// and the writer may already serve under the next attempt's.
func (w *Writer) keepLease(lease int64, lost chan struct{}, once *sync.Once) {
	if h := w.hooks.keeperDone; h != nil {
		defer h(lease)
	}
	every := w.cfg.LeaseTTL / 4
	// The first renewal goes at once: the acquire may have taken much of
	// the TTL (the lease's time runs from its grant, inside the call).
	next := time.NewTimer(0)
	defer next.Stop()
	for {
		select {
		case <-lost:
			return
		case <-next.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), every)
		sent := monoNow()
		_, err := w.ctl.RenewWriter(ctx, &pb.RenewWriterRequest{Lease: lease})
		cancel()
		select {
		case <-lost:
			// The attempt ended while the renewal was in flight (Run may
			// have released the lease: the answer says it is gone).
			return
		default:
		}
		why := ""
		switch {
		case err == nil:
			w.extendLease(sent)
			next.Reset(every)
			continue
		case status.Code(err) == codes.NotFound, status.Code(err) == codes.FailedPrecondition:
			// The control plane answers an expired (or released) lease
			// with FailedPrecondition (control.ErrLeaseExpired).
			why = "the writer lease expired"
		case !w.leaseValid():
			why = fmt.Sprintf("the writer lease could not be renewed within its time to live (%s)", w.cfg.LeaseTTL)
		default:
			w.log.Warn("cannot renew the writer lease; retrying", "err", err)
			next.Reset(every / 5)
			continue
		}
		w.loseLease(lost, once, why, err)
		return
	}
}

// loseLease ends the attempt whose lease is gone (or may be), once.
func (w *Writer) loseLease(lost chan struct{}, once *sync.Once, why string, err error) {
	won := false
	once.Do(func() {
		close(lost)
		won = true
	})
	if !won {
		return
	}
	if w.draining.Load() != nil {
		w.log.Info("no longer the writer: " + why)
	} else {
		w.log.Error("no longer the writer: "+why, "err", err)
	}
	// Under w.mu, with lost already closed: open either published
	// before (and this unpublishes) or sees lost closed and fails.
	w.mu.Lock()
	w.ready.Store(false)
	restarts := w.restarts
	w.mu.Unlock()
	if !restarts {
		w.shutdown()
		w.setStatus("stopped: %s", why)
	}
}

func (w *Writer) release(lease *pb.AcquireWriterResponse) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := w.ctl.ReleaseWriter(ctx, &pb.ReleaseWriterRequest{Lease: lease.Lease}); err != nil {
		w.log.Warn("could not release the writer lease; it expires by itself", "err", err)
	}
}
