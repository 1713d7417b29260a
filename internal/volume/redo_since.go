package volume

import (
	"context"
	"errors"
	"fmt"
	"sort"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
)

// ErrRedoCollected: the records asked for are below a segment's log floor
// (garbage-collected); only pages remain.
var ErrRedoCollected = errors.New("the redo was collected")

// RedoSince returns every record of a recovered volume with an LSN in
// (after, BaseLSN], in LSN order: what a replica that applied the volume up
// to after lacks to be at the recovered VDL. Each PG's records come from a
// segment whose chain is complete through the PG's last LSN at or below
// BaseLSN (its SCL says so), so none is missing.
func (c *Client) RedoSince(ctx context.Context, after uint64) ([]redo.Record, error) {
	upto := c.cfg.BaseLSN
	var out []redo.Record
	for idx, tail := range c.cfg.PGTails {
		if tail <= after {
			continue // nothing of this PG in (after, upto]
		}
		recs, err := c.pgRedoSince(ctx, idx, after, upto, tail)
		if err != nil {
			return nil, err
		}
		out = append(out, recs...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LSN < out[j].LSN })
	return out, nil
}

func (c *Client) pgRedoSince(ctx context.Context, idx uint32, after, upto, tail uint64) ([]redo.Record, error) {
	p, err := c.pg(ctx, idx, false)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, n := range p.mem.Load().nodes {
		recs, err := pullSince(ctx, n.rpc, c.cfg.VolumeID, idx, after, upto, tail)
		if err == nil {
			return recs, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", n.m.NodeID, err))
	}
	return nil, fmt.Errorf("volume %d: no segment of PG %d gave its records in (%d, %d]: %w", c.cfg.VolumeID, idx, after, upto, errors.Join(errs...))
}

// pullSince pulls a segment's records in (after, upto], if its chain is
// complete through tail, and keeps those on the PG's chain: from the
// record at tail back along the backlinks to after. A record off it (of
// an older epoch, in a range a recovery truncated) is left out.
func pullSince(ctx context.Context, rpc pb.StorageClient, vol uint64, pg uint32, after, upto, tail uint64) ([]redo.Record, error) {
	got, err := pullRange(ctx, rpc, vol, pg, after, upto, tail)
	if err != nil {
		return nil, err
	}
	byLSN := make(map[uint64]redo.Record, len(got))
	for _, r := range got {
		byLSN[r.LSN] = r
	}
	var out []redo.Record
	for lsn := tail; lsn > after; {
		r, ok := byLSN[lsn]
		if !ok {
			return nil, fmt.Errorf("the PG's chain from its tail %d back to LSN %d lacks LSN %d", tail, after, lsn)
		}
		out = append(out, r)
		lsn = r.PrevLSN
	}
	return out, nil
}

func pullRange(ctx context.Context, rpc pb.StorageClient, vol uint64, pg uint32, after, upto, tail uint64) ([]redo.Record, error) {
	var out []redo.Record
	from := after
	for {
		resp, err := rpc.Pull(ctx, &pb.PullRequest{Volume: vol, Pg: pg, After: from, MaxBytes: 4 << 20})
		if err != nil {
			return nil, err
		}
		if resp.Scl < tail {
			return nil, fmt.Errorf("its SCL %d is below the PG's tail %d", resp.Scl, tail)
		}
		if resp.LogFloor > after {
			return nil, fmt.Errorf("%w: its log floor %d is above LSN %d", ErrRedoCollected, resp.LogFloor, after)
		}
		for _, b := range resp.Records {
			rec, err := redo.Decode(b)
			if err != nil {
				return nil, fmt.Errorf("a record after LSN %d does not decode: %w", from, err)
			}
			if rec.LSN > upto {
				return out, nil
			}
			out = append(out, rec)
			from = rec.LSN
		}
		if !resp.More || len(resp.Records) == 0 {
			return out, nil
		}
	}
}
