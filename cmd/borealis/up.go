package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/instance"
)

const (
	defaultDir      = "./borealis-data"
	defaultVolume   = "main"
	upSocketName    = "up.sock"
	writerID        = "writer"
	upLockName      = "up.lock"
	clusterFileName = "cluster.json"
	// addressesFileName keeps the addresses a cluster was first given, so a
	// resumed cluster listens where its catalog says its nodes are.
	addressesFileName = "addresses.json"
	// upPageSize is the page size of the volume `up` creates.
	upPageSize = 4096
	// upSettingsName keeps what the last `up` ran with (how many replicas),
	// so that `up` again resumes the same cluster.
	upSettingsName = "up.json"
	// writerAZ is the writer's AZ; replicas go round the AZs from the next.
	writerAZ = "a"
	// routerID is the router's component id; its reader endpoint's address
	// is kept in addresses.json under routerReaderKey.
	routerID        = "router"
	routerReaderKey = "router-reader"
	// maxReplicas is how many read replicas a volume has at most (DESIGN.md).
	maxReplicas = 15
	// defaultReplicas is how many `up` starts on a new cluster.
	defaultReplicas = 1
)

// The control planes `up` runs, one per AZ, each embedding one member of a
// three-member etcd. Their ports, from the base port P: c1's gRPC on P (where
// a cluster of one control plane had it), c2's and c3's on P+30 and P+31,
// the etcd members' client addresses on P+32..P+34 and their peer addresses
// on P+35..P+37: above what the storage nodes, the writer, 15 replicas and
// the router's two endpoints can take (up to P+24), so none collides.
var controlPlanes = []struct{ id, az string }{{"c1", "a"}, {"c2", "b"}, {"c3", "c"}}

// controlPorts are the offsets from the base port of the control planes'
// gRPC, etcd client and etcd peer addresses, in controlPlanes' order.
var controlPorts = struct{ grpc, client, peer [3]int }{[3]int{0, 30, 31}, [3]int{32, 33, 34}, [3]int{35, 36, 37}}

// controlPortSpan is how many ports from the base one `up` may use.
const controlPortSpan = 37

// legacyControlID is the one control plane of a cluster made before there
// were three; such a cluster keeps running one.
const legacyControlID = "control"

func clientKey(id string) string { return id + "-etcd-client" }
func peerKey(id string) string   { return id + "-etcd-peer" }

// controlKeys are the addresses.json keys of the control planes: their
// gRPC, etcd client and etcd peer addresses (or the one legacy control
// plane's).
func controlKeys(addrs map[string]string) []string {
	if _, ok := addrs[legacyControlID]; ok {
		return []string{legacyControlID}
	}
	var keys []string
	for _, cp := range controlPlanes {
		keys = append(keys, cp.id, clientKey(cp.id), peerKey(cp.id))
	}
	return keys
}

// controlSpecs are the control planes to start, from addrs.
func controlSpecs(addrs map[string]string) []cluster.ControlSpec {
	var out []cluster.ControlSpec
	for _, cp := range controlPlanes {
		out = append(out, cluster.ControlSpec{ID: cp.id, AZ: cp.az, Addr: addrs[cp.id], ClientAddr: addrs[clientKey(cp.id)], PeerAddr: addrs[peerKey(cp.id)]})
	}
	return out
}

// controlAddrList is the control planes' gRPC addresses, comma-separated.
func controlAddrList(addrs map[string]string) string {
	if a, ok := addrs[legacyControlID]; ok {
		return a
	}
	var list []string
	for _, cp := range controlPlanes {
		list = append(list, addrs[cp.id])
	}
	return strings.Join(list, ",")
}

// firstControlAddr is the address the other components' ports are planned
// from: c1's (or the legacy control plane's).
func firstControlAddr(addrs map[string]string) string {
	if a, ok := addrs[legacyControlID]; ok {
		return a
	}
	return addrs[controlPlanes[0].id]
}

// replicaID is the id of the i-th replica (from 1): r1, r2, ...
func replicaID(i int) string { return fmt.Sprintf("r%d", i) }

// replicaAZ is the AZ of the i-th replica (from 1): round the AZs a, b, c
// starting after the writer's, so r1 is in b, r2 in c, r3 in a, r4 in b...
func replicaAZ(i int) string { return [...]string{"b", "c", "a"}[(i-1)%3] }

// checkReplicas refuses a --replicas that `up` cannot run.
func checkReplicas(n int) error {
	switch {
	case n < 0:
		return fmt.Errorf("--replicas %d: want a number of read replicas from 0 to %d", n, maxReplicas)
	case n > maxReplicas:
		return fmt.Errorf("--replicas %d: a volume has at most %d read replicas", n, maxReplicas)
	}
	return nil
}

