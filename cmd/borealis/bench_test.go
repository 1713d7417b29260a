package main

import (
	"context"
	"encoding/json"
	"io"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// deleteRefuser is a control plane whose DeleteVolume refuses some names
// and finds others gone already.
type deleteRefuser struct {
	pb.ControlClient
	refuse, gone []string
	deleted      []string
}

func (d *deleteRefuser) DeleteVolume(_ context.Context, req *pb.DeleteVolumeRequest, _ ...grpc.CallOption) (*pb.DeleteVolumeResponse, error) {
	switch {
	case slices.Contains(d.refuse, req.Name):
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s has a writer: its lease is held by db-9", req.Name)
	case slices.Contains(d.gone, req.Name):
		return nil, status.Errorf(codes.NotFound, "volume %s does not exist", req.Name)
	}
	d.deleted = append(d.deleted, req.Name)
	return &pb.DeleteVolumeResponse{Volume: &pb.VolumeInfo{Name: req.Name}}, nil
}

// TestBenchReportsVolumesLeft: when bench commit --cluster fails to delete
// some of its volumes, its report names them in volumes_left (and not as
// kept), and the command fails naming them; deleted ones and ones already
// gone are not left. With --keep, all are kept and none left.
func TestBenchReportsVolumesLeft(t *testing.T) {
	names := []string{"bench-a", "bench-b", "bench-c"}
	ctl := &deleteRefuser{refuse: []string{"bench-b"}, gone: []string{"bench-c"}}
	vols := &benchVolumes{ctl: ctl, names: names}
	var rep commitReport
	err := vols.finish(&rep, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "could not delete its volumes bench-b:") || !strings.Contains(err.Error(), "held by db-9") {
		t.Fatalf("finish with a refused delete: %v; want an error naming bench-b and why", err)
	}
	if !slices.Equal(ctl.deleted, []string{"bench-a"}) {
		t.Fatalf("deleted %v, want [bench-a]", ctl.deleted)
	}
	out, jerr := json.Marshal(rep)
	if jerr != nil {
		t.Fatal(jerr)
	}
	var got struct {
		Volumes     []string `json:"volumes"`
		VolumesKept bool     `json:"volumes_kept"`
		VolumesLeft []string `json:"volumes_left"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Volumes, names) || got.VolumesKept || !slices.Equal(got.VolumesLeft, []string{"bench-b"}) {
		t.Fatalf("report %s; want volumes %v, not kept, volumes_left [bench-b]", out, names)
	}
	// A second cleanup (the deferred one) does nothing.
	if left, err := vols.cleanup(io.Discard); err != nil || left != nil || len(ctl.deleted) != 1 {
		t.Fatalf("second cleanup: %v %v, deleted %v", left, err, ctl.deleted)
	}

	kept := &benchVolumes{ctl: &deleteRefuser{refuse: names}, names: names, keep: true}
	rep = commitReport{}
	if err := kept.finish(&rep, io.Discard); err != nil || !rep.VolumesKept || len(rep.VolumesLeft) != 0 {
		t.Fatalf("--keep: %v, report %+v", err, rep)
	}
	ok := &benchVolumes{ctl: &deleteRefuser{}, names: names}
	rep = commitReport{}
	if err := ok.finish(&rep, io.Discard); err != nil || rep.VolumesKept || len(rep.VolumesLeft) != 0 {
		t.Fatalf("all deleted: %v, report %+v", err, rep)
	}
}
