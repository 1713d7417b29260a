package instance

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// writerInfo is the writer's catalog record now.
func (w *Writer) writerInfo() *pb.InstanceInfo {
	w.mu.Lock()
	vol, epoch, st, addr := w.vol, w.epoch, w.status, w.replAddr
	w.mu.Unlock()
	in := &pb.InstanceInfo{
		Volume: w.cfg.Volume, Id: w.cfg.ID, Role: RoleWriter, Az: w.cfg.AZ,
		SqlEndpoint: w.cfg.Endpoint, ReplicationEndpoint: addr, Epoch: epoch,
		State: st, UpdatedUnixMs: time.Now().UnixMilli(),
	}
	if vol != nil {
		in.Vdl, in.ReadPoint = vol.VDL(), vol.MinReadPoint()
	}
	return in
}

// keepRegistration registers the writer of this attempt in the catalog and
// keeps the record current until lost is closed, then removes it.
func (w *Writer) keepRegistration(lost <-chan struct{}) {
	ttl := w.cfg.LeaseTTL
	var lease int64
	registered := false
	register := func() {
		ctx, cancel := context.WithTimeout(context.Background(), ttl)
		defer cancel()
		resp, err := w.ctl.RegisterInstance(ctx, &pb.RegisterInstanceRequest{Info: w.writerInfo(), TtlMs: uint32(ttl.Milliseconds())})
		if err != nil {
			w.log.Warn("cannot register the writer in the catalog; retrying", "err", err)
			return
		}
		if !registered {
			registered = true
			if st := w.Stream(); st != nil {
				st.Serving()
			}
		}
		lease = resp.Lease
	}
	register()
	t := time.NewTicker(ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-lost:
			if lease != 0 {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				w.ctl.DeregisterInstance(ctx, &pb.DeregisterInstanceRequest{Lease: lease})
				cancel()
			}
			return
		case <-t.C:
		}
		if lease == 0 {
			register()
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), ttl/3)
		_, err := w.ctl.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: lease, Info: w.writerInfo()})
		cancel()
		if c := status.Code(err); c == codes.FailedPrecondition || c == codes.NotFound {
			lease = 0
			register()
		}
	}
}