func upCmd() *cobra.Command {
	var dir, pgSize, repairRate string
	var basePort, replicas, nodesPerAZ int
	var heartbeatTimeout, writeTimeout, repairAfter, leaseTTL time.Duration
	cmd := &cobra.Command{
		Use:   "up [--dir D] [--replicas N] [--pg-size S] [--nodes-per-az N] [--repair-after D]",
		Short: "Run a whole local cluster: 3 control planes, 6 storage nodes, the writer, read replicas and the router, as separate processes",
		Long: `Run a whole local cluster in the foreground: three control planes c1, c2
and c3, one in each of AZs a, b and c, each embedding one member of a
three-member etcd (one of them leads, by election; the cluster goes on with
any two), six storage nodes s1..s6, two in each of AZs a, b and c, the
writer database instance (AZ a) serving SQL over HTTP, --replicas read
replicas r1..rN (AZs b, c, a, b, ... in turn) and the router, with its
cluster endpoint (to the writer) and its reader endpoint (queries balanced
over the replicas). Each is a separate process of this binary with its data
and log in --dir. It creates the volume "main" if there is none, starts the
writer on it, then the replicas and the router, writes D/cluster.json once
everything is ready, and runs until Ctrl-C, SIGTERM or SIGHUP (its terminal
closing), which stop every process. A database instance (the writer or a
replica) that dies is started again at once (later and later if it keeps dying):
if it was the writer, a failover has made a replica the writer meanwhile, and
it comes back as a replica. Any other process that dies is reported, not
restarted: "borealis restart ID" starts it again. Running "up" again on the same directory resumes the same
cluster, on the same addresses, with its data, and with as many replicas as
it last ran unless --replicas says otherwise.

Ports, from --base-port P: the control plane c1 on P, s1..s6 on P+1..P+6,
the writer on P+7, the replicas on P+8..P+7+N, then the router's cluster
endpoint and reader endpoint; c2 and c3 on P+30 and P+31, the etcd members'
client addresses on P+32..P+34 and peer addresses on P+35..P+37. A resumed
cluster keeps the ports it had; a replica or router it did not have yet gets
the ports after the highest (below P+30). A cluster made when up ran one
control plane (its addresses.json names "control") still runs one.

--nodes-per-az N runs N storage nodes in each AZ instead of two: s7, s8, ...
in AZs a, b, c in turn, on the ports after the router's (a resumed cluster
runs as many as it last ran unless told otherwise). A PG has two segments in
each AZ, so the others are spare capacity: the control plane moves the
segments of a storage node down for --repair-after (or drained or removed,
borealis node) to a live node of the same AZ that does not hold that PG.
Without a spare in the AZ, the PG stays degraded, writes go on, and status
says it waits for capacity there.`,
		Args: noArgs("; the cluster's directory is --dir DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkReplicas(replicas); err != nil {
				return err
			}
			if writeTimeout <= 0 {
				return fmt.Errorf("--write-timeout %s: want a positive duration", writeTimeout)
			}
			if leaseTTL < time.Second || leaseTTL%time.Second != 0 {
				return fmt.Errorf("--lease-ttl %s: want whole seconds, 1s or more (etcd's leases have whole seconds)", leaseTTL)
			}
			if nodesPerAZ < cluster.SegmentsPerAZ || nodesPerAZ > maxNodesPerAZ {
				return fmt.Errorf("--nodes-per-az %d: want %d to %d storage nodes per AZ (a PG has %d segments in each AZ)", nodesPerAZ, cluster.SegmentsPerAZ, maxNodesPerAZ, cluster.SegmentsPerAZ)
			}
			if repairAfter <= 0 {
				return fmt.Errorf("--repair-after %s: want a positive duration, such as 60s", repairAfter)
			}
			if repairRate != "" {
				if _, err := parseRepairRate(repairRate); err != nil {
					return err
				}
			}
			if heartbeatTimeout < time.Second {
				return fmt.Errorf("--heartbeat-timeout %s is too short; etcd leases have whole seconds, so use at least 1s", heartbeatTimeout)
			}
			size, err := parseSize(pgSize)
			if err != nil {
				return fmt.Errorf("--pg-size: %w", err)
			}
			if size%upPageSize != 0 {
				return fmt.Errorf("--pg-size %s: a PG holds whole pages, so its size must be a multiple of the %d-byte page", pgSize, upPageSize)
			}
			return runUp(cmd.Context(), cmd.OutOrStdout(), upOptions{
				dir: dir, pgSize: size, pgSizeSet: cmd.Flags().Changed("pg-size"),
				basePort: basePort, heartbeatTimeout: heartbeatTimeout, writeTimeout: writeTimeout, leaseTTL: leaseTTL,
				replicas: replicas, replicasSet: cmd.Flags().Changed("replicas"),
				nodesPerAZ: nodesPerAZ, nodesPerAZSet: cmd.Flags().Changed("nodes-per-az"), repairAfter: repairAfter,
				repairRate: repairRate,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", defaultDir, "directory for the cluster's data, logs and cluster.json")
	f.StringVar(&pgSize, "pg-size", "10GiB", "size of a protection group of a new volume, such as 1MiB, 64MiB or 10GiB")
	f.IntVar(&basePort, "base-port", 7100, "loopback ports: the control plane c1 on this one, s1..s6 on the next six, the writer's SQL HTTP on the one after, then the replicas', then the router's cluster and reader endpoints; c2, c3 and the etcd members on this one +30..+37 (a resumed cluster keeps its own)")
	f.IntVar(&replicas, "replicas", defaultReplicas, fmt.Sprintf("read replicas to run, r1..rN, 0 to %d (a resumed cluster: as many as it last ran)", maxReplicas))
	f.DurationVar(&heartbeatTimeout, "heartbeat-timeout", 3*time.Second, "a storage node that misses heartbeats this long is marked down")
	f.DurationVar(&leaseTTL, "lease-ttl", instance.DefaultLeaseTTL, "the writer lease's time to live, passed to every database instance (db --lease-ttl): a writer that cannot renew it in time stops serving, and a dead writer's replica is promoted about this long after its death; a longer one rides out a loaded machine's slow renewals")
	f.DurationVar(&writeTimeout, "write-timeout", 10*time.Second, "how long the writer's commits wait for a write quorum of segments that can make them durable (answering, and holding or catching up to them) before failing with storage_unavailable")
	f.IntVar(&nodesPerAZ, "nodes-per-az", cluster.SegmentsPerAZ, fmt.Sprintf("storage nodes to run in each of the 3 AZs, %d to %d: those beyond %d per AZ are spare capacity that repair moves segments to (a resumed cluster: as many as it last ran)", cluster.SegmentsPerAZ, maxNodesPerAZ, cluster.SegmentsPerAZ))
	f.DurationVar(&repairAfter, "repair-after", control.DefaultRepairAfter, "a storage node down this long has its segments moved to a spare node of its AZ")
	f.StringVar(&repairRate, "repair-rate", "", "the storage nodes' --repair-rate, bytes per second their hydrations copy, such as 64MiB, 0 for no limit (default: theirs, 100MiB)")
	return cmd
}

// maxNodesPerAZ bounds --nodes-per-az: the spares' ports lie below the
// control planes' (P+30).
const maxNodesPerAZ = 6

type upOptions struct {
	dir              string
	pgSize           uint64
	pgSizeSet        bool
	basePort         int
	heartbeatTimeout time.Duration
	writeTimeout     time.Duration
	leaseTTL         time.Duration
	// replicas is --replicas; replicasSet, whether it was given (else a
	// resumed cluster runs as many as it last did).
	replicas    int
	replicasSet bool
	// nodesPerAZ is --nodes-per-az, likewise.
	nodesPerAZ    int
	nodesPerAZSet bool
	repairAfter   time.Duration
	// repairRate is --repair-rate, passed to the storage nodes as given.
	repairRate string
}

func runUp(ctx context.Context, out io.Writer, o upOptions) error {
	// `borealis up | tee log` and Ctrl-C: the signal reaches tee too, and
	// the next line up prints meets a closed pipe. Unhandled, SIGPIPE would
	// kill up there, before it stops its processes and removes
	// cluster.json and up.sock; handled, the write fails with EPIPE, which
	// every print here ignores, and up shuts down as it should. (Notify,
	// not Ignore: an ignored signal would stay ignored in the processes up
	// starts.)
	sigpipe := make(chan os.Signal, 1)
	signal.Notify(sigpipe, syscall.SIGPIPE)
	defer signal.Stop(sigpipe)
	self := invocation()
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer unlock()

	addrs, resumed, err := plannedAddrs(dir, o.basePort)
	if err != nil {
		return err
	}
	nReplicas, last, err := replicaCount(dir, o.replicas, o.replicasSet, resumed)
	if err != nil {
		return err
	}
	addrsChanged, err := planInstanceAddrs(addrs, nReplicas)
	if err != nil {
		return err
	}
	perAZ, lastPerAZ, err := nodesPerAZCount(dir, o.nodesPerAZ, o.nodesPerAZSet, resumed)
	if err != nil {
		return err
	}
	spares := spareStorage(perAZ)
	sparesAdded, err := planAddrsAfter(addrs, spareIDs(spares))
	if err != nil {
		return err
	}
	addrsChanged = addrsChanged || sparesAdded
	instanceIDs := []string{writerID}
	for i := 1; i <= nReplicas; i++ {
		instanceIDs = append(instanceIDs, replicaID(i))
	}
	// cluster.json is there only while the cluster is up and ready.
	clusterFile := filepath.Join(dir, clusterFileName)
	if err := os.Remove(clusterFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	defer os.Remove(clusterFile)
	for _, id := range append(append(append(controlKeys(addrs), storageIDs()...), spareIDs(spares)...), append(instanceIDs, routerID, routerReaderKey)...) {
		if err := checkPortFree(addrs[id]); err != nil {
			return fmt.Errorf("%s cannot listen on %s: %w; stop what holds it, or start a new cluster with another --base-port and --dir", id, addrs[id], err)
		}
	}
	bin, err := os.Executable()
	if err != nil {
		return err
	}
	if resumed {
		fmt.Fprintf(out, "resuming the cluster in %s\n", dir)
	} else {
		fmt.Fprintf(out, "starting a new cluster in %s\n", dir)
	}
	if note := replicasNote(nReplicas, last, o.replicasSet); note != "" {
		fmt.Fprintf(out, "  %s\n", note)
	}
	if lastPerAZ > perAZ {
		fmt.Fprintf(out, "  note: the cluster last ran %d storage nodes per AZ and now runs %d; those not started are down, and after --repair-after (%s) their segments move to the others\n", lastPerAZ, perAZ, o.repairAfter)
	}
	cl := cluster.New(bin, dir)
	cl.RepairAfter = o.repairAfter
	cl.RepairRate = o.repairRate
	controlList := controlAddrList(addrs)
	cl.ControlAddr = controlList
	stopped := false
	defer func() {
		if !stopped {
			cl.Stop(5 * time.Second)
		}
	}()
	start := time.Now()
	if _, legacy := addrs[legacyControlID]; legacy {
		if err := cl.StartControl(ctx, addrs[legacyControlID], "--heartbeat-timeout", o.heartbeatTimeout.String()); err != nil {
			return err
		}
		fmt.Fprintf(out, "  control plane   ready at %s (%s)\n", addrs[legacyControlID], since(start))
		fmt.Fprintf(out, "  note: this cluster was made with one control plane, and runs one; a new cluster (another --dir) runs three, one per AZ\n")
	} else {
		// All three at once: an etcd member is ready only with a majority.
		if err := cl.StartControlPlanes(ctx, controlSpecs(addrs), "--heartbeat-timeout", o.heartbeatTimeout.String()); err != nil {
			return err
		}
		fmt.Fprintf(out, "  control planes c1, c2, c3 (AZs a, b, c) ready at %s (%s)\n", controlList, since(start))
	}
	for i, id := range storageIDs() {
		az := cluster.StorageAZs[i]
		if err := cl.StartStorage(ctx, id, az, addrs[id]); err != nil {
			return err
		}
		fmt.Fprintf(out, "  storage %s (AZ %s) ready at %s (%s)\n", id, az, addrs[id], since(start))
	}
	for _, sp := range spares {
		if err := cl.StartStorage(ctx, sp.id, sp.az, addrs[sp.id]); err != nil {
			return err
		}
		fmt.Fprintf(out, "  storage %s (AZ %s, spare capacity) ready at %s (%s)\n", sp.id, sp.az, addrs[sp.id], since(start))
	}
	conn, err := control.Dial(controlList)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctl := pb.NewControlClient(conn)
	nodes := len(storageIDs()) + len(spares)
	if err := waitNodesUp(ctx, ctl, nodes, 30*time.Second); err != nil {
		return err
	}
	fmt.Fprintf(out, "  all %d storage nodes registered and up (%s)\n", nodes, since(start))
	vol, created, err := getOrCreateVolume(ctx, ctl, defaultVolume, o.pgSize)
	if err != nil {
		return err
	}
	if !resumed || addrsChanged {
		if err := keepAddrs(dir, addrs); err != nil {
			return err
		}
	}
	if o.pgSizeSet && !created && vol.PgSizeBytes != o.pgSize {
		fmt.Fprintf(out, "  note: volume %s already exists with %s PGs; --pg-size applies to new volumes only\n", vol.Name, formatSize(vol.PgSizeBytes))
	}
	printVolume(out, vol, created, resumed)
	// The writer's start includes crash recovery, and after a crash it waits
	// for the old writer's lease to expire.
	if err := cl.StartDB(ctx, writerID, "writer", defaultVolume, addrs[writerID], "--az", writerAZ, "--write-timeout", o.writeTimeout.String(), "--lease-ttl", o.leaseTTL.String()); err != nil {
		return err
	}
	fmt.Fprintf(out, "  writer (AZ %s) ready at http://%s, recovery done (%s)\n", writerAZ, addrs[writerID], since(start))
	// The replicas start all at once; each is ready once it has attached
	// to the writer's redo stream, and the router finds them in the
	// catalog. One that is not ready is reported, and the cluster comes up
	// without it: the writer serves, and the reader endpoint skips it.
	var specs []cluster.ReplicaSpec
	for i := 1; i <= nReplicas; i++ {
		specs = append(specs, cluster.ReplicaSpec{ID: replicaID(i), AZ: replicaAZ(i), Addr: addrs[replicaID(i)], Extra: []string{"--lease-ttl", o.leaseTTL.String()}})
	}
	if len(specs) > 0 {
		errs, err := cl.StartReplicas(ctx, defaultVolume, specs, 0)
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		ready := 0
		for i, sp := range specs {
			if errs[i] == nil {
				ready++
				fmt.Fprintf(out, "  replica %s (AZ %s) ready at http://%s, following the writer\n", sp.ID, sp.AZ, sp.Addr)
				continue
			}
			fmt.Fprintf(out, "!! replica %s (AZ %s) at http://%s is not ready: %s\n", sp.ID, sp.AZ, sp.Addr, notReadyLine(errs[i], self, sp.ID, o.dir))
		}
		fmt.Fprintf(out, "  %d of %d replica(s) ready (%s)\n", ready, len(specs), since(start))
	}
	if err := cl.StartRouter(ctx, routerID, defaultVolume, addrs[routerID], addrs[routerReaderKey]); err != nil {
		return err
	}
	fmt.Fprintf(out, "  router ready: cluster endpoint http://%s, reader endpoint http://%s (%s)\n", addrs[routerID], addrs[routerReaderKey], since(start))
	if err := keepSettings(dir, upSettings{Replicas: nReplicas, NodesPerAZ: perAZ}); err != nil {
		return err
	}

	var fileMu sync.Mutex
	writeFile := func() error {
		fileMu.Lock()
		defer fileMu.Unlock()
		return cl.WriteFile(clusterFile)
	}
	if err := writeFile(); err != nil {
		return err
	}
	sock, err := serveRestarts(ctx, dir, cl, writeFile, out)
	if err != nil {
		return err
	}
	defer sock.Close()

	fmt.Fprintf(out, "\nBorealis is up (%s).\n", since(start))
	printUp(out, dir, cl.Components())
	fmt.Fprintf(out, "Try: %s sql --dir %s -e \"SELECT sqlite_version()\"\n", self, shellQuote(o.dir))
	if nReplicas > 0 {
		fmt.Fprintf(out, "     %s sql --dir %s --reader -e \"SELECT sqlite_version()\"   # queries on the replicas, through the reader endpoint\n", self, shellQuote(o.dir))
	}
	fmt.Fprintf(out, "Ctrl-C stops the cluster; running `%s up --dir %s` again resumes it.\n", self, shellQuote(o.dir))

	sup := newSupervisor()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(out, "\nstopping every process of the cluster...")
			stopped = true
			cl.Stop(10 * time.Second)
			fmt.Fprintln(out, "stopped.")
			return nil
		case e := <-cl.Exits():
			if ctx.Err() != nil {
				continue
			}
			how := "exited"
			if e.Err != nil {
				how = "exited: " + e.Err.Error()
			}
			where := ""
			if e.AZ != "" {
				where = ", AZ " + e.AZ
			}
			if e.Role == "writer" || e.Role == "replica" {
				delay := sup.delay(e.ID)
				fmt.Fprintf(out, "!! %s (%s%s, pid %d) %s. up starts it again in %s (a failover has made another instance the writer if it was; it comes back as a replica). Log: %s\n",
					e.ID, e.Role, where, e.Pid, how, delay, e.Log)
				go sup.restartLater(ctx, e.ID, delay, func() {
					restart(ctx, cl, e.ID, writeFile, out, func(restartEvent) {})
				})
				continue
			}
			fmt.Fprintf(out, "!! %s (%s%s, pid %d) %s. It is not restarted; `%s restart %s --dir %s` starts it again. Log: %s\n",
				e.ID, e.Role, where, e.Pid, how, self, e.ID, shellQuote(o.dir), e.Log)
		}
	}
}

// supervisor paces up's restarts of the database instances that die: at
// once after a long run, and later and later (up to half a minute) for an
// instance that keeps dying soon after its start.
type supervisor struct {
	mu     sync.Mutex
	last   map[string]time.Time     // when each was last restarted
	delays map[string]time.Duration // the delay before its next restart
}

func newSupervisor() *supervisor {
	return &supervisor{last: map[string]time.Time{}, delays: map[string]time.Duration{}}
}

func (s *supervisor) delay(id string) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.delays[id]
	switch {
	case d == 0 || time.Since(s.last[id]) > time.Minute:
		// A new writer process waits for the dead one's lease to expire
		// anyway; a replica rejoins at once.
		d = 200 * time.Millisecond
	default:
		d = min(2*d, 30*time.Second)
	}
	s.delays[id] = d
	return d
}

func (s *supervisor) restartLater(ctx context.Context, id string, d time.Duration, restart func()) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(d):
	}
	s.mu.Lock()
	s.last[id] = time.Now()
	s.mu.Unlock()
	restart()
}

