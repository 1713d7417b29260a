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
	"os/exec"
	"path/filepath"
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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/dbserver"
	"github.com/borealis-db/borealis/internal/router"
	"github.com/borealis-db/borealis/internal/sqlclient"
)

// The targets of issue 9 on a 2-core machine, printed next to the figures.
const (
	targetFirstWriteP50 = 1500 * time.Millisecond
	targetFirstWriteMax = 3 * time.Second
	targetPauseP50      = 300 * time.Millisecond
)

// Bounds on the waits of a round: each is far beyond what a working
// failover takes, so that a broken one fails the benchmark instead of
// hanging it.
const (
	failoverWithin = 60 * time.Second // a failover round reaching done
	rejoinWithin   = 90 * time.Second // a restarted instance streaming again
	settleWithin   = 60 * time.Second // every instance healthy before a round
	scanPage       = 50000            // keys per query of the read-back (below the API's 100,000 rows)
)

type failoverBenchOptions struct {
	clusterFile   string
	dir           string
	basePort      int
	rounds        int
	plannedRounds int
	clients       int
	readers       int
	between       time.Duration
	asJSON        bool
	keep          bool
}

func (o *failoverBenchOptions) validate() error {
	switch {
	case o.rounds < 0:
		return fmt.Errorf("--rounds %d: want 0 or more writer kills", o.rounds)
	case o.plannedRounds < 0:
		return fmt.Errorf("--planned-rounds %d: want 0 or more switchovers", o.plannedRounds)
	case o.rounds+o.plannedRounds == 0:
		return errors.New("--rounds 0 --planned-rounds 0: nothing to measure; give at least one round")
	case o.clients < 1:
		return fmt.Errorf("--clients %d: want at least 1", o.clients)
	case o.readers < 0:
		return fmt.Errorf("--readers %d: want 0 or more", o.readers)
	case o.between < 0:
		return fmt.Errorf("--between %s: want a duration of 0 or more", o.between)
	}
	if o.clusterFile != "" && o.basePort != 0 {
		return errors.New("--base-port is for the benchmark's own cluster; --cluster names one that runs already")
	}
	if o.clusterFile == "" && (o.basePort < 1 || o.basePort > 65535-controlPortSpan) {
		return fmt.Errorf("--base-port %d: want a port from 1 to %d (the benchmark's cluster takes %d ports from it on, as up does)", o.basePort, 65535-controlPortSpan, controlPortSpan+1)
	}
	return nil
}

// failoverBenchReport is what `bench failover --json` prints. The fields
// rounds[].{kind, detect_s, promote_s, first_write_s, read_gap_s,
// lost_acknowledged}, unplanned.first_write_{p50,max}_s,
// planned.pause_{p50,max}_ms and lost_acknowledged are a contract (issue 9).
type failoverBenchReport struct {
	Rounds    []failoverRound  `json:"rounds"`
	Unplanned unplannedSummary `json:"unplanned"`
	Planned   plannedSummary   `json:"planned"`
	// LostAcknowledged counts acknowledged inserts missing from the final
	// read-back through the cluster endpoint: must be 0.
	LostAcknowledged int `json:"lost_acknowledged"`
	Acknowledged     int `json:"acknowledged"`
	// UnknownOutcome counts inserts whose outcome the client could not know
	// (the writer failed under them); UnknownPresent, those of them that
	// committed after all. Either is allowed.
	UnknownOutcome int `json:"unknown_outcome"`
	UnknownPresent int `json:"unknown_present"`
	// UnknownCodes counts them by error code ("transport": no answer).
	UnknownCodes map[string]int `json:"unknown_codes,omitempty"`
	// Refused counts inserts refused before they ran, by error code;
	// RefusedPresent, those found committed anyway, which should be 0.
	Refused        map[string]int `json:"refused,omitempty"`
	RefusedPresent int            `json:"refused_present"`
	Reads          int            `json:"reads"`
	ReadErrors     map[string]int `json:"read_errors,omitempty"`
	InsertsPerS    float64        `json:"inserts_per_s"`
	DurationS      float64        `json:"duration_s"`
	Clients        int            `json:"clients"`
	Readers        int            `json:"readers"`
	Volume         string         `json:"volume"`
	Table          string         `json:"table"`
	ClusterFile    string         `json:"cluster_file"`
	// TableDropped: the table was dropped from --cluster's volume.
	TableDropped bool `json:"table_dropped,omitempty"`
}

// failoverRound is one writer kill (kind "unplanned") or switchover
// ("planned").
type failoverRound struct {
	Round int    `json:"round"`
	Kind  string `json:"kind"`
	// FailoverRound is the control plane's round number of the failover.
	FailoverRound uint64 `json:"failover_round"`
	From          string `json:"from"`
	To            string `json:"to"`
	// DetectS: from the SIGKILL to the control plane detecting the lost
	// lease (its detected_unix_ms); unplanned only.
	DetectS *float64 `json:"detect_s,omitempty"`
	// PromoteS: from the detection (planned: the request) to the new
	// writer serving (done_unix_ms), and its steps from the record.
	PromoteS   float64 `json:"promote_s"`
	DecideMS   int64   `json:"decide_ms"`
	LeaseMS    uint32  `json:"lease_ms"`
	EpochMS    uint32  `json:"epoch_ms"`
	RecoveryMS uint32  `json:"recovery_ms"`
	OpenMS     uint32  `json:"open_ms"`
	DrainMS    uint32  `json:"drain_ms,omitempty"`
	TookMS     int64   `json:"took_ms"`
	Warm       bool    `json:"warm"`
	// FirstWriteS: from the kill (planned: the request) to the first insert
	// the new writer acknowledged through the cluster endpoint.
	FirstWriteS float64 `json:"first_write_s"`
	// ReadGapS: the longest time between successful reads through the
	// reader endpoint, from the kill until the killed instance streams
	// again (planned: from the request to the first write).
	ReadGapS float64 `json:"read_gap_s"`
	// PauseMS: planned only, the longest time between consecutive
	// acknowledged inserts from the request to the new writer's first.
	PauseMS *float64 `json:"pause_ms,omitempty"`
	// RejoinS: unplanned only, from the kill to the killed instance,
	// started again, streaming from the new writer as a replica.
	RejoinS *float64 `json:"rejoin_s,omitempty"`
	// TookBack: unplanned only, the killed instance, started again, took
	// the writer lease back before the replica chosen did, or before any
	// was chosen (then FailoverRound is 0); To is From, and it did not
	// rejoin as a replica.
	TookBack bool `json:"took_back,omitempty"`
	// LostAcknowledged: acknowledged inserts found missing by the read-back
	// after this round that were not missing after the one before.
	LostAcknowledged int `json:"lost_acknowledged"`
	UnknownOutcome   int `json:"unknown_outcome"`
}

