package control

import (
	"fmt"
	"sort"
)

// PromotionCandidate is a replica as the control plane sees it when a
// volume's writer lease is gone: its catalog record, and how the storage
// nodes of its AZ stand.
type PromotionCandidate struct {
	ID string
	AZ string
	// Tier is its promotion tier: a lower tier is promoted first.
	Tier uint32
	// Epoch and Applied are the stream it followed and the VDL it applied.
	Epoch, Applied uint64
	// Live: its catalog record's lease is alive (the record exists).
	Live bool
	// AZNodesUp is how many storage nodes of its AZ are up.
	AZNodesUp int
}

// PromotionOrder returns the live candidates in the order to try them as
// the new writer. It is pure: no I/O, and the same input always gives the
// same answer.
//
//   - A lower promotion tier first: the operator's preference wins over
//     everything the control plane can measure.
//   - Then the most caught up (the newest epoch, then the highest applied
//     VDL): it keeps the most of its page cache, which recovery would
//     otherwise drop above what it applied, and it has the least to catch
//     up before it serves.
//   - Then one whose AZ has more storage nodes up: a replica in an AZ that
//     is failing is likely to fail next.
//   - Ties go to the smaller id.
//
// A candidate that is not live is left out: it stopped renewing its
// record, so it is dead or cut off. An id listed twice is an error.
func PromotionOrder(cands []PromotionCandidate) ([]PromotionCandidate, error) {
	seen := map[string]bool{}
	var out []PromotionCandidate
	for _, c := range cands {
		if c.ID == "" {
			return nil, fmt.Errorf("promotion: a candidate has no id (AZ %q)", c.AZ)
		}
		if seen[c.ID] {
			return nil, fmt.Errorf("promotion: replica %s is listed twice; instance ids must be unique", c.ID)
		}
		seen[c.ID] = true
		if c.Live {
			out = append(out, c)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		switch {
		case a.Tier != b.Tier:
			return a.Tier < b.Tier
		case a.Epoch != b.Epoch:
			return a.Epoch > b.Epoch
		case a.Applied != b.Applied:
			return a.Applied > b.Applied
		case a.AZNodesUp != b.AZNodesUp:
			return a.AZNodesUp > b.AZNodesUp
		}
		return a.ID < b.ID
	})
	return out, nil
}