// notReadyLine says in one line why a replica did not become ready, and
// what to do about it; its log has the rest.
func notReadyLine(err error, self, id, dir string) string {
	var nr *cluster.NotReadyError
	if !errors.As(err, &nr) {
		return err.Error()
	}
	if nr.Exited {
		how := "exited"
		if nr.Err != nil {
			how += " (" + nr.Err.Error() + ")"
		}
		return fmt.Sprintf("it %s; `%s restart %s --dir %s` starts it again. Log: %s", how, self, id, shellQuote(dir), nr.Log)
	}
	return fmt.Sprintf("after %s: %v. It keeps running and trying; `%s status --dir %s` shows it. Log: %s", nr.Waited.Round(time.Second), nr.Err, self, shellQuote(dir), nr.Log)
}

func since(t time.Time) string { return time.Since(t).Round(10 * time.Millisecond).String() }

func storageIDs() []string { return []string{"s1", "s2", "s3", "s4", "s5", "s6"} }

// upGone reports an error when dir's cluster.json is left from a `borealis
// up` that no longer runs (killed with SIGKILL, say): the pid that up.lock
// names is gone. It does not take the lock itself, which would make an `up`
// starting at that moment fail.
func upGone(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, upLockName))
	if err != nil {
		return nil // not made by up: let the caller try it
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return nil
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) && !zombie(pid) {
		return nil // running (or not ours to signal)
	}
	return fmt.Errorf("no cluster runs in %s: its %s is left from a `borealis up` (pid %d) that no longer runs; start it again with `%s up --dir %s`", dir, clusterFileName, pid, invocation(), shellQuote(dir))
}