type unplannedSummary struct {
	Rounds int `json:"rounds"`
	// TookBack counts the rounds whose killed writer took the role back.
	TookBack       int     `json:"took_back"`
	FirstWriteP50S float64 `json:"first_write_p50_s"`
	FirstWriteMaxS float64 `json:"first_write_max_s"`
	DetectP50S     float64 `json:"detect_p50_s"`
	DetectMaxS     float64 `json:"detect_max_s"`
	PromoteP50S    float64 `json:"promote_p50_s"`
	PromoteMaxS    float64 `json:"promote_max_s"`
	ReadGapP50S    float64 `json:"read_gap_p50_s"`
	ReadGapMaxS    float64 `json:"read_gap_max_s"`
	// The targets, for comparison.
	TargetFirstWriteP50S float64 `json:"target_first_write_p50_s"`
	TargetFirstWriteMaxS float64 `json:"target_first_write_max_s"`
}

type plannedSummary struct {
	Rounds           int     `json:"rounds"`
	PauseP50MS       float64 `json:"pause_p50_ms"`
	PauseMaxMS       float64 `json:"pause_max_ms"`
	TookP50MS        float64 `json:"took_p50_ms"`
	TookMaxMS        float64 `json:"took_max_ms"`
	TargetPauseP50MS float64 `json:"target_pause_p50_ms"`
}

