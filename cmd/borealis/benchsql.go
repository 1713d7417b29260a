package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/sqlclient"
)

type sqlInsertLevel struct {
	Clients             int     `json:"clients"`
	Txns                int     `json:"txns"`
	TPS                 float64 `json:"tps"`
	P50Ms               float64 `json:"p50_ms"`
	P99Ms               float64 `json:"p99_ms"`
	RedoBytesPerTxn     float64 `json:"redo_bytes_per_txn"`
	FullPageBytesPerTxn float64 `json:"full_page_bytes_per_txn"`
	// CommitsPerTxn: the instance's commit counter over the level, per
	// transaction of the benchmark; above 1 when something else commits.
	CommitsPerTxn float64 `json:"commits_per_txn"`
	P50OverFloor  float64 `json:"p50_over_floor"`
	// P50OverQuorumFloor is p50 over the quorum floor (see diskFloor).
	P50OverQuorumFloor float64 `json:"p50_over_quorum_floor"`
	// What the level cost per transaction (see costMeter).
	CPUUsPerTxn                  componentCPU       `json:"cpu_us_per_txn"`
	StorageCPUUsPerTxnByNode     map[string]float64 `json:"storage_cpu_us_per_txn_by_node,omitempty"`
	StorageCPUUsPerRecordPerNode float64            `json:"storage_cpu_us_per_record_per_node"`
	DiskBytesPerTxnPerNode       float64            `json:"disk_bytes_per_txn_per_node"`
	DiskBytesPerTxnByNode        map[string]float64 `json:"disk_bytes_per_txn_by_node,omitempty"`
	// DeviceBytesPerTxn: the machine's disks, all processes (see levelCost).
	DeviceBytesPerTxn float64 `json:"device_bytes_per_txn"`
	// ContextSwitchesPerTxn: the machine's, all processes (see levelCost).
	ContextSwitchesPerTxn float64 `json:"context_switches_per_txn"`
}

type sqlSelectLevel struct {
	Clients int     `json:"clients"`
	Queries int     `json:"queries"`
	QPS     float64 `json:"qps"`
	P50Ms   float64 `json:"p50_ms"`
	P99Ms   float64 `json:"p99_ms"`
}

type sqlBenchReport struct {
	FloorP50Ms       float64 `json:"floor_p50_ms"`
	FloorBeforeP50Ms float64 `json:"floor_before_p50_ms"`
	FloorAfterP50Ms  float64 `json:"floor_after_p50_ms"`
	// QuorumFloorP50Ms: the 4th of six concurrent fdatasync'd appends.
	QuorumFloorP50Ms float64          `json:"quorum_floor_p50_ms"`
	Endpoint         string           `json:"endpoint"`
	Table            string           `json:"table"`
	DurationS        float64          `json:"duration_s_per_level"`
	Insert           []sqlInsertLevel `json:"insert"`
	Select           []sqlSelectLevel `json:"select"`
	// Space: the storage nodes' footprint against the live database, when
	// the benchmark ends.
	Space *spaceReport `json:"space,omitempty"`
	// Unmetered: components whose processes /proc could not read (on
	// another machine), left out of cpu_us_per_txn.
	Unmetered []string `json:"unmetered,omitempty"`
	// TableDropped: the table was dropped from --cluster's volume at the
	// end (it is kept with --keep, and goes with a cluster of its own).
	TableDropped bool `json:"table_dropped,omitempty"`
}

// benchSQLValueLen is the size of the text column of each inserted row.
const benchSQLValueLen = 100