// zombie reports whether pid has exited and waits for its parent to reap
// it, as a killed `up` does for a moment.
func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'Z'
}

// lockDir makes sure one `up` at a time runs on a directory.
func lockDir(dir string) (func(), error) {
	path := filepath.Join(dir, upLockName)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid, _ := os.ReadFile(path)
		f.Close()
		return nil, fmt.Errorf("%s is in use by a running `borealis up` (pid %s); stop it first, or use another --dir", dir, strings.TrimSpace(string(pid)))
	}
	f.Truncate(0)
	f.WriteAt([]byte(fmt.Sprintf("%d\n", os.Getpid())), 0)
	return func() { f.Close() }, nil
}

// plannedAddrs gives each component its address: the ones recorded in the
// directory when resuming (the catalog remembers where each segment lives),
// else base port onwards, recorded for next time.
func plannedAddrs(dir string, basePort int) (map[string]string, bool, error) {
	path := filepath.Join(dir, addressesFileName)
	addrs := map[string]string{}
	b, err := os.ReadFile(path)
	if err == nil {
		if err := json.Unmarshal(b, &addrs); err != nil {
			return nil, false, fmt.Errorf("%s is corrupt (%v); it records where the cluster's processes listen", path, err)
		}
		for _, id := range append(controlKeys(addrs), storageIDs()...) {
			if addrs[id] == "" {
				return nil, false, fmt.Errorf("%s lists no address for %s", path, id)
			}
		}
		if addrs[writerID] == "" {
			// A cluster made before `up` ran a writer: the port after s6.
			first := firstControlAddr(addrs)
			host, port, err := net.SplitHostPort(first)
			if err != nil {
				return nil, false, fmt.Errorf("%s: control address %q: %w", path, first, err)
			}
			var p int
			fmt.Sscan(port, &p)
			addrs[writerID] = net.JoinHostPort(host, fmt.Sprint(p+7))
			if err := keepAddrs(dir, addrs); err != nil {
				return nil, false, err
			}
		}
		return addrs, true, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("cannot resume: %w", err)
	}
	if basePort <= 0 || basePort > 65535-controlPortSpan {
		return nil, false, fmt.Errorf("--base-port %d: want a port from 1 to %d", basePort, 65535-controlPortSpan)
	}
	for i, cp := range controlPlanes {
		addrs[cp.id] = fmt.Sprintf("127.0.0.1:%d", basePort+controlPorts.grpc[i])
		addrs[clientKey(cp.id)] = fmt.Sprintf("127.0.0.1:%d", basePort+controlPorts.client[i])
		addrs[peerKey(cp.id)] = fmt.Sprintf("127.0.0.1:%d", basePort+controlPorts.peer[i])
	}
	for i, id := range storageIDs() {
		addrs[id] = fmt.Sprintf("127.0.0.1:%d", basePort+1+i)
	}
	addrs[writerID] = fmt.Sprintf("127.0.0.1:%d", basePort+7)
	return addrs, false, nil
}

