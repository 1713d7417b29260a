package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/dbserver"
	"github.com/borealis-db/borealis/internal/sqlclient"
)

// The targets of issue 11 on a 2-core machine, printed next to the figures.
const (
	targetHydrationVsRaw = 0.5 // hydration at least half the raw copy rate
	targetP99Ratio       = 2.0 // foreground p99 during repair at most 2x before
)

type repairBenchOptions struct {
	dir         string
	basePort    int
	size        string
	pgSize      string
	clients     int
	before      time.Duration
	repairAfter time.Duration
	repairRate  string
	within      time.Duration
	asJSON      bool
	keep        bool
}

func (o *repairBenchOptions) validate() (size uint64, err error) {
	size, err = parseSize(o.size)
	switch {
	case err != nil:
		return 0, fmt.Errorf("--size %q: %w", o.size, err)
	case size < 1<<20:
		return 0, fmt.Errorf("--size %s: want at least 1MiB to repair", o.size)
	case o.clients < 1:
		return 0, fmt.Errorf("--clients %d: want at least 1", o.clients)
	case o.before <= 0:
		return 0, fmt.Errorf("--before %s: want a positive duration", o.before)
	case o.repairAfter <= 0:
		return 0, fmt.Errorf("--repair-after %s: want a positive duration", o.repairAfter)
	case o.within <= 0:
		return 0, fmt.Errorf("--within %s: want a positive duration", o.within)
	case o.basePort < 1 || o.basePort > 65535-controlPortSpan:
		return 0, fmt.Errorf("--base-port %d: want a port from 1 to %d (the benchmark's cluster takes %d ports from it on, as up does)", o.basePort, 65535-controlPortSpan, controlPortSpan+1)
	}
	if _, err := parseSize(o.pgSize); err != nil {
		return 0, fmt.Errorf("--pg-size %q: %w", o.pgSize, err)
	}
	return size, nil
}

// repairBenchReport is what `bench repair --json` prints. size_bytes,
// repair_start_s, repair_done_s, hydration_mb_per_s, raw_copy_mb_per_s and
// commit_p{50,99}_{before,during}_ms are a contract (issue 11).
type repairBenchReport struct {
	SizeBytes         uint64  `json:"size_bytes"`
	RepairStartS      float64 `json:"repair_start_s"`
	RepairDoneS       float64 `json:"repair_done_s"`
	HydrationMBPerS   float64 `json:"hydration_mb_per_s"`
	RawCopyMBPerS     float64 `json:"raw_copy_mb_per_s"`
	CommitP50BeforeMs float64 `json:"commit_p50_before_ms"`
	CommitP99BeforeMs float64 `json:"commit_p99_before_ms"`
	CommitP50DuringMs float64 `json:"commit_p50_during_ms"`
	CommitP99DuringMs float64 `json:"commit_p99_during_ms"`

	// Victim is the storage node killed; PGs how many PGs it held.
	Victim string `json:"victim"`
	PGs    int    `json:"pgs"`
	// HydratedBytes is what the joining segments copied from their peers
	// (their hydrate_bytes_total), which the raw copy copies too.
	HydratedBytes uint64 `json:"hydrated_bytes"`
	// RepairAfterS is the control plane's --repair-after: repair_start_s
	// cannot be below it.
	RepairAfterS float64 `json:"repair_after_s"`
	// HydrationVsRaw and P99Ratio are the targets' ratios.
	HydrationVsRaw float64 `json:"hydration_vs_raw"`
	P99Ratio       float64 `json:"p99_during_vs_before"`
	CommitsBefore  int     `json:"commits_before"`
	CommitsDuring  int     `json:"commits_during"`
	// FailedCommits counts load commits that failed at any time: a repair
	// must not stop writes.
	FailedCommits int `json:"failed_commits"`
	// VerifiedS is when every segment of the victim's PGs was seen
	// complete, after repair_done_s (the catalog's completion).
	VerifiedS float64 `json:"verified_s"`
	Clients   int     `json:"clients"`
	PGSize    string  `json:"pg_size"`
}

