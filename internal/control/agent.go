package control

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// AgentNode is what a storage node tells the control plane about itself.
type AgentNode struct {
	ID, AZ, Addr  string
	CapacityBytes uint64
	// OnEpochs, when set, receives the volumes' current epochs with every
	// heartbeat, so the node can fence stale writers.
	OnEpochs func(map[uint64]uint64)
	// Hosted, when set, gives the volumes the node holds segments of, with
	// the incarnation the segments carry, and the ids of those it holds
	// only an epoch of; each heartbeat sends them, and OnDeleted receives
	// those that were deleted (pb.HeartbeatResponse.deleted), for the node
	// to drop. Hosted must be quick: it is called on the heartbeat's path.
	Hosted    func() (hosted []*pb.VolumeIncarnation, epochOnly []uint64)
	OnDeleted func([]*pb.VolumeIncarnation)
}

// Agent retry timings.
const (
	agentMinBackoff = 100 * time.Millisecond
	agentMaxBackoff = 2 * time.Second
)

// RunNodeAgent keeps a storage node registered with the control plane at
// controlAddr (one address, or several separated by commas) and
// heartbeating, until ctx ends.
//
// It registers the node, retrying with backoff (up to 2s apart) while the
// control plane is unreachable or refuses, logging once per outage; then it
// heartbeats at the interval the control plane asked for. A failed heartbeat
// sends it back to registering (registration is idempotent), so a control
// plane that lost the node (NotFound, e.g. on a fresh etcd) or restarted
// with another heartbeat timeout learns of it again.
//
// With no control plane answering at all, the node goes on serving what it
// holds: the agent only keeps retrying, logging the outage once (and again
// only if the error changes to something other than unreachable), and the
// epochs it last received keep fencing stale writers.
func RunNodeAgent(ctx context.Context, controlAddr string, node AgentNode, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	log = log.With("control", controlAddr)
	// Every control plane serves every call: Dial goes round the addresses
	// of those that answer.
	conn, err := Dial(controlAddr)
	if err != nil {
		log.Error("control plane address is not valid; the node will not register", "err", err)
		return
	}
	defer conn.Close()
	cli := pb.NewControlClient(conn)
	boot := newBootID()

	var (
		registered bool
		interval   time.Duration
		delay      = agentMinBackoff
		failing    bool   // in an outage (already logged)
		lastErr    string // what the outage was logged with
		announced  bool   // the first success was logged
	)
	fail := func(what string, err error) {
		msg := status.Convert(err).Message()
		if !failing || msg != lastErr && status.Code(err) != codes.Unavailable && status.Code(err) != codes.DeadlineExceeded {
			log.Warn(what+" failed; retrying", "node", node.ID, "code", status.Code(err).String(), "err", msg)
		}
		failing, lastErr = true, msg
	}
	sleep := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	for ctx.Err() == nil {
		if !registered {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			resp, err := cli.RegisterNode(rctx, &pb.RegisterNodeRequest{Id: node.ID, Az: node.AZ, Addr: node.Addr, CapacityBytes: node.CapacityBytes})
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				fail("registering with the control plane", err)
				if !sleep(delay) {
					return
				}
				delay = min(delay*2, agentMaxBackoff)
				continue
			}
			interval = time.Duration(resp.GetHeartbeatIntervalMs()) * time.Millisecond
			if interval <= 0 {
				interval = DefaultHeartbeatTimeout / 3
			}
			registered, delay = true, agentMinBackoff
			// Heartbeat at once, so that the node is up without waiting.
		}
		req := &pb.HeartbeatRequest{Id: node.ID, BootId: boot}
		if node.Hosted != nil {
			req.Hosted, req.EpochOnly = node.Hosted()
			req.ReportsHosted = true
		}
		hctx, cancel := context.WithTimeout(ctx, max(interval, time.Second))
		hb, err := cli.Heartbeat(hctx, req)
		cancel()
		if err == nil && node.OnEpochs != nil && len(hb.GetEpochs()) > 0 {
			epochs := make(map[uint64]uint64, len(hb.GetEpochs()))
			for _, e := range hb.GetEpochs() {
				epochs[e.GetVolumeId()] = e.GetEpoch()
			}
			node.OnEpochs(epochs)
		}
		if err == nil && node.OnDeleted != nil && len(hb.GetDeleted()) > 0 {
			// Before the next heartbeat, which would name them again.
			node.OnDeleted(hb.GetDeleted())
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			fail("heartbeat to the control plane", err)
			registered = false
			if status.Code(err) == codes.NotFound {
				continue // register again at once
			}
			if !sleep(delay) {
				return
			}
			delay = min(delay*2, agentMaxBackoff)
			continue
		}
		if failing || !announced {
			log.Info("registered with the control plane and heartbeating", "node", node.ID, "interval", interval)
			failing, lastErr, announced = false, "", true
		}
		if !sleep(interval) {
			return
		}
	}
}

// newBootID draws the id of one run of a node's agent.
func newBootID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail on Linux
	return hex.EncodeToString(b[:])
}