func benchSQLCmd() *cobra.Command {
	var clusterFile, dir, pprofDir string
	var asJSON, keep bool
	var levels []int
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "sql",
		Short: "One-row INSERT transactions and point SELECTs over the SQL API at several concurrency levels",
		Long: `Run SQL over a database instance's HTTP API: first one-row INSERT
transactions (an integer key and a 100-byte text) into a fresh table
bench(k INTEGER PRIMARY KEY, v TEXT) (bench_2, bench_3... when taken), then
SELECTs of one row by key, each at every concurrency level in turn, each
client a goroutine with its own keep-alive HTTP connection. Without --cluster
it starts its own cluster (the control plane, 6 storage nodes and a writer)
as separate processes in a temporary directory. When it ends it drops its
table from --cluster's volume, or removes its own cluster's directory,
unless --keep is given.

For each INSERT level it prints transactions/s, p50 and p99 latency (until the
commit is durable), and the redo bytes the instance shipped to storage per
transaction next to what shipping its whole dirty pages would have taken (from
the instance's /v1/health counters over the level); for each SELECT level,
queries/s, p50 and p99. The single-client INSERT p50 is also given as a
multiple of the floor: the median of one fdatasync'd 4 KiB append on the same
disk, measured in the same run.

For each INSERT level it also prints what a transaction costs: the CPU time
(user and system, from /proc/PID/stat over the level) of the writer, of each
storage node, of the control plane, of any replicas and router, and of the
benchmark process itself, and the bytes each storage node's store wrote to
its files (as the node counts them) beside what the machine's disks took,
and the machine's context switches (from /proc/stat), which on a virtual
machine cost CPU of their own. When the benchmark ends it prints each node's disk footprint against the
live database size. Only processes on this machine are metered. Each client
keeps one HTTP/1.1 connection of its own.
With --pprof-dir (a cluster of its own only) the writer and the storage nodes
serve pprof, and a CPU profile of each, and of the benchmark client itself, is
written there for every INSERT level.
Progress goes to stderr.`,
		Args: noArgs(""),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			out, progress := cmd.OutOrStdout(), cmd.ErrOrStderr()
			if len(levels) == 0 {
				return errors.New("--clients: give at least one level")
			}
			for _, n := range levels {
				if n < 1 {
					return fmt.Errorf("--clients: %d is not a number of clients", n)
				}
			}
			floorDir, tmp, removeTmp, err := benchDirs(dir, clusterFile, "borealis-bench-sql-")
			if err != nil {
				return err
			}
			defer keepOrRemove(keep, tmp, removeTmp, progress)
			var endpoint string
			var comps []cluster.Component
			if pprofDir != "" && clusterFile != "" {
				return errors.New("--pprof-dir profiles a cluster of the benchmark's own; it cannot be used with --cluster")
			}
			if pprofDir != "" {
				if err := os.MkdirAll(pprofDir, 0o755); err != nil {
					return err
				}
			}
			if clusterFile != "" {
				f, err := cluster.ReadFile(clusterFile)
				if err != nil {
					return err
				}
				w, ok := f.Find("writer")
				if ok {
					endpoint = "http://" + w.Addr
				}
				comps = f.Components
				if !ok {
					return fmt.Errorf("%s lists no writer: the cluster runs no database instance", clusterFile)
				}
			} else {
				cl, ep, err := startSQLBenchCluster(ctx, tmp, pprofDir != "", progress)
				if cl != nil {
					defer cl.Stop(5 * time.Second)
				}
				if err != nil {
					return err
				}
				endpoint = ep
				comps = cl.Components()
			}
			// A cluster of its own goes away whole; a running one keeps only
			// what --keep asks for.
			drop := clusterFile != "" && !keep
			rep, err := runSQLBench(ctx, endpoint, comps, floorDir, pprofDir, levels, duration, drop, progress)
			if rep == nil {
				return err
			}
			// A report with an error: the table could not be dropped.
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if eerr := enc.Encode(rep); eerr != nil {
					return eerr
				}
				return err
			}
			printSQLBench(out, rep)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&clusterFile, "cluster", "", "cluster.json of a running cluster with a writer, to use instead of starting one")
	f.StringVar(&dir, "dir", "", "parent directory for the temporary cluster, and where the fsync floor is measured (default: the system temp dir, or the --cluster file's directory)")
	f.BoolVar(&asJSON, "json", false, "print the figures as one JSON object")
	f.IntSliceVar(&levels, "clients", []int{1, 8, 32, 64}, "concurrency levels to run")
	f.DurationVar(&duration, "duration", 5*time.Second, "how long each level runs")
	f.BoolVar(&keep, "keep", false, "keep what the benchmark made: its table in --cluster's volume, or its own cluster's directory")
	f.StringVar(&pprofDir, "pprof-dir", "", "write a CPU profile of the writer, of each storage node and of the benchmark client itself for every INSERT level to this directory (a cluster of the benchmark's own)")
	return cmd
}

