package storage

import (
	"context"

	"github.com/cockroachdb/pebble/v2"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// Declare is the control plane telling the node the membership of PGs.
func (r *rpcServer) Declare(ctx context.Context, req *pb.DeclareRequest) (*pb.DeclareResponse, error) {
	out, err := r.n.Declare(req.Specs)
	if err != nil {
		r.n.log.Warn("declaration refused", "specs", len(req.Specs), "err", err)
		return nil, toStatus(err)
	}
	return &pb.DeclareResponse{Segments: out}, nil
}

// Declare applies each spec as a writer's declaration would be (creating
// the segment, taking a newer membership, retiring the segment when the
// node is in no set of it, applying truncations it lacks), and starts a
// hydration for each spec with hydrate set whose segment holds nothing yet.
// It answers, in the specs' order, once all of it is synced.
//
// Unlike a writer's, a declaration here is not refused for being of an
// older membership than the node holds (the answer carries the newer
// epoch, which is what the control plane needs to know), nor for leaving
// out a node that hosts no segment of the PG (a removal the node has
// nothing to retire for: answered retired, and nothing is created). Specs
// are judged all before any is applied: one refused spec refuses the
// request, and nothing of it is stored, except truncations, which stand on
// their own (see refusal).
func (n *Node) Declare(specs []*pb.SegmentSpec) ([]*pb.DeclaredSegment, error) {
	seen := map[segKey]bool{}
	for _, spec := range specs {
		key := segKey{spec.GetVolume(), spec.GetPg()}
		if seen[key] {
			return nil, refuse(pb.Reason_BAD_DECLARATION, key.vol, key.pg, 0, "volume %d PG %d is declared twice in one request", key.vol, key.pg)
		}
		seen[key] = true
	}
	for _, spec := range specs {
		if err := n.applySpecTruncations(spec); err != nil {
			return nil, err
		}
	}
	n.mu.Lock()
	if err := n.failure(); err != nil {
		n.mu.Unlock()
		return nil, err
	}
	incs := map[uint64]uint64{}
	answerOnly := make([]bool, len(specs))
	for i, spec := range specs {
		if err := n.checkDeclaredSegment(spec.Volume, spec); err != nil {
			n.mu.Unlock()
			return nil, err
		}
		s := n.segs[segKey{spec.Volume, spec.Pg}]
		switch {
		case s != nil && spec.MembershipEpoch != 0 && spec.MembershipEpoch < s.spec.MembershipEpoch:
			answerOnly[i] = true
		case s == nil && !inSomeSet(spec, n.cfg.ID):
			answerOnly[i] = true
		default:
			if err := n.checkDeclaredMembership(spec.Volume, spec); err != nil {
				n.mu.Unlock()
				return nil, err
			}
		}
		if i := spec.GetIncarnation(); i != 0 {
			if have := incs[spec.Volume]; have != 0 && have != i {
				n.mu.Unlock()
				return nil, refuse(pb.Reason_BAD_DECLARATION, spec.Volume, spec.Pg, 0, "the request declares PGs of volume %d under two incarnations, %016x and %016x", spec.Volume, have, i)
			}
			incs[spec.Volume] = i
		}
	}
	var writes []func(*pebble.Batch)
	segs := make([]*seg, len(specs))
	var hydrate []*seg
	for i, spec := range specs {
		if answerOnly[i] {
			continue
		}
		s, decl, err := n.applyDeclaration(spec.Volume, spec)
		if err != nil {
			n.mu.Unlock()
			return nil, err
		}
		segs[i] = s
		if decl != nil {
			key := metaSubKey(spec.Volume, spec.Pg, metaDecl)
			writes = append(writes, func(b *pebble.Batch) { b.Set(key, decl, nil) })
		}
		if spec.Hydrate && n.hydrationDue(s) {
			w, err := n.beginHydration(s)
			if err != nil {
				n.mu.Unlock()
				return nil, err
			}
			writes = append(writes, w)
			hydrate = append(hydrate, s)
		}
	}
	// Always a group, even with nothing to write: the answer must not
	// report a segment that an append created but has not synced yet.
	g := n.commits.join(func(b *pebble.Batch, _ *group) {
		for _, w := range writes {
			w(b)
		}
	})
	n.mu.Unlock()
	<-g.done
	if g.err != nil {
		return nil, g.err
	}
	for _, s := range hydrate {
		n.startHydration(s)
	}
	out := make([]*pb.DeclaredSegment, len(segs))
	for i, s := range segs {
		if s == nil {
			s = n.segment(specs[i].Volume, specs[i].Pg)
		}
		if s == nil {
			out[i] = &pb.DeclaredSegment{Pg: specs[i].Pg, MembershipEpoch: specs[i].MembershipEpoch, Retired: true}
			continue
		}
		out[i] = n.declared(s)
	}
	return out, nil
}

// applySpecTruncations applies the truncations a declaration carries that
// its hosted segment lacks, as a writer's declarations do (the control
// plane is no writer: it raises no epoch).
func (n *Node) applySpecTruncations(spec *pb.SegmentSpec) error {
	if len(spec.Truncations) == 0 {
		return nil
	}
	ts := TruncationsFromPB(spec.Truncations)
	for _, t := range ts {
		if err := checkTruncation(spec.Volume, spec.Pg, t, 0); err != nil {
			return err
		}
	}
	n.mu.Lock()
	err := n.checkDeclaredSegment(spec.Volume, spec)
	s := n.segs[segKey{spec.Volume, spec.Pg}]
	lacks := s != nil && lacksTruncation(s.chain, ts)
	n.mu.Unlock()
	if err != nil || !lacks {
		return err
	}
	_, err = n.truncate(spec.Volume, spec.Pg, 0, ts)
	return err
}

// declared is where a segment stands, for Declare's answer.
func (n *Node) declared(s *seg) *pb.DeclaredSegment {
	n.mu.Lock()
	defer n.mu.Unlock()
	return &pb.DeclaredSegment{
		Pg:              s.key.pg,
		MembershipEpoch: s.spec.MembershipEpoch,
		Scl:             s.durableSCL.Load(),
		Highest:         s.chain.Highest(),
		Hydrating:       s.hydrating.Load(),
		Retired:         s.retired,
		BytesCopied:     s.hydCopied.Load(),
		BytesTotal:      s.hydTotal.Load(),
	}
}
