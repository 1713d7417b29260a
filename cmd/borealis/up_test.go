package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/borealis-db/borealis/internal/cluster"
)

// --replicas takes 0 to 15, and says so before anything starts.
func TestUpRefusesReplicaCounts(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--replicas", "16"}, "--replicas 16: a volume has at most 15 read replicas"},
		{[]string{"--replicas", "100"}, "at most 15 read replicas"},
		{[]string{"--replicas", "-1"}, "--replicas -1: want a number of read replicas from 0 to 15"},
		{[]string{"--replicas", "two"}, `invalid argument "two" for "--replicas"`},
	} {
		dir := filepath.Join(t.TempDir(), "c")
		c := upCmd()
		c.SetArgs(append(tc.args, "--dir", dir))
		c.SetOut(io.Discard)
		c.SetErr(io.Discard)
		c.SilenceUsage = true
		err := c.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("up %q: %v, want an error saying %q", tc.args, err, tc.want)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("up %q made its directory before refusing: %v", tc.args, err)
		}
	}
	for _, n := range []int{0, 1, 15} {
		if err := checkReplicas(n); err != nil {
			t.Errorf("--replicas %d refused: %v", n, err)
		}
	}
}

// Replicas go round the AZs from the one after the writer's.
func TestReplicaIDsAndAZs(t *testing.T) {
	var got []string
	for i := 1; i <= 7; i++ {
		got = append(got, replicaID(i)+"/"+replicaAZ(i))
	}
	if s := strings.Join(got, " "); s != "r1/b r2/c r3/a r4/b r5/c r6/a r7/b" {
		t.Fatalf("replicas and AZs: %s", s)
	}
}

func freshAddrs(t *testing.T, base int) map[string]string {
	t.Helper()
	addrs, resumed, err := plannedAddrs(t.TempDir(), base)
	if err != nil || resumed {
		t.Fatalf("plannedAddrs: %v, resumed %v", err, resumed)
	}
	return addrs
}

// A new cluster's replicas take the ports after the writer's, and the
// router's two endpoints the next two; a resumed one keeps what it had,
// and what it did not have goes after its highest port.
func TestInstanceAddrs(t *testing.T) {
	addrs := freshAddrs(t, 18000)
	added, err := planInstanceAddrs(addrs, 3)
	if err != nil || !added {
		t.Fatalf("planInstanceAddrs: %v, added %v", err, added)
	}
	want := map[string]int{"c1": 18000, "s1": 18001, "s6": 18006, "writer": 18007, "r1": 18008, "r2": 18009, "r3": 18010, "router": 18011, "router-reader": 18012,
		"c2": 18030, "c3": 18031, "c1-etcd-client": 18032, "c3-etcd-client": 18034, "c1-etcd-peer": 18035, "c3-etcd-peer": 18037}
	for id, port := range want {
		if a := addrs[id]; a != fmt.Sprintf("127.0.0.1:%d", port) {
			t.Errorf("%s at %q, want port %d", id, a, port)
		}
	}
	if len(addrs) != 21 {
		t.Errorf("addresses: %v", addrs)
	}
	// Resumed with the same, or fewer: nothing moves.
	for _, n := range []int{3, 1, 0} {
		if added, err := planInstanceAddrs(addrs, n); err != nil || added {
			t.Fatalf("replicas %d: added %v, %v", n, added, err)
		}
	}
	// More: after the highest port, the router's included.
	if added, err := planInstanceAddrs(addrs, 5); err != nil || !added || addrs["r4"] != "127.0.0.1:18013" || addrs["r5"] != "127.0.0.1:18014" || addrs["router"] != "127.0.0.1:18011" {
		t.Fatalf("grown to 5 replicas: added %v, %v: %v", added, err, addrs)
	}
	// A cluster made before replicas (control, storage and the writer):
	// the same layout as a new one.
	old := freshAddrs(t, 18100)
	if _, err := planInstanceAddrs(old, 1); err != nil || old["r1"] != "127.0.0.1:18108" || old["router"] != "127.0.0.1:18109" || old["router-reader"] != "127.0.0.1:18110" {
		t.Fatalf("old cluster: %v: %v", err, old)
	}
	// The most a cluster's instances can take stays below the control
	// planes' ports: 15 replicas and the router, grown one at a time.
	grown := freshAddrs(t, 18200)
	for n := 0; n <= 15; n++ {
		if _, err := planInstanceAddrs(grown, n); err != nil {
			t.Fatal(err)
		}
	}
	for id, a := range grown {
		_, port, _ := net.SplitHostPort(a)
		if p, _ := strconv.Atoi(port); p >= 18230 && !strings.HasPrefix(id, "c") {
			t.Errorf("%s at %s, among the control planes' ports", id, a)
		}
	}
	// No ports left.
	high := freshAddrs(t, 65490)
	high["writer"] = "127.0.0.1:65530"
	if _, err := planInstanceAddrs(high, 15); err == nil || !strings.Contains(err.Error(), "no port left for r6") {
		t.Fatalf("past port 65535: %v", err)
	}
	if _, _, err := plannedAddrs(t.TempDir(), 65535-36); err == nil || !strings.Contains(err.Error(), "want a port from 1 to 65498") {
		t.Fatalf("base port too high: %v", err)
	}
}

