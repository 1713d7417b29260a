package storage_test

import (
	"context"
	"fmt"
	"testing"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// TestSegmentSCLsListsAVolumesSegments hosts segments of two volumes and
// checks that SegmentSCLs answers, in one call, each segment of the volume
// asked for with its SCL, and none of the other volume's.
func TestSegmentSCLsListsAVolumesSegments(t *testing.T) {
	_, c, addr := startNode(t, t.TempDir())
	newChainWriter(t, c, 1, 0, addr).write(1, 10, 1)
	w := newChainWriter(t, c, 1, 2, addr)
	w.write(2049, 11, 2)
	w.write(2050, 12, 3)
	newChainWriter(t, c, 2, 1, addr).write(1025, 13, 4)

	for _, tc := range []struct {
		vol  uint64
		want string
	}{
		{1, "[{0 10} {2 12}]"},
		{2, "[{1 13}]"},
		{3, "[]"},
	} {
		resp, err := c.SegmentSCLs(context.Background(), &pb.SegmentSCLsRequest{Volume: tc.vol})
		if err != nil {
			t.Fatal(err)
		}
		got := []string{}
		for _, s := range resp.Segments {
			got = append(got, fmt.Sprintf("{%d %d}", s.Pg, s.Scl))
		}
		if s := fmt.Sprint(got); s != tc.want {
			t.Fatalf("SegmentSCLs of volume %d: %s, want %s", tc.vol, s, tc.want)
		}
	}
}
