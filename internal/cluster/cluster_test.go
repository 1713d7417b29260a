package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeBinary writes a shell script that stands in for the borealis binary:
// whatever command it is given, it runs script.
func fakeBinary(t *testing.T, script string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fake-borealis")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// healthServer answers /v1/health on a loopback port as a writer that is
// not ready, with status as what it waits for.
func healthServer(t *testing.T, status string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, `{"role":"writer","ready":false,"status":%q}`, status)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// TestRestartThatWaits: a component restarted with StartAgain has its new
// pid at once, before it is ready; WaitReady passes on what it says it
// waits for, and when it does not become ready in time says so, with that
// reason, while the process still runs.
func TestRestartThatWaits(t *testing.T) {
	const why = "recovering at epoch 3: waiting for a write quorum of PG 0 to acknowledge the truncation"
	addr := healthServer(t, why)
	c := New(fakeBinary(t, `echo "level=INFO msg=started"; exec sleep 600`), t.TempDir())
	c.ControlAddr = "127.0.0.1:1"
	c.ReadyWithin = 500 * time.Millisecond
	t.Cleanup(func() { c.Stop(time.Second) })
	ctx := context.Background()
	// The first start, as `up` makes it, is not ready within its wait either.
	err := c.StartDB(ctx, "writer", "writer", "main", addr)
	var nr *NotReadyError
	if !errors.As(err, &nr) || nr.Exited || !strings.Contains(err.Error(), why) {
		t.Fatalf("StartDB of a writer that waits: %v", err)
	}
	first := nr.Pid
	if err := c.Signal("writer", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	comp, err := c.StartAgain("writer")
	if err != nil {
		t.Fatal(err)
	}
	if comp.Pid == 0 || comp.Pid == first || syscall.Kill(comp.Pid, 0) != nil {
		t.Fatalf("StartAgain gave pid %d (the first was %d)", comp.Pid, first)
	}
	if i := slices.IndexFunc(c.Components(), func(x Component) bool { return x.ID == "writer" }); c.Components()[i].Pid != comp.Pid {
		t.Fatalf("Components lists the writer with pid %d, not the new %d", c.Components()[i].Pid, comp.Pid)
	}
	if _, err := c.StartAgain("writer"); err == nil {
		t.Fatal("a second StartAgain of a running component started another")
	}
	var mu sync.Mutex
	var told []string
	err = c.WaitReady(ctx, "writer", 0, func(s string) {
		mu.Lock()
		told = append(told, s)
		mu.Unlock()
	})
	if !errors.As(err, &nr) || nr.Exited || nr.Pid != comp.Pid || !strings.Contains(nr.Err.Error(), why) {
		t.Fatalf("WaitReady of a writer that waits: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(told) != 1 || told[0] != why {
		t.Fatalf("progress was told %q; want once %q", told, why)
	}
	if !c.Running("writer") {
		t.Fatal("the writer does not run after a wait that timed out")
	}
}

// TestStartThatExits: a process that exits before it is ready is reported
// as such, with its exit status and the whole lines it wrote to its log,
// not those of an earlier process of the same component.
func TestStartThatExits(t *testing.T) {
	dir := t.TempDir()
	c := New(fakeBinary(t, `echo 'level=INFO msg="taking the writer lease"'; echo 'level=ERROR msg="volume main: no such volume"'; exit 3`), dir)
	c.ControlAddr = "127.0.0.1:1"
	if err := os.WriteFile(filepath.Join(dir, "writer.log"), []byte("level=INFO msg=\"an earlier process\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	err = c.StartDB(context.Background(), "writer", "writer", "main", addr)
	var nr *NotReadyError
	if !errors.As(err, &nr) || !nr.Exited || !errors.Is(err, errExited) {
		t.Fatalf("StartDB of a writer that exits: %v", err)
	}
	want := []string{`level=INFO msg="taking the writer lease"`, `level=ERROR msg="volume main: no such volume"`}
	if !slices.Equal(nr.LogTail, want) {
		t.Fatalf("log tail %q, want %q", nr.LogTail, want)
	}
	msg := err.Error()
	for _, s := range []string{"exited before it became ready (exit status 3)", "\n  " + want[0] + "\n  " + want[1]} {
		if !strings.Contains(msg, s) {
			t.Fatalf("%q lacks %q", msg, s)
		}
	}
}

// readyServer answers /v1/health as a replica: ready, or attached to no
// stream yet.
func readyServer(t *testing.T, ready bool) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ready {
			fmt.Fprint(w, `{"role":"replica","ready":true,"status":"ready","replica":{"stream":"streaming","writer":"127.0.0.1:7107"}}`)
			return
		}
		fmt.Fprint(w, `{"role":"replica","ready":false,"status":"ready: serving reads at applied VDL; connecting","replica":{"stream":"connecting"}}`)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// StartReplicas starts every replica at once, lists them in their order,
// and says of each whether it became ready; one that has not attached to
// the writer's stream says so.
func TestStartReplicas(t *testing.T) {
	c := New(fakeBinary(t, `exec sleep 600`), t.TempDir())
	c.ControlAddr = "127.0.0.1:1"
	t.Cleanup(func() { c.Stop(time.Second) })
	specs := []ReplicaSpec{
		{ID: "r1", AZ: "b", Addr: readyServer(t, true)},
		{ID: "r2", AZ: "c", Addr: readyServer(t, false)},
		{ID: "r3", AZ: "a", Addr: readyServer(t, true)},
	}
	start := time.Now()
	errs, err := c.StartReplicas(context.Background(), "main", specs, 700*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// In parallel: one wait, not one per replica that is not ready.
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("StartReplicas took %s", took)
	}
	var nr *NotReadyError
	if errs[0] != nil || errs[2] != nil || !errors.As(errs[1], &nr) || nr.Exited || !strings.Contains(errs[1].Error(), "waiting to attach to the writer's redo stream (stream connecting; writer: none registered yet)") {
		t.Fatalf("errs %v", errs)
	}
	var got []string
	for _, comp := range c.Components() {
		got = append(got, comp.ID+"/"+comp.Role+"/"+comp.AZ)
		if comp.Pid == 0 || !c.Running(comp.ID) {
			t.Fatalf("%s does not run: %+v", comp.ID, comp)
		}
	}
	if s := strings.Join(got, " "); s != "r1/replica/b r2/replica/c r3/replica/a" {
		t.Fatalf("components %s", s)
	}
	if _, err := c.StartReplicas(context.Background(), "main", specs[:1], time.Second); err != nil {
		t.Fatal(err)
	}
	if errs, _ := c.StartReplicas(context.Background(), "main", specs[:1], time.Second); errs[0] == nil || !strings.Contains(errs[0].Error(), "r1 already exists") {
		t.Fatalf("a second r1: %v", errs)
	}
}

// Stop stops the router and the replicas first, then the writer, then
// storage, and the control plane last.
func TestStopOrder(t *testing.T) {
	dir := t.TempDir()
	order := filepath.Join(dir, "order")
	// The role is the first argument, or for `db` the one after --role.
	c := New(fakeBinary(t, `role=$1; [ "$1" = db ] && role=$3
trap 'echo $role >> `+order+`; exit 0' TERM
while true; do sleep 0.02; done`), dir)
	c.ControlAddr = "127.0.0.1:1"
	c.ReadyWithin = 100 * time.Millisecond
	ctx := context.Background()
	free := func() string {
		a, err := FreeAddr()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	// None becomes ready (nothing answers); each keeps running.
	c.StartControl(ctx, free())
	c.StartStorage(ctx, "s1", "a", free())
	c.StartDB(ctx, "writer", "writer", "main", free())
	c.StartReplica(ctx, "r1", "b", "main", free())
	c.StartRouter(ctx, "router", "main", free(), free())
	if len(c.Components()) != 5 {
		t.Fatalf("components %+v", c.Components())
	}
	c.Stop(5 * time.Second)
	b, err := os.ReadFile(order)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(b))
	if len(lines) != 5 {
		t.Fatalf("stopped %q", lines)
	}
	first := []string{lines[0], lines[1]}
	slices.Sort(first)
	if !slices.Equal(first, []string{"replica", "router"}) || !slices.Equal(lines[2:], []string{"writer", "storage", "control"}) {
		t.Fatalf("stopped in the order %q", lines)
	}
}

// Any 3*N storage nodes are N per AZ: s1..s6 two per AZ as before, then
// the spares round the AZs.
func TestStorageAZ(t *testing.T) {
	var got []string
	for i := range 12 {
		got = append(got, StorageAZ(i))
	}
	if want := "a a b b c c a b c a b c"; strings.Join(got, " ") != want {
		t.Fatalf("AZs of s1..s12: %s, want %s", strings.Join(got, " "), want)
	}
	c := New("borealis", t.TempDir())
	if f := c.controlFlags(); f != nil {
		t.Fatalf("control flags without a repair delay: %v", f)
	}
	c.RepairAfter = 3 * time.Second
	if f := strings.Join(c.controlFlags(), " "); f != "--repair-after 3s" {
		t.Fatalf("control flags: %s", f)
	}
}