func benchFailoverCmd() *cobra.Command {
	o := failoverBenchOptions{}
	cmd := &cobra.Command{
		Use:   "failover",
		Short: "Kill the writer under load, and switch it over, and measure how long writes and reads stop",
		Long: `Measure failover. Without --cluster it runs its own cluster with
"borealis up --replicas 2" in a temporary directory (three control planes, six
storage nodes, the writer, r1, r2 and the router), so that it measures what
up runs, and restarts instances through up as "borealis restart" does. With
--cluster it uses the cluster of that cluster.json, which a running
"borealis up" must manage (a killed instance is restarted through its
up.sock).

Through the whole run, --clients clients insert one row each per
transaction through the router's cluster endpoint, each with a key of its
own, and --readers clients query through the reader endpoint. Every
acknowledged key is recorded, and so is every insert whose outcome the
client could not know.

Each of --rounds rounds SIGKILLs the writer (the lease holder) and measures
the detection (from the kill to the control plane's detected time), the
promotion (from the detection to the new writer serving, with its lease,
epoch, recovery and open steps), the time from the kill to the first insert
the new writer acknowledged, and the longest gap between successful reads.
It then restarts the killed instance and waits until it streams from the new
writer as a replica. Each of --planned-rounds rounds then asks for a
switchover (as "borealis failover" does) and measures the longest gap
between acknowledged inserts around it. Before every round the cluster is
healthy and has run the load for --between.

After each round, and at the end, it reads every key back through the
cluster endpoint: an acknowledged insert missing is lost, and the command
fails. Inserts of unknown outcome may be there or not. It drops its table
from --cluster's volume unless --keep. Progress goes to stderr.`,
		Args: noArgs(""),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("base-port") && o.clusterFile != "" {
				o.basePort = 0
			}
			if err := o.validate(); err != nil {
				return err
			}
			rep, err := runFailoverBench(cmd.Context(), o, cmd.ErrOrStderr())
			if rep == nil {
				return err
			}
			if err == nil && rep.LostAcknowledged > 0 {
				err = fmt.Errorf("%d acknowledged inserts are missing from table %s: an acknowledged commit was lost", rep.LostAcknowledged, rep.Table)
			}
			if perr := printBenchReport(cmd.OutOrStdout(), o.asJSON, rep, func(out io.Writer) { printFailoverBench(out, rep) }); perr != nil {
				return perr
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.clusterFile, "cluster", "", "cluster.json of a running `borealis up` to use instead of starting one")
	f.StringVar(&o.dir, "dir", "", "parent directory for the temporary cluster (default: the system temp dir)")
	f.IntVar(&o.basePort, "base-port", 7400, "loopback ports of the benchmark's own cluster, as up's --base-port: this one to 37 above it")
	f.IntVar(&o.rounds, "rounds", 5, "rounds of SIGKILL of the writer")
	f.IntVar(&o.plannedRounds, "planned-rounds", 5, "rounds of planned switchover")
	f.IntVar(&o.clients, "clients", 4, "concurrent insert clients on the cluster endpoint")
	f.IntVar(&o.readers, "readers", 2, "concurrent query clients on the reader endpoint")
	f.DurationVar(&o.between, "between", 2*time.Second, "steady load before each round, once the cluster is healthy")
	f.BoolVar(&o.asJSON, "json", false, "print the figures as one JSON object")
	f.BoolVar(&o.keep, "keep", false, "keep what the benchmark made: its table in --cluster's volume, or its own cluster's directory")
	return cmd
}

// failoverEnv is the cluster under test.
type failoverEnv struct {
	bin         string
	clusterFile string
	clusterDir  string // where up runs it: its up.sock
	volume      string
	cluster     string // http://host:port of the router's cluster endpoint
	reader      string // and of its reader endpoint
	hc          *http.Client
	progress    io.Writer
}

func runFailoverBench(ctx context.Context, o failoverBenchOptions, progress io.Writer) (rep *failoverBenchReport, err error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{MaxIdleConns: 64, MaxIdleConnsPerHost: 32, IdleConnTimeout: time.Minute, DisableCompression: true}
	defer tr.CloseIdleConnections()
	env := &failoverEnv{bin: bin, clusterFile: o.clusterFile, hc: &http.Client{Transport: tr}, progress: progress}
	if o.clusterFile == "" {
		_, tmp, removeTmp, err := benchDirs(o.dir, "", "bench-failover-")
		if err != nil {
			return nil, err
		}
		defer keepOrRemove(o.keep, tmp, removeTmp, progress)
		stop, err := env.startUp(ctx, filepath.Join(tmp, "cluster"), o.basePort)
		if stop != nil {
			defer stop()
		}
		if err != nil {
			return nil, err
		}
	}
	if err := env.load(ctx); err != nil {
		return nil, err
	}
	conn, err := control.Dial(env.controlAddrs())
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctl := pb.NewControlClient(conn)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watch := watchWriter(wctx, ctl, env.volume)

	c := &sqlclient.Client{Endpoint: env.cluster, HTTP: env.hc}
	table, err := freshBenchTable(ctx, c)
	if err != nil {
		return nil, err
	}
	if _, err := c.Execute(ctx, []sqlclient.Statement{{SQL: "CREATE TABLE " + table + "(k INTEGER PRIMARY KEY, v TEXT)"}}, false); err != nil {
		return nil, fmt.Errorf("create table %s: %w", table, err)
	}
	rep = &failoverBenchReport{Clients: o.clients, Readers: o.readers, Volume: env.volume, Table: table, ClusterFile: env.clusterFile}
	if o.clusterFile != "" && !o.keep {
		defer func() {
			if derr := dropTables(c, []string{table}); derr != nil {
				fmt.Fprintln(progress, "borealis:", derr)
				if err == nil {
					err = derr
				}
				return
			}
			fmt.Fprintf(progress, "dropped table %s\n", table)
			if rep != nil {
				rep.TableDropped = true
			}
		}()
	}

	load := &failoverLoad{hc: env.hc, cluster: env.cluster, reader: env.reader, table: table,
		refused: map[string]int{}, unknownCodes: map[string]int{}, readErrs: map[string]int{}}
	loadStart := time.Now()
	load.start(ctx, o.clients, o.readers)
	defer load.halt()
	fmt.Fprintf(progress, "load: %d insert clients on %s, %d query clients on %s, into table %s\n", o.clients, env.cluster, o.readers, env.reader, table)

	var missingBefore int
	check := func(r *failoverRound) error {
		missing, err := load.lost(ctx, c, false)
		if err != nil {
			return err
		}
		r.LostAcknowledged = max(0, missing-missingBefore)
		missingBefore = max(missingBefore, missing)
		return nil
	}
	for i := range o.rounds + o.plannedRounds {
		if err := env.settle(ctx, watch, load, o.between); err != nil {
			return nil, fmt.Errorf("before round %d: %w", i+1, err)
		}
		var r failoverRound
		if i < o.rounds {
			r, err = env.unplannedRound(ctx, watch, load)
		} else {
			r, err = env.plannedRound(ctx, ctl, load)
		}
		r.Round = i + 1
		if err == nil {
			err = check(&r)
		}
		if err != nil {
			// The rounds done so far are in the progress above.
			return nil, fmt.Errorf("round %d (%s): %w", i+1, r.Kind, err)
		}
		rep.Rounds = append(rep.Rounds, r)
		fmt.Fprintf(progress, "round %d: %s\n", r.Round, r.line())
	}
	load.halt()
	rep.DurationS = time.Since(loadStart).Seconds()
	fmt.Fprintln(progress, "reading every key back through the cluster endpoint")
	if _, err := load.lost(ctx, c, true); err != nil {
		return nil, err
	}
	load.finish(rep)
	summarize(rep)
	return rep, nil
}

// startUp runs `borealis up --replicas 2` in dir (see startUpCluster).
func (e *failoverEnv) startUp(ctx context.Context, dir string, basePort int) (stop func(), err error) {
	e.clusterFile, stop, err = startUpCluster(ctx, e.bin, e.progress, dir, "--replicas", "2", "--base-port", strconv.Itoa(basePort))
	return stop, err
}

// load reads the cluster file: the router's endpoints, the control
// planes, the volume.
func (e *failoverEnv) load(ctx context.Context) error {
	f, err := cluster.ReadFile(e.clusterFile)
	if err != nil {
		return err
	}
	e.clusterDir = filepath.Dir(e.clusterFile)
	if _, err := os.Stat(filepath.Join(e.clusterDir, upSocketName)); err != nil {
		return fmt.Errorf("%s: no `borealis up` manages this cluster (%v); the benchmark restarts the instances it kills through it", e.clusterFile, err)
	}
	if f.ControlAddrs() == "" {
		return fmt.Errorf("%s lists no control plane", e.clusterFile)
	}
	r, ok := f.Find("router")
	if !ok || r.ClusterEndpoint == "" || r.ReaderEndpoint == "" {
		return fmt.Errorf("%s lists no router: the benchmark measures its cluster endpoint", e.clusterFile)
	}
	e.cluster, e.reader = "http://"+r.ClusterEndpoint, "http://"+r.ReaderEndpoint
	if len(e.instances(f)) < 2 {
		return fmt.Errorf("%s lists fewer than two database instances: a failover needs a replica to promote", e.clusterFile)
	}
	for _, in := range e.instances(f) {
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		h, err := e.health(hctx, in)
		cancel()
		if err == nil && h.Volume != "" {
			e.volume = h.Volume
			return nil
		}
	}
	return fmt.Errorf("no database instance of %s answers with its volume", e.clusterFile)
}

func (e *failoverEnv) controlAddrs() string {
	f, err := cluster.ReadFile(e.clusterFile)
	if err != nil {
		return ""
	}
	return f.ControlAddrs()
}

// instances are the database instances of the cluster file, whatever
// their role now.
func (e *failoverEnv) instances(f *cluster.File) []cluster.Component {
	var out []cluster.Component
	for _, c := range f.Components {
		if c.Role == "writer" || c.Role == "replica" {
			out = append(out, c)
		}
	}
	return out
}

func (e *failoverEnv) health(ctx context.Context, c cluster.Component) (*sqlclient.Health, error) {
	return (&sqlclient.Client{Endpoint: "http://" + c.Addr, HTTP: e.hc}).Health(ctx)
}

// settle waits until the volume has a serving writer, no failover is
// under way, every other instance streams from it as a replica and the
// new writer has acknowledged an insert; then lets the load run for
// between.
func (e *failoverEnv) settle(ctx context.Context, w *writerWatch, load *failoverLoad, between time.Duration) error {
	from := time.Now()
	err := pollFor(ctx, settleWithin, "every instance to be healthy", func(ctx context.Context) error {
		st := w.current()
		if st == nil || st.Holder == "" {
			return errors.New("no writer holds the lease")
		}
		if f := st.Failover; f != nil && f.State != control.FailoverDone && f.State != control.FailoverFailed {
			return fmt.Errorf("failover round %d is %s", f.Round, f.State)
		}
		f, err := cluster.ReadFile(e.clusterFile)
		if err != nil {
			return err
		}
		for _, in := range e.instances(f) {
			hctx, cancel := context.WithTimeout(ctx, time.Second)
			h, err := e.health(hctx, in)
			cancel()
			switch {
			case err != nil:
				return fmt.Errorf("%s: %w", in.ID, err)
			case in.ID == st.Holder && (h.Role != "writer" || !h.Ready):
				return fmt.Errorf("%s holds the lease but is %s (%s)", in.ID, h.Role, h.Status)
			case in.ID != st.Holder && (h.Role != "replica" || h.Replica == nil || h.Replica.Stream != "streaming"):
				return fmt.Errorf("%s is not a streaming replica yet (%s, %s)", in.ID, h.Role, h.Status)
			}
		}
		if _, ok := load.firstAck(from, func(a ack) bool { return a.by == st.Holder }); !ok {
			return fmt.Errorf("no insert acknowledged by %s yet", st.Holder)
		}
		return nil
	})
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(between):
		return nil
	}
}

