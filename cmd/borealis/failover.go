package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/control"
)

// failoverJSON is a failover as `failover --json` and `status --json` print
// it.
type failoverJSON struct {
	Round     uint64   `json:"round"`
	Kind      string   `json:"kind"`
	Reason    string   `json:"reason"`
	From      string   `json:"from,omitempty"`
	FromEpoch uint64   `json:"from_epoch"`
	State     string   `json:"state"`
	Target    string   `json:"target,omitempty"`
	Tried     []string `json:"tried,omitempty"`
	Why       string   `json:"why,omitempty"`
	Epoch     uint64   `json:"epoch,omitempty"`
	// Times are the control plane's, unix milliseconds; TookMS runs from
	// the detection (or the request) to the new writer serving.
	DetectedUnixMS int64  `json:"detected_unix_ms"`
	DoneUnixMS     int64  `json:"done_unix_ms,omitempty"`
	TookMS         int64  `json:"took_ms,omitempty"`
	DrainMS        uint32 `json:"drain_ms,omitempty"`
	LeaseMS        uint32 `json:"lease_ms,omitempty"`
	EpochMS        uint32 `json:"epoch_ms,omitempty"`
	RecoveryMS     uint32 `json:"recovery_ms,omitempty"`
	OpenMS         uint32 `json:"open_ms,omitempty"`
	HandoverVDL    uint64 `json:"handover_vdl,omitempty"`
	VDL            uint64 `json:"vdl,omitempty"`
	Warm           bool   `json:"warm"`
}

func failoverOf(f *pb.FailoverInfo) *failoverJSON {
	if f == nil {
		return nil
	}
	j := &failoverJSON{
		Round: f.Round, Kind: f.Kind, Reason: f.Reason, From: f.From, FromEpoch: f.FromEpoch, State: f.State,
		Target: f.Target, Tried: f.Tried, Why: f.Why, Epoch: f.Epoch,
		DetectedUnixMS: f.DetectedUnixMs, DoneUnixMS: f.DoneUnixMs,
		DrainMS: f.DrainMs, LeaseMS: f.LeaseMs, EpochMS: f.EpochMs, RecoveryMS: f.RecoveryMs, OpenMS: f.OpenMs,
		HandoverVDL: f.HandoverVdl, VDL: f.Vdl, Warm: f.Warm,
	}
	if f.DoneUnixMs > 0 {
		j.TookMS = f.DoneUnixMs - f.DetectedUnixMs
	}
	return j
}

// describeFailover is a failover in a few lines of text.
func describeFailover(w io.Writer, f *failoverJSON, indent string) {
	fmt.Fprintf(w, "%sround %d (%s, %s): %s -> %s, %s", indent, f.Round, f.Kind, f.Reason, orDash(f.From), orDash(f.Target), f.State)
	if f.TookMS > 0 {
		fmt.Fprintf(w, " in %dms", f.TookMS)
	}
	if f.DetectedUnixMS > 0 {
		fmt.Fprintf(w, ", at %s", time.UnixMilli(f.DetectedUnixMS).Format(time.RFC3339))
	}
	fmt.Fprintln(w)
	if f.Why != "" {
		fmt.Fprintf(w, "%s  why: %s\n", indent, f.Why)
	}
	if f.State == control.FailoverDone && f.EpochMS == 0 && f.VDL == 0 {
		fmt.Fprintf(w, "%s  no replica was promoted: %s, a writer instance that started, took the lease at epoch %d\n", indent, f.Target, f.Epoch)
	} else if f.State == control.FailoverDone {
		var steps []string
		if f.Kind == control.FailoverPlanned {
			steps = append(steps, fmt.Sprintf("drain %dms (handed over at VDL %d)", f.DrainMS, f.HandoverVDL))
		}
		steps = append(steps, fmt.Sprintf("lease %dms", f.LeaseMS), fmt.Sprintf("epoch %dms", f.EpochMS),
			fmt.Sprintf("recovery %dms", f.RecoveryMS), fmt.Sprintf("open %dms", f.OpenMS))
		cache := "page cache kept"
		if !f.Warm {
			cache = "page cache dropped (the replica had not applied everything recovery found)"
		}
		fmt.Fprintf(w, "%s  steps: %s; epoch %d, VDL %d; %s\n", indent, strings.Join(steps, ", "), f.Epoch, f.VDL, cache)
	}
	if len(f.Tried) > 0 {
		fmt.Fprintf(w, "%s  tried and passed over: %s\n", indent, strings.Join(f.Tried, ", "))
	}
}

