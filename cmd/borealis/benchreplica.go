package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/procstat"
	"github.com/borealis-db/borealis/internal/router"
	"github.com/borealis-db/borealis/internal/sqlclient"
)

// The shape of `bench replica`.
const (
	// maxBenchReplicas is the most replicas a volume has (DESIGN: up to 15),
	// and the largest count the writer's insert throughput is measured at.
	maxBenchReplicas = 15
	// benchReplicaRows is the size of the table the UPDATEs hit: about 300
	// pages, which every replica caches whole, so that it applies the redo
	// of every commit instead of dropping it.
	benchReplicaRows = 10000
	// benchReplicaWaitMS is the timeout_ms of each POST /v1/wait (the
	// replica caps it at 10 times its --min-lsn-wait, 10 s by default).
	benchReplicaWaitMS = 10000
	// benchReplicaVolume is the volume of the benchmark's own cluster.
	benchReplicaVolume = "bench"
)

// benchReplicaAZs: r1 in b, r2 in c, r3 in a, ...: the writer is in none
// (it takes no --az), so the first two replicas sit in AZs of their own.
var benchReplicaAZs = []string{"b", "c", "a"}

// Port offsets from --base-port of the benchmark's own cluster. Each
// replica slot i has portReplica+i and portReplicaMetrics+i.
const (
	portControl        = 0
	portStorage        = 1 // s1..s6: 1..6
	portWriter         = 7
	portWriterStream   = 8
	portRouter         = 9
	portReader         = 10
	portReplica        = 11 // .. 25
	portWriterMetrics  = 26
	portReplicaMetrics = 27 // .. 41
	portsUsed          = portReplicaMetrics + maxBenchReplicas
)

type replicaBenchOptions struct {
	replicas    int
	clusterFile string
	dir         string
	duration    time.Duration
	rates       []int
	clients     int
	basePort    int
	pprofDir    string
	asJSON      bool
	keep        bool
}

func (o *replicaBenchOptions) validate() error {
	if o.replicas < 1 || o.replicas > maxBenchReplicas {
		return fmt.Errorf("--replicas %d: want 1 to %d (a volume has at most %d read replicas)", o.replicas, maxBenchReplicas, maxBenchReplicas)
	}
	if o.duration < 100*time.Millisecond {
		return fmt.Errorf("--duration %s: want at least 100ms per level", o.duration)
	}
	if len(o.rates) == 0 {
		return errors.New("--rates: give at least one level (writes/s, or 0 for as fast as the writer goes)")
	}
	seen := map[int]bool{}
	for _, r := range o.rates {
		if r < 0 {
			return fmt.Errorf("--rates: %d is not a rate; give writes/s, or 0 for as fast as the writer goes", r)
		}
		if seen[r] {
			return fmt.Errorf("--rates: %d is given twice", r)
		}
		seen[r] = true
	}
	if o.clients < 1 {
		return fmt.Errorf("--clients %d: want at least 1", o.clients)
	}
	if o.basePort != 0 {
		if o.clusterFile != "" {
			return errors.New("--base-port is for the benchmark's own cluster; --cluster names one that runs already")
		}
		if o.basePort < 1 || o.basePort > 65535-portsUsed {
			return fmt.Errorf("--base-port %d: want a port from 1 to %d (the benchmark's cluster takes %d ports from it on)", o.basePort, 65535-portsUsed, portsUsed)
		}
	}
	if o.pprofDir != "" && o.clusterFile != "" {
		return errors.New("--pprof-dir needs the benchmark's own cluster, whose database instances it starts with --metrics; --cluster names one that runs already")
	}
	return nil
}

// replicaBenchReport is what `bench replica --json` prints.
type replicaBenchReport struct {
	// Replicas is N: the replicas attached during the lag levels.
	Replicas  int     `json:"replicas"`
	DurationS float64 `json:"duration_s_per_level"`
	Writer    string  `json:"writer"`
	// ReaderEndpoint is the router's reader endpoint.
	ReaderEndpoint string `json:"reader_endpoint"`
	// Table is what the UPDATEs and SELECTs hit (TableRows rows);
	// InsertTable what the INSERTs fill.
	Table           string            `json:"table"`
	TableRows       int               `json:"table_rows"`
	InsertTable     string            `json:"insert_table"`
	Levels          []replicaLagLevel `json:"levels"`
	WriterInsertTPS []replicaInsert   `json:"writer_insert_tps"`
	// InsertTPSRatio is the writer's insert tps with each count of
	// replicas over that with none (the target: at least 0.9 with 2).
	InsertTPSRatio []replicaRatio `json:"insert_tps_ratio"`
	ReaderQPS      []replicaRead  `json:"reader_qps"`
	// Skipped says what was not measured, and why.
	Skipped []string `json:"skipped,omitempty"`
	// PprofDir holds CPU profiles of the database instances (--pprof-dir).
	PprofDir string `json:"pprof_dir,omitempty"`
	// TablesDropped: the tables were dropped from --cluster's volume.
	TablesDropped bool `json:"tables_dropped,omitempty"`
}

type replicaLagLevel struct {
	// TargetWritesPerS is 0 for as fast as the writer goes.
	TargetWritesPerS int     `json:"target_writes_per_s"`
	WritesPerS       float64 `json:"writes_per_s"`
	Commits          int     `json:"commits"`
	// Clients: concurrent UPDATE clients (for a fixed rate, enough to meet
	// it; each takes the next tick of the schedule).
	Clients int `json:"clients"`
	// MissedTicks: ticks of the schedule dropped because every client was
	// busy for a second's worth of them, or left when the level ended.
	MissedTicks int          `json:"missed_ticks"`
	CommitP50Ms float64      `json:"commit_p50_ms"`
	CommitP99Ms float64      `json:"commit_p99_ms"`
	Lag         []replicaLag `json:"lag"`
	CPU         cpuPerTxn    `json:"cpu"`
}

type replicaLag struct {
	Replica string  `json:"replica"`
	P50Ms   float64 `json:"p50_ms"`
	P99Ms   float64 `json:"p99_ms"`
	MaxMs   float64 `json:"max_ms"`
	// BytesPerCommit: what the writer sent this replica on its redo stream
	// over the level, per commit the writer counted over the level.
	BytesPerCommit float64 `json:"bytes_per_commit"`
	MTRsPerCommit  float64 `json:"mtrs_per_commit"`
	Waits          int     `json:"waits"`
	// WaitsTimedOut: waits answered lagging after benchReplicaWaitMS; they
	// count in the percentiles with the time they took.
	WaitsTimedOut int `json:"waits_timed_out,omitempty"`
	// NoAppliedAt: waits whose reply had no applied_at_unix_us; their lag
	// is until the wait returned.
	NoAppliedAt int `json:"no_applied_at,omitempty"`
}

type replicaInsert struct {
	Replicas int       `json:"replicas"`
	Clients  int       `json:"clients"`
	Txns     int       `json:"txns"`
	TPS      float64   `json:"tps"`
	P50Ms    float64   `json:"p50_ms"`
	P99Ms    float64   `json:"p99_ms"`
	CPU      cpuPerTxn `json:"cpu"`
}

type replicaRatio struct {
	Replicas int     `json:"replicas"`
	Ratio    float64 `json:"ratio"`
}

type replicaRead struct {
	Replicas int     `json:"replicas"`
	Clients  int     `json:"clients"`
	Queries  int     `json:"queries"`
	QPS      float64 `json:"qps"`
	P50Ms    float64 `json:"p50_ms"`
	P99Ms    float64 `json:"p99_ms"`
	// ServedBy counts the answers by the instance the router named.
	ServedBy map[string]int `json:"served_by"`
	CPU      cpuPerTxn      `json:"cpu"`
}

