package control

import (
	"fmt"
	"sort"
	"strings"
)

// NodeInfo is what placement knows of a storage node: where it is, whether
// it is up, and its load (the number of segments it hosts).
type NodeInfo struct {
	ID, AZ, Addr string
	Up           bool
	Segments     int // load: segments hosted
}

// Place chooses perAZ live nodes in each of azs AZs for one PG. It is pure:
// no I/O, and the same input always gives the same answer.
//
//   - Within an AZ the least-loaded live nodes are chosen first; ties go to
//     the smaller ID.
//   - When more than azs AZs have perAZ live nodes, the AZs whose chosen
//     nodes carry the lowest total load win; ties go to the smaller AZ name.
//   - A node is never chosen twice (an ID listed twice is an error).
//
// The result is ordered by AZ name, then by the order of choice within the
// AZ. Place refuses, naming each AZ's live and down nodes, when fewer than
// azs AZs have perAZ live nodes.
func Place(nodes []NodeInfo, perAZ, azs int) ([]NodeInfo, error) {
	if perAZ <= 0 || azs <= 0 {
		return nil, fmt.Errorf("placement: need a positive number of nodes per AZ and of AZs, got %d per AZ in %d AZs", perAZ, azs)
	}
	seen := make(map[string]bool, len(nodes))
	live := map[string][]NodeInfo{}
	down := map[string][]string{}
	for _, n := range nodes {
		if n.ID == "" || n.AZ == "" {
			return nil, fmt.Errorf("placement: node %q has an empty id or AZ (az %q); every storage node needs both", n.ID, n.AZ)
		}
		if seen[n.ID] {
			return nil, fmt.Errorf("placement: node %s is listed twice; node ids must be unique", n.ID)
		}
		seen[n.ID] = true
		if n.Up {
			live[n.AZ] = append(live[n.AZ], n)
		} else {
			down[n.AZ] = append(down[n.AZ], n.ID)
			if _, ok := live[n.AZ]; !ok {
				live[n.AZ] = nil // the AZ is known, with no live node yet
			}
		}
	}

	type azChoice struct {
		az    string
		nodes []NodeInfo
		load  int
	}
	var eligible []azChoice
	allAZs := make([]string, 0, len(live))
	for az, ns := range live {
		allAZs = append(allAZs, az)
		sort.Slice(ns, func(i, j int) bool {
			if ns[i].Segments != ns[j].Segments {
				return ns[i].Segments < ns[j].Segments
			}
			return ns[i].ID < ns[j].ID
		})
		if len(ns) < perAZ {
			continue
		}
		c := azChoice{az: az, nodes: ns[:perAZ:perAZ]}
		for _, n := range c.nodes {
			c.load += n.Segments
		}
		eligible = append(eligible, c)
	}
	sort.Strings(allAZs)

	if len(eligible) < azs {
		var b strings.Builder
		fmt.Fprintf(&b, "placement: need %d live storage nodes in each of %d AZs; have ", perAZ, azs)
		for i, az := range allAZs {
			if i > 0 {
				b.WriteString(", ")
			}
			ids := make([]string, 0, len(live[az]))
			for _, n := range live[az] {
				ids = append(ids, n.ID)
			}
			sort.Strings(ids)
			fmt.Fprintf(&b, "%s: %d", az, len(ids))
			dn := append([]string(nil), down[az]...)
			sort.Strings(dn)
			if len(ids) > 0 || len(dn) > 0 {
				b.WriteString(" (")
				b.WriteString(strings.Join(ids, ", "))
				if len(dn) > 0 {
					if len(ids) > 0 {
						b.WriteString("; ")
					}
					verb := "is"
					if len(dn) > 1 {
						verb = "are"
					}
					fmt.Fprintf(&b, "%s %s down", strings.Join(dn, ", "), verb)
				}
				b.WriteString(")")
			}
		}
		if len(allAZs) == 0 {
			b.WriteString("no storage nodes at all")
		} else if len(allAZs) < azs {
			fmt.Fprintf(&b, "; no other AZ has storage nodes")
		}
		fmt.Fprintf(&b, ". Start or register more storage nodes, or wait for down ones to heartbeat again")
		return nil, &PlacementError{msg: b.String()}
	}

	sort.Slice(eligible, func(i, j int) bool {
		if eligible[i].load != eligible[j].load {
			return eligible[i].load < eligible[j].load
		}
		return eligible[i].az < eligible[j].az
	})
	chosen := eligible[:azs]
	sort.Slice(chosen, func(i, j int) bool { return chosen[i].az < chosen[j].az })
	out := make([]NodeInfo, 0, perAZ*azs)
	for _, c := range chosen {
		out = append(out, c.nodes...)
	}
	return out, nil
}

// PlacementError is returned when there are not enough live nodes to place
// a PG. errors.Is(err, ErrPlacement) holds for it.
type PlacementError struct{ msg string }

func (e *PlacementError) Error() string        { return e.msg }
func (e *PlacementError) Is(target error) bool { return target == ErrPlacement }
