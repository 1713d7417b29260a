package control

import (
	"strings"
	"testing"
)

func TestPromotionOrder(t *testing.T) {
	c := func(id, az string, tier uint32, epoch, applied uint64, up int) PromotionCandidate {
		return PromotionCandidate{ID: id, AZ: az, Tier: tier, Epoch: epoch, Applied: applied, Live: true, AZNodesUp: up}
	}
	dead := func(p PromotionCandidate) PromotionCandidate { p.Live = false; return p }
	for _, tc := range []struct {
		name  string
		cands []PromotionCandidate
		want  string
	}{
		{"no replicas", nil, ""},
		{"the tier wins over being caught up", []PromotionCandidate{c("r1", "b", 2, 3, 900, 2), c("r2", "c", 1, 3, 100, 2)}, "r2 r1"},
		{"then the newest epoch", []PromotionCandidate{c("r1", "b", 1, 2, 900, 2), c("r2", "c", 1, 3, 100, 2)}, "r2 r1"},
		{"then the highest applied VDL", []PromotionCandidate{c("r1", "b", 1, 3, 100, 2), c("r2", "c", 1, 3, 900, 2)}, "r2 r1"},
		{"then the AZ with more storage nodes up", []PromotionCandidate{c("r1", "b", 1, 3, 900, 1), c("r2", "c", 1, 3, 900, 2)}, "r2 r1"},
		{"then the smaller id", []PromotionCandidate{c("r3", "b", 1, 3, 900, 2), c("r2", "c", 1, 3, 900, 2), c("r10", "a", 1, 3, 900, 2)}, "r10 r2 r3"},
		{"a replica whose record lapsed is left out", []PromotionCandidate{dead(c("r1", "b", 0, 3, 900, 2)), c("r2", "c", 1, 3, 100, 2)}, "r2"},
		{"all lapsed", []PromotionCandidate{dead(c("r1", "b", 0, 3, 900, 2))}, ""},
	} {
		got, err := PromotionOrder(tc.cands)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		ids := make([]string, len(got))
		for i, g := range got {
			ids[i] = g.ID
		}
		if s := strings.Join(ids, " "); s != tc.want {
			t.Errorf("%s: order %q, want %q", tc.name, s, tc.want)
		}
	}
	if _, err := PromotionOrder([]PromotionCandidate{c("r1", "b", 1, 1, 1, 2), c("r1", "c", 1, 1, 1, 2)}); err == nil || !strings.Contains(err.Error(), "r1 is listed twice") {
		t.Errorf("an id listed twice: %v", err)
	}
	if _, err := PromotionOrder([]PromotionCandidate{c("", "b", 1, 1, 1, 2)}); err == nil || !strings.Contains(err.Error(), "no id") {
		t.Errorf("no id: %v", err)
	}
	in := []PromotionCandidate{c("r2", "b", 2, 1, 1, 2), c("r1", "c", 1, 1, 1, 2)}
	PromotionOrder(in)
	if in[0].ID != "r2" {
		t.Errorf("PromotionOrder reordered its input")
	}
}