// cpuPerTxn is the CPU time (user + system, from /proc) that the processes
// of the cluster and the benchmark itself spent per transaction or query.
type cpuPerTxn struct {
	TotalUs float64 `json:"us_per_txn"`
	// ByRole: control, storage, writer, replica, router, bench.
	ByRole map[string]float64 `json:"us_per_txn_by_role"`
	// MachineBusyPct is how busy the machine's CPUs were over the run (from
	// /proc/stat), and OtherPct the part of it that none of the processes
	// above took: other work on the machine, which skews the figures.
	MachineBusyPct float64 `json:"machine_busy_pct"`
	OtherPct       float64 `json:"other_pct"`
}

func benchReplicaCmd() *cobra.Command {
	o := replicaBenchOptions{}
	cmd := &cobra.Command{
		Use:   "replica",
		Short: "Replica lag under fixed write rates, and what replicas cost the writer and give the reader endpoint",
		Long: `Measure read replicas. Without --cluster it starts its own cluster as
separate processes in a temporary directory: the control plane, 6 storage
nodes, the writer, --replicas replicas (r1 in AZ b, r2 in c, r3 in a, ...)
and the router.

Replica lag: single-row UPDATEs of random keys of a table of 10000 rows
(small enough that every replica caches it whole, and applies every commit
rather than dropping it), at each of --rates writes/s in turn (open-loop:
a schedule of ticks, taken by as many clients as it needs), 0 meaning as
fast as the writer goes with --clients clients. Right after each commit's
reply arrives, a POST /v1/wait for its LSN goes to every replica; the lag is
when the replica applied it (its applied_at_unix_us) minus when the reply
arrived, floored at 0. For each level it prints the achieved writes/s, each
replica's lag p50, p99 and max, and the bytes the writer sent each replica
per commit (its /v1/health over the level).

Also the writer's one-row INSERT throughput at --clients clients with 0, N
and 15 replicas attached, with the CPU per transaction of every process
from /proc (and how busy the machine was, by others too), and the ratio to
0 replicas; and point SELECTs through the router's reader endpoint with 1, 2
and N replicas, once the router lists exactly those as candidates.

It starts all 15 replicas before it writes anything and measures from the
most replicas attached down, stopping replicas in between (a replica started
on a volume that already holds data fails to open). Before each run it waits
for the cluster to settle.

With --cluster, it uses the running cluster's writer, replicas and router
(starting a router if there is none), starts replicas of its own when it
needs more, and never stops the cluster's own: counts below them are
skipped. It drops its tables at the end unless --keep is given. Progress
goes to stderr.`,
		Args: noArgs(""),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			rep, err := runReplicaBench(cmd.Context(), o, cmd.ErrOrStderr())
			if rep == nil {
				return err
			}
			out := cmd.OutOrStdout()
			if o.asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if eerr := enc.Encode(rep); eerr != nil {
					return eerr
				}
				return err
			}
			printReplicaBench(out, rep)
			return err
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.replicas, "replicas", 2, "replicas attached during the lag levels (N), 1 to 15")
	f.StringVar(&o.clusterFile, "cluster", "", "cluster.json of a running cluster to use instead of starting one")
	f.StringVar(&o.dir, "dir", "", "parent directory for the temporary cluster (default: the system temp dir)")
	f.DurationVar(&o.duration, "duration", 8*time.Second, "how long each level and each run lasts")
	f.IntSliceVar(&o.rates, "rates", []int{500, 2000, 0}, "UPDATE rates of the lag levels, in writes/s; 0 is as fast as the writer goes")
	f.IntVar(&o.clients, "clients", 32, "clients of the as-fast-as-possible level, the INSERT runs and the SELECT runs")
	f.IntVar(&o.basePort, "base-port", 0, fmt.Sprintf("loopback ports of the benchmark's own cluster: this one and the next %d (default: ports the system picks)", portsUsed-1))
	f.StringVar(&o.pprofDir, "pprof-dir", "", "start the database instances with --metrics and write a CPU profile of the writer, of each replica and of the benchmark client itself for every level and run to this directory")
	f.BoolVar(&o.asJSON, "json", false, "print the figures as one JSON object")
	f.BoolVar(&o.keep, "keep", false, "keep what the benchmark made: its tables in --cluster's volume, or its own cluster's directory")
	return cmd
}

// benchReplica is a replica the benchmark knows of.
type benchReplica struct {
	ID       string
	AZ       string
	Endpoint string // http://host:port
	Metrics  string // host:port serving pprof, or ""
	// Ours: the benchmark started it, and may stop it.
	Ours bool
}

// replicaEnv is the cluster under test, and the processes the benchmark
// starts in it.
type replicaEnv struct {
	cl       *cluster.Cluster // what the benchmark starts (all of it, without --cluster)
	volume   string
	writer   string // http://host:port
	reader   string // http://host:port of the router's reader endpoint
	metrics  string // the writer's pprof host:port, or ""
	basePort int
	pprof    bool
	// foreign are the processes of --cluster's cluster.json.
	foreign []cluster.Component
	// replicas are attached now, the cluster's own first.
	replicas []benchReplica
	slots    int // replica slots used so far (ports, ids)
	taken    map[string]bool
	progress io.Writer
	hc       *http.Client
}

func (e *replicaEnv) addr(offset int) (string, error) {
	if e.basePort == 0 {
		return cluster.FreeAddr()
	}
	return fmt.Sprintf("127.0.0.1:%d", e.basePort+offset), nil
}