// planInstanceAddrs gives the replicas r1..rN and the router's two
// endpoints an address each if addrs has none for them yet: the ports after
// the highest one in addrs, in that order, on the control plane's host. On
// a new cluster that is the writer's port + 1 onwards; a resumed one keeps
// the addresses it had, and a replica it never had gets ports of its own.
// It reports whether it added any.
func planInstanceAddrs(addrs map[string]string, replicas int) (bool, error) {
	want := []string{}
	for i := 1; i <= replicas; i++ {
		want = append(want, replicaID(i))
	}
	want = append(want, routerID, routerReaderKey)
	return planAddrsAfter(addrs, want)
}

// planAddrsAfter gives each id of want that has no address the port after
// the highest of every non-control-plane address, in order; it reports
// whether it added any.
func planAddrsAfter(addrs map[string]string, want []string) (bool, error) {
	first := firstControlAddr(addrs)
	host, _, err := net.SplitHostPort(first)
	if err != nil {
		return false, fmt.Errorf("control address %q: %w", first, err)
	}
	// The control planes' ports lie above the others' (see controlPorts):
	// the others grow from the highest of their own.
	skip := map[string]bool{}
	for _, k := range controlKeys(addrs) {
		skip[k] = true
	}
	highest := 0
	for id, a := range addrs {
		if skip[id] {
			continue
		}
		_, port, err := net.SplitHostPort(a)
		if err != nil {
			return false, fmt.Errorf("the address of %s, %q: %w", id, a, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return false, fmt.Errorf("the address of %s, %q: bad port", id, a)
		}
		highest = max(highest, p)
	}
	added := false
	for _, id := range want {
		if addrs[id] != "" {
			continue
		}
		highest++
		if highest > 65535 {
			return false, fmt.Errorf("no port left for %s after %d: start a new cluster with a lower --base-port and another --dir", id, highest-1)
		}
		addrs[id] = net.JoinHostPort(host, strconv.Itoa(highest))
		added = true
	}
	return added, nil
}

// upSettings is what the last `up` on a directory ran with (up.json).
type upSettings struct {
	Replicas int `json:"replicas"`
	// NodesPerAZ is the storage nodes per AZ (0: two, from before spares).
	NodesPerAZ int `json:"nodes_per_az,omitempty"`
}

// spare is a storage node beyond the two per AZ a PG uses.
type spare struct{ id, az string }

// spareStorage is the storage nodes beyond s1..s6 for perAZ nodes in each
// AZ: s7, s8, ... in AZs a, b, c in turn (cluster.StorageAZ).
func spareStorage(perAZ int) []spare {
	var out []spare
	for i := len(storageIDs()); i < perAZ*3; i++ {
		out = append(out, spare{id: fmt.Sprintf("s%d", i+1), az: cluster.StorageAZ(i)})
	}
	return out
}

func spareIDs(sp []spare) []string {
	out := make([]string, len(sp))
	for i, s := range sp {
		out[i] = s.id
	}
	return out
}

// nodesPerAZCount is how many storage nodes per AZ this `up` runs:
// --nodes-per-az if given, or on a new cluster; else as many as the last
// `up` ran (up.json). last is that number (2 when not recorded).
func nodesPerAZCount(dir string, flag int, set, resumed bool) (n, last int, err error) {
	last = cluster.SegmentsPerAZ
	if !resumed {
		return flag, flag, nil
	}
	b, err := os.ReadFile(filepath.Join(dir, upSettingsName))
	switch {
	case err == nil:
		var st upSettings
		if err := json.Unmarshal(b, &st); err != nil {
			return 0, 0, fmt.Errorf("%s is corrupt (%v); it records how many replicas and storage nodes the cluster runs: fix it, or remove it and give --replicas and --nodes-per-az", filepath.Join(dir, upSettingsName), err)
		}
		if st.NodesPerAZ >= cluster.SegmentsPerAZ && st.NodesPerAZ <= maxNodesPerAZ {
			last = st.NodesPerAZ
		}
	case !errors.Is(err, os.ErrNotExist):
		return 0, 0, err
	}
	if set {
		return flag, last, nil
	}
	return last, last, nil
}

// replicaCount is how many replicas this `up` runs: --replicas if given,
// or on a new cluster; else (resuming) as many as the last `up` ran, from
// up.json (the default for a cluster made before replicas). last is that
// number, -1 if not known.
func replicaCount(dir string, flag int, set, resumed bool) (n, last int, err error) {
	last = -1
	if !resumed {
		// A new cluster (up.json is left from one whose addresses.json
		// was removed, if at all).
		return flag, last, nil
	}
	path := filepath.Join(dir, upSettingsName)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		var st upSettings
		if err := json.Unmarshal(b, &st); err != nil {
			return 0, 0, fmt.Errorf("%s is corrupt (%v); it records how many replicas the cluster runs: fix it, or remove it and give --replicas", path, err)
		}
		if checkReplicas(st.Replicas) == nil {
			last = st.Replicas
		}
	case !errors.Is(err, os.ErrNotExist):
		return 0, 0, err
	}
	if set || last < 0 {
		return flag, last, nil
	}
	return last, last, nil
}

