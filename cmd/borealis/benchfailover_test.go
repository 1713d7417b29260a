package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Flags are checked before anything starts.
func TestBenchFailoverFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--rounds", "-1"}, "--rounds -1: want 0 or more"},
		{[]string{"--rounds", "0", "--planned-rounds", "0"}, "nothing to measure"},
		{[]string{"--clients", "0"}, "--clients 0: want at least 1"},
		{[]string{"--base-port", "65530"}, "--base-port 65530: want a port from 1 to"},
		{[]string{"--base-port", "7500", "--cluster", "x/cluster.json"}, "--base-port is for the benchmark's own cluster"},
		{[]string{"extra"}, "takes no arguments"},
	} {
		cmd := benchFailoverCmd()
		cmd.SetArgs(tc.args)
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
}

// The longest gap counts the events just outside the window, and the
// window's ends where there are none.
func TestBenchFailoverLongestGap(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms ...int) []time.Time {
		var out []time.Time
		for _, m := range ms {
			out = append(out, t0.Add(time.Duration(m)*time.Millisecond))
		}
		return out
	}
	for _, tc := range []struct {
		events   []time.Time
		from, to int
		want     time.Duration
	}{
		{at(0, 100, 900, 1000), 200, 800, 800 * time.Millisecond},   // 100 -> 900 spans the window
		{at(1000, 0, 900, 100), 200, 800, 800 * time.Millisecond},   // in any order
		{at(0, 10, 20, 700, 710), 100, 705, 680 * time.Millisecond}, // 20 -> 700
		{nil, 100, 400, 300 * time.Millisecond},                     // none: the window
		{at(500), 100, 400, 400 * time.Millisecond},                 // from stands in before
		{at(50), 100, 400, 350 * time.Millisecond},                  // to stands in after
	} {
		got := longestGap(tc.events, t0.Add(time.Duration(tc.from)*time.Millisecond), t0.Add(time.Duration(tc.to)*time.Millisecond))
		if got != tc.want {
			t.Errorf("events %v, window %d..%d ms: gap %s, want %s", tc.events, tc.from, tc.to, got, tc.want)
		}
	}
}

// A short real run on its own cluster (`up`, real processes, SIGKILL):
// the JSON has the shape, and every acknowledged insert is there.
// No timing is checked.
func TestBenchFailoverRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole cluster and kills its writer")
	}
	bin := filepath.Join(t.TempDir(), "borealis")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	dir, err := os.MkdirTemp("", "bfo-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "bench", "failover", "--json", "--rounds", "2", "--planned-rounds", "1",
		"--between", "200ms", "--base-port", "7500", "--dir", dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench failover: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	var got map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("%v: %s", err, stdout.String())
	}
	has := func(obj any, what string, keys ...string) {
		t.Helper()
		m, ok := obj.(map[string]any)
		if !ok {
			t.Fatalf("%s is %T, want an object", what, obj)
		}
		for _, k := range keys {
			if _, ok := m[k].(float64); !ok {
				t.Errorf("%s.%s is %v, want a number", what, k, m[k])
			}
		}
	}
	has(got, "report", "lost_acknowledged", "acknowledged")
	has(got["unplanned"], "unplanned", "first_write_p50_s", "first_write_max_s")
	has(got["planned"], "planned", "pause_p50_ms", "pause_max_ms")
	rounds, _ := got["rounds"].([]any)
	if len(rounds) != 3 {
		t.Fatalf("%d rounds, want 3: %s", len(rounds), stdout.String())
	}
	for i, r := range rounds {
		kind := r.(map[string]any)["kind"]
		switch {
		case i < 2 && kind == "unplanned":
			has(r, "rounds[]", "detect_s", "promote_s", "first_write_s", "read_gap_s", "lost_acknowledged")
		case i == 2 && kind == "planned":
			has(r, "rounds[]", "pause_ms", "lost_acknowledged")
		default:
			t.Errorf("round %d is %v", i+1, kind)
		}
	}
	var rep failoverBenchReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.LostAcknowledged != 0 || rep.Acknowledged == 0 {
		t.Errorf("%d acknowledged inserts, %d of them lost", rep.Acknowledged, rep.LostAcknowledged)
	}
	for _, r := range rep.Rounds {
		if r.LostAcknowledged != 0 || r.From == "" || r.To == "" || (r.From == r.To && !r.TookBack) {
			t.Errorf("round %+v", r)
		}
	}
	// Its cluster's directory is removed, its processes with it.
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}