// startSQLBenchCluster starts the control plane, 6 storage nodes and a
// writer on a volume of its own in dir, and returns the writer's endpoint.
// The cluster is returned even on error, to be stopped.
func startSQLBenchCluster(ctx context.Context, dir string, metrics bool, progress io.Writer) (*cluster.Cluster, string, error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	cl := cluster.New(bin, dir)
	ctlAddr, err := cluster.FreeAddr()
	if err != nil {
		return nil, "", err
	}
	cl.ControlAddr = ctlAddr
	cl.StorageMetrics = metrics
	start := time.Now()
	fmt.Fprintf(progress, "starting the control plane, 6 storage nodes and a writer in %s\n", dir)
	if err := cl.StartControl(ctx, ctlAddr); err != nil {
		return cl, "", err
	}
	if err := cl.StartStorageNodes(ctx, 6); err != nil {
		return cl, "", err
	}
	conn, err := control.Dial(ctlAddr)
	if err != nil {
		return cl, "", err
	}
	defer conn.Close()
	ctl := pb.NewControlClient(conn)
	if err := waitNodesUp(ctx, ctl, 6, 30*time.Second); err != nil {
		return cl, "", err
	}
	const volumeName = "bench"
	if _, err := ensureVolume(ctx, ctl, volumeName, 0); err != nil {
		return cl, "", err
	}
	addr, err := cluster.FreeAddr()
	if err != nil {
		return cl, "", err
	}
	var extra []string
	if metrics {
		m, err := cluster.FreeAddr()
		if err != nil {
			return cl, "", err
		}
		extra = append(extra, "--metrics", m)
	}
	if err := cl.StartDB(ctx, "writer", "writer", volumeName, addr, extra...); err != nil {
		return cl, "", err
	}
	fmt.Fprintf(progress, "cluster ready in %s; writer at %s\n", since(start), addr)
	return cl, "http://" + addr, nil
}