// unplannedRound SIGKILLs the writer, measures the failover, restarts the
// killed instance and waits until it streams as a replica.
func (e *failoverEnv) unplannedRound(ctx context.Context, w *writerWatch, load *failoverLoad) (failoverRound, error) {
	r := failoverRound{Kind: control.FailoverUnplanned}
	st := w.current()
	var prevRound uint64
	if st.Failover != nil {
		prevRound = st.Failover.Round
	}
	prevEpoch := st.Epoch
	victim := st.Holder
	r.From = victim
	f, err := cluster.ReadFile(e.clusterFile)
	if err != nil {
		return r, err
	}
	comp, ok := f.ByID(victim)
	if !ok || comp.Pid <= 0 {
		return r, fmt.Errorf("the writer %s is not in %s", victim, e.clusterFile)
	}
	// The pid must still be the writer's: cluster.json names the process
	// that runs, but check before killing it.
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	h, err := e.health(hctx, comp)
	cancel()
	if err != nil || h.ID != victim || h.Role != "writer" {
		return r, fmt.Errorf("%s (pid %d) does not answer as the writer: %v", victim, comp.Pid, err)
	}
	fmt.Fprintf(e.progress, "round: SIGKILL the writer %s (pid %d)\n", victim, comp.Pid)
	killAt := time.Now()
	if err := syscall.Kill(comp.Pid, syscall.SIGKILL); err != nil {
		return r, fmt.Errorf("kill %s (pid %d): %w", victim, comp.Pid, err)
	}
	var fo *pb.FailoverInfo
	var unrecorded time.Time // when the lease was first seen retaken with no failover round
	err = pollFor(ctx, failoverWithin, "a failover of "+victim+" to be done", func(context.Context) error {
		st := w.current()
		if st.Failover == nil || st.Failover.Round <= prevRound {
			// The killed instance, started again (up restarts what
			// dies), can take the lease back before the leader records
			// a failover; give the leader time to record one first.
			if st.Holder != victim || st.Epoch <= prevEpoch || st.Writer == nil {
				return errors.New("no failover detected yet")
			}
			if unrecorded.IsZero() {
				unrecorded = time.Now()
			}
			if time.Since(unrecorded) < 2*time.Second {
				return errors.New("the lease was taken back with no failover round yet")
			}
			fo = &pb.FailoverInfo{From: victim, Target: victim, Epoch: st.Epoch, DetectedUnixMs: st.AcquiredUnixMs, DoneUnixMs: st.AcquiredUnixMs}
			return nil
		}
		if st.Failover.State != control.FailoverDone {
			return fmt.Errorf("failover round %d is %s: %s", st.Failover.Round, st.Failover.State, st.Failover.Why)
		}
		fo = st.Failover
		return nil
	})
	if err != nil {
		return r, err
	}
	r.fromRecord(fo)
	// Without a failover round, the detection is when the lease was
	// taken again, and there was no promotion.
	r.DetectS = ptr(time.UnixMilli(fo.DetectedUnixMs).Sub(killAt).Seconds())
	r.PromoteS = float64(fo.DoneUnixMs-fo.DetectedUnixMs) / 1000
	// A write sent before the kill and answered after it counts only if
	// the new writer answered it (the router held it for the new writer).
	first, err := load.awaitAck(ctx, killAt, func(a ack) bool { return a.start.After(killAt) || (a.by != "" && a.by != victim) })
	if err != nil {
		return r, err
	}
	r.FirstWriteS = first.Sub(killAt).Seconds()

	if fo.Target == victim {
		// The killed instance, started again (up restarts what dies),
		// took the lease before the chosen replica did: it serves as the
		// writer again, and there is nothing to rejoin.
		fmt.Fprintf(e.progress, "round: %s took the writer lease back itself; no replica was promoted\n", victim)
		r.TookBack = true
		end := time.Now()
		r.ReadGapS = load.readGap(killAt, end).Seconds()
		r.UnknownOutcome = load.unknownBetween(killAt, end)
		return r, nil
	}
	// up may have restarted it already; then restart waits for it.
	fmt.Fprintf(e.progress, "round: restarting %s\n", victim)
	if out, err := exec.CommandContext(ctx, e.bin, "restart", victim, "--dir", e.clusterDir, "--wait", rejoinWithin.String()).CombinedOutput(); err != nil {
		return r, fmt.Errorf("restart %s: %v: %s", victim, err, strings.TrimSpace(string(out)))
	}
	err = pollFor(ctx, rejoinWithin, victim+" to stream from the new writer", func(ctx context.Context) error {
		hctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		h, err := e.health(hctx, comp)
		switch {
		case err != nil:
			return err
		case h.Role != "replica" || h.Replica == nil || h.Replica.Stream != "streaming":
			return fmt.Errorf("%s is %s (%s)", victim, h.Role, h.Status)
		}
		return nil
	})
	if err != nil {
		return r, err
	}
	end := time.Now()
	r.RejoinS = ptr(end.Sub(killAt).Seconds())
	r.ReadGapS = load.readGap(killAt, end).Seconds()
	r.UnknownOutcome = load.unknownBetween(killAt, end)
	return r, nil
}