func runReplicaBench(ctx context.Context, o replicaBenchOptions, progress io.Writer) (rep *replicaBenchReport, err error) {
	_, tmp, removeTmp, err := benchDirs(o.dir, o.clusterFile, "bench-replica-")
	if err != nil {
		return nil, err
	}
	if tmp == "" && o.clusterFile != "" {
		// Replicas (or a router) of its own go in a directory of their own.
		if tmp, err = os.MkdirTemp(o.dir, "bench-replica-"); err != nil {
			return nil, err
		}
		removeTmp = func() { os.RemoveAll(tmp) }
	}
	defer keepOrRemove(o.keep, tmp, removeTmp, progress)
	if o.pprofDir != "" {
		if err := os.MkdirAll(o.pprofDir, 0o755); err != nil {
			return nil, err
		}
	}
	bin, err := os.Executable()
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute, DisableCompression: true}
	defer tr.CloseIdleConnections()
	env := &replicaEnv{
		cl: cluster.New(bin, tmp), basePort: o.basePort, pprof: o.pprofDir != "",
		taken: map[string]bool{}, progress: progress, hc: &http.Client{Transport: tr},
	}
	defer func() {
		fmt.Fprintln(progress, "stopping the processes the benchmark started")
		env.cl.Stop(5 * time.Second)
	}()
	if o.clusterFile != "" {
		err = env.useCluster(ctx, o.clusterFile)
	} else {
		err = env.startOwn(ctx, tmp)
	}
	if err != nil {
		return nil, err
	}
	rep = &replicaBenchReport{Replicas: o.replicas, DurationS: o.duration.Seconds(), Writer: env.writer, ReaderEndpoint: env.reader, PprofDir: o.pprofDir}
	if n := len(env.replicas); n > o.replicas {
		rep.Replicas = n
		rep.Skipped = append(rep.Skipped, fmt.Sprintf("the lag levels ran with the cluster's %d replicas, not --replicas %d: the benchmark does not stop a cluster's own replicas", n, o.replicas))
	}
	c := &sqlclient.Client{Endpoint: env.writer, HTTP: env.hc}
	// Every replica the benchmark needs starts now, before it writes (see
	// replicaSteps).
	top := replicaSteps(rep.Replicas)[0].replicas
	if err := env.setReplicas(ctx, top); err != nil {
		return nil, err
	}

	// Tables: one to UPDATE and SELECT, one to INSERT into.
	table, err := freshBenchTable(ctx, c)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "creating table %s with %d rows\n", table, benchReplicaRows)
	if _, err := c.Execute(ctx, []sqlclient.Statement{{SQL: "CREATE TABLE " + table + "(k INTEGER PRIMARY KEY, v TEXT)"}}, false); err != nil {
		return nil, fmt.Errorf("create table %s: %w", table, err)
	}
	rep.Table, rep.TableRows = table, benchReplicaRows
	dropAtEnd := o.clusterFile != "" && !o.keep
	var made []string
	made = append(made, table)
	if dropAtEnd {
		defer func() {
			derr := dropTables(c, made)
			if derr != nil {
				if err == nil {
					err = derr
				} else {
					fmt.Fprintln(progress, "borealis:", derr)
				}
				return
			}
			fmt.Fprintf(progress, "dropped tables %s\n", strings.Join(made, " "))
			if rep != nil {
				rep.TablesDropped = true
			}
		}()
	}
	w := &lagWorkload{hc: env.hc, writer: env.writer, table: table, rows: benchReplicaRows}
	lastLSN, err := w.populate(ctx)
	if err != nil {
		return nil, err
	}
	insTable, err := freshBenchTable(ctx, c)
	if err != nil {
		return nil, err
	}
	if _, err := c.Execute(ctx, []sqlclient.Statement{{SQL: "CREATE TABLE " + insTable + "(k INTEGER PRIMARY KEY, v TEXT)"}}, false); err != nil {
		return nil, fmt.Errorf("create table %s: %w", insTable, err)
	}
	made = append(made, insTable)
	rep.InsertTable = insTable
	var lastKey atomic.Int64
	insert := sqlclient.Statement{SQL: "INSERT INTO " + insTable + "(k, v) VALUES (?, ?)"}
	insertOne := func(ctx context.Context, rng *rand.Rand, _ int) error {
		st := insert
		st.Params = []any{lastKey.Add(1), benchText(rng)}
		_, err := c.Execute(ctx, []sqlclient.Statement{st}, true)
		return err
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		if err := insertOne(ctx, rng, 0); err != nil {
			return nil, fmt.Errorf("warm-up insert: %w", err)
		}
	}

	insertRun := func(n int) error {
		fmt.Fprintf(progress, "INSERT: %d clients for %s with %d replicas attached\n", o.clients, o.duration, n)
		stopProf := env.profile(ctx, o, fmt.Sprintf("insert-%dreplicas", n))
		cpu0 := env.cpuSample()
		lat, elapsed, err := runSQLLevel(ctx, o.clients, o.duration, insertOne)
		cpu1 := env.cpuSample()
		stopProf()
		if err != nil {
			return fmt.Errorf("INSERT with %d replicas: %w", n, err)
		}
		rep.WriterInsertTPS = append(rep.WriterInsertTPS, replicaInsert{
			Replicas: n, Clients: o.clients, Txns: len(lat), TPS: float64(len(lat)) / elapsed.Seconds(),
			P50Ms: ms(percentile(lat, 50)), P99Ms: ms(percentile(lat, 99)), CPU: cpuPer(cpu0, cpu1, len(lat)),
		})
		return nil
	}

	// The lag levels, with N replicas whose caches hold the table.
	lagLevels := func() error {
		w.replicas = slices.Clone(env.replicas)
		fmt.Fprintln(progress, "UPDATE warm-up: 500 writes/s for 1s")
		if _, err := w.level(ctx, 500, 0, time.Second); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		for _, rate := range o.rates {
			clients := rateClients(rate, o.clients)
			what := rateLabel(rate)
			fmt.Fprintf(progress, "UPDATE: %s (%d clients) for %s, waiting on %d replicas for every commit\n", what, clients, o.duration, len(w.replicas))
			env.settle(ctx)
			h0, err := c.Health(ctx)
			if err != nil {
				return err
			}
			stopProf := env.profile(ctx, o, fmt.Sprintf("lag-%s", rateName(rate)))
			cpu0 := env.cpuSample()
			res, err := w.level(ctx, rate, clients, o.duration)
			cpu1 := env.cpuSample()
			stopProf()
			if err != nil {
				return fmt.Errorf("UPDATE at %s: %w", what, err)
			}
			h1, err := c.Health(ctx)
			if err != nil {
				return err
			}
			lvl := res.summary(rate, clients, w.replicas, h0, h1)
			lvl.CPU = cpuPer(cpu0, cpu1, res.commits)
			rep.Levels = append(rep.Levels, lvl)
		}
		return nil
	}

	keys := int64(benchReplicaRows)
	sel := "SELECT v FROM " + table + " WHERE k = ?"
	readRun := func(n int) error {
		fmt.Fprintf(progress, "SELECT through the reader endpoint: %d clients for %s with %d replicas\n", o.clients, o.duration, n)
		var mu sync.Mutex
		served := map[string]int{}
		body := func(k int64) []byte {
			b, _ := json.Marshal(struct {
				SQL    string `json:"sql"`
				Params []any  `json:"params"`
			}{sel, []any{k}})
			return b
		}
		selectOne := func(ctx context.Context, rng *rand.Rand, _ int) error {
			k := 1 + rng.Int64N(keys)
			var reply struct {
				Rows [][]json.RawMessage `json:"rows"`
			}
			hdr, err := postJSON(ctx, env.hc, env.reader+"/v1/query", body(k), &reply)
			if err != nil {
				return err
			}
			if len(reply.Rows) != 1 {
				return fmt.Errorf("key %d: %d rows, want 1", k, len(reply.Rows))
			}
			id := hdr.Get(router.InstanceHeader)
			mu.Lock()
			served[id]++
			mu.Unlock()
			return nil
		}
		cpu0 := env.cpuSample()
		lat, elapsed, err := runSQLLevel(ctx, o.clients, o.duration, selectOne)
		cpu1 := env.cpuSample()
		if err != nil {
			return fmt.Errorf("SELECT with %d replicas: %w", n, err)
		}
		rep.ReaderQPS = append(rep.ReaderQPS, replicaRead{
			Replicas: n, Clients: o.clients, Queries: len(lat), QPS: float64(len(lat)) / elapsed.Seconds(),
			P50Ms: ms(percentile(lat, 50)), P99Ms: ms(percentile(lat, 99)), ServedBy: served, CPU: cpuPer(cpu0, cpu1, len(lat)),
		})
		return nil
	}

	// From the most replicas down, stopping replicas in between (see
	// replicaSteps).
	for _, s := range replicaSteps(rep.Replicas) {
		if err := env.setReplicas(ctx, s.replicas); err != nil {
			var skip *skipError
			if !errors.As(err, &skip) {
				return rep, err
			}
			rep.Skipped = append(rep.Skipped, fmt.Sprintf("%s with %d replicas: %s", s.what(), s.replicas, skip.why))
			continue
		}
		// The INSERTs first, before the UPDATE levels leave storage
		// background work to do; and each run on a settled cluster.
		if s.insert {
			env.settle(ctx)
			if err := insertRun(s.replicas); err != nil {
				return rep, err
			}
		}
		if s.lag || s.read {
			if err := env.warm(ctx, table, lastLSN); err != nil {
				return rep, err
			}
		}
		if s.lag {
			if err := lagLevels(); err != nil {
				return rep, err
			}
		}
		if s.read {
			env.settle(ctx)
			if err := readRun(s.replicas); err != nil {
				return rep, err
			}
		}
	}
	sort.Slice(rep.WriterInsertTPS, func(a, b int) bool { return rep.WriterInsertTPS[a].Replicas < rep.WriterInsertTPS[b].Replicas })
	sort.Slice(rep.ReaderQPS, func(a, b int) bool { return rep.ReaderQPS[a].Replicas < rep.ReaderQPS[b].Replicas })
	rep.InsertTPSRatio = insertRatios(rep.WriterInsertTPS)
	return rep, nil
}

