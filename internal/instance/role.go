package instance

import pb "github.com/borealis-db/borealis/api/borealispb"

// The member's decisions, from the volume's writer state (WatchWriter):
// pure functions of it and of the member's id, so that what a member does
// at each step of a failover is decided in one place and tested as a
// table (role_test.go). The control plane's DecideFailover makes the
// choices; these read them.

// OtherIsWriter reports whether, in st, another instance than me holds
// the writer lease or is the target of a failover under way: me gives way
// (follows as a replica) rather than take the lease. With no state known
// (nil), it does not give way; AcquireWriter refuses it if it must.
func OtherIsWriter(st *pb.WriterState, me string) bool {
	if st == nil {
		return false
	}
	if st.Holder != "" && st.Holder != me {
		return true
	}
	f := st.Failover
	return f != nil && failoverPending(f) && f.Target != "" && f.Target != me
}

// ChosenToPromote reports whether, in st, a failover under way targets me
// and the lease is free: me, a replica, promotes itself now. It returns the
// failover's round.
func ChosenToPromote(st *pb.WriterState, me string) (round uint64, chosen bool) {
	if st == nil || st.Holder != "" {
		return 0, false
	}
	f := st.Failover
	if f == nil || !failoverPending(f) || f.Target != me {
		return 0, false
	}
	return f.Round, true
}

// AskedToHandOver returns the planned failover of st that asks me, the
// writer, to hand the role over (nil if none).
func AskedToHandOver(st *pb.WriterState, me string) *pb.FailoverInfo {
	if st == nil {
		return nil
	}
	f := st.Failover
	if f == nil || f.Kind != "planned" || f.State != "draining" || f.From != me || f.Target == me {
		return nil
	}
	return f
}

func failoverPending(f *pb.FailoverInfo) bool {
	return f.State == "draining" || f.State == "choosing" || f.State == "promoting"
}