func failoverCmd() *cobra.Command {
	var where controlAddrFlags
	var volume, to string
	var asJSON bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "failover [--volume main] [--to ID] [--dir D | --control ADDR] [--json]",
		Short: "Move the writer role to a replica (planned switchover)",
		Long: `Move a volume's writer role to one of its replicas, for maintenance: the
writer stops taking new transactions (the router holds them for the new writer),
finishes the ones in flight, waits until the target has applied everything it
acknowledged, and hands the lease over; the target takes it, fences the old
epoch, recovers (nothing to truncate) and serves writes with its page cache
kept. The old writer follows the new one as a replica. No acknowledged commit
is lost.

--to names the replica; without it the control plane chooses as for an
unplanned failover (lowest promotion tier, then the most caught up). It waits
until the new writer serves and prints the steps.`,
		Args: noArgs(""),
		RunE: func(cmd *cobra.Command, args []string) error {
			addr, err := where.addr()
			if err != nil {
				return err
			}
			conn, err := control.Dial(addr)
			if err != nil {
				return err
			}
			defer conn.Close()
			ctl := pb.NewControlClient(conn)
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			f, err := ctl.Switchover(ctx, &pb.SwitchoverRequest{Volume: volume, To: to})
			if err != nil {
				return fmt.Errorf("failover of volume %s: %s", volume, status.Convert(err).Message())
			}
			if !asJSON {
				fmt.Fprintf(cmd.OutOrStdout(), "failover round %d of %s: %s -> %s, draining\n", f.Round, volume, f.From, f.Target)
			}
			final, err := awaitFailover(ctx, ctl, volume, f.Round)
			if err != nil {
				return err
			}
			j := failoverOf(final)
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(j); err != nil {
					return err
				}
			} else {
				describeFailover(cmd.OutOrStdout(), j, "")
			}
			if final.State != control.FailoverDone {
				return fmt.Errorf("failover round %d of volume %s %s: %s", final.Round, volume, final.State, final.Why)
			}
			return nil
		},
	}
	where.register(cmd)
	f := cmd.Flags()
	f.StringVar(&volume, "volume", "main", "volume whose writer role moves")
	f.StringVar(&to, "to", "", "replica id to promote (default: the control plane's choice)")
	f.BoolVar(&asJSON, "json", false, "print the failover as JSON")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for the new writer")
	return cmd
}

// awaitFailover follows the volume's writer state until failover round
// ends: done, failed, or superseded by a newer round.
func awaitFailover(ctx context.Context, ctl pb.ControlClient, volume string, round uint64) (*pb.FailoverInfo, error) {
	var last *pb.FailoverInfo
	for {
		stream, err := ctl.WatchWriter(ctx, &pb.WatchWriterRequest{Volume: volume})
		if err == nil {
			for {
				st, rerr := stream.Recv()
				if rerr != nil {
					err = rerr
					break
				}
				f := st.Failover
				if f == nil || f.Round < round {
					continue
				}
				last = f
				if f.Round > round || f.State == control.FailoverDone || f.State == control.FailoverFailed {
					return f, nil
				}
			}
		}
		if ctx.Err() != nil {
			if last != nil {
				return nil, fmt.Errorf("failover round %d of volume %s did not end in time; it is %s: %s", round, volume, last.State, last.Why)
			}
			return nil, fmt.Errorf("failover round %d of volume %s: %w", round, volume, ctx.Err())
		}
		if errors.Is(err, io.EOF) {
			continue
		}
		fmt.Fprintf(os.Stderr, "watching the failover: %s; watching again\n", status.Convert(err).Message())
		time.Sleep(200 * time.Millisecond)
	}
}