// replicaStep is what the benchmark measures with a number of replicas
// attached.
type replicaStep struct {
	replicas          int
	lag, insert, read bool
}

func (s replicaStep) what() string {
	var w []string
	if s.lag {
		w = append(w, "the lag levels")
	}
	if s.insert {
		w = append(w, "writer INSERTs")
	}
	if s.read {
		w = append(w, "reader endpoint SELECTs")
	}
	return strings.Join(w, ", ")
}

// replicaSteps orders the measurements from the most replicas attached
// down to none: the lag levels with n, the writer's INSERTs with 15, n and
// 0, the reader endpoint's SELECTs with n, 2 and 1. Going down only stops
// replicas: a replica started on a volume that already holds data fails
// to start (its database opens at read point 0, below storage's GC
// horizon), so every replica is started before the benchmark writes.
func replicaSteps(n int) []replicaStep {
	byCount := map[int]*replicaStep{}
	step := func(c int) *replicaStep {
		if byCount[c] == nil {
			byCount[c] = &replicaStep{replicas: c}
		}
		return byCount[c]
	}
	step(n).lag = true
	for _, c := range insertCounts(n) {
		step(c).insert = true
	}
	for _, c := range readerCounts(n) {
		step(c).read = true
	}
	var out []replicaStep
	for _, s := range byCount {
		out = append(out, *s)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].replicas > out[b].replicas })
	return out
}

// insertCounts are the replica counts of the writer's INSERT runs: 0, N
// and 15.
func insertCounts(n int) []int { return uniqueSorted([]int{0, n, maxBenchReplicas}) }

// readerCounts are the replica counts of the reader endpoint's runs: 1, 2
// and N.
func readerCounts(n int) []int { return uniqueSorted([]int{1, 2, n}) }

func uniqueSorted(s []int) []int {
	slices.Sort(s)
	return slices.Compact(s)
}

// rateClients is how many clients a level runs: for a fixed rate, enough
// to meet it while commits take up to 40 ms (at least 8, at most 64); as
// fast as possible, clients.
func rateClients(rate, clients int) int {
	if rate == 0 {
		return clients
	}
	return min(64, max(8, rate/25))
}

func rateLabel(rate int) string {
	if rate == 0 {
		return "as fast as possible"
	}
	return fmt.Sprintf("%d writes/s", rate)
}

func rateName(rate int) string {
	if rate == 0 {
		return "max"
	}
	return strconv.Itoa(rate)
}

// insertRatios: each run's tps over the run with 0 replicas.
func insertRatios(runs []replicaInsert) []replicaRatio {
	var base float64
	for _, r := range runs {
		if r.Replicas == 0 {
			base = r.TPS
		}
	}
	if base == 0 {
		return nil
	}
	var out []replicaRatio
	for _, r := range runs {
		if r.Replicas > 0 {
			out = append(out, replicaRatio{Replicas: r.Replicas, Ratio: r.TPS / base})
		}
	}
	return out
}

func dropTables(c *sqlclient.Client, tables []string) error {
	// Its own deadline: the command's context may be what Ctrl-C cancelled.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, t := range tables {
		if _, err := c.Execute(ctx, []sqlclient.Statement{{SQL: "DROP TABLE " + t}}, false); err != nil {
			return fmt.Errorf("the benchmark could not drop its table %s: %w; drop it with borealis sql -e 'DROP TABLE %s'", t, err, t)
		}
	}
	return nil
}

// startOwn starts the control plane, 6 storage nodes, the writer and the
// router in dir.
func (e *replicaEnv) startOwn(ctx context.Context, dir string) error {
	start := time.Now()
	fmt.Fprintf(e.progress, "starting the control plane, 6 storage nodes, the writer and the router in %s\n", dir)
	ctlAddr, err := e.addr(portControl)
	if err != nil {
		return err
	}
	e.cl.ControlAddr = ctlAddr
	if err := e.cl.StartControl(ctx, ctlAddr); err != nil {
		return err
	}
	if e.basePort == 0 {
		if err := e.cl.StartStorageNodes(ctx, 6); err != nil {
			return err
		}
	} else {
		for i := range 6 {
			addr, _ := e.addr(portStorage + i)
			if err := e.cl.StartStorage(ctx, fmt.Sprintf("s%d", i+1), cluster.StorageAZs[i], addr); err != nil {
				return err
			}
		}
	}
	conn, err := control.Dial(ctlAddr)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctl := pb.NewControlClient(conn)
	if err := waitNodesUp(ctx, ctl, 6, 30*time.Second); err != nil {
		return err
	}
	if _, err := ensureVolume(ctx, ctl, benchReplicaVolume, 0); err != nil {
		return err
	}
	e.volume = benchReplicaVolume
	waddr, err := e.addr(portWriter)
	if err != nil {
		return err
	}
	saddr, err := e.addr(portWriterStream)
	if err != nil {
		return err
	}
	extra := []string{"--replication-listen", saddr}
	if e.pprof {
		if e.metrics, err = e.addr(portWriterMetrics); err != nil {
			return err
		}
		extra = append(extra, "--metrics", e.metrics)
	}
	if err := e.cl.StartDB(ctx, writerID, "writer", e.volume, waddr, extra...); err != nil {
		return err
	}
	e.writer = "http://" + waddr
	if err := e.startRouter(ctx); err != nil {
		return err
	}
	fmt.Fprintf(e.progress, "cluster ready in %s; writer at %s, reader endpoint at %s\n", since(start), e.writer, e.reader)
	return nil
}

func (e *replicaEnv) startRouter(ctx context.Context) error {
	caddr, err := e.addr(portRouter)
	if err != nil {
		return err
	}
	raddr, err := e.addr(portReader)
	if err != nil {
		return err
	}
	if err := e.cl.StartRouter(ctx, "router", e.volume, caddr, raddr); err != nil {
		return err
	}
	e.reader = "http://" + raddr
	return nil
}