// runSQLBench runs the levels on a fresh table, which it drops at the end
// (also after a failure or Ctrl-C) when drop is set.
func runSQLBench(ctx context.Context, endpoint string, comps []cluster.Component, floorDir, pprofDir string, levels []int, d time.Duration, drop bool, progress io.Writer) (rep *sqlBenchReport, err error) {
	// c makes the table and reads the counters; the clients of the levels
	// have connections of their own (conns below).
	maxClients := slices.Max(levels)
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	c := &sqlclient.Client{Endpoint: endpoint, HTTP: &http.Client{Transport: tr}}

	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	h, err := c.Health(hctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("database instance at %s: %w", endpoint, err)
	}
	if !h.Ready || h.Role != "writer" {
		return nil, fmt.Errorf("the database instance at %s is not a ready writer (role %q, ready %v)", endpoint, h.Role, h.Ready)
	}
	table, err := freshBenchTable(ctx, c)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "creating table %s\n", table)
	if _, err := c.Execute(ctx, []sqlclient.Statement{{SQL: "CREATE TABLE " + table + "(k INTEGER PRIMARY KEY, v TEXT)"}}, false); err != nil {
		return nil, fmt.Errorf("create table %s: %w", table, err)
	}
	if drop {
		defer func() {
			// Its own deadline: ctx may be what Ctrl-C cancelled.
			dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, derr := c.Execute(dctx, []sqlclient.Statement{{SQL: "DROP TABLE " + table}}, false); derr != nil {
				derr = fmt.Errorf("the benchmark could not drop its table %s: %w; drop it with borealis sql -e 'DROP TABLE %s'", table, derr, table)
				if err == nil {
					err = derr // with the report: the figures stand
				} else {
					fmt.Fprintln(progress, "borealis:", derr)
				}
				return
			}
			fmt.Fprintf(progress, "dropped table %s\n", table)
			if rep != nil {
				rep.TableDropped = true
			}
		}()
	}
	insert := sqlclient.Statement{SQL: "INSERT INTO " + table + "(k, v) VALUES (?, ?)"}
	sel := "SELECT v FROM " + table + " WHERE k = ?"

	fmt.Fprintln(progress, "measuring the fsync floors")
	var floor diskFloor
	if err := floor.sample(floorDir); err != nil {
		return nil, err
	}
	rep = &sqlBenchReport{Endpoint: endpoint, Table: table, DurationS: d.Seconds()}
	meter, unmetered := newCostMeter(comps, false)
	defer meter.close()
	rep.Unmetered = unmetered

	// Each client has a connection of its own, kept from level to level: a
	// sqlclient.Conn, which costs the benchmark process far less CPU per
	// request than net/http's client, so that more of the machine is left
	// to what is measured.
	conns := make([]*sqlclient.Conn, maxClients)
	defer func() {
		for _, cn := range conns {
			if cn != nil {
				cn.Close()
			}
		}
	}()
	conn := func(worker int) (*sqlclient.Conn, error) {
		if conns[worker] == nil {
			cn, err := sqlclient.Dial(endpoint)
			if err != nil {
				return nil, err
			}
			conns[worker] = cn
		}
		return conns[worker], nil
	}
	var lastKey atomic.Int64
	insertOne := func(ctx context.Context, rng *rand.Rand, worker int) error {
		cn, err := conn(worker)
		if err != nil {
			return err
		}
		st := insert
		st.Params = []any{lastKey.Add(1), benchText(rng)}
		_, err = cn.Execute(ctx, []sqlclient.Statement{st}, true)
		return err
	}
	// Warm up: the table's first pages exist and the instance's caches are
	// warm before anything is timed.
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20; i++ {
		if err := insertOne(ctx, rng, 0); err != nil {
			return nil, fmt.Errorf("warm-up insert: %w", err)
		}
	}
	for _, n := range levels {
		fmt.Fprintf(progress, "INSERT: %d clients for %s\n", n, d)
		h0, err := c.Health(ctx)
		if err != nil {
			return nil, err
		}
		wait := func() {}
		if pprofDir != "" {
			targets := map[string]string{}
			for _, c := range comps {
				targets[c.ID] = c.Metrics
			}
			wait = fetchCPUProfiles(ctx, targets, pprofDir, fmt.Sprintf("insert-c%d", n), d, progress)
		}
		c0 := meter.sample(ctx)
		lat, elapsed, err := runSQLLevel(ctx, n, d, insertOne)
		c1 := meter.sample(ctx)
		wait()
		if err != nil {
			return nil, fmt.Errorf("INSERT with %d clients: %w", n, err)
		}
		h1, err := c.Health(ctx)
		if err != nil {
			return nil, err
		}
		txns := float64(len(lat))
		cost := meter.cost(c0, c1, txns, float64(h1.Stats.RedoRecords-h0.Stats.RedoRecords))
		rep.Insert = append(rep.Insert, sqlInsertLevel{
			Clients:             n,
			Txns:                len(lat),
			TPS:                 txns / elapsed.Seconds(),
			P50Ms:               ms(percentile(lat, 50)),
			P99Ms:               ms(percentile(lat, 99)),
			RedoBytesPerTxn:     float64(h1.Stats.RedoBytes-h0.Stats.RedoBytes) / txns,
			FullPageBytesPerTxn: float64(h1.Stats.FullPageBytes-h0.Stats.FullPageBytes) / txns,
			CommitsPerTxn:       float64(h1.Stats.Commits-h0.Stats.Commits) / txns,

			CPUUsPerTxn:                  cost.CPU,
			StorageCPUUsPerTxnByNode:     cost.StorageCPUByNode,
			StorageCPUUsPerRecordPerNode: cost.StorageCPUPerRecord,
			DiskBytesPerTxnPerNode:       cost.DiskBytesPerNode,
			DiskBytesPerTxnByNode:        cost.DiskBytesByNode,
			DeviceBytesPerTxn:            cost.DeviceBytes,
			ContextSwitchesPerTxn:        cost.ContextSwitches,
		})
	}
	keys := lastKey.Load()
	selectOne := func(ctx context.Context, rng *rand.Rand, worker int) error {
		cn, err := conn(worker)
		if err != nil {
			return err
		}
		k := 1 + rng.Int64N(keys)
		rows, err := cn.Query(ctx, sel, k)
		if err != nil {
			return err
		}
		// Every key up to the last was inserted and committed.
		if len(rows.Rows) != 1 {
			return fmt.Errorf("key %d: %d rows, want 1", k, len(rows.Rows))
		}
		return nil
	}
	for _, n := range levels {
		fmt.Fprintf(progress, "SELECT: %d clients for %s\n", n, d)
		lat, elapsed, err := runSQLLevel(ctx, n, d, selectOne)
		if err != nil {
			return nil, fmt.Errorf("SELECT with %d clients: %w", n, err)
		}
		rep.Select = append(rep.Select, sqlSelectLevel{
			Clients: n,
			Queries: len(lat),
			QPS:     float64(len(lat)) / elapsed.Seconds(),
			P50Ms:   ms(percentile(lat, 50)),
			P99Ms:   ms(percentile(lat, 99)),
		})
	}
	if err := floor.sample(floorDir); err != nil {
		return nil, err
	}
	// The footprint after the SELECT levels: the storage nodes have had
	// their time to materialize and collect what the INSERTs wrote.
	if rep.Space, err = space(comps, liveBytes(ctx, c)); err != nil {
		return nil, err
	}
	rep.FloorP50Ms = ms(floor.singleP50())
	rep.FloorBeforeP50Ms, rep.FloorAfterP50Ms = ms(median(floor.singleBefore)), ms(median(floor.singleAfter))
	rep.QuorumFloorP50Ms = ms(floor.quorumP50())
	for i := range rep.Insert {
		rep.Insert[i].P50OverFloor = rep.Insert[i].P50Ms / rep.FloorP50Ms
		rep.Insert[i].P50OverQuorumFloor = rep.Insert[i].P50Ms / rep.QuorumFloorP50Ms
	}
	return rep, nil
}