// plannedRound asks for a switchover, as `borealis failover` does, and
// measures the pause in acknowledged inserts around it.
func (e *failoverEnv) plannedRound(ctx context.Context, ctl pb.ControlClient, load *failoverLoad) (failoverRound, error) {
	r := failoverRound{Kind: control.FailoverPlanned}
	var req *pb.FailoverInfo
	var at time.Time
	// settle saw no failover under way; one that the control plane has
	// not quite closed is refused for a moment.
	err := pollFor(ctx, 10*time.Second, "the switchover to be accepted", func(ctx context.Context) error {
		at = time.Now()
		var err error
		req, err = ctl.Switchover(ctx, &pb.SwitchoverRequest{Volume: e.volume})
		if status.Code(err) == codes.FailedPrecondition {
			return errors.New(status.Convert(err).Message())
		}
		if err != nil {
			return retryStop{err}
		}
		return nil
	})
	if err != nil {
		return r, err
	}
	fmt.Fprintf(e.progress, "round: switchover round %d, %s -> %s\n", req.Round, req.From, req.Target)
	wctx, cancel := context.WithTimeout(ctx, failoverWithin)
	fo, err := awaitFailover(wctx, ctl, e.volume, req.Round)
	cancel()
	if err != nil {
		return r, err
	}
	r.fromRecord(fo)
	r.From = req.From
	if fo.State != control.FailoverDone {
		return r, fmt.Errorf("switchover round %d %s: %s", fo.Round, fo.State, fo.Why)
	}
	r.PromoteS = float64(fo.DoneUnixMs-fo.DetectedUnixMs) / 1000
	first, err := load.awaitAck(ctx, at, func(a ack) bool { return a.by == fo.Target })
	if err != nil {
		return r, err
	}
	r.FirstWriteS = first.Sub(at).Seconds()
	r.PauseMS = ptr(ms(load.ackGap(at, first)))
	r.ReadGapS = load.readGap(at, first).Seconds()
	r.UnknownOutcome = load.unknownBetween(at, first)
	return r, nil
}

// fromRecord takes the figures of the control plane's failover record.
func (r *failoverRound) fromRecord(f *pb.FailoverInfo) {
	r.FailoverRound, r.From, r.To = f.Round, f.From, f.Target
	r.LeaseMS, r.EpochMS, r.RecoveryMS, r.OpenMS, r.DrainMS, r.Warm = f.LeaseMs, f.EpochMs, f.RecoveryMs, f.OpenMs, f.DrainMs, f.Warm
	if f.DecidedUnixMs > 0 {
		r.DecideMS = f.DecidedUnixMs - f.DetectedUnixMs
	}
	if f.DoneUnixMs > 0 {
		r.TookMS = f.DoneUnixMs - f.DetectedUnixMs
	}
}

func ptr[T any](v T) *T { return &v }

// retryStop ends pollFor at once with its error.
type retryStop struct{ err error }

func (r retryStop) Error() string { return r.err.Error() }