// useCluster takes the writer, replicas and router of a running cluster.
func (e *replicaEnv) useCluster(ctx context.Context, path string) error {
	f, err := cluster.ReadFile(path)
	if err != nil {
		return err
	}
	e.foreign = f.Components
	ctlAddrs := f.ControlAddrs()
	if ctlAddrs == "" {
		return fmt.Errorf("%s lists no control plane", path)
	}
	e.cl.ControlAddr = ctlAddrs
	w, ok := f.Find("writer")
	if !ok {
		return fmt.Errorf("%s lists no writer: the cluster runs no database instance", path)
	}
	e.writer = "http://" + w.Addr
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	h, err := (&sqlclient.Client{Endpoint: e.writer, HTTP: e.hc}).Health(hctx)
	if err != nil {
		return fmt.Errorf("the writer at %s: %w", e.writer, err)
	}
	if !h.Ready || h.Role != "writer" {
		return fmt.Errorf("the instance at %s is not a ready writer (role %q, ready %v)", e.writer, h.Role, h.Ready)
	}
	e.volume = h.Volume
	for _, c := range f.Components {
		e.taken[c.ID] = true
		if c.Role != "replica" {
			continue
		}
		rh, err := (&sqlclient.Client{Endpoint: c.Addr, HTTP: e.hc}).Health(hctx)
		if err != nil {
			return fmt.Errorf("replica %s at %s: %w", c.ID, c.Addr, err)
		}
		if !rh.Ready {
			return fmt.Errorf("replica %s at %s is not ready: %s", c.ID, c.Addr, rh.Status)
		}
		e.replicas = append(e.replicas, benchReplica{ID: c.ID, AZ: c.AZ, Endpoint: "http://" + c.Addr})
	}
	if len(e.replicas) > maxBenchReplicas {
		return fmt.Errorf("%s lists %d replicas; a volume has at most %d", path, len(e.replicas), maxBenchReplicas)
	}
	if r, ok := f.Find("router"); ok && r.ReaderEndpoint != "" {
		e.reader = "http://" + r.ReaderEndpoint
	} else {
		fmt.Fprintf(e.progress, "%s lists no router: starting one\n", path)
		if err := e.startRouter(ctx); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.progress, "using %s: writer at %s, %d replicas, reader endpoint at %s\n", path, e.writer, len(e.replicas), e.reader)
	return nil
}

// skipError: a replica count the benchmark cannot reach on this cluster.
type skipError struct{ why string }

func (s *skipError) Error() string { return s.why }

// setReplicas attaches exactly n replicas, starting or stopping its own,
// and waits until the writer streams to each of them and the router's
// reader endpoint takes exactly them as candidates.
func (e *replicaEnv) setReplicas(ctx context.Context, n int) error {
	own := 0
	for _, r := range e.replicas {
		if !r.Ours {
			own++
		}
	}
	if n < own {
		return &skipError{fmt.Sprintf("the cluster runs %d replicas of its own, which the benchmark does not stop", own)}
	}
	for len(e.replicas) > n {
		r := e.replicas[len(e.replicas)-1]
		fmt.Fprintf(e.progress, "stopping replica %s\n", r.ID)
		if err := e.stopReplica(r.ID); err != nil {
			return err
		}
		e.replicas = e.replicas[:len(e.replicas)-1]
	}
	if add := n - len(e.replicas); add > 0 {
		start := time.Now()
		fmt.Fprintf(e.progress, "starting %d replicas\n", add)
		news := make([]benchReplica, add)
		for i := range news {
			r, extra, err := e.newReplica()
			if err != nil {
				return err
			}
			news[i] = r
			news[i].Metrics = extra
		}
		// A few at a time: each start compiles SQLite and fills a cache.
		sem := make(chan struct{}, 4)
		errs := make([]error, add)
		var wg sync.WaitGroup
		for i, r := range news {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				var extra []string
				if r.Metrics != "" {
					extra = []string{"--metrics", r.Metrics}
				}
				errs[i] = e.cl.StartReplica(ctx, r.ID, r.AZ, e.volume, strings.TrimPrefix(r.Endpoint, "http://"), extra...)
			}()
		}
		wg.Wait()
		e.replicas = append(e.replicas, news...)
		if err := errors.Join(errs...); err != nil {
			// A replica opens its database at read point 0 before it attaches
			// to the writer's stream: on a volume whose older page versions
			// storage has collected, that read fails.
			return fmt.Errorf("%w\n(a replica started on a volume that already holds data fails so: it reads page 1 at LSN 0, below storage's GC horizon)", err)
		}
		fmt.Fprintf(e.progress, "started %d replicas in %s\n", add, since(start))
	}
	return e.waitAttached(ctx)
}

// newReplica picks the next replica slot: its id, AZ and addresses.
func (e *replicaEnv) newReplica() (benchReplica, string, error) {
	slot := e.slots
	e.slots++
	if slot >= maxBenchReplicas {
		return benchReplica{}, "", fmt.Errorf("the benchmark would start a replica beyond %d", maxBenchReplicas)
	}
	prefix := "r"
	if len(e.foreign) > 0 {
		prefix = "bench-r" // a name of the cluster's own would replace its record
	}
	id := fmt.Sprintf("%s%d", prefix, slot+1)
	for i := slot + 2; e.taken[id]; i++ {
		id = fmt.Sprintf("%s%d", prefix, i)
	}
	e.taken[id] = true
	addr, err := e.addr(portReplica + slot)
	if err != nil {
		return benchReplica{}, "", err
	}
	var metrics string
	if e.pprof {
		if metrics, err = e.addr(portReplicaMetrics + slot); err != nil {
			return benchReplica{}, "", err
		}
	}
	return benchReplica{ID: id, AZ: benchReplicaAZs[slot%len(benchReplicaAZs)], Endpoint: "http://" + addr, Ours: true}, metrics, nil
}