// replicasNote says how many replicas a resumed cluster runs when that is
// not what --replicas said, or differs from its last run; else "".
func replicasNote(n, last int, set bool) string {
	switch {
	case last < 0 || n == last && (set || n == defaultReplicas):
		return ""
	case !set:
		return fmt.Sprintf("%d replica(s), as the cluster last ran (--replicas N changes that)", n)
	case n > last:
		return fmt.Sprintf("--replicas %d: %s more than the cluster last ran", n, idRange(last+1, n))
	}
	return fmt.Sprintf("--replicas %d: %s of the last run not started (a replica keeps no data of its own; `up --replicas %d` starts them again)", n, idRange(n+1, last), last)
}

// idRange names replicas from..to: "r2", "r2, r3", "r2..r5".
func idRange(from, to int) string {
	switch {
	case from == to:
		return replicaID(from)
	case to == from+1:
		return replicaID(from) + ", " + replicaID(to)
	}
	return replicaID(from) + ".." + replicaID(to)
}

// keepSettings records what this `up` runs with, for the next one.
func keepSettings(dir string, st upSettings) error {
	path := filepath.Join(dir, upSettingsName)
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// printUp lists the components of a cluster that came up: where each
// listens, its AZ and its log, and the router's two endpoints as a user
// would copy them.
func printUp(out io.Writer, dir string, comps []cluster.Component) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	for _, c := range comps {
		az := ""
		if c.AZ != "" {
			az = "AZ " + c.AZ
		}
		switch c.Role {
		case "control":
			name := "control plane"
			if c.ID != legacyControlID {
				name += " " + c.ID
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\tlog %s\n", name, c.Addr, az, c.Log)
		case "storage":
			fmt.Fprintf(tw, "  storage %s\t%s\t%s\tlog %s\n", c.ID, c.Addr, az, c.Log)
		case "writer":
			fmt.Fprintf(tw, "  writer (SQL)\thttp://%s\t%s\tlog %s\n", c.Addr, az, c.Log)
		case "replica":
			fmt.Fprintf(tw, "  replica %s\thttp://%s\t%s\tlog %s\n", c.ID, c.Addr, az, c.Log)
		case "router":
			fmt.Fprintf(tw, "  cluster endpoint\thttp://%s\t\tthe router: reads and writes, to the writer (log %s)\n", c.ClusterEndpoint, c.Log)
			fmt.Fprintf(tw, "  reader endpoint\thttp://%s\t\tthe router: queries, balanced over the replicas\n", c.ReaderEndpoint)
		}
	}
	fmt.Fprintf(tw, "  cluster file\t%s\n", filepath.Join(dir, clusterFileName))
	tw.Flush()
}

// keepAddrs records the addresses of a cluster that came up, so that the
// next `up` on the directory listens there again.
func keepAddrs(dir string, addrs map[string]string) error {
	path := filepath.Join(dir, addressesFileName)
	b, err := json.MarshalIndent(addrs, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func checkPortFree(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return errors.New("the port is taken by another process")
		}
		return err
	}
	return l.Close()
}

func waitNodesUp(ctx context.Context, ctl pb.ControlClient, want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := ctl.Status(ctx, &pb.StatusRequest{})
		up := 0
		if err == nil {
			for _, n := range st.Nodes {
				if n.State == "up" {
					up++
				}
			}
			if up >= want {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d storage nodes registered with the control plane after %s (last error: %v); see their logs", up, want, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ensureVolume returns the volume name, which it creates (with pgSize-byte
// PGs) if there is none.
func ensureVolume(ctx context.Context, ctl pb.ControlClient, name string, pgSize uint64) (*pb.VolumeInfo, error) {
	v, _, err := getOrCreateVolume(ctx, ctl, name, pgSize)
	return v, err
}

// getOrCreateVolume is ensureVolume, and reports whether it created the
// volume.
func getOrCreateVolume(ctx context.Context, ctl pb.ControlClient, name string, pgSize uint64) (v *pb.VolumeInfo, created bool, err error) {
	v, err = ctl.GetVolume(ctx, &pb.GetVolumeRequest{Name: name})
	if err == nil {
		return v, false, nil
	}
	if status.Code(err) != codes.NotFound {
		return nil, false, fmt.Errorf("look up volume %s: %w", name, err)
	}
	v, err = ctl.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: name, PageSize: upPageSize, PgSizeBytes: pgSize})
	if status.Code(err) == codes.AlreadyExists {
		// Another client created it first.
		v, err = ctl.GetVolume(ctx, &pb.GetVolumeRequest{Name: name})
		if err != nil {
			return nil, false, fmt.Errorf("look up volume %s: %w", name, err)
		}
		return v, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("create volume %s: %w", name, err)
	}
	return v, true, nil
}

// printVolume describes the volume up runs the writer on, and says so when
// up has just created it: it is empty. On a resumed cluster that means the
// catalog had no such volume, most likely because it was deleted, and a
// deleted volume's data does not come back.
func printVolume(out io.Writer, vol *pb.VolumeInfo, created, resumed bool) {
	shape := fmt.Sprintf("%d-byte pages, %s PGs, %d PG(s)", vol.PageSize, formatSize(vol.PgSizeBytes), vol.Pgs)
	if !created {
		fmt.Fprintf(out, "  volume %s: id %d, %s\n", vol.Name, vol.Id, shape)
		return
	}
	fmt.Fprintf(out, "  created volume %s (id %d): it is new and empty; %s\n", vol.Name, vol.Id, shape)
	if resumed {
		fmt.Fprintf(out, "  note: the resumed cluster's catalog had no volume %s: it was deleted (borealis volume delete), or the control plane's data was lost. A deleted volume's data is not brought back; the new %s starts empty\n", vol.Name, vol.Name)
	}
}

// restartEvent is one line, in JSON, of up's answer to "restart ID" on
// up.sock. up starts the component, says "started" once cluster.json lists
// the new process, "waiting" each time what the component says it waits for
// changes, and at last "ready", or "failed" if the process exits first.
// "error" refuses the request.
type restartEvent struct {
	Event string `json:"event"`
	Pid   int    `json:"pid,omitempty"`
	// Why (waiting) is what the component says it waits for, such as
	// the storage segments a writer's recovery needs.
	Why string `json:"why,omitempty"`
	// Stopped (waiting) lists the cluster's components not running.
	Stopped []string `json:"stopped,omitempty"`
	// Error (failed, error) says why; a failure quotes the last lines of
	// the component's log, one per line.
	Error string `json:"error,omitempty"`
	// Started (started), for "restart control": each control plane
	// started again, "c2 (pid 123)".
	Started []string `json:"started,omitempty"`
}

// serveRestarts answers `borealis restart` on a unix socket in the cluster
// directory: the running `up` restarts the component itself, so it stays its
// child and is stopped with the rest.
func serveRestarts(ctx context.Context, dir string, cl *cluster.Cluster, writeFile func() error, out io.Writer) (net.Listener, error) {
	path := filepath.Join(dir, upSocketName)
	os.Remove(path) // left by an `up` that was killed; the directory lock is ours
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				enc := json.NewEncoder(c)
				gone := false
				// The requester may stop listening (its --wait passed)
				// while up still waits, to report the outcome itself.
				send := func(ev restartEvent) {
					if gone {
						return
					}
					c.SetWriteDeadline(time.Now().Add(5 * time.Second))
					gone = enc.Encode(ev) != nil
				}
				fields := strings.Fields(line)
				if len(fields) != 2 || fields[0] != "restart" {
					send(restartEvent{Event: "error", Error: fmt.Sprintf("unknown request %q", strings.TrimSpace(line))})
					return
				}
				restart(ctx, cl, fields[1], writeFile, out, send)
			}(c)
		}
	}()
	return l, nil
}