// pollFor calls check every 50 ms until it returns nil, ctx ends, within
// passes (then it says what it waited for and what check said last), or
// check returns a retryStop.
func pollFor(ctx context.Context, within time.Duration, what string, check func(context.Context) error) error {
	deadline := time.Now().Add(within)
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		var stop retryStop
		if errors.As(err, &stop) {
			return stop.err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waited %s for %s: %w", within, what, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// writerWatch keeps the newest WriterState of a volume, from WatchWriter.
type writerWatch struct {
	mu sync.Mutex
	st *pb.WriterState
}

func watchWriter(ctx context.Context, ctl pb.ControlClient, volume string) *writerWatch {
	w := &writerWatch{}
	go func() {
		for ctx.Err() == nil {
			if stream, err := ctl.WatchWriter(ctx, &pb.WatchWriterRequest{Volume: volume}); err == nil {
				for {
					st, err := stream.Recv()
					if err != nil {
						break
					}
					w.mu.Lock()
					w.st = st
					w.mu.Unlock()
				}
			}
			// The stream ends when its control plane stops; another
			// answers the next call.
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *writerWatch) current() *pb.WriterState {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.st
}

// ack is an acknowledged insert: when it was sent and answered, and by
// which instance (the router's InstanceHeader).
type ack struct {
	key       int64
	start, at time.Time
	by        string
}

// outcome is an insert that was not acknowledged.
type outcome struct {
	key int64
	at  time.Time
}

// failoverLoad is the benchmark's steady load and what it saw.
type failoverLoad struct {
	hc               *http.Client
	cluster, reader  string
	table            string
	next             atomic.Int64
	stopped          atomic.Bool
	wg               sync.WaitGroup
	mu               sync.Mutex
	acks             []ack
	unknown, refusal []outcome
	refused          map[string]int
	unknownCodes     map[string]int
	reads            []time.Time
	readErrs         map[string]int
	// The final read-back, set by lost(final).
	missing, unknownPresent, refusedPresent int
}

// refusedCodes are the errors that say an insert was not applied: the
// router found no writer, or the instance refused it before running it.
// Every other failure (the router's unavailable or outcome_unknown, a
// transport error, a timeout, storage_unavailable) leaves it unknown.
var refusedCodes = map[string]bool{
	router.CodeNoWriter: true, dbserver.CodeNotWriter: true, dbserver.CodeNotReady: true, dbserver.CodeBusy: true,
}

// errorCode names a failed request's error for counting: its API code,
// else its HTTP status, else "transport".
func errorCode(err error) string {
	var e *sqlclient.Error
	switch {
	case !errors.As(err, &e):
		return "transport"
	case e.Code != "":
		return e.Code
	}
	return fmt.Sprintf("http_%d", e.Status)
}

func (l *failoverLoad) start(ctx context.Context, clients, readers int) {
	for i := range clients {
		l.wg.Add(1)
		go l.inserter(ctx, i)
	}
	for range readers {
		l.wg.Add(1)
		go l.queryer(ctx)
	}
}

// halt stops the load once every request in flight has its answer.
func (l *failoverLoad) halt() {
	l.stopped.Store(true)
	l.wg.Wait()
}

// requestTimeout bounds one request: longer than the router holds a
// request for a new writer (--failover-wait, 10 s by default).
const requestTimeout = 30 * time.Second

func (l *failoverLoad) inserter(ctx context.Context, i int) {
	defer l.wg.Done()
	rng := rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
	sql := "INSERT INTO " + l.table + "(k, v) VALUES (?, ?)"
	for !l.stopped.Load() && ctx.Err() == nil {
		key := l.next.Add(1)
		body, _ := json.Marshal(executeBody{Statements: []sqlclient.Statement{{SQL: sql, Params: []any{key, benchText(rng)}}}, Transaction: true})
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		start := time.Now()
		var reply executeReply
		hdr, at, err := postJSONAt(rctx, l.hc, l.cluster+"/v1/execute", body, &reply)
		cancel()
		l.mu.Lock()
		switch code := errorCode(err); {
		case err == nil:
			l.acks = append(l.acks, ack{key: key, start: start, at: at, by: hdr.Get(router.InstanceHeader)})
		case refusedCodes[code]:
			l.refused[code]++
			l.refusal = append(l.refusal, outcome{key, at})
		default:
			l.unknownCodes[code]++
			l.unknown = append(l.unknown, outcome{key, at})
		}
		l.mu.Unlock()
		if err != nil {
			l.pause(ctx)
		}
	}
}

func (l *failoverLoad) queryer(ctx context.Context) {
	defer l.wg.Done()
	body, _ := json.Marshal(sqlclient.Statement{SQL: "SELECT max(k) FROM " + l.table})
	for !l.stopped.Load() && ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		_, err := postJSON(rctx, l.hc, l.reader+"/v1/query", body, nil)
		cancel()
		now := time.Now()
		l.mu.Lock()
		if err == nil {
			l.reads = append(l.reads, now)
		} else {
			l.readErrs[errorCode(err)]++
		}
		l.mu.Unlock()
		if err != nil {
			l.pause(ctx)
		}
	}
}

// pause keeps a client whose request failed at once from spinning.
func (l *failoverLoad) pause(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Millisecond):
	}
}

// firstAck is the earliest answer after from of an acknowledged insert
// that ok accepts.
func (l *failoverLoad) firstAck(from time.Time, ok func(ack) bool) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first time.Time
	// acks is in the order the answers were recorded, which is theirs
	// but for clients answered at the same moment: from the newest back,
	// a second before from is far enough.
	for i := len(l.acks) - 1; i >= 0 && l.acks[i].at.After(from.Add(-time.Second)); i-- {
		if a := l.acks[i]; a.at.After(from) && ok(a) && (first.IsZero() || a.at.Before(first)) {
			first = a.at
		}
	}
	return first, !first.IsZero()
}

