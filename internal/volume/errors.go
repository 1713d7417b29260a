package volume

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// ErrFenced means a storage node refused this client's volume epoch as stale:
// a newer writer holds the volume. Once fenced, every pending and later call
// fails with an error wrapping ErrFenced (which names the node that said so).
var ErrFenced = errors.New("volume: fenced: a newer writer holds the volume")

// ErrClosed is returned by calls on a closed Client.
var ErrClosed = errors.New("volume: client closed")

// UnavailableError reports a commit (or an LSN allocation held back by the
// allocation limit) that could not become durable within WriteTimeout because
// a PG it depends on cannot make its records durable: the segments that are
// reachable and hold or approach them are fewer than a write quorum. Nothing
// is lost: the records stay queued, and they become durable if enough
// segments return or catch up.
type UnavailableError struct {
	Volume      uint64
	PG          uint32
	Segments    int      // members of the PG
	Unreachable []Member // members not reachable when the timeout fired
	// Causes[i] says why Unreachable[i] is: its stream's last error (a
	// refusal such as DISK_FULL, or a connection error), or how long it
	// has not answered. nil when unknown.
	Causes []error
	// Behind are members that answer but hold the PG only below PGLSN and
	// have stopped moving (an emptied node whose peers collected the log it
	// lacks acks every record and completes none).
	Behind []BehindSegment
	LSN    uint64 // the LSN waited for
	PGLSN  uint64 // the PG's oldest record that is not durable yet
	Waited time.Duration
}

// BehindSegment is a reachable member that cannot complete a waiting record.
type BehindSegment struct {
	Member    Member
	SCL       uint64        // its segment complete LSN
	Unchanged time.Duration // how long its SCL has not moved
}

func (e *UnavailableError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "volume %d: PG %d has no write quorum: %d of %d segments cannot make it durable", e.Volume, e.PG, len(e.Unreachable)+len(e.Behind), e.Segments)
	if len(e.Unreachable) > 0 {
		fmt.Fprintf(&b, "; %d unreachable (", len(e.Unreachable))
		for i, m := range e.Unreachable {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s %s", m.NodeID, m.Addr)
			if i < len(e.Causes) && e.Causes[i] != nil {
				fmt.Fprintf(&b, ": %v", e.Causes[i])
			}
		}
		b.WriteString(")")
	}
	if len(e.Behind) > 0 {
		fmt.Fprintf(&b, "; %d reachable but behind (", len(e.Behind))
		for i, s := range e.Behind {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s %s: SCL %d, needs %d, unchanged for %s", s.Member.NodeID, s.Member.Addr, s.SCL, e.PGLSN, s.Unchanged.Round(time.Millisecond))
		}
		b.WriteString(")")
	}
	fmt.Fprintf(&b, "; commit at LSN %d not durable after %s; it becomes durable if the segments return or catch up", e.LSN, e.Waited.Round(time.Millisecond))
	return b.String()
}

// ReadError reports a page read that no segment of the PG could serve. Tried
// holds what each segment said, in the order they were asked.
type ReadError struct {
	Volume  uint64
	PG      uint32
	Page    uint64
	ReadLSN uint64
	Tried   []SegmentError
}

// SegmentError is one segment's answer to a failed read.
type SegmentError struct {
	Member Member
	Err    error
}

func (e *ReadError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "volume %d: cannot read page %d at LSN %d: no segment of PG %d could serve it", e.Volume, e.Page, e.ReadLSN, e.PG)
	writeCauses(&b, e.Tried)
	return b.String()
}

// writeCauses appends ": node (addr): err; node (addr): err..." to b.
func writeCauses(b *strings.Builder, causes []SegmentError) {
	for i, c := range causes {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		fmt.Fprintf(b, "%s (%s): %v", c.Member.NodeID, c.Member.Addr, c.Err)
	}
}

// Unwrap returns the segments' errors, so errors.Is/As can look into them.
func (e *ReadError) Unwrap() []error {
	out := make([]error, len(e.Tried))
	for i, s := range e.Tried {
		out[i] = s.Err
	}
	return out
}

// reasonOf extracts the typed refusal reason carried by a gRPC status, or
// REASON_UNSPECIFIED.
func reasonOf(err error) pb.Reason { return detailOf(err).GetReason() }

// detailOf returns the ErrorDetail a storage node's refusal carries, or nil.
func detailOf(err error) *pb.ErrorDetail {
	st, ok := status.FromError(err)
	if !ok || st == nil {
		return nil
	}
	for _, d := range st.Details() {
		if ed, ok := d.(*pb.ErrorDetail); ok {
			return ed
		}
	}
	return nil
}

// BelowGCHorizon reports whether a failed read was refused by a segment
// because storage collected the page versions its read point needs.
func BelowGCHorizon(err error) bool {
	var re *ReadError
	if !errors.As(err, &re) {
		return false
	}
	for _, t := range re.Tried {
		if reasonOf(t.Err) == pb.Reason_BELOW_GC_HORIZON {
			return true
		}
	}
	return false
}
