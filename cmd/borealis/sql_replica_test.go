package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
)

// writeClusterFile writes dir/cluster.json listing comps.
func writeClusterFile(t *testing.T, dir string, comps ...cluster.Component) {
	t.Helper()
	b, err := json.Marshal(cluster.File{Components: comps})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, clusterFileName), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func runSQLArgs(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := sqlCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(io.Discard)
	cmd.SetIn(strings.NewReader(""))
	cmd.SetArgs(args)
	cmd.SetContext(context.Background())
	err := cmd.Execute()
	return out.String(), err
}

func TestSQLReplicaFlagsRefused(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--replica", "r1", "--reader", "-e", "SELECT 1"}, "give --replica ID or --reader, not both"},
		{[]string{"--endpoint", "http://127.0.0.1:1", "--replica", "r1", "-e", "SELECT 1"}, "give --endpoint URL, or --replica ID or --reader"},
		{[]string{"--endpoint", "http://127.0.0.1:1", "--reader", "-e", "SELECT 1"}, "give --endpoint URL, or --replica ID or --reader"},
		{[]string{"--replica", "", "-e", "SELECT 1"}, "--replica needs the id of a replica"},
		{[]string{"--dir", "/nonexistent/x", "--replica", "r1", "-e", "SELECT 1"}, "no running cluster in /nonexistent/x"},
		{[]string{"--dir", "/nonexistent/x", "--reader", "-e", "SELECT 1"}, "no running cluster in /nonexistent/x"},
	} {
		if _, err := runSQLArgs(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("sql %q: %v, want an error saying %q", tc.args, err, tc.want)
		}
	}
}

// --replica finds the replica in cluster.json, or in the catalog; --reader
// is the router's reader endpoint.
func TestSQLTargets(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	control := serveRegistry(t, &fakeRegistry{instances: []*pb.InstanceInfo{
		{Volume: "main", Id: "writer", Role: "writer", SqlEndpoint: "127.0.0.1:7107"},
		{Volume: "main", Id: "r1", Role: "replica", SqlEndpoint: "127.0.0.1:7108"},
		{Volume: "main", Id: "manual", Role: "replica", SqlEndpoint: "127.0.0.1:7200"},
	}})
	comps := []cluster.Component{
		{Role: "control", ID: "control", Addr: control},
		{Role: "writer", ID: "writer", AZ: "a", Addr: "127.0.0.1:7107"},
		{Role: "replica", ID: "r1", AZ: "b", Addr: "127.0.0.1:7108"},
	}
	writeClusterFile(t, dir, comps...)
	if _, err := sqlTargetFor(ctx, dir, "", "", true); err == nil || !strings.Contains(err.Error(), "lists no router") {
		t.Fatalf("--reader without a router: %v", err)
	}
	comps = append(comps, cluster.Component{Role: "router", ID: "router", Addr: "127.0.0.1:7109", ClusterEndpoint: "127.0.0.1:7109", ReaderEndpoint: "127.0.0.1:7110"})
	writeClusterFile(t, dir, comps...)
	for _, tc := range []struct {
		replica  string
		reader   bool
		endpoint string
		kind     string
	}{
		// The cluster endpoint follows the writer through a failover.
		{"", false, "http://127.0.0.1:7109", "cluster"},
		{"r1", false, "http://127.0.0.1:7108", "replica"},
		{"manual", false, "http://127.0.0.1:7200", "replica"},
		{"", true, "http://127.0.0.1:7110", "reader"},
	} {
		got, err := sqlTargetFor(ctx, dir, "", tc.replica, tc.reader)
		if err != nil || got.endpoint != tc.endpoint || got.kind != tc.kind {
			t.Errorf("replica %q, reader %v: %+v, %v; want %s (%s)", tc.replica, tc.reader, got, err, tc.endpoint, tc.kind)
		}
	}
	if _, err := sqlTargetFor(ctx, dir, "", "writer", false); err == nil || !strings.Contains(err.Error(), "writer is the cluster's writer, not a read replica; its replicas are r1") {
		t.Errorf("--replica writer: %v", err)
	}
	if _, err := sqlTargetFor(ctx, dir, "", "r7", false); err == nil || !strings.Contains(err.Error(), "no replica r7: neither") || !strings.Contains(err.Error(), "its replicas are r1, manual") {
		t.Errorf("--replica r7: %v", err)
	}
}

