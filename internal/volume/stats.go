package volume

import (
	"context"
	"sync/atomic"

	"google.golang.org/grpc/stats"
)

// Stats are the client's counters since Open.
type Stats struct {
	// Commits is the number of MTRs submitted (each one SQLite commit) that
	// produced records.
	Commits uint64
	// Requests is the number of Append requests sent (keepalives included).
	Requests uint64
	// RecordsSent counts record copies sent: a record shipped to 6 segments
	// counts 6, a resend counts again.
	RecordsSent uint64
	// RecordBytesSent is the encoded size of RecordsSent.
	RecordBytesSent uint64
	// Records and RecordBytes count the records made, each once, and their
	// encoded size: the redo the writer produced.
	Records, RecordBytes uint64
	// ResentRecords counts records sent again after a reconnect because the
	// node had not acknowledged them and they were not yet durable.
	ResentRecords uint64
	// DroppedRecords counts records removed from a node's queue, unsent or
	// unacknowledged, because they were already durable on a write quorum.
	DroppedRecords uint64
	// Reconnects counts Append stream retries.
	Reconnects uint64
	// MembershipChanges counts PG memberships the client replaced by a
	// newer one; StaleMemberships the refusals of nodes that held a newer
	// one than the client, each followed by a fetch of it.
	MembershipChanges, StaleMemberships uint64
	// Reads and HedgedReads count ReadPage calls and the extra GetPage
	// requests sent because a segment was slow or failed.
	Reads, HedgedReads uint64
	// BytesSent and BytesReceived are gRPC wire bytes of all RPCs.
	BytesSent, BytesReceived uint64
	// VDL and LastAllocated are the current LSNs.
	VDL, LastAllocated uint64
}

type counters struct {
	commits, requests, recordsSent, recordBytesSent, records, recordBytes, resent, dropped, reconnects atomic.Uint64
	reads, hedged, bytesOut, bytesIn                                                                   atomic.Uint64
	membershipChanges, staleMemberships                                                                atomic.Uint64
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	last := c.tracker.LastAllocated()
	c.mu.Unlock()
	return Stats{
		Commits:           c.st.commits.Load(),
		Requests:          c.st.requests.Load(),
		RecordsSent:       c.st.recordsSent.Load(),
		RecordBytesSent:   c.st.recordBytesSent.Load(),
		Records:           c.st.records.Load(),
		RecordBytes:       c.st.recordBytes.Load(),
		ResentRecords:     c.st.resent.Load(),
		DroppedRecords:    c.st.dropped.Load(),
		Reconnects:        c.st.reconnects.Load(),
		MembershipChanges: c.st.membershipChanges.Load(),
		StaleMemberships:  c.st.staleMemberships.Load(),
		Reads:             c.st.reads.Load(),
		HedgedReads:       c.st.hedged.Load(),
		BytesSent:         c.st.bytesOut.Load(),
		BytesReceived:     c.st.bytesIn.Load(),
		VDL:               c.vdl.Load(),
		LastAllocated:     last,
	}
}

// wireStats counts wire bytes of every RPC on the client's connections.
type wireStats struct{ c *Client }

func (h *wireStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (h *wireStats) HandleRPC(_ context.Context, s stats.RPCStats) {
	switch p := s.(type) {
	case *stats.OutPayload:
		h.c.st.bytesOut.Add(uint64(p.WireLength))
	case *stats.InPayload:
		h.c.st.bytesIn.Add(uint64(p.WireLength))
	}
}
func (h *wireStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (h *wireStats) HandleConn(context.Context, stats.ConnStats)                       {}