// liveBytes is the database's size (its pages), or 0 if the instance does
// not say.
func liveBytes(ctx context.Context, c *sqlclient.Client) int64 {
	h, err := c.Health(ctx)
	if err != nil || h.Stats.PageSize == 0 {
		return 0
	}
	rows, err := c.Query(ctx, "SELECT page_count FROM pragma_page_count()")
	if err != nil || len(rows.Rows) != 1 || len(rows.Rows[0]) != 1 {
		return 0
	}
	switch v := rows.Rows[0][0].(type) {
	case int64:
		return v * int64(h.Stats.PageSize)
	case float64:
		return int64(v) * int64(h.Stats.PageSize)
	}
	return 0
}

// freshBenchTable is "bench", or the first of bench_2, bench_3, ... that
// does not exist yet: a run on a used cluster starts from an empty table.
func freshBenchTable(ctx context.Context, c *sqlclient.Client) (string, error) {
	rows, err := c.Query(ctx, "SELECT name FROM sqlite_schema WHERE name = 'bench' OR name LIKE 'bench\\_%' ESCAPE '\\'")
	if err != nil {
		return "", fmt.Errorf("list tables: %w", err)
	}
	taken := map[string]bool{}
	for _, r := range rows.Rows {
		if s, ok := r[0].(string); ok {
			taken[strings.ToLower(s)] = true
		}
	}
	name := "bench"
	for i := 2; taken[name]; i++ {
		name = fmt.Sprintf("bench_%d", i)
	}
	return name, nil
}

func benchText(rng *rand.Rand) string {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, benchSQLValueLen)
	for i := range b {
		b[i] = letters[rng.IntN(len(letters))]
	}
	return string(b)
}

