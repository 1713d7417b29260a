package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/sqlclient"
)

// Flags are checked before anything starts: each bad value is refused with
// what to give instead.
func TestBenchReplicaFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--replicas", "0"}, "--replicas 0: want 1 to 15"},
		{[]string{"--replicas", "16"}, "--replicas 16: want 1 to 15"},
		{[]string{"--duration", "10ms"}, "--duration 10ms: want at least 100ms"},
		{[]string{"--rates", "500,-1"}, "--rates: -1 is not a rate"},
		{[]string{"--rates", "500,500"}, "--rates: 500 is given twice"},
		{[]string{"--clients", "0"}, "--clients 0: want at least 1"},
		{[]string{"--base-port", "65530"}, "--base-port 65530: want a port from 1 to"},
		{[]string{"--base-port", "20000", "--cluster", "x/cluster.json"}, "--base-port is for the benchmark's own cluster"},
		{[]string{"--pprof-dir", "p", "--cluster", "x/cluster.json"}, "--pprof-dir needs the benchmark's own cluster"},
		{[]string{"extra"}, "takes no arguments"},
	} {
		cmd := benchReplicaCmd()
		cmd.SetArgs(tc.args)
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		err := cmd.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
	// The flags, with their defaults.
	f := benchReplicaCmd().Flags()
	for name, def := range map[string]string{"replicas": "2", "cluster": "", "duration": "8s", "json": "false", "keep": "false", "rates": "[500,2000,0]", "clients": "32"} {
		fl := f.Lookup(name)
		if fl == nil {
			t.Errorf("no --%s", name)
			continue
		}
		if fl.DefValue != def {
			t.Errorf("--%s defaults to %s, want %s", name, fl.DefValue, def)
		}
	}
	o := replicaBenchOptions{replicas: 2, duration: time.Second, rates: []int{500, 2000, 0}, clients: 32, basePort: 20000}
	if err := o.validate(); err != nil {
		t.Errorf("valid options: %v", err)
	}
}

// The measurements go from the most replicas down: every replica is
// started before the benchmark writes, and only stopped after.
func TestReplicaSteps(t *testing.T) {
	type st = replicaStep
	for _, tc := range []struct {
		n    int
		want []replicaStep
	}{
		{2, []st{{replicas: 15, insert: true}, {replicas: 2, lag: true, insert: true, read: true}, {replicas: 1, read: true}, {replicas: 0, insert: true}}},
		{1, []st{{replicas: 15, insert: true}, {replicas: 2, read: true}, {replicas: 1, lag: true, insert: true, read: true}, {replicas: 0, insert: true}}},
		{5, []st{{replicas: 15, insert: true}, {replicas: 5, lag: true, insert: true, read: true}, {replicas: 2, read: true}, {replicas: 1, read: true}, {replicas: 0, insert: true}}},
		{15, []st{{replicas: 15, lag: true, insert: true, read: true}, {replicas: 2, read: true}, {replicas: 1, read: true}, {replicas: 0, insert: true}}},
	} {
		if got := replicaSteps(tc.n); !slices.Equal(got, tc.want) {
			t.Errorf("replicaSteps(%d) = %+v, want %+v", tc.n, got, tc.want)
		}
	}
}

func TestLagOfAndProcStat(t *testing.T) {
	ack := time.UnixMicro(1_000_000_000)
	ret := ack.Add(5 * time.Millisecond)
	for _, tc := range []struct {
		at   int64
		want time.Duration
	}{
		{ack.UnixMicro() + 1500, 1500 * time.Microsecond},
		{ack.UnixMicro() - 300, 0}, // applied before the reply reached the client
		{0, 5 * time.Millisecond},  // no applied_at: until the wait returned
	} {
		if got := lagOf(ack, tc.at, ret); got != tc.want {
			t.Errorf("lagOf(applied_at %d) = %s, want %s", tc.at, got, tc.want)
		}
	}
	if _, err := procTicks(os.Getpid()); err != nil {
		t.Errorf("procTicks of this process: %v", err)
	}
	t0 := time.Unix(1000, 0)
	a := cpuSample{procs: map[int]procCPU{1: {"writer", 100}, 2: {"storage", 50}, 3: {"replica", 10}}, busy: 1000, at: t0}
	b := cpuSample{procs: map[int]procCPU{1: {"writer", 110}, 2: {"storage", 70}, 4: {"replica", 5}}, busy: 1000 + 40, at: t0.Add(time.Second)}
	c := cpuPer(a, b, 100)
	// 10 and 20 ticks of 10 ms over 100 txns; pid 3 ended, pid 4 began.
	if c.TotalUs != 3000 || c.ByRole["writer"] != 1000 || c.ByRole["storage"] != 2000 || len(c.ByRole) != 2 {
		t.Errorf("cpuPer = %+v", c)
	}
	// 40 ticks busy in a second of runtime.NumCPU() CPUs, 10 not ours.
	cpus := float64(runtime.NumCPU())
	if want := 40 / cpus; math.Abs(c.MachineBusyPct-want) > 1e-9 || math.Abs(c.OtherPct-10/cpus) > 1e-9 {
		t.Errorf("machine busy %.3f%%, other %.3f%%; want %.3f%% and %.3f%%", c.MachineBusyPct, c.OtherPct, want, 10/cpus)
	}
}

