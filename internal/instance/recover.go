package instance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/recovery"
	"github.com/borealis-db/borealis/internal/volume"
)

// recoverVolume runs crash recovery of the named volume under the new epoch
// (DESIGN.md §3) and puts its outcome (the VDL as BaseLSN, each PG's tail,
// the truncations) into cfg; v, if set, is the volume as AcquireWriter
// described it. It returns a summary for the log. waiting is
// told what the recovery waits for, and nil when that wait is over.
func recoverVolume(ctx context.Context, ctl pb.ControlClient, name string, v *pb.VolumeInfo, epoch uint64, cfg *volume.Config, log *slog.Logger, waiting func(*volume.RecoverWait)) (string, error) {
	var rc volume.RecoverConfig
	var err error
	if v != nil {
		rc, err = volume.RecoverConfigOf(ctl, name, v, epoch)
	} else {
		rc, err = volume.RecoverConfigFromControl(ctx, ctl, name, epoch)
	}
	if err != nil {
		return "", err
	}
	rc.LAL = cfg.LAL
	rc.Logger = log
	rc.Waiting = waiting
	// A recovery that waits for storage nodes asks them again every
	// 100 ms, but a connection that failed redials only when gRPC's
	// backoff says, which grows to two minutes: a node back for a minute
	// could still be taken for down. Redial within a second instead.
	rc.DialOptions = append(rc.DialOptions, grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
		MinConnectTimeout: 5 * time.Second,
	}))
	rec, err := volume.Recover(ctx, rc)
	if err != nil {
		return "", err
	}
	rec.Apply(cfg)
	return fmt.Sprintf("VDL %d, VCL %d, floor %d, truncated (%d, %d] in %d PGs, took %s",
		rec.BaseLSN, rec.VCL, rec.Floor, rec.After, rec.Through, len(rec.PGs), rec.Took.Round(1e6)), nil
}

// readQuorumWait says what a writer whose recovery found no read quorum of
// a PG waits for, or "" if err is another failure. Recover does not wait for
// a read quorum, it fails and names the segments that did not answer; Run
// tries again every second, so to a client the writer is waiting for those
// segments, and the status should say so rather than "start failed".
func readQuorumWait(err error) string {
	var re *volume.RecoverError
	var nq *recovery.NoReadQuorumError
	if !errors.As(err, &re) || re.Step != "SegmentInfo" || !errors.As(err, &nq) {
		return ""
	}
	need := 0
	for _, s := range nq.Config.Sets {
		need = max(need, s.Read)
	}
	w := &volume.RecoverWait{PG: nq.PG, Step: "SegmentInfo", Have: len(nq.Answered), Need: need, Segments: len(nq.Config.Members()), Causes: re.Causes}
	return w.String()
}

// recoveryWaits returns the recovery's Waiting: it puts what recovery waits
// for into the status, which /v1/health reports (a restart of the writer
// while storage nodes are down can wait for as long as they are), and logs
// it when the wait starts or changes its shape.
func (w *Writer) recoveryWaits(epoch uint64) func(*volume.RecoverWait) {
	var last string
	return func(rw *volume.RecoverWait) {
		if rw == nil {
			w.setStatus("recovering at epoch %d", epoch)
			if last != "" {
				w.log.Info("recovery goes on: the segments it waited for answered", "epoch", epoch)
			}
			last = ""
			return
		}
		w.setStatus("recovering at epoch %d: %s", epoch, rw)
		shape := fmt.Sprintf("%s %d %d/%d", rw.Step, rw.PG, rw.Have, rw.Need)
		if shape != last {
			last = shape
			w.log.Warn("recovery waits", "epoch", epoch, "why", rw.String())
		}
	}
}