// restart starts component id again, records it in cluster.json at once
// (so that the file names the process that runs, even while it is not
// ready), and waits for it to become ready, for as long as it runs: a
// writer whose recovery needs storage nodes that are down waits until they
// are back. send is told how it goes.
func restart(ctx context.Context, cl *cluster.Cluster, id string, writeFile func() error, out io.Writer, send func(restartEvent)) {
	if id == legacyControlID {
		if _, ok := componentByID(cl, legacyControlID); !ok {
			restartControlPlanes(ctx, cl, writeFile, out, send)
			return
		}
	}
	comp, err := cl.StartAgain(id)
	if err != nil {
		var ids []string
		known := false
		for _, c := range cl.Components() {
			ids = append(ids, c.ID)
			known = known || c.ID == id
		}
		if c, ok := componentByID(cl, id); ok && cl.Running(id) && (c.Role == "writer" || c.Role == "replica") {
			// up restarted it already (it supervises the database
			// instances): the restart asked for is done; report it as
			// one that was just started.
			send(restartEvent{Event: "started", Pid: c.Pid})
			if err := cl.WaitReady(ctx, id, -1, waitingReporter(cl, c.Pid, send)); err != nil {
				send(restartEvent{Event: "failed", Pid: c.Pid, Error: err.Error()})
				return
			}
			send(restartEvent{Event: "ready", Pid: c.Pid})
			return
		}
		switch {
		case cl.Running(id):
			err = fmt.Errorf("%s is running; stop it before restarting it", id)
		case !known:
			err = fmt.Errorf("this cluster has no component %q: it runs %s (a replica it does not run starts with `up --replicas N`)", id, strings.Join(ids, ", "))
		}
		send(restartEvent{Event: "error", Error: err.Error()})
		return
	}
	if err := writeFile(); err != nil {
		send(restartEvent{Event: "error", Pid: comp.Pid, Error: fmt.Sprintf("%s restarted (pid %d), but cluster.json was not updated: %v", id, comp.Pid, err)})
		return
	}
	fmt.Fprintf(out, "%s restarted (pid %d)\n", id, comp.Pid)
	send(restartEvent{Event: "started", Pid: comp.Pid})
	start := time.Now()
	err = cl.WaitReady(ctx, id, -1, waitingReporter(cl, comp.Pid, send))
	switch {
	case err == nil:
		// Whoever restarted it may have stopped waiting long ago.
		fmt.Fprintf(out, "%s (pid %d) is ready, %s after its restart\n", id, comp.Pid, since(start))
		send(restartEvent{Event: "ready", Pid: comp.Pid})
	case ctx.Err() != nil:
		send(restartEvent{Event: "error", Pid: comp.Pid, Error: "`borealis up` is stopping the cluster"})
	default:
		// Its exit is reported with the others' in up's output.
		send(restartEvent{Event: "failed", Pid: comp.Pid, Error: err.Error()})
	}
}

// waitingReporter sends what a restarted component waits for, with the
// components that are stopped.
func waitingReporter(cl *cluster.Cluster, pid int, send func(restartEvent)) func(string) {
	return func(why string) {
		var stopped []string
		for _, o := range cl.Components() {
			if !cl.Running(o.ID) {
				stopped = append(stopped, o.ID)
			}
		}
		send(restartEvent{Event: "waiting", Pid: pid, Why: why, Stopped: stopped})
	}
}

func componentByID(cl *cluster.Cluster, id string) (cluster.Component, bool) {
	for _, c := range cl.Components() {
		if c.ID == id {
			return c, true
		}
	}
	return cluster.Component{}, false
}

