package control

import (
	"errors"
	"math/rand"
	"strings"
	"testing"
)

func ids(ns []NodeInfo) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = n.ID
	}
	return strings.Join(s, ",")
}

func TestPlace(t *testing.T) {
	up := func(id, az string, load int) NodeInfo {
		return NodeInfo{ID: id, AZ: az, Addr: id + ":1", Up: true, Segments: load}
	}
	down := func(id, az string) NodeInfo { return NodeInfo{ID: id, AZ: az, Addr: id + ":1"} }
	six := []NodeInfo{up("s1", "a", 0), up("s2", "a", 0), up("s3", "b", 0), up("s4", "b", 0), up("s5", "c", 0), up("s6", "c", 0)}
	tests := []struct {
		name    string
		nodes   []NodeInfo
		want    string // chosen ids, in order
		wantErr string // substring of the error
	}{
		{name: "six nodes", nodes: six, want: "s1,s2,s3,s4,s5,s6"},
		{name: "least loaded first, ties by id",
			nodes: []NodeInfo{up("s1", "a", 3), up("s2", "a", 1), up("s7", "a", 1), up("s3", "b", 5), up("s4", "b", 2), up("s8", "b", 9), up("s5", "c", 0), up("s6", "c", 0)},
			want:  "s2,s7,s4,s3,s5,s6"},
		{name: "down nodes are skipped",
			nodes: []NodeInfo{up("s1", "a", 9), down("s2", "a"), up("s7", "a", 9), up("s3", "b", 0), up("s4", "b", 0), up("s5", "c", 0), up("s6", "c", 0)},
			want:  "s1,s7,s3,s4,s5,s6"},
		{name: "more AZs than needed: lowest total load wins",
			nodes: []NodeInfo{up("a1", "a", 5), up("a2", "a", 5), up("b1", "b", 1), up("b2", "b", 1), up("c1", "c", 2), up("c2", "c", 2), up("d1", "d", 0), up("d2", "d", 3), up("d3", "d", 0)},
			want:  "b1,b2,c1,c2,d1,d3"},
		{name: "AZ tie by name",
			nodes: []NodeInfo{up("a1", "a", 1), up("a2", "a", 1), up("b1", "b", 1), up("b2", "b", 1), up("c1", "c", 1), up("c2", "c", 1), up("d1", "d", 1), up("d2", "d", 1)},
			want:  "a1,a2,b1,b2,c1,c2"},
		{name: "an AZ short of live nodes, one AZ missing",
			nodes:   []NodeInfo{up("s1", "a", 0), up("s2", "a", 0), up("s3", "b", 0), down("s4", "b")},
			wantErr: "placement: need 2 live storage nodes in each of 3 AZs; have a: 2 (s1, s2), b: 1 (s3; s4 is down); no other AZ has storage nodes"},
		{name: "an AZ with every node down",
			nodes:   []NodeInfo{up("s1", "a", 0), up("s2", "a", 0), up("s3", "b", 0), down("s4", "b"), down("s6", "c"), down("s5", "c")},
			wantErr: "have a: 2 (s1, s2), b: 1 (s3; s4 is down), c: 0 (s5, s6 are down)."},
		{name: "no nodes", nodes: nil, wantErr: "have no storage nodes at all"},
		{name: "a node listed twice", nodes: append([]NodeInfo{up("s1", "z", 0)}, six...), wantErr: "node s1 is listed twice"},
		{name: "empty AZ", nodes: []NodeInfo{up("s1", "", 0)}, wantErr: "empty id or AZ"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Place(tc.nodes, 2, 3)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				if strings.HasPrefix(tc.wantErr, "placement: need") && !errors.Is(err, ErrPlacement) {
					t.Fatalf("errors.Is(%v, ErrPlacement) = false", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ids(got) != tc.want {
				t.Fatalf("chose %s, want %s", ids(got), tc.want)
			}
			// Determinism: any order of input gives the same answer.
			r := rand.New(rand.NewSource(1))
			for range 20 {
				shuffled := append([]NodeInfo(nil), tc.nodes...)
				r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
				again, err := Place(shuffled, 2, 3)
				if err != nil || ids(again) != tc.want {
					t.Fatalf("shuffled input chose %s (err %v), want %s", ids(again), err, tc.want)
				}
			}
		})
	}
	if _, err := Place(six, 0, 3); err == nil {
		t.Fatal("Place with 0 per AZ succeeded")
	}
	if got, err := Place(six, 1, 3); err != nil || ids(got) != "s1,s3,s5" {
		t.Fatalf("1 per AZ: %s, %v", ids(got), err)
	}
}
