package redostream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/replica"
)

// ReportEvery paces a replica's reports of its read floor.
const ReportEvery = 250 * time.Millisecond

// SubscriberConfig configures a replica's side of the stream.
type SubscriberConfig struct {
	ReplicaID string
	VolumeID  uint64
	// Writer returns the writer's redo stream address, from the catalog.
	Writer func(ctx context.Context) (string, error)
	// Position returns the epoch and applied VDL to resume from (Hello).
	Position func() (epoch, applied uint64)
	// Report returns the replica's read floor and applied VDL.
	Report func() (floor, applied uint64)
	// Handle takes each message of the stream; it returns true to drop the
	// subscription and subscribe again (a gap).
	Handle func(m *pb.ReplicationMessage) (resubscribe bool)
	// Lost is called when a subscription ends, with why.
	Lost   func(err error)
	Logger *slog.Logger
}

// errResubscribe ends a subscription the replica found a gap in.
var errResubscribe = errors.New("redo stream: gap in the stream; subscribing again")

// Follow subscribes to the writer's stream and keeps subscribing again,
// with backoff, whenever the subscription ends, until ctx ends.
func Follow(ctx context.Context, cfg SubscriberConfig) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	delay := 50 * time.Millisecond
	var conn *grpc.ClientConn
	connAddr := ""
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	failing := false
	for ctx.Err() == nil {
		addr, err := cfg.Writer(ctx)
		if err == nil && addr != connAddr {
			if conn != nil {
				conn.Close()
				conn = nil
			}
			// A message holds at most maxPartBytes of records, but one
			// record alone may be a page image of up to 64 KiB over it.
			conn, err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(4*maxPartBytes)))
			if err == nil {
				connAddr = addr
			} else {
				connAddr = ""
			}
		}
		streamed := false
		if err == nil {
			streamed, err = subscribeOnce(ctx, pb.NewReplicationClient(conn), cfg)
		}
		if ctx.Err() != nil {
			return
		}
		cfg.Lost(err)
		if streamed {
			delay = 50 * time.Millisecond
		}
		if !failing || streamed {
			log.Warn("redo stream from the writer ended; subscribing again", "writer", addr, "err", err)
		}
		failing = !streamed
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, time.Second)
	}
}

// subscribeOnce runs one subscription until it ends; streamed reports
// whether the writer started it.
func subscribeOnce(ctx context.Context, rc pb.ReplicationClient, cfg SubscriberConfig) (streamed bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := rc.Subscribe(sctx)
	if err != nil {
		return false, err
	}
	epoch, applied := cfg.Position()
	floor, _ := cfg.Report()
	hello := &pb.Hello{ReplicaId: cfg.ReplicaID, VolumeId: cfg.VolumeID, Epoch: epoch, Applied: applied, ReadFloor: floor}
	if err := stream.Send(&pb.ReplicaMessage{Kind: &pb.ReplicaMessage_Hello{Hello: hello}}); err != nil {
		return false, err
	}
	sendErr := make(chan error, 1)
	go func() {
		t := time.NewTicker(ReportEvery)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				sendErr <- nil
				return
			case <-t.C:
			}
			floor, applied := cfg.Report()
			if err := stream.Send(&pb.ReplicaMessage{Kind: &pb.ReplicaMessage_Report{Report: &pb.Report{ReadFloor: floor, Applied: applied}}}); err != nil {
				sendErr <- err
				return
			}
		}
	}()
	for {
		m, err := stream.Recv()
		if err != nil {
			return streamed, err
		}
		if !streamed {
			st := m.GetStart()
			if st == nil {
				return false, fmt.Errorf("redo stream: the writer's first message is not a start")
			}
			if cfg.VolumeID != 0 && st.VolumeId != cfg.VolumeID {
				return false, fmt.Errorf("redo stream: the writer serves volume %d, not %d", st.VolumeId, cfg.VolumeID)
			}
			streamed = true
		}
		for _, one := range Unbatch(m) {
			if cfg.Handle(one) {
				return streamed, errResubscribe
			}
		}
		select {
		case err := <-sendErr:
			if err != nil {
				return streamed, err
			}
		default:
		}
	}
}

// MessageOf turns a stream message into the Follower's.
func MessageOf(m *pb.ReplicationMessage) (replica.Message, bool) {
	switch k := m.Kind.(type) {
	case *pb.ReplicationMessage_Start:
		return replica.Message{Kind: replica.Start, Epoch: k.Start.Epoch, From: k.Start.From, VDL: k.Start.Vdl}, true
	case *pb.ReplicationMessage_Mtr:
		return replica.Message{Kind: replica.Received, MTR: replica.MTR{First: k.Mtr.FirstLsn, Last: k.Mtr.LastLsn, Records: k.Mtr.Records}, Partial: k.Mtr.Partial}, true
	case *pb.ReplicationMessage_Vdl:
		return replica.Message{Kind: replica.VDL, VDL: k.Vdl.Vdl}, true
	}
	return replica.Message{}, false
}

// Unbatch returns the messages a Batch holds, in order (its MTRs, then its
// VDL update), or m itself.
func Unbatch(m *pb.ReplicationMessage) []*pb.ReplicationMessage {
	b := m.GetBatch()
	if b == nil {
		return []*pb.ReplicationMessage{m}
	}
	out := make([]*pb.ReplicationMessage, 0, len(b.Mtrs)+1)
	for _, mtr := range b.Mtrs {
		out = append(out, &pb.ReplicationMessage{Kind: &pb.ReplicationMessage_Mtr{Mtr: mtr}})
	}
	if b.Vdl != nil {
		out = append(out, &pb.ReplicationMessage{Kind: &pb.ReplicationMessage_Vdl{Vdl: b.Vdl}})
	}
	return out
}