// A cluster made when up ran one control plane keeps running one: its
// addresses.json names "control", and the others' ports grow from it.
func TestLegacyControlAddrs(t *testing.T) {
	addrs := map[string]string{"control": "127.0.0.1:18000", "writer": "127.0.0.1:18007"}
	for i := 1; i <= 6; i++ {
		addrs[fmt.Sprintf("s%d", i)] = fmt.Sprintf("127.0.0.1:%d", 18000+i)
	}
	if k := controlKeys(addrs); len(k) != 1 || k[0] != "control" {
		t.Fatalf("control keys %v", k)
	}
	if l := controlAddrList(addrs); l != "127.0.0.1:18000" {
		t.Fatalf("control list %q", l)
	}
	if _, err := planInstanceAddrs(addrs, 1); err != nil || addrs["r1"] != "127.0.0.1:18008" {
		t.Fatalf("%v %v", err, addrs)
	}
	fresh := freshAddrs(t, 18000)
	if l := controlAddrList(fresh); l != "127.0.0.1:18000,127.0.0.1:18030,127.0.0.1:18031" {
		t.Fatalf("control list %q", l)
	}
	specs := controlSpecs(fresh)
	if len(specs) != 3 || specs[1].ID != "c2" || specs[1].AZ != "b" || specs[1].ClientAddr != "127.0.0.1:18033" || specs[1].PeerAddr != "127.0.0.1:18036" {
		t.Fatalf("specs %+v", specs)
	}
	if ic := cluster.InitialCluster(specs); ic != "c1=http://127.0.0.1:18035,c2=http://127.0.0.1:18036,c3=http://127.0.0.1:18037" {
		t.Fatalf("initial cluster %q", ic)
	}
}

// A resumed cluster runs as many replicas as it last did, unless --replicas
// is given, and says so when that is not the default.
func TestReplicaCountOnResume(t *testing.T) {
	dir := t.TempDir()
	// No up.json: the flag, on a new cluster or an old one.
	for _, resumed := range []bool{false, true} {
		if n, last, err := replicaCount(dir, 1, false, resumed); err != nil || n != 1 || last != -1 {
			t.Fatalf("no up.json, resumed %v: %d, last %d, %v", resumed, n, last, err)
		}
	}
	if err := keepSettings(dir, upSettings{Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		flag          int
		set, resumed  bool
		want          int
		note, notNote string
	}{
		{flag: 1, resumed: true, want: 3, note: "3 replica(s), as the cluster last ran (--replicas N changes that)"},
		{flag: 5, set: true, resumed: true, want: 5, note: "--replicas 5: r4, r5 more than the cluster last ran"},
		{flag: 1, set: true, resumed: true, want: 1, note: "--replicas 1: r2, r3 of the last run not started"},
		{flag: 0, set: true, resumed: true, want: 0, note: "--replicas 0: r1..r3 of the last run not started"},
		{flag: 3, set: true, resumed: true, want: 3},
		// A directory with up.json but no addresses.json starts anew.
		{flag: 1, resumed: false, want: 1, notNote: "as the cluster last ran"},
	} {
		n, last, err := replicaCount(dir, tc.flag, tc.set, tc.resumed)
		if wantLast := map[bool]int{true: 3, false: -1}[tc.resumed]; err != nil || n != tc.want || last != wantLast {
			t.Errorf("%+v: %d replicas, last %d, %v; want %d", tc, n, last, err, tc.want)
		}
		note := replicasNote(n, last, tc.set)
		if tc.resumed && !tc.set && n != last {
			t.Errorf("%+v: runs %d, last %d", tc, n, last)
		}
		if tc.note != "" && !strings.Contains(note, tc.note) || tc.note == "" && tc.notNote == "" && note != "" || tc.notNote != "" && strings.Contains(note, tc.notNote) {
			t.Errorf("%+v: note %q, want %q", tc, note, tc.note)
		}
	}
	// The default number, as last time: nothing to say.
	if note := replicasNote(1, 1, false); note != "" {
		t.Errorf("resumed with the default: note %q", note)
	}
	if err := os.WriteFile(filepath.Join(dir, upSettingsName), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := replicaCount(dir, 1, false, true); err == nil || !strings.Contains(err.Error(), "up.json is corrupt") {
		t.Fatalf("corrupt up.json: %v", err)
	}
}

// up lists each replica with its AZ, and the router's two endpoints as
// URLs to copy, one a line.
func TestPrintUp(t *testing.T) {
	comps := []cluster.Component{
		{Role: "control", ID: "c1", AZ: "a", Addr: "127.0.0.1:7100", Log: "/d/c1.log"},
		{Role: "storage", ID: "s1", AZ: "a", Addr: "127.0.0.1:7101", Log: "/d/s1.log"},
		{Role: "writer", ID: "writer", AZ: "a", Addr: "127.0.0.1:7107", Log: "/d/writer.log"},
		{Role: "replica", ID: "r1", AZ: "b", Addr: "127.0.0.1:7108", Log: "/d/r1.log"},
		{Role: "replica", ID: "r10", AZ: "a", Addr: "127.0.0.1:7117", Log: "/d/r10.log"},
		{Role: "router", ID: "router", Addr: "127.0.0.1:7118", ClusterEndpoint: "127.0.0.1:7118", ReaderEndpoint: "127.0.0.1:7119", Log: "/d/router.log"},
	}
	var b strings.Builder
	printUp(&b, "/d", comps)
	out := b.String()
	for _, want := range []string{
		"  control plane c1  127.0.0.1:7100         AZ a  log /d/c1.log\n",
		"  writer (SQL)      http://127.0.0.1:7107  AZ a  log /d/writer.log\n",
		"  replica r1        http://127.0.0.1:7108  AZ b  log /d/r1.log\n",
		"  replica r10       http://127.0.0.1:7117  AZ a  log /d/r10.log\n",
		"  cluster endpoint  http://127.0.0.1:7118",
		"  reader endpoint   http://127.0.0.1:7119",
		"  cluster file      /d/cluster.json\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("printed\n%s\nwithout %q", out, want)
		}
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasSuffix(l, " ") {
			t.Errorf("line %q ends in spaces", l)
		}
	}
}