// The JSON report has the shape.
func TestBenchReplicaJSONShape(t *testing.T) {
	rep := replicaBenchReport{
		Replicas: 2,
		Levels: []replicaLagLevel{
			{TargetWritesPerS: 2000, WritesPerS: 1990, Lag: []replicaLag{{Replica: "r1", P50Ms: 0.5, P99Ms: 3, MaxMs: 9, BytesPerCommit: 170}, {Replica: "r2"}}},
			{TargetWritesPerS: 0, WritesPerS: 2600, Lag: []replicaLag{{Replica: "r1"}, {Replica: "r2"}}},
		},
		WriterInsertTPS: []replicaInsert{{Replicas: 0, TPS: 3600}, {Replicas: 2, TPS: 3420}, {Replicas: 15, TPS: 1200}},
		ReaderQPS:       []replicaRead{{Replicas: 1, QPS: 7000}, {Replicas: 2, QPS: 7100}},
	}
	rep.InsertTPSRatio = insertRatios(rep.WriterInsertTPS)
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Replicas *int `json:"replicas"`
		Levels   []struct {
			Target     *int     `json:"target_writes_per_s"`
			WritesPerS *float64 `json:"writes_per_s"`
			Lag        []struct {
				Replica        *string  `json:"replica"`
				P50            *float64 `json:"p50_ms"`
				P99            *float64 `json:"p99_ms"`
				Max            *float64 `json:"max_ms"`
				BytesPerCommit *float64 `json:"bytes_per_commit"`
			} `json:"lag"`
		} `json:"levels"`
		Insert []struct {
			Replicas *int     `json:"replicas"`
			TPS      *float64 `json:"tps"`
		} `json:"writer_insert_tps"`
		Ratio []struct {
			Replicas int     `json:"replicas"`
			Ratio    float64 `json:"ratio"`
		} `json:"insert_tps_ratio"`
		Reader []struct {
			Replicas *int     `json:"replicas"`
			QPS      *float64 `json:"qps"`
		} `json:"reader_qps"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Replicas == nil || *got.Replicas != 2 || len(got.Levels) != 2 || len(got.Insert) != 3 || len(got.Reader) != 2 {
		t.Fatalf("report %s", b)
	}
	for _, l := range got.Levels {
		if l.Target == nil || l.WritesPerS == nil || len(l.Lag) != 2 {
			t.Fatalf("level without its fields: %s", b)
		}
		for _, r := range l.Lag {
			if r.Replica == nil || r.P50 == nil || r.P99 == nil || r.Max == nil || r.BytesPerCommit == nil {
				t.Fatalf("lag without its fields: %s", b)
			}
		}
	}
	if *got.Levels[1].Target != 0 {
		t.Errorf("as fast as possible has target %d, want 0", *got.Levels[1].Target)
	}
	for _, r := range got.Insert {
		if r.Replicas == nil || r.TPS == nil {
			t.Fatalf("insert run without its fields: %s", b)
		}
	}
	for _, r := range got.Reader {
		if r.Replicas == nil || r.QPS == nil {
			t.Fatalf("reader run without its fields: %s", b)
		}
	}
	if len(got.Ratio) != 2 || got.Ratio[0].Replicas != 2 || got.Ratio[0].Ratio != 0.95 || got.Ratio[1].Replicas != 15 {
		t.Errorf("insert_tps_ratio %+v", got.Ratio)
	}
	// The human form names the verdicts.
	var out bytes.Buffer
	printReplicaBench(&out, &rep)
	for _, want := range []string{"with 2 replicas: 0.95x that with 0 (-5.0%); target at most 10% loss with 2 replicas: met", "lag at 2000 writes/s on r1: p50 0.500 ms, p99 3.000 ms (target p50 <= 2 ms, p99 <= 20 ms: met)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// A lag level against a fake writer and replica: open-loop pacing meets
// the rate, every commit is waited for on the replica with its LSN, and
// the lag is the replica's applied_at minus the reply's arrival.
func TestReplicaLagLevel(t *testing.T) {
	var lsn, commits atomic.Uint64
	const streamBytes = 150
	writer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/execute":
			var body executeBody
			if err := json.NewDecoder(r.Body).Decode(&body); err != nil || len(body.Statements) != 1 || !strings.HasPrefix(body.Statements[0].SQL, "UPDATE t SET v = ?") || !body.Transaction {
				http.Error(w, "bad execute", http.StatusBadRequest)
				return
			}
			commits.Add(1)
			fmt.Fprintf(w, `{"results":[{"rows_affected":1}],"lsn":%d}`, lsn.Add(2))
		case "/v1/health":
			c := commits.Load()
			fmt.Fprintf(w, `{"role":"writer","ready":true,"stats":{"commits":%d},"replicas":[{"id":"r1","bytes_sent":%d,"mtrs_sent":%d}]}`, c, 1000+streamBytes*c, c)
		}
	}))
	defer writer.Close()
	var mu sync.Mutex
	waited := map[uint64]bool{}
	replica := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			LSN       uint64 `json:"lsn"`
			TimeoutMS int64  `json:"timeout_ms"`
		}
		if r.URL.Path != "/v1/wait" || json.NewDecoder(r.Body).Decode(&req) != nil || req.TimeoutMS <= 0 {
			http.Error(w, "bad wait", http.StatusBadRequest)
			return
		}
		mu.Lock()
		waited[req.LSN] = true
		mu.Unlock()
		// Applied 3 ms from now: after the reply reached the client.
		fmt.Fprintf(w, `{"vdl":%d,"applied_at_unix_us":%d}`, req.LSN, time.Now().Add(3*time.Millisecond).UnixMicro())
	}))
	defer replica.Close()
	c := &sqlclient.Client{Endpoint: writer.URL}
	w := &lagWorkload{hc: &http.Client{}, writer: writer.URL, table: "t", rows: 100, replicas: []benchReplica{{ID: "r1", Endpoint: replica.URL}}}
	ctx := context.Background()
	h0, err := c.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const rate, d = 400, time.Second
	res, err := w.level(ctx, rate, rateClients(rate, 32), d)
	if err != nil {
		t.Fatal(err)
	}
	h1, err := c.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lvl := res.summary(rate, rateClients(rate, 32), w.replicas, h0, h1)
	if lvl.Commits < rate*9/10 || lvl.Commits > rate || lvl.WritesPerS < rate*0.85 || lvl.WritesPerS > rate*1.05 {
		t.Errorf("%d commits, %.0f writes/s; want about %d", lvl.Commits, lvl.WritesPerS, rate)
	}
	mu.Lock()
	nw := len(waited)
	mu.Unlock()
	l := lvl.Lag[0]
	if l.Replica != "r1" || l.Waits != lvl.Commits || nw != lvl.Commits {
		t.Errorf("%d waits (%d LSNs) for %d commits", l.Waits, nw, lvl.Commits)
	}
	if l.P50Ms < 2 || l.P50Ms > 4 || l.MaxMs < l.P99Ms || l.P99Ms < l.P50Ms {
		t.Errorf("lag p50 %.3f p99 %.3f max %.3f ms; want about 3", l.P50Ms, l.P99Ms, l.MaxMs)
	}
	if l.BytesPerCommit != streamBytes || l.MTRsPerCommit != 1 {
		t.Errorf("%.1f bytes and %.2f MTRs per commit, want %d and 1", l.BytesPerCommit, l.MTRsPerCommit, streamBytes)
	}
}

// One short real run (about 25 s on two cores): the benchmark's own
// cluster, every phase, and the JSON report. Skipped with -short.
func TestBenchReplicaRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole cluster with 15 replicas")
	}
	bin := filepath.Join(t.TempDir(), "borealis")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "bench", "replica", "--json", "--duration", "1s", "--rates", "300,0", "--dir", t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench replica: %v\n%s", err, stderr.String())
	}
	var rep replicaBenchReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, stdout.String())
	}
	if rep.Replicas != 2 || len(rep.Levels) != 2 || rep.Levels[0].TargetWritesPerS != 300 || rep.Levels[1].TargetWritesPerS != 0 {
		t.Fatalf("report %s", stdout.String())
	}
	for _, l := range rep.Levels {
		if l.WritesPerS <= 0 || len(l.Lag) != 2 || l.Lag[0].Replica != "r1" || l.Lag[1].Replica != "r2" {
			t.Errorf("level %+v", l)
		}
		for _, r := range l.Lag {
			if r.Waits != l.Commits || r.WaitsTimedOut != 0 || r.BytesPerCommit <= 0 {
				t.Errorf("replica %+v at %d writes/s (%d commits)", r, l.TargetWritesPerS, l.Commits)
			}
		}
	}
	var counts []int
	for _, r := range rep.WriterInsertTPS {
		counts = append(counts, r.Replicas)
		if r.TPS <= 0 || r.CPU.TotalUs <= 0 || r.CPU.ByRole["writer"] <= 0 {
			t.Errorf("insert run %+v", r)
		}
	}
	if !slices.Equal(counts, []int{0, 2, 15}) || len(rep.InsertTPSRatio) != 2 {
		t.Errorf("insert runs %+v, ratios %+v", rep.WriterInsertTPS, rep.InsertTPSRatio)
	}
	counts = nil
	for _, r := range rep.ReaderQPS {
		counts = append(counts, r.Replicas)
		// Exactly the replicas attached answer, never the writer.
		if r.QPS <= 0 || len(r.ServedBy) != r.Replicas || r.ServedBy["writer"] != 0 {
			t.Errorf("reader run %+v", r)
		}
	}
	if !slices.Equal(counts, []int{1, 2}) {
		t.Errorf("reader runs %+v", rep.ReaderQPS)
	}
}