// runSQLLevel runs op in n goroutines (op's worker 0 to n-1) until d has passed and returns every
// latency, sorted. The first error stops the level.
func runSQLLevel(ctx context.Context, n int, d time.Duration, op func(ctx context.Context, rng *rand.Rand, worker int) error) ([]time.Duration, time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	stopAt := start.Add(d)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), uint64(start.UnixNano())))
			mine := make([]time.Duration, 0, 1024)
			for time.Now().Before(stopAt) && ctx.Err() == nil {
				t0 := time.Now()
				if err := op(ctx, rng, i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
						cancel()
					}
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return nil, 0, firstErr
	}
	if len(lat) == 0 {
		return nil, 0, errors.New("no request completed")
	}
	slices.Sort(lat)
	return lat, elapsed, nil
}

// percentile of sorted latencies, 0 for none.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}

func printSQLBench(out io.Writer, rep *sqlBenchReport) {
	fmt.Fprintf(out, "floor: fdatasync of a 4 KiB append, p50 %.3f ms (same disk, same run; %.3f ms before the levels, %.3f ms after)\n",
		rep.FloorP50Ms, rep.FloorBeforeP50Ms, rep.FloorAfterP50Ms)
	printQuorumFloor(out, rep.QuorumFloorP50Ms, rep.FloorP50Ms)
	fmt.Fprintf(out, "\nINSERT: one-row transactions (integer key, %d-byte text) into %s at %s, %s per level\n", benchSQLValueLen, rep.Table, rep.Endpoint, time.Duration(rep.DurationS*float64(time.Second)))
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "clients\ttxn/s\tp50 ms\tp99 ms\tp50/floor\tp50/quorum floor\tredo B/txn\tfull-page B/txn\tredo/full-page\t")
	for _, l := range rep.Insert {
		fmt.Fprintf(tw, "%d\t%.0f\t%.3f\t%.3f\t%.2fx\t%.2fx\t%.0f\t%.0f\t%s\t\n", l.Clients, l.TPS, l.P50Ms, l.P99Ms, l.P50OverFloor, l.P50OverQuorumFloor,
			l.RedoBytesPerTxn, l.FullPageBytesPerTxn, percentOf(l.RedoBytesPerTxn, l.FullPageBytesPerTxn))
	}
	tw.Flush()
	fmt.Fprintf(out, "\nSELECT v WHERE k = ? (a random key of the %s rows), %s per level\n", rep.Table, time.Duration(rep.DurationS*float64(time.Second)))
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "clients\tqueries/s\tp50 ms\tp99 ms\t")
	for _, l := range rep.Select {
		fmt.Fprintf(tw, "%d\t%.0f\t%.3f\t%.3f\t\n", l.Clients, l.QPS, l.P50Ms, l.P99Ms)
	}
	tw.Flush()
	var levels []int
	var costs []componentCPU
	var disk, device, ctxt, perRecord []float64
	for _, l := range rep.Insert {
		levels, costs = append(levels, l.Clients), append(costs, l.CPUUsPerTxn)
		disk, perRecord = append(disk, l.DiskBytesPerTxnPerNode), append(perRecord, l.StorageCPUUsPerRecordPerNode)
		device = append(device, l.DeviceBytesPerTxn)
		ctxt = append(ctxt, l.ContextSwitchesPerTxn)
	}
	printCosts(out, "INSERT", levels, costs, disk, device, ctxt, perRecord)
	if len(rep.Unmetered) > 0 {
		fmt.Fprintf(out, "(not metered: %s, whose processes are not on this machine)\n", strings.Join(rep.Unmetered, ", "))
	}
	printSpace(out, rep.Space)
	if len(rep.Insert) > 0 {
		l := rep.Insert[0]
		fmt.Fprintf(out, "\n%d client(s): an INSERT commits in %.2fx the fsync floor (p50), %.2fx the quorum floor; the redo shipped is %s of the whole dirty pages (%.0f vs %.0f bytes per transaction)\n",
			l.Clients, l.P50OverFloor, l.P50OverQuorumFloor, percentOf(l.RedoBytesPerTxn, l.FullPageBytesPerTxn), l.RedoBytesPerTxn, l.FullPageBytesPerTxn)
	}
}

func percentOf(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*a/b)
}