// awaitAck waits for firstAck.
func (l *failoverLoad) awaitAck(ctx context.Context, from time.Time, ok func(ack) bool) (time.Time, error) {
	var first time.Time
	err := pollFor(ctx, failoverWithin, "an insert acknowledged by the new writer", func(context.Context) error {
		var found bool
		if first, found = l.firstAck(from, ok); !found {
			return errors.New("none yet")
		}
		return nil
	})
	return first, err
}

// ackGap is the longest time between consecutive acknowledged inserts
// (by when their answers arrived) around [from, to].
func (l *failoverLoad) ackGap(from, to time.Time) time.Duration {
	l.mu.Lock()
	at := make([]time.Time, len(l.acks))
	for i, a := range l.acks {
		at[i] = a.at
	}
	l.mu.Unlock()
	return longestGap(at, from, to)
}

// readGap is the longest time between successful reads around [from, to].
func (l *failoverLoad) readGap(from, to time.Time) time.Duration {
	l.mu.Lock()
	at := slices.Clone(l.reads)
	l.mu.Unlock()
	return longestGap(at, from, to)
}

// longestGap is the longest time between consecutive events of at (in any
// order) among those in [from, to], the last one before from and the first
// one after to; where there is none before from (or after to), from (or
// to) stands in.
func longestGap(at []time.Time, from, to time.Time) time.Duration {
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	lo := sort.Search(len(at), func(i int) bool { return !at[i].Before(from) })
	hi := sort.Search(len(at), func(i int) bool { return at[i].After(to) })
	pts := []time.Time{from}
	if lo > 0 {
		pts[0] = at[lo-1]
	}
	pts = append(pts, at[lo:hi]...)
	if hi < len(at) {
		pts = append(pts, at[hi])
	} else {
		pts = append(pts, to)
	}
	var gap time.Duration
	for i := 1; i < len(pts); i++ {
		gap = max(gap, pts[i].Sub(pts[i-1]))
	}
	return gap
}

func (l *failoverLoad) unknownBetween(from, to time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, u := range l.unknown {
		if !u.at.Before(from) && !u.at.After(to) {
			n++
		}
	}
	return n
}

// lost reads every key of the table back through the cluster endpoint and
// returns how many inserts acknowledged before it began are missing. The
// final one (after halt) also counts what became of the others.
func (l *failoverLoad) lost(ctx context.Context, c *sqlclient.Client, final bool) (int, error) {
	l.mu.Lock()
	acked := make([]int64, len(l.acks))
	for i, a := range l.acks {
		acked[i] = a.key
	}
	l.mu.Unlock()
	present := map[int64]bool{}
	sql := fmt.Sprintf("SELECT k FROM %s WHERE k > ? ORDER BY k LIMIT %d", l.table, scanPage)
	for after := int64(0); ; {
		var rows *sqlclient.Rows
		err := pollFor(ctx, 30*time.Second, "the read-back of table "+l.table, func(ctx context.Context) error {
			qctx, cancel := context.WithTimeout(ctx, requestTimeout)
			defer cancel()
			var err error
			rows, err = c.Query(qctx, sql, after)
			return err
		})
		if err != nil {
			return 0, err
		}
		for _, r := range rows.Rows {
			k, ok := r[0].(int64)
			if !ok {
				return 0, fmt.Errorf("table %s holds key %v, not an integer", l.table, r[0])
			}
			present[k] = true
			after = k
		}
		if len(rows.Rows) < scanPage {
			break
		}
	}
	missing := 0
	for _, k := range acked {
		if !present[k] {
			missing++
		}
	}
	if final {
		l.mu.Lock()
		l.missing = missing
		for _, u := range l.unknown {
			if present[u.key] {
				l.unknownPresent++
			}
		}
		for _, u := range l.refusal {
			if present[u.key] {
				l.refusedPresent++
			}
		}
		l.mu.Unlock()
	}
	return missing, nil
}

// finish puts the load's totals in rep.
func (l *failoverLoad) finish(rep *failoverBenchReport) {
	l.mu.Lock()
	defer l.mu.Unlock()
	rep.LostAcknowledged, rep.Acknowledged = l.missing, len(l.acks)
	rep.UnknownOutcome, rep.UnknownPresent, rep.RefusedPresent = len(l.unknown), l.unknownPresent, l.refusedPresent
	rep.Refused, rep.UnknownCodes = l.refused, l.unknownCodes
	rep.Reads, rep.ReadErrors = len(l.reads), l.readErrs
	if rep.DurationS > 0 {
		rep.InsertsPerS = float64(len(l.acks)) / rep.DurationS
	}
}

// summarize computes the p50 and max of the rounds.
func summarize(rep *failoverBenchReport) {
	var first, detect, promote, gap, pause, took []time.Duration
	sec := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	for _, r := range rep.Rounds {
		if r.Kind == control.FailoverPlanned {
			pause = append(pause, time.Duration(*r.PauseMS*float64(time.Millisecond)))
			took = append(took, time.Duration(r.TookMS)*time.Millisecond)
			continue
		}
		if r.TookBack {
			rep.Unplanned.TookBack++
		}
		first, detect, promote, gap = append(first, sec(r.FirstWriteS)), append(detect, sec(*r.DetectS)), append(promote, sec(r.PromoteS)), append(gap, sec(r.ReadGapS))
	}
	u := &rep.Unplanned
	u.Rounds = len(first)
	u.TargetFirstWriteP50S, u.TargetFirstWriteMaxS = targetFirstWriteP50.Seconds(), targetFirstWriteMax.Seconds()
	if len(first) > 0 {
		u.FirstWriteP50S, u.FirstWriteMaxS = median(first).Seconds(), slices.Max(first).Seconds()
		u.DetectP50S, u.DetectMaxS = median(detect).Seconds(), slices.Max(detect).Seconds()
		u.PromoteP50S, u.PromoteMaxS = median(promote).Seconds(), slices.Max(promote).Seconds()
		u.ReadGapP50S, u.ReadGapMaxS = median(gap).Seconds(), slices.Max(gap).Seconds()
	}
	p := &rep.Planned
	p.Rounds = len(pause)
	p.TargetPauseP50MS = ms(targetPauseP50)
	if len(pause) > 0 {
		p.PauseP50MS, p.PauseMaxMS = ms(median(pause)), ms(slices.Max(pause))
		p.TookP50MS, p.TookMaxMS = ms(median(took)), ms(slices.Max(took))
	}
}

