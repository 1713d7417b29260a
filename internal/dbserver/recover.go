package dbserver

import (
	"context"
	"fmt"
	"log/slog"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/volume"
)

// recoverVolume runs crash recovery of the named volume under the new epoch
// (DESIGN.md §3) and puts its outcome (the VDL as BaseLSN, each PG's tail,
// the truncations) into cfg. It returns a summary for the log.
func recoverVolume(ctx context.Context, ctl pb.ControlClient, name string, epoch uint64, cfg *volume.Config, log *slog.Logger) (string, error) {
	rc, err := volume.RecoverConfigFromControl(ctx, ctl, name, epoch)
	if err != nil {
		return "", err
	}
	rc.LAL = cfg.LAL
	rc.Logger = log
	rec, err := volume.Recover(ctx, rc)
	if err != nil {
		return "", err
	}
	rec.Apply(cfg)
	return fmt.Sprintf("VDL %d, VCL %d, floor %d, truncated (%d, %d] in %d PGs, took %s",
		rec.BaseLSN, rec.VCL, rec.Floor, rec.After, rec.Through, len(rec.PGs), rec.Took.Round(1e6)), nil
}
