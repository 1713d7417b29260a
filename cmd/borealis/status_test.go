package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"google.golang.org/grpc"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
)

// fakeRegistry is a control plane that lists instances.
type fakeRegistry struct {
	pb.UnimplementedControlServer
	instances []*pb.InstanceInfo
}

func (f *fakeRegistry) ListInstances(context.Context, *pb.ListInstancesRequest) (*pb.ListInstancesResponse, error) {
	return &pb.ListInstancesResponse{Instances: f.instances}, nil
}

func serveRegistry(t *testing.T, f *fakeRegistry) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	pb.RegisterControlServer(g, f)
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return l.Addr().String()
}

// serveJSON answers GET /v1/health with body.
func serveJSON(t *testing.T, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/health" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// status lists every instance, writer first and replicas by number, with
// the figures each gives on /v1/health; one that does not answer keeps its
// catalog record's, and shows as unreachable; one that cluster.json lists
// but the catalog does not is there too. The volume's PGMRPL is the
// writer's read point. --json has the contract's fields.
func TestStatusInstances(t *testing.T) {
	writer := serveJSON(t, `{"role":"writer","volume":"main","volume_id":1,"epoch":3,"vdl":120,"ready":true,"status":"ready","id":"writer","az":"a","read_point":90,"replicas":[{"id":"r1"},{"id":"r2"}]}`)
	r1 := serveJSON(t, `{"role":"replica","volume":"main","volume_id":1,"epoch":3,"vdl":118,"ready":true,"status":"ready","id":"r1","az":"b","read_point":90,"replica":{"stream":"streaming","writer_vdl":120,"lag_lsn":2,"lag_ms":1.5,"writer":"x","epoch":3,"resyncs":1}}`)
	r10 := serveJSON(t, `{"role":"replica","volume":"main","volume_id":1,"epoch":3,"vdl":120,"ready":true,"status":"ready: serving reads at applied VDL; stale","id":"r10","az":"a","read_point":120,"replica":{"stream":"stale","writer_vdl":120,"lag_lsn":0,"lag_ms":4000,"epoch":3}}`)
	gone, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	routerAddr := serveJSON(t, `{"volume":"main","writer":{"id":"writer","role":"writer","endpoint":"x"},"replicas":[{"id":"r1","role":"replica","candidate":true},{"id":"r10","role":"replica","candidate":false,"why":"stale"}]}`)
	reg := &fakeRegistry{instances: []*pb.InstanceInfo{
		{Volume: "main", Id: "r10", Role: "replica", Az: "a", SqlEndpoint: r10, Epoch: 3, Vdl: 100, State: "streaming"},
		{Volume: "main", Id: "r1", Role: "replica", Az: "b", SqlEndpoint: r1, Epoch: 3, Vdl: 110, State: "streaming"},
		{Volume: "main", Id: "r2", Role: "replica", Az: "c", SqlEndpoint: gone, Epoch: 3, Vdl: 100, ReadPoint: 95, State: "streaming"},
		{Volume: "main", Id: "writer", Role: "writer", Az: "a", SqlEndpoint: writer, Epoch: 3, Vdl: 115, ReadPoint: 80, State: "ready"},
	}}
	control := serveRegistry(t, reg)
	cf := &cluster.File{Components: []cluster.Component{
		{Role: "writer", ID: "writer", AZ: "a", Addr: writer},
		{Role: "replica", ID: "r1", AZ: "b", Addr: r1},
		{Role: "replica", ID: "r3", AZ: "a", Addr: gone},
		{Role: "router", ID: "router", Addr: routerAddr, ClusterEndpoint: routerAddr, ReaderEndpoint: "127.0.0.1:1"},
	}}
	rep := &statusReport{Volumes: []volumeReport{{Name: "main", ID: 1}}, Nodes: []nodeReport{}, Writers: []writerReport{}}
	addInstances(context.Background(), rep, control, cf)

	var ids []string
	for _, in := range rep.Instances {
		ids = append(ids, in.ID)
	}
	if got := strings.Join(ids, " "); got != "writer r1 r2 r3 r10" {
		t.Fatalf("instances in the order %s", got)
	}
	by := map[string]instanceReport{}
	for _, in := range rep.Instances {
		by[in.ID] = in
	}
	if w := by["writer"]; w.Source != "health" || w.VDL != 120 || w.ReadPoint != 90 || w.State != "ready" || w.LagLSN != 0 || w.Endpoint != "http://"+writer || w.AZ != "a" {
		t.Errorf("writer: %+v", w)
	}
	if r := by["r1"]; r.Source != "health" || r.VDL != 118 || r.LagLSN != 2 || r.LagMS != 1.5 || r.State != "streaming" || r.WriterVDL != 120 || r.Resyncs != 1 || r.AZ != "b" {
		t.Errorf("r1: %+v", r)
	}
	if r := by["r10"]; r.State != "stale" || r.LagMS != 4000 {
		t.Errorf("r10: %+v", r)
	}
	// Unreachable: the catalog's figures, its lag against the writer's VDL.
	if r := by["r2"]; r.Source != "catalog" || r.Unreachable == "" || r.VDL != 100 || r.ReadPoint != 95 || r.LagLSN != 20 || r.LagMS != -1 || r.State != "streaming" || !r.Registered {
		t.Errorf("r2: %+v", r)
	}
	if r := by["r3"]; r.Registered || r.State != "not registered" || r.Unreachable == "" || r.Endpoint != "http://"+gone {
		t.Errorf("r3: %+v", r)
	}
	if rep.Volumes[0].PGMRPL != 90 {
		t.Errorf("PGMRPL %d, want the writer's read point 90", rep.Volumes[0].PGMRPL)
	}
	if len(rep.Routers) != 1 || rep.Routers[0].Writer != "writer" || strings.Join(rep.Routers[0].Candidates, ",") != "r1" || rep.Routers[0].ReaderEndpoint != "http://127.0.0.1:1" {
		t.Errorf("routers: %+v", rep.Routers)
	}

	// The JSON keeps every field, with the instances' contract.
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"nodes", "volumes", "writers", "heartbeat_timeout_ms", "instances", "routers"} {
		if _, ok := got[k]; !ok {
			t.Errorf("status --json lacks %q: %s", k, b)
		}
	}
	for _, in := range got["instances"].([]any) {
		m := in.(map[string]any)
		for _, k := range []string{"id", "role", "az", "endpoint", "vdl", "lag_lsn", "lag_ms", "read_point", "state", "volume", "epoch", "source", "registered"} {
			if _, ok := m[k]; !ok {
				t.Errorf("instance %v lacks %q", m["id"], k)
			}
		}
		if role := m["role"]; role != "writer" && role != "replica" {
			t.Errorf("instance %v has role %v", m["id"], role)
		}
	}
	if v := got["volumes"].([]any)[0].(map[string]any); v["pgmrpl"] != 90.0 {
		t.Errorf("volume's pgmrpl: %v", v["pgmrpl"])
	}
	r := got["routers"].([]any)[0].(map[string]any)
	for _, k := range []string{"id", "cluster_endpoint", "reader_endpoint", "candidates"} {
		if _, ok := r[k]; !ok {
			t.Errorf("router lacks %q: %v", k, r)
		}
	}

	// The text has a line for each, and the router's endpoints.
	var out strings.Builder
	printInstances(&out, rep)
	text := out.String()
	found := false
	for _, l := range strings.Split(text, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "r1" {
			found = strings.Join(f, " ") == "r1 replica b http://"+r1+" 118 2 2ms 90 streaming"
		}
	}
	if !found {
		t.Errorf("status printed\n%s\nwithout r1's line as expected", text)
	}
	for _, want := range []string{
		"INSTANCES of main: PGMRPL 90",
		"ID      ROLE     AZ  ENDPOINT",
		"UNREACHABLE  <-- (",
		"NOT RUNNING  <--",
		"stale  <--",
		"ROUTER router: cluster endpoint http://" + routerAddr + ", reader endpoint http://127.0.0.1:1\n  writes go to writer; queries are balanced over r1\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("status printed\n%s\nwithout %q", text, want)
		}
	}
}

// With no catalog to ask, status says so and lists no instance.
func TestStatusInstancesWithoutCatalog(t *testing.T) {
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	rep := &statusReport{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*1e9)
	defer cancel()
	addInstances(ctx, rep, addr, nil)
	if rep.Instances == nil || len(rep.Instances) != 0 || rep.InstancesError == "" {
		t.Fatalf("instances %+v, error %q", rep.Instances, rep.InstancesError)
	}
	b, _ := json.Marshal(rep)
	if !strings.Contains(string(b), `"instances":[]`) {
		t.Fatalf("JSON %s", b)
	}
}

func TestIDOrder(t *testing.T) {
	for _, tc := range [][2]string{{"r2", "r10"}, {"r1", "r2"}, {"a", "r1"}, {"r9", "s1"}, {"x", "x1"}} {
		if !idLess(tc[0], tc[1]) || idLess(tc[1], tc[0]) {
			t.Errorf("%s, %s out of order", tc[0], tc[1])
		}
	}
}

// freeAddr is a loopback address where nothing listens.
func freeAddr() (string, error) {
	return cluster.FreeAddr()
}
