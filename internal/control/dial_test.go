package control

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/wait"
)

type listOnly struct {
	pb.UnimplementedControlServer
	name string
}

func (l listOnly) ListVolumes(context.Context, *pb.ListVolumesRequest) (*pb.ListVolumesResponse, error) {
	return &pb.ListVolumesResponse{Volumes: []*pb.VolumeInfo{{Name: l.name}}}, nil
}

// A client of several control planes goes on when one of them dies.
func TestDialSeveralSurvivesOneDeath(t *testing.T) {
	var addrs []string
	var servers []*grpc.Server
	for _, name := range []string{"c1", "c2"} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		g := grpc.NewServer(ServerOptions()...)
		pb.RegisterControlServer(g, listOnly{name: name})
		go g.Serve(lis)
		defer g.Stop()
		servers = append(servers, g)
		addrs = append(addrs, lis.Addr().String())
	}
	conn, err := Dial(addrs[0] + ", " + addrs[1] + "," + addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctl := pb.NewControlClient(conn)
	// Round-robin reaches both once both connections are up.
	seen := map[string]bool{}
	wait.For(t, 10*time.Second, "calls to reach both control planes", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := ctl.ListVolumes(ctx, &pb.ListVolumesRequest{})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		seen[resp.Volumes[0].Name] = true
		return seen["c1"] && seen["c2"]
	})
	servers[0].Stop()
	// Calls after the death may fail while the connection's loss is
	// noticed, but soon every call reaches c2.
	deadline := time.Now().Add(10 * time.Second)
	ok := 0
	for ok < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d calls in a row reached the survivor", ok)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := ctl.ListVolumes(ctx, &pb.ListVolumesRequest{})
		cancel()
		if err != nil || resp.Volumes[0].Name != "c2" {
			ok = 0
			continue
		}
		ok++
	}
}

func TestParseAddrs(t *testing.T) {
	if _, err := ParseAddrs(" , "); err == nil {
		t.Fatal("an empty list was accepted")
	}
	got, err := ParseAddrs("a:1, b:2,a:1")
	if err != nil || len(got) != 2 || got[0] != "a:1" || got[1] != "b:2" {
		t.Fatalf("got %v, %v", got, err)
	}
}
