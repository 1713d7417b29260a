package main

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// fakeCatalog is a control plane that knows the volumes in vols, and
// creates them with the next id.
type fakeCatalog struct {
	pb.ControlClient // any other call panics
	vols             map[string]*pb.VolumeInfo
	nextID           uint64
	// raceCreate makes CreateVolume find the volume made by another
	// client since GetVolume looked.
	raceCreate bool
}

func (f *fakeCatalog) GetVolume(_ context.Context, in *pb.GetVolumeRequest, _ ...grpc.CallOption) (*pb.VolumeInfo, error) {
	if v, ok := f.vols[in.Name]; ok {
		return v, nil
	}
	return nil, status.Errorf(codes.NotFound, "volume %s not found", in.Name)
}

func (f *fakeCatalog) CreateVolume(_ context.Context, in *pb.CreateVolumeRequest, _ ...grpc.CallOption) (*pb.VolumeInfo, error) {
	f.nextID++
	v := &pb.VolumeInfo{Name: in.Name, Id: f.nextID, PageSize: in.PageSize, PgSizeBytes: in.PgSizeBytes, Pgs: 1}
	f.vols[in.Name] = v
	if f.raceCreate {
		return nil, status.Errorf(codes.AlreadyExists, "volume %s exists", in.Name)
	}
	return v, nil
}

// up says when it created the volume it runs the writer on, new and empty,
// and on a resumed cluster that a deleted volume's data is not back; a
// volume that was there is described as before.
func TestUpSaysItCreatedTheVolume(t *testing.T) {
	ctx := context.Background()
	const pg = 1 << 20
	for _, tc := range []struct {
		name           string
		cat            *fakeCatalog
		resumed        bool
		created        bool
		want, dontWant []string
	}{
		{name: "new cluster", cat: &fakeCatalog{vols: map[string]*pb.VolumeInfo{}}, created: true,
			want:     []string{"  created volume main (id 1): it is new and empty; 4096-byte pages, 1MiB PGs, 1 PG(s)\n"},
			dontWant: []string{"note:"}},
		{name: "resumed, volume deleted", cat: &fakeCatalog{vols: map[string]*pb.VolumeInfo{}, nextID: 1}, resumed: true, created: true,
			want: []string{"  created volume main (id 2): it is new and empty; ", "had no volume main: it was deleted", "A deleted volume's data is not brought back"}},
		{name: "resumed, volume there", resumed: true,
			cat:      &fakeCatalog{vols: map[string]*pb.VolumeInfo{"main": {Name: "main", Id: 1, PageSize: 4096, PgSizeBytes: pg, Pgs: 3}}},
			want:     []string{"  volume main: id 1, 4096-byte pages, 1MiB PGs, 3 PG(s)\n"},
			dontWant: []string{"created", "note:"}},
		{name: "created by another client first", cat: &fakeCatalog{vols: map[string]*pb.VolumeInfo{}, raceCreate: true},
			want:     []string{"  volume main: id 1, "},
			dontWant: []string{"created", "note:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, created, err := getOrCreateVolume(ctx, tc.cat, "main", pg)
			if err != nil {
				t.Fatal(err)
			}
			if created != tc.created || v.Name != "main" {
				t.Fatalf("volume %+v, created %v; want created %v", v, created, tc.created)
			}
			var out strings.Builder
			printVolume(&out, v, created, tc.resumed)
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("printed %q, want %q in it", out.String(), w)
				}
			}
			for _, w := range tc.dontWant {
				if strings.Contains(out.String(), w) {
					t.Errorf("printed %q, with %q in it", out.String(), w)
				}
			}
		})
	}
}