// restartControlPlanes is "restart control" on a cluster of three control
// planes: it starts every one that is stopped, all at once (a lone etcd
// member is not ready until a majority runs, and gives up after a while),
// and waits until all of them are ready.
func restartControlPlanes(ctx context.Context, cl *cluster.Cluster, writeFile func() error, out io.Writer, send func(restartEvent)) {
	var ids, stopped []string
	for _, c := range cl.Components() {
		if c.Role == "control" {
			ids = append(ids, c.ID)
			if !cl.Running(c.ID) {
				stopped = append(stopped, c.ID)
			}
		}
	}
	if len(stopped) == 0 {
		send(restartEvent{Event: "error", Error: fmt.Sprintf("the control planes %s all run; `restart ID` restarts one once it is stopped", strings.Join(ids, ", "))})
		return
	}
	var started []string
	var pid int
	for _, id := range stopped {
		comp, err := cl.StartAgain(id)
		if err != nil {
			send(restartEvent{Event: "error", Error: fmt.Sprintf("%s: %v", id, err)})
			return
		}
		if pid == 0 {
			pid = comp.Pid
		}
		started = append(started, fmt.Sprintf("%s (pid %d)", id, comp.Pid))
		fmt.Fprintf(out, "%s restarted (pid %d)\n", id, comp.Pid)
	}
	if err := writeFile(); err != nil {
		send(restartEvent{Event: "error", Pid: pid, Error: fmt.Sprintf("%s restarted, but cluster.json was not updated: %v", strings.Join(started, ", "), err)})
		return
	}
	send(restartEvent{Event: "started", Pid: pid, Started: started})
	errs := make([]error, len(stopped))
	var wg sync.WaitGroup
	for i, id := range stopped {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = cl.WaitReady(ctx, id, -1, nil)
		}()
	}
	wg.Wait()
	switch err := errors.Join(errs...); {
	case err == nil:
		fmt.Fprintf(out, "control planes %s are ready\n", strings.Join(stopped, ", "))
		send(restartEvent{Event: "ready", Pid: pid, Started: started})
	case ctx.Err() != nil:
		send(restartEvent{Event: "error", Pid: pid, Error: "`borealis up` is stopping the cluster"})
	default:
		send(restartEvent{Event: "failed", Pid: pid, Error: err.Error()})
	}
}

func restartCmd() *cobra.Command {
	var dir string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "restart ID [--dir D] [--wait T]",
		Short: "Start a stopped component of a running `borealis up` again",
		Long: `Start a stopped component (a control plane c1..c3, s1..s6, writer, a
replica r1..rN, router) of the cluster that a running "borealis up" manages
in --dir, with the same
id, address and data (a replica and the router have none of their own). The
running "up" starts it, so it stays under its supervision, and updates
cluster.json with the new pid as soon as the process runs. "restart
control" starts every stopped control plane at once: an etcd member is ready
only once a majority of the three run, so with two or three of them down,
restart them together this way.

It then waits up to --wait for the component to become ready. A component
can take longer: a writer's crash recovery needs a read quorum of every PG
and a write quorum to acknowledge its truncation, so with too many storage
nodes down it waits until they are back, and a replica waits until it has
attached to the writer's redo stream. Then restart says what the
component is waiting for and exits 0: the process runs, and becomes ready
by itself once the wait is over ("borealis status" shows it). It fails if
the process exits before it is ready, quoting the end of its log.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			self := invocation()
			path := filepath.Join(dir, upSocketName)
			c, err := net.DialTimeout("unix", path, 2*time.Second)
			if err != nil {
				return fmt.Errorf("no running `borealis up` manages %s (%v); start the cluster with `%s up --dir %s`", dir, err, self, shellQuote(dir))
			}
			defer c.Close()
			start := time.Now()
			// up answers "started" at once; after that the wait is --wait.
			c.SetDeadline(start.Add(10 * time.Second))
			fmt.Fprintf(c, "restart %s\n", id)
			br := bufio.NewReader(c)
			out := cmd.OutOrStdout()
			if first, err := br.Peek(1); err == nil && first[0] != '{' {
				// An `up` of an earlier build (still running after a
				// rebuild) answers one line: "ok PID" or "error: ...".
				line, _ := br.ReadString('\n')
				line = strings.TrimSpace(line)
				if pid, ok := strings.CutPrefix(line, "ok "); ok {
					fmt.Fprintf(out, "%s restarted, pid %s (the running `borealis up` is of an earlier build: it does not report readiness)\n", id, pid)
					return nil
				}
				return errors.New(strings.TrimPrefix(line, "error: "))
			}
			dec := json.NewDecoder(br)
			var started, waiting restartEvent
			for {
				var ev restartEvent
				if err := dec.Decode(&ev); err != nil {
					switch {
					case started.Pid == 0:
						return fmt.Errorf("no answer from `borealis up`: %w", err)
					case errors.Is(err, os.ErrDeadlineExceeded):
						printStillWaiting(out, self, dir, id, started.Pid, time.Since(start), waiting)
						return nil
					default:
						return fmt.Errorf("%s started (pid %d), but `borealis up` stopped answering: %w", id, started.Pid, err)
					}
				}
				switch ev.Event {
				case "started":
					started = ev
					c.SetDeadline(start.Add(max(wait, 0)))
				case "waiting":
					waiting = ev
				case "ready":
					if len(ev.Started) > 0 {
						fmt.Fprintf(out, "%s restarted, ready (%s)\n", strings.Join(ev.Started, ", "), since(start))
						return nil
					}
					fmt.Fprintf(out, "%s restarted, pid %d, ready (%s)\n", id, ev.Pid, since(start))
					return nil
				case "failed", "error":
					return errors.New(ev.Error)
				default:
					return fmt.Errorf("`borealis up` answered %q", ev.Event)
				}
			}
		},
	}
	cmd.Flags().StringVar(&dir, "dir", defaultDir, "directory of the running cluster")
	cmd.Flags().DurationVar(&wait, "wait", 30*time.Second, "how long to wait for the component to become ready; after that restart reports what it waits for and leaves it starting")
	return cmd
}

// printStillWaiting says that a restarted component runs but is not ready
// yet, and what it waits for. That is not a failure: a writer whose
// recovery lacks a quorum of some PG becomes ready by itself once enough of
// its segments are reachable again.
func printStillWaiting(out io.Writer, self, dir, id string, pid int, waited time.Duration, w restartEvent) {
	why := w.Why
	if why == "" {
		why = "it has not answered yet"
	}
	fmt.Fprintf(out, "%s started (pid %d), and is not ready after %s: %s\n", id, pid, waited.Round(time.Second), why)
	fmt.Fprintf(out, "It keeps running under `borealis up`, and becomes ready by itself once that wait is over; `%s status --dir %s` shows it.\n", self, shellQuote(dir))
	var stopped []string
	for _, s := range w.Stopped {
		if s != id {
			stopped = append(stopped, s)
		}
	}
	if len(stopped) > 0 {
		fmt.Fprintf(out, "Not running: %s; `%s restart %s --dir %s` starts %s again.\n", strings.Join(stopped, ", "), self, stopped[0], shellQuote(dir), stopped[0])
	}
}