func benchRepairCmd() *cobra.Command {
	o := repairBenchOptions{}
	cmd := &cobra.Command{
		Use:   "repair",
		Short: "Kill a storage node under load and measure how long its segments take to be rebuilt on spares",
		Long: `Measure repair. It runs its own cluster with "borealis up --nodes-per-az 3"
in a temporary directory (a spare storage node in each AZ), fills the volume
with --size of rows through SQL, and keeps --clients clients committing one
small insert each per transaction. After --before of that load it SIGKILLs
the storage node that holds the most segments.

It measures the time from the kill until the control plane starts the
repair (the first PG of the node in a membership change; at least
--repair-after), the time until every PG the node held is back to six
complete segments, the hydration throughput (the bytes the new segments
copied from their peers over the repair's span) against a raw sequential
copy of as many bytes of the killed node's files on the same disk in the
same run, and the commit latency p50 and p99 before the kill and during the
repair. Targets: hydration at least 50% of the raw copy rate, and p99
during the repair at most twice the p99 before. Progress goes to stderr.`,
		Args: noArgs(""),
		RunE: func(cmd *cobra.Command, args []string) error {
			size, err := o.validate()
			if err != nil {
				return err
			}
			rep, err := runRepairBench(cmd.Context(), o, size, cmd.ErrOrStderr())
			if rep == nil {
				return err
			}
			if perr := printBenchReport(cmd.OutOrStdout(), o.asJSON, rep, func(out io.Writer) { printRepairBench(out, rep) }); perr != nil {
				return perr
			}
			if err == nil && rep.FailedCommits > 0 {
				err = fmt.Errorf("%d commits of the load failed: a repair must not stop writes", rep.FailedCommits)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", "", "parent directory for the temporary cluster (default: the system temp dir)")
	f.IntVar(&o.basePort, "base-port", 7400, "loopback ports of the benchmark's own cluster, as up's --base-port")
	f.StringVar(&o.size, "size", "256MiB", "data to fill the volume with before the kill")
	f.StringVar(&o.pgSize, "pg-size", "10GiB", "the volume's PG size (up's --pg-size): smaller PGs spread the repair over more of them")
	f.IntVar(&o.clients, "clients", 2, "concurrent clients of the light commit load")
	f.DurationVar(&o.before, "before", 10*time.Second, "load before the kill, measured as the 'before' latency")
	f.DurationVar(&o.repairAfter, "repair-after", 5*time.Second, "the control plane's --repair-after")
	f.StringVar(&o.repairRate, "repair-rate", "", "the storage nodes' --repair-rate (default: theirs)")
	f.DurationVar(&o.within, "within", 10*time.Minute, "give up if the repair has not finished this long after the kill")
	f.BoolVar(&o.asJSON, "json", false, "print the figures as one JSON object")
	f.BoolVar(&o.keep, "keep", false, "keep the benchmark's cluster directory")
	return cmd
}

// commitSample is one commit of the load: when it ended and how long it
// took, or that it failed.
type commitSample struct {
	at   time.Time
	took time.Duration
	err  bool
}

// repairLoad is the light commit load: each client inserts one row per
// transaction into its own key range.
type repairLoad struct {
	db      *sqlclient.Client
	mu      sync.Mutex
	samples []commitSample
	stop    context.CancelFunc
	wg      sync.WaitGroup
}

func (l *repairLoad) start(ctx context.Context, clients int) {
	ctx, l.stop = context.WithCancel(ctx)
	for c := range clients {
		l.wg.Go(func() {
			for k := int64(c); ctx.Err() == nil; k += int64(clients) {
				t0 := time.Now()
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err := l.db.Execute(cctx, []sqlclient.Statement{{SQL: "INSERT INTO repair_load VALUES(?, ?)", Params: []any{k, "x"}}}, false)
				cancel()
				if ctx.Err() != nil {
					return
				}
				l.mu.Lock()
				l.samples = append(l.samples, commitSample{at: time.Now(), took: time.Since(t0), err: err != nil})
				l.mu.Unlock()
			}
		})
	}
}

func (l *repairLoad) halt() {
	l.stop()
	l.wg.Wait()
}

// window returns the latencies of the commits that ended in [from, to),
// and how many failed at any time.
func (l *repairLoad) window(from, to time.Time) (lat []time.Duration, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.samples {
		if s.err {
			failed++
			continue
		}
		if !s.at.Before(from) && s.at.Before(to) {
			lat = append(lat, s.took)
		}
	}
	slices.Sort(lat)
	return lat, failed
}

// repairEnv is the benchmark's cluster.
type repairEnv struct {
	ctl   pb.ControlClient
	conns map[string]*grpc.ClientConn
}

func (e *repairEnv) storage(addr string) (pb.StorageClient, error) {
	if c, ok := e.conns[addr]; ok {
		return pb.NewStorageClient(c), nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	e.conns[addr] = c
	return pb.NewStorageClient(c), nil
}

func (e *repairEnv) close() {
	for _, c := range e.conns {
		c.Close()
	}
}

func runRepairBench(ctx context.Context, o repairBenchOptions, size uint64, progress io.Writer) (*repairBenchReport, error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, err
	}
	_, tmp, removeTmp, err := benchDirs(o.dir, "", "bench-repair-")
	if err != nil {
		return nil, err
	}
	defer keepOrRemove(o.keep, tmp, removeTmp, progress)
	args := []string{"--nodes-per-az", "3", "--replicas", "0", "--base-port", strconv.Itoa(o.basePort),
		"--repair-after", o.repairAfter.String(), "--pg-size", o.pgSize}
	if o.repairRate != "" {
		args = append(args, "--repair-rate", o.repairRate)
	}
	clusterFile, stop, err := startUpCluster(ctx, bin, progress, filepath.Join(tmp, "cluster"), args...)
	if stop != nil {
		defer stop()
	}
	if err != nil {
		return nil, err
	}
	f, err := cluster.ReadFile(clusterFile)
	if err != nil {
		return nil, err
	}
	w, ok := f.Find("writer")
	if !ok {
		return nil, fmt.Errorf("%s lists no writer", clusterFile)
	}
	conn, err := control.Dial(f.ControlAddrs())
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	env := &repairEnv{ctl: pb.NewControlClient(conn), conns: map[string]*grpc.ClientConn{}}
	defer env.close()
	db := &sqlclient.Client{Endpoint: "http://" + w.Addr}

	if err := fillVolume(ctx, db, size, progress); err != nil {
		return nil, err
	}
	rep := &repairBenchReport{SizeBytes: size, Clients: o.clients, PGSize: o.pgSize, RepairAfterS: o.repairAfter.Seconds()}
	load := &repairLoad{db: db}
	load.start(ctx, o.clients)
	defer load.halt()
	fmt.Fprintf(progress, "load: %d clients committing one insert each; %s before the kill\n", o.clients, o.before)
	loadStart := time.Now()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(o.before):
	}

	pgs, err := env.pgs(ctx)
	if err != nil {
		return nil, err
	}
	victim, held := mostLoaded(pgs)
	comp, ok := f.ByID(victim)
	if !ok {
		return nil, fmt.Errorf("%s lists no storage node %s", clusterFile, victim)
	}
	rep.Victim, rep.PGs = victim, len(held)
	fmt.Fprintf(progress, "SIGKILL %s (pid %d), which holds segments of %d PGs\n", victim, comp.Pid, len(held))
	killedAt := time.Now()
	if err := syscall.Kill(comp.Pid, syscall.SIGKILL); err != nil {
		return nil, fmt.Errorf("kill %s: %w", victim, err)
	}

	// joining is the address of the segment each PG last took on.
	joining := map[uint32]string{}
	// startedAt: the first PG of the victim seen in a change; doneAt: the
	// first time the catalog showed every one of them back to one set
	// without the victim, each joining segment done hydrating (the control
	// plane completes a change only once the joining segment reached what a
	// read quorum of the old set held); verifiedAt: every segment of them
	// then seen complete, at the SCL of the most advanced.
	var startedAt, doneAt time.Time
	lastNote := time.Now()
	err = pollFor(ctx, o.within, "every PG of "+victim+" to be back to six complete segments", func(ctx context.Context) error {
		pgs, err := env.pgs(ctx)
		if err != nil {
			return err
		}
		why := ""
		moved := true
		for _, p := range pgs {
			if !slices.Contains(held, p.Pg) {
				continue
			}
			if p.Change != nil && startedAt.IsZero() {
				startedAt = time.Now()
				fmt.Fprintf(progress, "repair started %s after the kill: PG %d replaces %s by %s\n", since(killedAt), p.Pg, p.Change.Leaving, p.Change.Joining)
			}
			if p.Change != nil {
				for _, seg := range p.NextSegments {
					if seg.Node == p.Change.Joining {
						joining[p.Pg] = seg.Addr
					}
				}
				moved = false
			}
			for _, s := range p.Segments {
				if s.Node == victim {
					moved = false
				}
			}
		}
		if moved && doneAt.IsZero() {
			doneAt = time.Now()
			fmt.Fprintf(progress, "every PG of %s moved %s after the kill; checking each segment is complete\n", victim, since(killedAt))
		}
		why = env.incomplete(ctx, pgs, held, victim)
		if why != "" && time.Since(lastNote) > 5*time.Second {
			lastNote = time.Now()
			fmt.Fprintf(progress, "%s after the kill: %s\n", since(killedAt), why)
		}
		if why != "" {
			return errors.New(why)
		}
		return nil
	})
	verifiedAt := time.Now()
	if err != nil {
		return nil, err
	}
	if doneAt.IsZero() {
		doneAt = verifiedAt
	}
	if startedAt.IsZero() {
		startedAt = doneAt
	}
	rep.VerifiedS = verifiedAt.Sub(killedAt).Seconds()
	rep.RepairStartS = startedAt.Sub(killedAt).Seconds()
	rep.RepairDoneS = doneAt.Sub(killedAt).Seconds()
	for pg, addr := range joining {
		info, err := env.segmentInfo(ctx, addr, pgs[0].VolumeId, pg)
		if err != nil {
			return nil, fmt.Errorf("ask the segment that joined PG %d what it copied: %w", pg, err)
		}
		rep.HydratedBytes += info.HydrateBytesTotal
	}
	if span := doneAt.Sub(startedAt).Seconds(); span > 0 {
		rep.HydrationMBPerS = float64(rep.HydratedBytes) / 1e6 / span
	}
	fmt.Fprintf(progress, "repaired %s after the kill; %d bytes hydrated\n", since(killedAt), rep.HydratedBytes)
	load.halt()

	before, _ := load.window(loadStart, killedAt)
	during, failed := load.window(startedAt, doneAt)
	rep.FailedCommits = failed
	rep.CommitsBefore, rep.CommitsDuring = len(before), len(during)
	rep.CommitP50BeforeMs, rep.CommitP99BeforeMs = ms(percentile(before, 50)), ms(percentile(before, 99))
	rep.CommitP50DuringMs, rep.CommitP99DuringMs = ms(percentile(during, 50)), ms(percentile(during, 99))
	if rep.CommitP99BeforeMs > 0 {
		rep.P99Ratio = rep.CommitP99DuringMs / rep.CommitP99BeforeMs
	}

	copyBytes := rep.HydratedBytes
	if copyBytes == 0 {
		copyBytes = size
	}
	rate, err := rawCopyRate(comp.Dir, filepath.Join(tmp, "raw-copy"), copyBytes)
	if err != nil {
		return rep, fmt.Errorf("raw copy of %s: %w", comp.Dir, err)
	}
	rep.RawCopyMBPerS = rate
	if rate > 0 {
		rep.HydrationVsRaw = rep.HydrationMBPerS / rate
	}
	return rep, nil
}

// fillVolume inserts about size bytes of 4000-byte rows, 64 to a
// transaction, into a new table, and the load's table.
func fillVolume(ctx context.Context, db *sqlclient.Client, size uint64, progress io.Writer) error {
	if _, err := db.Execute(ctx, []sqlclient.Statement{
		{SQL: "CREATE TABLE IF NOT EXISTS repair_fill(k INTEGER PRIMARY KEY, v BLOB NOT NULL)"},
		{SQL: "CREATE TABLE IF NOT EXISTS repair_load(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"},
	}, true); err != nil {
		return fmt.Errorf("create the benchmark's tables: %w", err)
	}
	const row, perTxn = 4000, 64
	rows := int64(size / row)
	start, last := time.Now(), time.Now()
	for k := int64(0); k < rows; k += perTxn {
		stmts := make([]sqlclient.Statement, 0, perTxn)
		for j := k; j < min(k+perTxn, rows); j++ {
			stmts = append(stmts, sqlclient.Statement{SQL: "INSERT OR REPLACE INTO repair_fill VALUES(?, randomblob(?))", Params: []any{j, row}})
		}
		if err := executeRetrying(ctx, db, stmts, progress); err != nil {
			return fmt.Errorf("fill the volume (row %d of %d): %w", k, rows, err)
		}
		if time.Since(last) > 5*time.Second {
			last = time.Now()
			done := float64(k*row) / 1e6
			fmt.Fprintf(progress, "filling: %.0f of %.0f MB, %.1f MB/s\n", done, float64(size)/1e6, done/time.Since(start).Seconds())
		}
	}
	fmt.Fprintf(progress, "filled %d bytes in %s\n", size, since(start))
	return nil
}

// executeRetrying runs one transaction of the fill, again while the writer
// is not ready (such as after a lost lease, until it is restarted), does
// not answer, or times out, for up to a minute: the fill only sets up the
// benchmark, and its statements can be run twice.
func executeRetrying(ctx context.Context, db *sqlclient.Client, stmts []sqlclient.Statement, progress io.Writer) error {
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := db.Execute(ctx, stmts, true)
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		switch sqlclient.Code(err) {
		case dbserver.CodeNotReady, dbserver.CodeStorageUnavailable, dbserver.CodeNotWriter, dbserver.CodeTimeout, dbserver.CodeBusy, "":
			// "": no answer, such as while up restarts the writer.
		default:
			return err
		}
		fmt.Fprintf(progress, "fill: %v; trying again\n", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (e *repairEnv) pgs(ctx context.Context) ([]*pb.PGInfo, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := e.ctl.GetVolume(cctx, &pb.GetVolumeRequest{Name: "main"})
	if err != nil {
		return nil, err
	}
	return v.PgList, nil
}

// mostLoaded is the node with segments of the most PGs, and those PGs.
func mostLoaded(pgs []*pb.PGInfo) (string, []uint32) {
	by := map[string][]uint32{}
	for _, p := range pgs {
		for _, s := range p.Segments {
			by[s.Node] = append(by[s.Node], p.Pg)
		}
	}
	ids := make([]string, 0, len(by))
	for id := range by {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool {
		if len(by[ids[i]]) != len(by[ids[j]]) {
			return len(by[ids[i]]) > len(by[ids[j]])
		}
		return ids[i] < ids[j]
	})
	if len(ids) == 0 {
		return "", nil
	}
	return ids[0], by[ids[0]]
}

func (e *repairEnv) segmentInfo(ctx context.Context, addr string, vol uint64, pg uint32) (*pb.SegmentInfoResponse, error) {
	cli, err := e.storage(addr)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return cli.SegmentInfo(cctx, &pb.SegmentInfoRequest{Volume: vol, Pg: pg})
}

// hosted asks each node of addrs for the SCLs of every segment of vol it
// hosts (one cheap call per node, unlike SegmentInfo, which counts a
// segment's keys): by address, then PG.
func (e *repairEnv) hosted(ctx context.Context, vol uint64, addrs []string) (map[string]map[uint32]*pb.HostedSCL, error) {
	out := map[string]map[uint32]*pb.HostedSCL{}
	for _, addr := range addrs {
		cli, err := e.storage(addr)
		if err != nil {
			return nil, err
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := cli.SegmentSCLs(cctx, &pb.SegmentSCLsRequest{Volume: vol})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%s does not answer: %w", addr, err)
		}
		out[addr] = map[uint32]*pb.HostedSCL{}
		for _, h := range resp.Segments {
			out[addr][h.Pg] = h
		}
	}
	return out, nil
}

// incomplete says why the PGs held are not yet back to six complete
// segments off victim, or "".
func (e *repairEnv) incomplete(ctx context.Context, pgs []*pb.PGInfo, held []uint32, victim string) string {
	var mine []*pb.PGInfo
	var addrs []string
	for _, p := range pgs {
		if !slices.Contains(held, p.Pg) {
			continue
		}
		if p.Change != nil || len(p.NextSegments) > 0 {
			return fmt.Sprintf("PG %d is replacing %s by %s", p.Pg, p.GetChange().GetLeaving(), p.GetChange().GetJoining())
		}
		if len(p.Segments) != 6 {
			return fmt.Sprintf("PG %d has %d segments", p.Pg, len(p.Segments))
		}
		for _, s := range p.Segments {
			if s.Node == victim {
				return fmt.Sprintf("PG %d still has its segment on %s", p.Pg, victim)
			}
			if !slices.Contains(addrs, s.Addr) {
				addrs = append(addrs, s.Addr)
			}
		}
		mine = append(mine, p)
	}
	if len(mine) == 0 {
		return ""
	}
	// Under the load the SCLs move on while the nodes are asked one by
	// one: a segment is complete when, asked again, it has reached the
	// highest SCL any segment of its PG reported the first time.
	first, err := e.hosted(ctx, mine[0].VolumeId, addrs)
	if err != nil {
		return err.Error()
	}
	hi := map[uint32]uint64{}
	for _, p := range mine {
		for _, s := range p.Segments {
			h := first[s.Addr][p.Pg]
			switch {
			case h == nil:
				return fmt.Sprintf("PG %d: %s does not host its segment", p.Pg, s.Node)
			case h.Hydrating:
				return fmt.Sprintf("PG %d: %s is hydrating", p.Pg, s.Node)
			}
			hi[p.Pg] = max(hi[p.Pg], h.Scl)
		}
	}
	again, err := e.hosted(ctx, mine[0].VolumeId, addrs)
	if err != nil {
		return err.Error()
	}
	for _, p := range mine {
		for _, s := range p.Segments {
			if h := again[s.Addr][p.Pg]; h == nil || h.Scl < hi[p.Pg] {
				return fmt.Sprintf("PG %d: %s is at SCL %d, below the %d another segment had", p.Pg, s.Node, h.GetScl(), hi[p.Pg])
			}
		}
	}
	return ""
}

// rawCopyRate copies n bytes of the files under src (again from the start
// when they are fewer) to the file dst, sequentially, synced at the end,
// and returns the rate in MB/s: what the disk does for a plain copy of
// what hydration copied.
func rawCopyRate(src, dst string, n uint64) (float64, error) {
	var files []string
	err := filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	out, err := os.Create(dst)
	if err != nil {
		return 0, err
	}
	defer os.Remove(dst)
	defer out.Close()
	buf := make([]byte, 1<<20)
	start := time.Now()
	var copied uint64
	for copied < n {
		progressed := false
		for _, path := range files {
			if copied >= n {
				break
			}
			in, err := os.Open(path)
			if err != nil {
				continue
			}
			k, err := io.CopyBuffer(out, io.LimitReader(in, int64(n-copied)), buf)
			in.Close()
			if err != nil {
				return 0, err
			}
			copied += uint64(k)
			progressed = progressed || k > 0
		}
		if !progressed {
			return 0, fmt.Errorf("no bytes to copy in %s", src)
		}
	}
	if err := out.Sync(); err != nil {
		return 0, err
	}
	return float64(copied) / 1e6 / time.Since(start).Seconds(), nil
}

func printRepairBench(out io.Writer, r *repairBenchReport) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "killed\t%s (segments of %d PGs), with %d bytes in the volume\t\n", r.Victim, r.PGs, r.SizeBytes)
	fmt.Fprintf(tw, "repair started\t%.2f s after the kill (--repair-after %.0f s)\t\n", r.RepairStartS, r.RepairAfterS)
	fmt.Fprintf(tw, "repair done\t%.2f s after the kill (every segment seen complete at %.2f s)\t\n", r.RepairDoneS, r.VerifiedS)
	fmt.Fprintf(tw, "hydration\t%.1f MB/s (%d bytes), raw copy %.1f MB/s: %.2fx\t\n", r.HydrationMBPerS, r.HydratedBytes, r.RawCopyMBPerS, r.HydrationVsRaw)
	fmt.Fprintf(tw, "commit before\tp50 %.3f ms, p99 %.3f ms (%d commits)\t\n", r.CommitP50BeforeMs, r.CommitP99BeforeMs, r.CommitsBefore)
	fmt.Fprintf(tw, "commit during\tp50 %.3f ms, p99 %.3f ms (%d commits): p99 %.2fx\t\n", r.CommitP50DuringMs, r.CommitP99DuringMs, r.CommitsDuring, r.P99Ratio)
	tw.Flush()
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "not met"
	}
	fmt.Fprintf(out, "targets: hydration >= %.0f%% of the raw copy: %s; p99 during <= %.0fx before: %s\n",
		100*targetHydrationVsRaw, met(r.HydrationVsRaw >= targetHydrationVsRaw), targetP99Ratio, met(r.P99Ratio > 0 && r.P99Ratio <= targetP99Ratio))
	if r.FailedCommits > 0 {
		fmt.Fprintf(out, "%d commits of the load failed\n", r.FailedCommits)
	}
}