// A write sent to a replica, or to the reader endpoint, fails with the
// server's not_writer, and the shell says where writes go.
func TestSQLWriteOnReplicaSaysWhereWritesGo(t *testing.T) {
	replica := newSQLWire(t, func(path string, body map[string]any) (int, string) {
		switch path {
		case "/v1/execute":
			return 409, `{"error":{"code":"not_writer","message":"instance r1 is a read replica of volume main and never writes; send writes to the writer at 127.0.0.1:7107","writer":"127.0.0.1:7107"}}`
		case "/v1/query":
			return 200, `{"columns":["n"],"types":["INTEGER"],"rows":[[1]]}`
		case "/v1/health":
			return 200, `{"role":"replica","volume":"main","volume_id":1,"epoch":2,"vdl":40,"ready":true,"status":"ready","id":"r1","read_point":38,"replica":{"stream":"streaming","writer_vdl":41,"lag_lsn":1,"lag_ms":0.5,"writer":"127.0.0.1:7107","epoch":2,"resyncs":0}}`
		}
		return 404, ""
	})
	dir := t.TempDir()
	writeClusterFile(t, dir,
		cluster.Component{Role: "writer", ID: "writer", Addr: "127.0.0.1:7107"},
		cluster.Component{Role: "replica", ID: "r1", Addr: strings.TrimPrefix(replica.URL, "http://")},
		cluster.Component{Role: "router", ID: "router", Addr: "127.0.0.1:7109", ClusterEndpoint: "127.0.0.1:7109", ReaderEndpoint: strings.TrimPrefix(replica.URL, "http://")},
	)
	// Reads work.
	if out, err := runSQLArgs(t, "--dir", dir, "--replica", "r1", "-e", "SELECT 1 AS n"); err != nil || !strings.Contains(out, "1") {
		t.Fatalf("a read on the replica: %q, %v", out, err)
	}
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--replica", "r1"}, "this session runs on read replica r1, which never writes: `"},
		{[]string{"--reader"}, "this session runs on the router's reader endpoint, which only runs queries: `"},
	} {
		_, err := runSQLArgs(t, append(append([]string{"--dir", dir}, tc.flags...), "-e", "INSERT INTO t VALUES (1)")...)
		if err == nil {
			t.Fatalf("%v: a write succeeded", tc.flags)
		}
		msg := err.Error()
		for _, want := range []string{
			"not_writer: instance r1 is a read replica", tc.want,
			" sql --dir " + dir + "` runs them on the writer (http://127.0.0.1:7107)",
			"the router's cluster endpoint http://127.0.0.1:7109 takes them",
		} {
			if !strings.Contains(msg, want) {
				t.Errorf("%v: the write failed with\n%s\nwithout %q", tc.flags, msg, want)
			}
		}
	}
	// On the writer (or --endpoint) a not_writer is the server's alone.
	if _, err := runSQL(t, replica, "", "-e", "INSERT INTO t VALUES (1)"); err == nil || strings.Contains(err.Error(), "this session runs on") {
		t.Errorf("--endpoint: %v", err)
	}
	// .status on a replica shows its stream and lag.
	out, err := runSQLArgs(t, "--dir", dir, "--replica", "r1", "-e", ".status")
	if err != nil || !strings.Contains(out, "role      replica") || !strings.Contains(out, "stream    streaming, from the writer at 127.0.0.1:7107 (its VDL 41)") || !strings.Contains(out, "lag       1 LSNs, 500µs") || !strings.Contains(out, "pinned    38") {
		t.Errorf(".status on a replica: %v\n%s", err, out)
	}
}
