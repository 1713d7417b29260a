package control

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// TestRecordTruncation: a recovery's range is recorded under the volume's
// current epoch and kept with the earlier ones; recording it again is
// harmless, and a stale, future or contradicting one is refused.
func TestRecordTruncation(t *testing.T) {
	t.Parallel()
	cat := newCatalog(t)
	ctx := ctxT(t)
	sixNodes(t, cat)
	if _, err := cat.CreateVolume(ctx, "main", 4096, 1<<20); err != nil {
		t.Fatal(err)
	}
	addr, _ := testServer(t, cat, "", time.Second)
	cli := dialControl(t, addr)

	if _, _, err := cat.AcquireWriter(ctx, "main", "db-1", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := cat.BumpEpoch(ctx, "main", 1); err != nil {
		t.Fatal(err)
	}
	req := &pb.RecordTruncationRequest{Volume: "main", Epoch: 2, After: 40, Through: 1040, Pgs: 1}
	for range 2 {
		resp, err := cli.RecordTruncation(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Truncations) != 1 || resp.Truncations[0].After != 40 || resp.Truncations[0].Through != 1040 || resp.Truncations[0].Pgs != 1 {
			t.Fatalf("history %v", resp.Truncations)
		}
	}
	for _, bad := range []struct {
		req  *pb.RecordTruncationRequest
		code codes.Code
		msg  string
	}{
		{&pb.RecordTruncationRequest{Volume: "main", Epoch: 2, After: 41, Through: 1041, Pgs: 1}, codes.AlreadyExists, "already has the truncation (40, 1040] recorded for epoch 2"},
		{&pb.RecordTruncationRequest{Volume: "main", Epoch: 3, After: 41, Through: 1041, Pgs: 1}, codes.InvalidArgument, "epoch 3 was never granted"},
		{&pb.RecordTruncationRequest{Volume: "main", Epoch: 2, After: 41, Through: 40, Pgs: 1}, codes.InvalidArgument, "ends before it starts"},
		{&pb.RecordTruncationRequest{Volume: "nope", Epoch: 2, After: 1, Through: 2}, codes.NotFound, "does not exist"},
	} {
		_, err := cli.RecordTruncation(ctx, bad.req)
		if st, _ := status.FromError(err); st.Code() != bad.code || !strings.Contains(st.Message(), bad.msg) {
			t.Fatalf("record %v: %v, want %v with %q", bad.req, err, bad.code, bad.msg)
		}
	}

	// A newer writer's recovery: the older epoch is stale from then on.
	if _, err := cat.BumpEpoch(ctx, "main", 2); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.RecordTruncation(ctx, &pb.RecordTruncationRequest{Volume: "main", Epoch: 3, After: 50, Through: 1050, Pgs: 2}); err != nil {
		t.Fatal(err)
	}
	_, err := cat.RecordTruncation(ctx, "main", Truncation{Epoch: 2, After: 40, Through: 1040, PGs: 1})
	if !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("recording under an older epoch: %v, want ErrStaleEpoch", err)
	}
	t.Log(err)
	v, err := cli.GetVolume(ctx, &pb.GetVolumeRequest{Name: "main"})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Truncations) != 2 || v.Truncations[0].Epoch != 2 || v.Truncations[1].Epoch != 3 || v.Truncations[1].Pgs != 2 || v.Truncations[1].RecordedAtUnixMs == 0 {
		t.Fatalf("volume's truncations %v", v.Truncations)
	}
}