// printBenchReport prints a benchmark's report: as one indented JSON
// object, or as text.
func printBenchReport(out io.Writer, asJSON bool, rep any, text func(io.Writer)) error {
	if !asJSON {
		text(out)
		return nil
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// line is a round in one line of progress.
func (r failoverRound) line() string {
	s := fmt.Sprintf("%s, %s -> %s (failover round %d): promote %.3fs, first write %.3fs, read gap %.3fs, lost %d, unknown outcome %d",
		r.Kind, r.From, r.To, r.FailoverRound, r.PromoteS, r.FirstWriteS, r.ReadGapS, r.LostAcknowledged, r.UnknownOutcome)
	if r.DetectS != nil {
		s += fmt.Sprintf(", detect %.3fs", *r.DetectS)
	}
	if r.PauseMS != nil {
		s += fmt.Sprintf(", pause %.0fms", *r.PauseMS)
	}
	return s
}

func printFailoverBench(out io.Writer, rep *failoverBenchReport) {
	fmt.Fprintf(out, "failover under load: %d clients inserting one row per transaction through the cluster endpoint, %d querying the reader endpoint; table %s of volume %s\n",
		rep.Clients, rep.Readers, rep.Table, rep.Volume)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "round\tkind\tfrom -> to\tdetect s\tpromote s\tlease ms\tepoch ms\trecovery ms\topen ms\tdrain ms\tfirst write s\tread gap s\tpause ms\tlost\tunknown\t")
	for _, r := range rep.Rounds {
		detect, pause, drain := "-", "-", "-"
		if r.DetectS != nil {
			detect = fmt.Sprintf("%.3f", *r.DetectS)
		}
		if r.PauseMS != nil {
			pause = fmt.Sprintf("%.0f", *r.PauseMS)
			drain = strconv.Itoa(int(r.DrainMS))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s -> %s\t%s\t%.3f\t%d\t%d\t%d\t%d\t%s\t%.3f\t%.3f\t%s\t%d\t%d\t\n",
			r.Round, r.Kind, r.From, r.To, detect, r.PromoteS, r.LeaseMS, r.EpochMS, r.RecoveryMS, r.OpenMS, drain, r.FirstWriteS, r.ReadGapS, pause, r.LostAcknowledged, r.UnknownOutcome)
	}
	tw.Flush()
	fmt.Fprintln(out)
	if u := rep.Unplanned; u.Rounds > 0 {
		fmt.Fprintf(out, "unplanned (%d rounds), from the kill to the first acknowledged write: p50 %.3fs, max %.3fs (target p50 <= %.1fs, max <= %.0fs)\n",
			u.Rounds, u.FirstWriteP50S, u.FirstWriteMaxS, u.TargetFirstWriteP50S, u.TargetFirstWriteMaxS)
		fmt.Fprintf(out, "  detect p50 %.3fs, max %.3fs; promote p50 %.3fs, max %.3fs; longest read gap p50 %.3fs, max %.3fs\n",
			u.DetectP50S, u.DetectMaxS, u.PromoteP50S, u.PromoteMaxS, u.ReadGapP50S, u.ReadGapMaxS)
		if u.TookBack > 0 {
			fmt.Fprintf(out, "  in %d of them the killed writer, started again, took the lease back before a replica was promoted\n", u.TookBack)
		}
	}
	if p := rep.Planned; p.Rounds > 0 {
		fmt.Fprintf(out, "planned (%d rounds), the longest pause between acknowledged writes: p50 %.0fms, max %.0fms (target p50 <= %.0fms); switchover took p50 %.0fms, max %.0fms\n",
			p.Rounds, p.PauseP50MS, p.PauseMaxMS, p.TargetPauseP50MS, p.TookP50MS, p.TookMaxMS)
	}
	fmt.Fprintf(out, "inserts: %d acknowledged (%.0f/s over %.1fs), lost_acknowledged %d; %d of unknown outcome (%d of them committed)",
		rep.Acknowledged, rep.InsertsPerS, rep.DurationS, rep.LostAcknowledged, rep.UnknownOutcome, rep.UnknownPresent)
	if len(rep.UnknownCodes) > 0 {
		fmt.Fprintf(out, " (%s)", formatCounts(rep.UnknownCodes))
	}
	if len(rep.Refused) > 0 {
		fmt.Fprintf(out, "; refused %s", formatCounts(rep.Refused))
	}
	fmt.Fprintln(out)
	if rep.RefusedPresent > 0 {
		fmt.Fprintf(out, "note: %d inserts refused before they ran were committed after all\n", rep.RefusedPresent)
	}
	fmt.Fprintf(out, "reads: %d successful", rep.Reads)
	if len(rep.ReadErrors) > 0 {
		fmt.Fprintf(out, "; failed %s", formatCounts(rep.ReadErrors))
	}
	fmt.Fprintln(out)
}

// formatCounts is "code n, code n" in the codes' order.
func formatCounts(m map[string]int) string {
	codes := make([]string, 0, len(m))
	for c := range m {
		codes = append(codes, c)
	}
	slices.Sort(codes)
	parts := make([]string, len(codes))
	for i, c := range codes {
		parts[i] = fmt.Sprintf("%s %d", c, m[c])
	}
	return strings.Join(parts, ", ")
}
