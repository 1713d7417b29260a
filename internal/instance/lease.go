package instance

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// acquire takes the writer lease, waiting while another holder (such as a
// crashed writer whose lease has not yet expired) has it.
func (w *Writer) acquire(ctx context.Context) (*pb.AcquireWriterResponse, error) {
	delay := 100 * time.Millisecond
	for {
		w.setStep("taking the writer lease")
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := w.ctl.AcquireWriter(actx, &pb.AcquireWriterRequest{
			Volume: w.cfg.Volume, Holder: w.cfg.ID, TtlMs: uint32(w.cfg.LeaseTTL.Milliseconds()),
		})
		cancel()
		if err == nil {
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
		delay = min(2*delay, time.Second)
	}
}

// keepLease renews the writer lease until it is lost: the control plane
// says it is gone, or no renewal succeeded for a whole TTL (the control
// plane may have expired it, and a new writer may be serving; storage fences
// this one's writes by epoch, but its reads would go stale). Then the
// writer stops serving: Run takes the lease again, with a new epoch and a
// new recovery; a writer from Start shuts down.
//
// Only the keepLease that closes lost acts on the writer: once the
// attempt has ended otherwise (it failed, was fenced or shut down), what
// its renewal returns concerns a lease that is no longer the writer's,
// and the writer may already serve under the next attempt's.
func (w *Writer) keepLease(lease int64, lost chan struct{}, once *sync.Once) {
	if h := w.hooks.keeperDone; h != nil {
		defer h(lease)
	}
	t := time.NewTicker(w.cfg.LeaseTTL / 3)
	defer t.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-lost:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), w.cfg.LeaseTTL/3)
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
			lastOK = time.Now()
			continue
		case status.Code(err) == codes.NotFound, status.Code(err) == codes.FailedPrecondition:
			// The control plane answers an expired (or released) lease
			// with FailedPrecondition (control.ErrLeaseExpired).
			why = "the writer lease expired"
		case time.Since(lastOK) >= w.cfg.LeaseTTL:
			why = fmt.Sprintf("the writer lease could not be renewed for %s, its time to live", w.cfg.LeaseTTL)
		default:
			w.log.Warn("cannot renew the writer lease; retrying", "err", err, "since_last_renewal", time.Since(lastOK).Round(time.Millisecond))
			continue
		}
		won := false
		once.Do(func() {
			close(lost)
			won = true
		})
		if !won {
			return
		}
		w.log.Error("no longer the writer: "+why, "err", err)
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
		return
	}
}

func (w *Writer) release(lease *pb.AcquireWriterResponse) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := w.ctl.ReleaseWriter(ctx, &pb.ReleaseWriterRequest{Lease: lease.Lease}); err != nil {
		w.log.Warn("could not release the writer lease; it expires by itself", "err", err)
	}
}
