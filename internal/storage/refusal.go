package storage

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// refusal is an error that maps to a typed gRPC status. A node that refuses
// a request has changed nothing, with one exception: recovery truncations
// that an Append's declarations carry are applied before its records are
// judged (the records continue the chain from the truncation's tail), and
// they stay applied if the records are then refused. They stand on their
// own: a recovery decided them, and the node would apply them from a peer's
// pull answer anyway.
type refusal struct {
	reason pb.Reason
	volume uint64
	pg     uint32
	lsn    uint64
	msg    string
	// membershipEpoch is the PG's membership epoch the node holds, with
	// STALE_MEMBERSHIP.
	membershipEpoch uint64
}

func (r *refusal) Error() string { return r.msg }

func refuse(reason pb.Reason, vol uint64, pg uint32, lsn uint64, format string, args ...any) *refusal {
	return &refusal{reason: reason, volume: vol, pg: pg, lsn: lsn, msg: fmt.Sprintf(format, args...)}
}

// refuseMembership is a STALE_MEMBERSHIP refusal that carries the node's
// membership epoch of the PG, from which the writer tells whether the
// catalog it reads again is new enough.
func refuseMembership(vol uint64, pg uint32, held uint64, format string, args ...any) *refusal {
	r := refuse(pb.Reason_STALE_MEMBERSHIP, vol, pg, 0, format, args...)
	r.membershipEpoch = held
	return r
}

var reasonCodes = map[pb.Reason]codes.Code{
	pb.Reason_STALE_EPOCH:      codes.FailedPrecondition,
	pb.Reason_WRONG_VOLUME:     codes.InvalidArgument,
	pb.Reason_PG_NOT_HOSTED:    codes.NotFound,
	pb.Reason_BAD_CRC:          codes.DataLoss,
	pb.Reason_MALFORMED_RECORD: codes.InvalidArgument,
	pb.Reason_SEGMENT_BEHIND:   codes.Unavailable,
	pb.Reason_BELOW_GC_HORIZON: codes.OutOfRange,
	pb.Reason_DISK_FULL:        codes.ResourceExhausted,
	pb.Reason_BAD_DECLARATION:  codes.InvalidArgument,
	pb.Reason_BAD_REQUEST:      codes.InvalidArgument,
	pb.Reason_VOLUME_DELETED:   codes.NotFound,
	// Not FailedPrecondition (STALE_EPOCH): a stale membership is retried
	// under the catalog's newer one, a stale epoch is a fenced writer.
	pb.Reason_STALE_MEMBERSHIP: codes.Aborted,
	// Like SEGMENT_BEHIND: this segment cannot serve it now, another can.
	pb.Reason_SEGMENT_CORRUPT: codes.Unavailable,
}

// toStatus converts an internal error into the gRPC error sent to callers.
func toStatus(err error) error {
	var r *refusal
	if !errors.As(err, &r) {
		if _, ok := status.FromError(err); ok {
			return err
		}
		return status.Error(codes.Internal, err.Error())
	}
	st := status.New(reasonCodes[r.reason], r.msg)
	if d, derr := st.WithDetails(&pb.ErrorDetail{Reason: r.reason, Volume: r.volume, Pg: r.pg, Lsn: r.lsn, MembershipEpoch: r.membershipEpoch}); derr == nil {
		st = d
	}
	return st.Err()
}

// ReasonOf extracts the refusal reason from an error returned by a storage
// node, or REASON_UNSPECIFIED if it is not a refusal.
func ReasonOf(err error) pb.Reason {
	st, ok := status.FromError(err)
	if !ok {
		return pb.Reason_REASON_UNSPECIFIED
	}
	for _, d := range st.Details() {
		if ed, ok := d.(*pb.ErrorDetail); ok {
			return ed.Reason
		}
	}
	return pb.Reason_REASON_UNSPECIFIED
}

func errCorruptChain(s *seg, lsn uint64) error {
	return fmt.Errorf("storage: %s: chain entry at LSN %d is corrupt", s.key, lsn)
}
