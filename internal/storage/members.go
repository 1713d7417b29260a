package storage

import pb "github.com/borealis-db/borealis/api/borealispb"

// memberSets returns a spec's quorum sets. A spec without member_sets (a
// declaration from before membership changes, or one persisted then) is
// one set: its flat members list.
func memberSets(spec *pb.SegmentSpec) [][]*pb.Member {
	if len(spec.GetMemberSets()) > 0 {
		out := make([][]*pb.Member, len(spec.MemberSets))
		for i, set := range spec.MemberSets {
			out[i] = set.GetMembers()
		}
		return out
	}
	if len(spec.GetMembers()) == 0 {
		return nil
	}
	return [][]*pb.Member{spec.Members}
}

// memberUnion returns every member of every set once, by node id, in the
// order the sets name them.
func memberUnion(spec *pb.SegmentSpec) []*pb.Member {
	var out []*pb.Member
	seen := map[string]bool{}
	for _, set := range memberSets(spec) {
		for _, m := range set {
			if !seen[m.GetNodeId()] {
				seen[m.GetNodeId()] = true
				out = append(out, m)
			}
		}
	}
	return out
}

// inSomeSet reports whether node is a member of any of the spec's sets.
func inSomeSet(spec *pb.SegmentSpec, node string) bool {
	for _, m := range memberUnion(spec) {
		if m.GetNodeId() == node {
			return true
		}
	}
	return false
}

// joiningMembers are the nodes in a later set but not in the first one,
// during a change (two sets): the members being added, which copy the PG
// from pages rather than from the log.
func joiningMembers(spec *pb.SegmentSpec) map[string]bool {
	sets := memberSets(spec)
	if len(sets) < 2 {
		return nil
	}
	first := map[string]bool{}
	for _, m := range sets[0] {
		first[m.GetNodeId()] = true
	}
	out := map[string]bool{}
	for _, set := range sets[1:] {
		for _, m := range set {
			if !first[m.GetNodeId()] {
				out[m.GetNodeId()] = true
			}
		}
	}
	return out
}