func (e *replicaEnv) stopReplica(id string) error {
	if err := e.cl.Signal(id, syscall.SIGTERM); err != nil && e.cl.Running(id) {
		return err
	}
	deadline := time.Now().Add(15 * time.Second)
	for e.cl.Running(id) {
		if time.Now().After(deadline) {
			return e.cl.Kill(id)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// waitAttached waits until the writer's redo stream serves exactly the
// replicas attached, and the router's reader endpoint takes exactly them.
func (e *replicaEnv) waitAttached(ctx context.Context) error {
	want := make([]string, len(e.replicas))
	for i, r := range e.replicas {
		want[i] = r.ID
	}
	slices.Sort(want)
	wc := &sqlclient.Client{Endpoint: e.writer, HTTP: e.hc}
	deadline := time.Now().Add(60 * time.Second)
	var streamed, candidates []string
	for {
		streamed, candidates = nil, nil
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		h, err := wc.Health(hctx)
		if err == nil {
			for _, s := range h.Replicas {
				streamed = append(streamed, s.ID)
			}
		}
		var st router.Status
		if _, rerr := getJSON(hctx, e.hc, e.reader+"/v1/health", &st); rerr == nil {
			for _, r := range st.Replicas {
				if r.Candidate {
					candidates = append(candidates, r.ID)
				}
			}
		}
		cancel()
		slices.Sort(streamed)
		slices.Sort(candidates)
		if slices.Equal(streamed, want) && slices.Equal(candidates, want) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after 60s, the writer streams to [%s] and the router's reader endpoint takes [%s]; want [%s]",
				strings.Join(streamed, " "), strings.Join(candidates, " "), strings.Join(want, " "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// warm makes every attached replica read the whole table (once it has
// applied lsn), so that its cache holds every page the workload touches.
func (e *replicaEnv) warm(ctx context.Context, table string, lsn uint64) error {
	for _, r := range e.replicas {
		if _, err := waitLSN(ctx, e.hc, r.Endpoint, lsn); err != nil {
			return fmt.Errorf("replica %s: %w", r.ID, err)
		}
		rc := &sqlclient.Client{Endpoint: r.Endpoint, HTTP: e.hc}
		if _, err := rc.Query(ctx, "SELECT count(*), sum(length(v)) FROM "+table); err != nil {
			return fmt.Errorf("warm replica %s: %w", r.ID, err)
		}
	}
	return nil
}

// profile fetches a CPU profile of the writer and each replica while a
// level runs (with --pprof-dir), and returns what waits for them.
func (e *replicaEnv) profile(ctx context.Context, o replicaBenchOptions, name string) func() {
	if o.pprofDir == "" {
		return func() {}
	}
	targets := map[string]string{writerID: e.metrics}
	for _, r := range e.replicas {
		targets[r.ID] = r.Metrics
	}
	return fetchCPUProfiles(ctx, targets, o.pprofDir, name, o.duration, e.progress)
}

// Settling: before a run, the benchmark waits until its processes use
// less than settleCores of CPU over settleWindow (storage coalescing the
// records of the run before, say), for at most settleMax.
const (
	settleCores  = 0.3
	settleWindow = 500 * time.Millisecond
	settleMax    = 20 * time.Second
)

// settle waits until the cluster is quiet, or settleMax has passed.
func (e *replicaEnv) settle(ctx context.Context) {
	start := time.Now()
	a := e.cpuSample()
	for time.Since(start) < settleMax {
		select {
		case <-ctx.Done():
			return
		case <-time.After(settleWindow):
		}
		b := e.cpuSample()
		var ticks uint64
		for pid, pb := range b.procs {
			if pa, ok := a.procs[pid]; ok && pb.role != "bench" && pb.ticks >= pa.ticks {
				ticks += pb.ticks - pa.ticks
			}
		}
		if cores := float64(ticks) / clockTicks / b.at.Sub(a.at).Seconds(); cores < settleCores {
			if d := time.Since(start); d > 2*settleWindow {
				fmt.Fprintf(e.progress, "waited %s for the cluster to settle\n", d.Round(100*time.Millisecond))
			}
			return
		}
		a = b
	}
	fmt.Fprintf(e.progress, "the cluster did not settle (below %.1f cores) within %s; going on\n", settleCores, settleMax)
}

// cpuSample is the CPU time so far of each process of the cluster and of
// the benchmark, and of the whole machine.
type cpuSample struct {
	procs map[int]procCPU // by pid
	// busy is the machine's non-idle CPU time (clock ticks) when the
	// sample was taken, at.
	busy uint64
	at   time.Time
}

type procCPU struct {
	role  string
	ticks uint64
}

func (e *replicaEnv) cpuSample() cpuSample {
	s := cpuSample{procs: map[int]procCPU{}, at: time.Now()}
	if busy, err := procstat.MachineBusy(); err == nil {
		s.busy = uint64(busy / (time.Second / clockTicks))
	}
	add := func(role string, pid int) {
		if pid <= 0 {
			return
		}
		if t, err := procTicks(pid); err == nil {
			s.procs[pid] = procCPU{role, t}
		}
	}
	for _, c := range e.foreign {
		add(c.Role, c.Pid)
	}
	for _, c := range e.cl.Components() {
		if e.cl.Running(c.ID) {
			add(c.Role, c.Pid)
		}
	}
	add("bench", os.Getpid())
	return s
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times on Linux.
const clockTicks = 100

// procTicks is a process's user + system CPU time, in clock ticks.
func procTicks(pid int) (uint64, error) {
	u, err := procstat.Read(pid)
	return uint64(u.CPU / (time.Second / clockTicks)), err
}

// cpuPer is the CPU spent between two samples by the processes in both,
// per transaction, in µs, in all and by role; and how busy the machine
// was, by them and by others.
func cpuPer(a, b cpuSample, txns int) cpuPerTxn {
	out := cpuPerTxn{ByRole: map[string]float64{}}
	if txns == 0 {
		return out
	}
	var ours uint64
	for pid, pb := range b.procs {
		pa, ok := a.procs[pid]
		if !ok || pa.role != pb.role || pb.ticks < pa.ticks {
			continue
		}
		ours += pb.ticks - pa.ticks
		us := float64(pb.ticks-pa.ticks) * 1e6 / clockTicks / float64(txns)
		out.ByRole[pb.role] += us
		out.TotalUs += us
	}
	if wall := b.at.Sub(a.at).Seconds() * float64(runtime.NumCPU()) * clockTicks; wall > 0 && b.busy >= a.busy {
		busy := b.busy - a.busy
		out.MachineBusyPct = 100 * float64(busy) / wall
		if busy > ours {
			out.OtherPct = 100 * float64(busy-ours) / wall
		}
	}
	return out
}

// lagWorkload is the UPDATE workload of the lag levels.
type lagWorkload struct {
	hc       *http.Client
	writer   string
	table    string
	rows     int
	replicas []benchReplica
}

type executeBody struct {
	Statements  []sqlclient.Statement `json:"statements"`
	Transaction bool                  `json:"transaction"`
}

type executeReply struct {
	Results []struct {
		RowsAffected int64 `json:"rows_affected"`
	} `json:"results"`
	LSN uint64 `json:"lsn"`
}

// execute runs statements in one transaction on the writer, and returns
// its reply (with the commit's LSN) and when the reply arrived.
func (w *lagWorkload) execute(ctx context.Context, sts ...sqlclient.Statement) (executeReply, time.Time, error) {
	b, err := json.Marshal(executeBody{Statements: sts, Transaction: true})
	if err != nil {
		return executeReply{}, time.Time{}, err
	}
	var reply executeReply
	_, arrived, err := postJSONAt(ctx, w.hc, w.writer+"/v1/execute", b, &reply)
	if err != nil {
		return reply, arrived, err
	}
	if reply.LSN == 0 {
		return reply, arrived, errors.New("the writer's /v1/execute reply carries no lsn")
	}
	return reply, arrived, nil
}

// populate fills the table, a thousand rows a transaction, and returns the
// last commit's LSN.
func (w *lagWorkload) populate(ctx context.Context) (uint64, error) {
	const batch = 1000
	var lsn uint64
	for from := 1; from <= w.rows; from += batch {
		to := min(w.rows, from+batch-1)
		// 50 random bytes in hex: a 100-byte text, like bench sql's.
		r, _, err := w.execute(ctx, sqlclient.Statement{
			SQL:    "WITH RECURSIVE n(k) AS (SELECT ? UNION ALL SELECT k + 1 FROM n WHERE k < ?) INSERT INTO " + w.table + "(k, v) SELECT k, hex(randomblob(50)) FROM n",
			Params: []any{from, to},
		})
		if err != nil {
			return 0, fmt.Errorf("populate %s: %w", w.table, err)
		}
		lsn = r.LSN
	}
	return lsn, nil
}

// update changes the text of one random row, and returns its commit's LSN
// and when the writer's acknowledgement arrived.
func (w *lagWorkload) update(ctx context.Context, rng *rand.Rand) (uint64, time.Time, error) {
	k := 1 + rng.IntN(w.rows)
	r, ack, err := w.execute(ctx, sqlclient.Statement{SQL: "UPDATE " + w.table + " SET v = ? WHERE k = ?", Params: []any{benchText(rng), k}})
	if err != nil {
		return 0, ack, err
	}
	if len(r.Results) != 1 || r.Results[0].RowsAffected != 1 {
		return 0, ack, fmt.Errorf("UPDATE of key %d: %+v, want one row affected", k, r.Results)
	}
	return r.LSN, ack, nil
}

// lagRecorder collects one replica's lags over a level.
type lagRecorder struct {
	mu          sync.Mutex
	lags        []time.Duration
	timedOut    int
	noAppliedAt int
}

func (r *lagRecorder) add(d time.Duration, timedOut, noAppliedAt bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lags = append(r.lags, d)
	if timedOut {
		r.timedOut++
	}
	if noAppliedAt {
		r.noAppliedAt++
	}
}

// lagOf is a commit's lag on a replica: from ack (its reply arriving at
// the client) to the replica's applied_at (µs since the epoch, same clock),
// or to returned (the wait's reply) when the replica gave none; never
// below 0.
func lagOf(ack time.Time, appliedAtUS int64, returned time.Time) time.Duration {
	end := returned
	if appliedAtUS > 0 {
		end = time.UnixMicro(appliedAtUS)
	}
	return max(0, end.Sub(ack))
}

type lagResult struct {
	commits   int
	elapsed   time.Duration
	missed    int
	commitLat []time.Duration // sorted
	replicas  []*lagRecorder
}

// level runs UPDATEs at rate writes/s (0: as fast as clients go) for d,
// and for every commit waits on every replica. It returns once every wait
// has answered.
func (w *lagWorkload) level(ctx context.Context, rate, clients int, d time.Duration) (*lagResult, error) {
	if clients == 0 {
		clients = rateClients(rate, 32)
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := &lagResult{replicas: make([]*lagRecorder, len(w.replicas))}
	for i := range res.replicas {
		res.replicas[i] = &lagRecorder{}
	}
	var errMu sync.Mutex
	var firstErr error
	fail := func(err error) {
		errMu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		errMu.Unlock()
		cancel()
	}
	var missed atomic.Int64
	var waits sync.WaitGroup
	start := time.Now()
	stopAt := start.Add(d)
	var ticks chan struct{}
	if rate > 0 {
		// Open loop: the schedule runs whatever the clients do; a second's
		// worth of ticks waits for a free client, beyond that they drop.
		ticks = make(chan struct{}, rate)
		go func() {
			defer close(ticks)
			t := time.NewTimer(0)
			defer t.Stop()
			<-t.C
			for i := int64(0); ; i++ {
				at := start.Add(time.Duration(i * int64(time.Second) / int64(rate)))
				if !at.Before(stopAt) {
					return
				}
				if wait := time.Until(at); wait > 0 {
					t.Reset(wait)
					select {
					case <-t.C:
					case <-lctx.Done():
						return
					}
				}
				select {
				case ticks <- struct{}{}:
				default:
					missed.Add(1)
				}
			}
		}()
	}
	var latMu sync.Mutex
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), uint64(start.UnixNano())))
			mine := make([]time.Duration, 0, 1024)
			defer func() {
				latMu.Lock()
				res.commitLat = append(res.commitLat, mine...)
				latMu.Unlock()
			}()
			for lctx.Err() == nil {
				if ticks != nil {
					if _, ok := <-ticks; !ok {
						return
					}
					if !time.Now().Before(stopAt) {
						missed.Add(1)
						continue
					}
				} else if !time.Now().Before(stopAt) {
					return
				}
				t0 := time.Now()
				lsn, ack, err := w.update(lctx, rng)
				if err != nil {
					if lctx.Err() == nil {
						fail(err)
					}
					return
				}
				mine = append(mine, ack.Sub(t0))
				for j, r := range w.replicas {
					waits.Add(1)
					go func() {
						defer waits.Done()
						// The parent context: a wait outlives the level.
						reply, err := waitLSN(ctx, w.hc, r.Endpoint, lsn)
						returned := time.Now()
						switch {
						case err == nil:
							res.replicas[j].add(lagOf(ack, reply.AppliedAtUnixUS, returned), false, reply.AppliedAtUnixUS == 0)
						case sqlclient.Code(err) == "lagging":
							res.replicas[j].add(returned.Sub(ack), true, true)
						default:
							fail(fmt.Errorf("POST /v1/wait on replica %s: %w", r.ID, err))
						}
					}()
				}
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	waits.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res.commits = len(res.commitLat)
	res.missed = int(missed.Load())
	if res.commits == 0 {
		return nil, errors.New("no commit completed")
	}
	slices.Sort(res.commitLat)
	return res, nil
}

// summary is the level's report: writes/s, and each replica's lag and
// stream bytes from the writer's health before (h0) and after (h1).
func (res *lagResult) summary(rate, clients int, replicas []benchReplica, h0, h1 *sqlclient.Health) replicaLagLevel {
	lvl := replicaLagLevel{
		TargetWritesPerS: rate, WritesPerS: float64(res.commits) / res.elapsed.Seconds(), Commits: res.commits,
		Clients: clients, MissedTicks: res.missed,
		CommitP50Ms: ms(percentile(res.commitLat, 50)), CommitP99Ms: ms(percentile(res.commitLat, 99)),
	}
	commits := float64(h1.Stats.Commits - h0.Stats.Commits)
	sent := func(h *sqlclient.Health, id string) (sqlclient.StreamHealth, bool) {
		for _, s := range h.Replicas {
			if s.ID == id {
				return s, true
			}
		}
		return sqlclient.StreamHealth{}, false
	}
	for i, r := range replicas {
		rec := res.replicas[i]
		lags := slices.Clone(rec.lags)
		slices.Sort(lags)
		l := replicaLag{Replica: r.ID, Waits: len(lags), WaitsTimedOut: rec.timedOut, NoAppliedAt: rec.noAppliedAt}
		if len(lags) > 0 {
			l.P50Ms, l.P99Ms, l.MaxMs = ms(percentile(lags, 50)), ms(percentile(lags, 99)), ms(lags[len(lags)-1])
		}
		s0, ok0 := sent(h0, r.ID)
		s1, ok1 := sent(h1, r.ID)
		// A subscription that began over the level counts from zero.
		if !ok0 || s1.BytesSent < s0.BytesSent {
			s0 = sqlclient.StreamHealth{}
		}
		if ok1 && commits > 0 {
			l.BytesPerCommit = float64(s1.BytesSent-s0.BytesSent) / commits
			l.MTRsPerCommit = float64(s1.MTRsSent-s0.MTRsSent) / commits
		}
		lvl.Lag = append(lvl.Lag, l)
	}
	return lvl
}

type waitReply struct {
	VDL             uint64 `json:"vdl"`
	AppliedAtUnixUS int64  `json:"applied_at_unix_us"`
}

// waitLSN is POST /v1/wait on an instance.
func waitLSN(ctx context.Context, hc *http.Client, endpoint string, lsn uint64) (waitReply, error) {
	var reply waitReply
	body := fmt.Appendf(nil, `{"lsn":%d,"timeout_ms":%d}`, lsn, benchReplicaWaitMS)
	_, err := postJSON(ctx, hc, endpoint+"/v1/wait", body, &reply)
	return reply, err
}

// postJSON posts body and decodes the reply into reply; a non-2xx reply is
// a *sqlclient.Error. It returns the reply's header.
func postJSON(ctx context.Context, hc *http.Client, url string, body []byte, reply any) (http.Header, error) {
	h, _, err := postJSONAt(ctx, hc, url, body, reply)
	return h, err
}

// postJSONAt is postJSON, and also returns when the whole reply had
// arrived (before it is decoded).
func postJSONAt(ctx context.Context, hc *http.Client, url string, body []byte, reply any) (http.Header, time.Time, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, time.Time{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	return doJSON(hc, req, reply)
}

func getJSON(ctx context.Context, hc *http.Client, url string, reply any) (http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	h, _, err := doJSON(hc, req, reply)
	return h, err
}

func doJSON(hc *http.Client, req *http.Request, reply any) (http.Header, time.Time, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return nil, time.Now(), err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	arrived := time.Now()
	if err != nil {
		return nil, arrived, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && (e.Error.Code != "" || e.Error.Message != "") {
			return resp.Header, arrived, &sqlclient.Error{Status: resp.StatusCode, Code: e.Error.Code, Message: e.Error.Message}
		}
		return resp.Header, arrived, &sqlclient.Error{Status: resp.StatusCode, Message: msg}
	}
	if reply != nil {
		if err := json.Unmarshal(b, reply); err != nil {
			return resp.Header, arrived, fmt.Errorf("%s %s: bad reply: %w", req.Method, req.URL.Path, err)
		}
	}
	return resp.Header, arrived, nil
}

// maxOtherPct is the largest share of the machine's CPUs that other
// processes took during any level or run.
func maxOtherPct(rep *replicaBenchReport) float64 {
	var m float64
	for _, l := range rep.Levels {
		m = max(m, l.CPU.OtherPct)
	}
	for _, r := range rep.WriterInsertTPS {
		m = max(m, r.CPU.OtherPct)
	}
	for _, r := range rep.ReaderQPS {
		m = max(m, r.CPU.OtherPct)
	}
	return m
}

// cpuRoles is the order CPU shares are printed in.
var cpuRoles = []string{"writer", "storage", "replica", "router", "control", "bench"}

func formatCPU(c cpuPerTxn) string {
	var parts []string
	for _, r := range cpuRoles {
		if v, ok := c.ByRole[r]; ok {
			parts = append(parts, fmt.Sprintf("%s %.0f", r, v))
		}
	}
	s := strings.Join(parts, ", ")
	if c.MachineBusyPct > 0 {
		s += fmt.Sprintf("; the machine's CPUs %.0f%% busy, %.0f%% with other processes", c.MachineBusyPct, c.OtherPct)
	}
	return s
}

func printReplicaBench(out io.Writer, rep *replicaBenchReport) {
	per := time.Duration(rep.DurationS * float64(time.Second))
	fmt.Fprintf(out, "replica lag: single-row UPDATEs of random keys of %s (%d rows, cached whole by every replica), %d replicas, %s per level\n",
		rep.Table, rep.TableRows, rep.Replicas, per)
	fmt.Fprintln(out, "lag: when the replica applied the commit (POST /v1/wait's applied_at) minus when the writer's reply reached the client")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "target/s\twrites/s\tclients\tcommit p50 ms\tcommit p99 ms\treplica\tlag p50 ms\tlag p99 ms\tlag max ms\tstream B/commit\tMTRs/commit\t")
	for _, l := range rep.Levels {
		target := rateName(l.TargetWritesPerS)
		for i, r := range l.Lag {
			if i == 0 {
				fmt.Fprintf(tw, "%s\t%.0f\t%d\t%.3f\t%.3f\t", target, l.WritesPerS, l.Clients, l.CommitP50Ms, l.CommitP99Ms)
			} else {
				fmt.Fprint(tw, "\t\t\t\t\t")
			}
			fmt.Fprintf(tw, "%s\t%.3f\t%.3f\t%.3f\t%.0f\t%.2f\t\n", r.Replica, r.P50Ms, r.P99Ms, r.MaxMs, r.BytesPerCommit, r.MTRsPerCommit)
		}
	}
	tw.Flush()
	for _, l := range rep.Levels {
		var notes []string
		if l.MissedTicks > 0 {
			notes = append(notes, fmt.Sprintf("%d ticks of the schedule missed", l.MissedTicks))
		}
		for _, r := range l.Lag {
			if r.WaitsTimedOut > 0 {
				notes = append(notes, fmt.Sprintf("%s: %d waits timed out", r.Replica, r.WaitsTimedOut))
			} else if r.NoAppliedAt > 0 {
				notes = append(notes, fmt.Sprintf("%s: %d waits without applied_at", r.Replica, r.NoAppliedAt))
			}
		}
		fmt.Fprintf(out, "  %s: CPU µs per commit %.0f (%s)", rateLabel(l.TargetWritesPerS), l.CPU.TotalUs, formatCPU(l.CPU))
		if len(notes) > 0 {
			fmt.Fprintf(out, "; %s", strings.Join(notes, "; "))
		}
		fmt.Fprintln(out)
	}

	if len(rep.WriterInsertTPS) > 0 {
		fmt.Fprintf(out, "\nwriter: one-row INSERTs into %s, %d clients, %s per run\n", rep.InsertTable, rep.WriterInsertTPS[0].Clients, per)
		tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "replicas\ttxn/s\tvs 0 replicas\tp50 ms\tp99 ms\tCPU µs/txn\t")
		for _, r := range rep.WriterInsertTPS {
			ratio := "-"
			for _, x := range rep.InsertTPSRatio {
				if x.Replicas == r.Replicas {
					ratio = fmt.Sprintf("%.2fx", x.Ratio)
				}
			}
			fmt.Fprintf(tw, "%d\t%.0f\t%s\t%.3f\t%.3f\t%.0f\t\n", r.Replicas, r.TPS, ratio, r.P50Ms, r.P99Ms, r.CPU.TotalUs)
		}
		tw.Flush()
		for _, r := range rep.WriterInsertTPS {
			fmt.Fprintf(out, "  %d replicas: CPU µs per txn %s\n", r.Replicas, formatCPU(r.CPU))
		}
	}

	if len(rep.ReaderQPS) > 0 {
		fmt.Fprintf(out, "\nreader endpoint %s: SELECT v FROM %s WHERE k = ? (a random key), %d clients, %s per run\n", rep.ReaderEndpoint, rep.Table, rep.ReaderQPS[0].Clients, per)
		tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "replicas\tqueries/s\tp50 ms\tp99 ms\tCPU µs/query\tserved by\t")
		for _, r := range rep.ReaderQPS {
			ids := make([]string, 0, len(r.ServedBy))
			for id := range r.ServedBy {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			var by []string
			for _, id := range ids {
				name := id
				if name == "" {
					name = "?"
				}
				by = append(by, fmt.Sprintf("%s %d", name, r.ServedBy[id]))
			}
			fmt.Fprintf(tw, "%d\t%.0f\t%.3f\t%.3f\t%.0f\t%s\t\n", r.Replicas, r.QPS, r.P50Ms, r.P99Ms, r.CPU.TotalUs, strings.Join(by, ", "))
		}
		tw.Flush()
		for _, r := range rep.ReaderQPS {
			fmt.Fprintf(out, "  %d replicas: CPU µs per query %s\n", r.Replicas, formatCPU(r.CPU))
		}
	}

	fmt.Fprintln(out)
	for _, x := range rep.InsertTPSRatio {
		verdict := ""
		if x.Replicas == 2 {
			verdict = "; target at most 10% loss with 2 replicas: "
			if x.Ratio >= 0.9 {
				verdict += "met"
			} else {
				verdict += "not met"
			}
		}
		fmt.Fprintf(out, "writer insert tps with %d replicas: %.2fx that with 0 (%+.1f%%)%s\n", x.Replicas, x.Ratio, 100*(x.Ratio-1), verdict)
	}
	for _, l := range rep.Levels {
		if l.TargetWritesPerS != 2000 {
			continue
		}
		for _, r := range l.Lag {
			ok := "met"
			if r.P50Ms > 2 || r.P99Ms > 20 {
				ok = "not met"
			}
			fmt.Fprintf(out, "lag at 2000 writes/s on %s: p50 %.3f ms, p99 %.3f ms (target p50 <= 2 ms, p99 <= 20 ms: %s)\n", r.Replica, r.P50Ms, r.P99Ms, ok)
		}
	}
	if other := maxOtherPct(rep); other >= 10 {
		fmt.Fprintf(out, "note: other processes took up to %.0f%% of the machine's CPUs during a run: the figures are skewed by them\n", other)
	}
	for _, s := range rep.Skipped {
		fmt.Fprintf(out, "skipped: %s\n", s)
	}
	if rep.PprofDir != "" {
		fmt.Fprintf(out, "CPU profiles of the writer and replicas: %s\n", rep.PprofDir)
	}
}
