package e2e

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// switchoverJSON is the part of `borealis failover --json` the test reads.
type switchoverJSON struct {
	Round       uint64 `json:"round"`
	Kind        string `json:"kind"`
	From        string `json:"from"`
	State       string `json:"state"`
	Target      string `json:"target"`
	Epoch       uint64 `json:"epoch"`
	TookMS      int64  `json:"took_ms"`
	DrainMS     uint32 `json:"drain_ms"`
	HandoverVDL uint64 `json:"handover_vdl"`
	VDL         uint64 `json:"vdl"`
	Warm        bool   `json:"warm"`
}

// failoverCLI runs `borealis failover` on the cluster's control plane with
// args, and returns its stdout, stderr and exit code.
func (fc *failoverCluster) failoverCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"failover", "--control", fc.cl.ControlAddr, "--volume", "main"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("borealis failover %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// switchover runs `borealis failover --json` with args under the load,
// checks that it moved the writer role from `from` (to `to`, if set), and
// waits for the router and every other instance to follow. It logs the
// write pause: the longest gap between acknowledged writes from its start
// until 50 more were acknowledged.
func (fc *failoverCluster) switchover(t *testing.T, l *txLoad, from, to string, args ...string) switchoverJSON {
	t.Helper()
	before := fc.mustWriterState(t)
	if before.Holder != from {
		t.Fatalf("the writer is %s, want %s", before.Holder, from)
	}
	start := time.Now()
	out, errOut, code := fc.failoverCLI(t, append(args, "--json")...)
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("borealis failover %v exited %d: %s%s", args, code, out, errOut)
	}
	var j switchoverJSON
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatalf("borealis failover %v --json printed %q: %v", args, out, err)
	}
	if j.Kind != "planned" || j.State != "done" || j.From != from || j.Target == from || (to != "" && j.Target != to) || j.Epoch <= before.Epoch {
		t.Fatalf("borealis failover %v from %s at epoch %d: %+v", args, from, before.Epoch, j)
	}
	st := fc.waitPromoted(t, from, before.Epoch, 10*time.Second)
	if st.Holder != j.Target || st.Epoch != j.Epoch {
		t.Fatalf("failover says %s at epoch %d, the control plane %s at %d", j.Target, j.Epoch, st.Holder, st.Epoch)
	}
	l.waitAcks(t, 50, 20*time.Second, "after the switchover to "+j.Target)
	end := time.Now()
	// From the command's start: the drain cannot begin before it.
	gap, at := l.longestGap(start, end)
	t.Logf("switchover %s -> %s (round %d, epoch %d): the command took %s, the control plane %d ms (drain %d ms, handed over at VDL %d, warm %v); the write pause (the longest gap between acknowledged writes, from the command's start to %s later): %s, from %s after the start",
		from, j.Target, j.Round, j.Epoch, took.Round(time.Millisecond), j.TookMS, j.DrainMS, j.HandoverVDL, j.Warm,
		end.Sub(start).Round(time.Millisecond), gap.Round(time.Millisecond), at.Sub(start).Round(time.Millisecond))
	fc.waitFollowers(t, j.Target, 20*time.Second)
	return j
}

// TestFailoverSwitchover moves the writer role with the real `borealis
// failover` under a load of two-table transactions through the cluster
// endpoint: to r2 by name, then to the control plane's choice. No
// acknowledged commit is lost; the write pause is measured and logged. A
// target that is no live replica, or is the writer already, is refused
// with an error that says so, and changes nothing.
func TestFailoverSwitchover(t *testing.T) {
	fc := startFailoverCluster(t, replicaClusterOpts{})
	txLoadTables(t, fc.clusterEP)
	l := startTxLoad(t, fc.clusterEP, 4)
	l.waitAcks(t, 50, 20*time.Second, "before the switchover")

	fc.switchover(t, l, "writer", "r2", "--to", "r2")
	j := fc.switchover(t, l, "r2", "")
	writer := j.Target

	before := fc.mustWriterState(t)
	for _, c := range []struct{ to, want string }{
		{"nope", "nope is not a live replica"},
		{writer, writer + " is the writer"},
	} {
		out, errOut, code := fc.failoverCLI(t, "--to", c.to)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Fatalf("borealis failover --to %s: exit %d, stdout %q, stderr %q; want a failure saying %q", c.to, code, out, errOut, c.want)
		}
		t.Logf("borealis failover --to %s: exit %d: %s", c.to, code, strings.TrimSpace(errOut))
	}
	after := fc.mustWriterState(t)
	if after.Holder != before.Holder || after.Epoch != before.Epoch || after.Failover.GetRound() != before.Failover.GetRound() {
		t.Fatalf("refused switchovers changed the writer state: %s at epoch %d, round %d, then %s at %d, round %d",
			before.Holder, before.Epoch, before.Failover.GetRound(), after.Holder, after.Epoch, after.Failover.GetRound())
	}
	l.waitAcks(t, 20, 20*time.Second, "after the refused switchovers")
	l.check(t, fc.clusterEP)
}
