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
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
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
)

func upCmd() *cobra.Command {
	var dir, pgSize string
	var basePort int
	var heartbeatTimeout, writeTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "up [--dir D] [--pg-size S]",
		Short: "Run a whole local cluster: the control plane, 6 storage nodes and the writer, as separate processes",
		Long: `Run a whole local cluster in the foreground: the control plane (with an
embedded etcd), six storage nodes s1..s6, two in each of AZs a, b and c, and
the writer database instance serving SQL over HTTP, each a separate process of
this binary with its data and log in --dir. It creates the volume "main" if
there is none, starts the writer on it, writes D/cluster.json once
everything is ready, and runs until Ctrl-C, SIGTERM or SIGHUP (its terminal
closing), which stop every process. A process that dies is reported, not restarted: "borealis restart ID"
starts it again. Running "up" again on the same directory resumes the same
cluster, on the same addresses, with its data.`,
		Args: noArgs("; the cluster's directory is --dir DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if writeTimeout <= 0 {
				return fmt.Errorf("--write-timeout %s: want a positive duration", writeTimeout)
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
				basePort: basePort, heartbeatTimeout: heartbeatTimeout, writeTimeout: writeTimeout,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", defaultDir, "directory for the cluster's data, logs and cluster.json")
	f.StringVar(&pgSize, "pg-size", "10GiB", "size of a protection group of a new volume, such as 1MiB, 64MiB or 10GiB")
	f.IntVar(&basePort, "base-port", 7100, "loopback ports: the control plane on this one, s1..s6 on the next six, the writer's SQL HTTP on the one after (a resumed cluster keeps its own)")
	f.DurationVar(&heartbeatTimeout, "heartbeat-timeout", 3*time.Second, "a storage node that misses heartbeats this long is marked down")
	f.DurationVar(&writeTimeout, "write-timeout", 10*time.Second, "how long the writer's commits wait for a write quorum of segments that can make them durable (answering, and holding or catching up to them) before failing with storage_unavailable")
	return cmd
}

type upOptions struct {
	dir              string
	pgSize           uint64
	pgSizeSet        bool
	basePort         int
	heartbeatTimeout time.Duration
	writeTimeout     time.Duration
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
	// cluster.json is there only while the cluster is up and ready.
	clusterFile := filepath.Join(dir, clusterFileName)
	if err := os.Remove(clusterFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	defer os.Remove(clusterFile)
	for _, id := range append([]string{"control", writerID}, storageIDs()...) {
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
	cl := cluster.New(bin, dir)
	cl.ControlAddr = addrs["control"]
	stopped := false
	defer func() {
		if !stopped {
			cl.Stop(5 * time.Second)
		}
	}()
	start := time.Now()
	if err := cl.StartControl(ctx, addrs["control"], "--heartbeat-timeout", o.heartbeatTimeout.String()); err != nil {
		return err
	}
	fmt.Fprintf(out, "  control plane   ready at %s (%s)\n", addrs["control"], since(start))
	for i, id := range storageIDs() {
		az := cluster.StorageAZs[i]
		if err := cl.StartStorage(ctx, id, az, addrs[id]); err != nil {
			return err
		}
		fmt.Fprintf(out, "  storage %s (AZ %s) ready at %s (%s)\n", id, az, addrs[id], since(start))
	}
	conn, err := grpc.NewClient(addrs["control"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctl := pb.NewControlClient(conn)
	if err := waitNodesUp(ctx, ctl, len(storageIDs()), 30*time.Second); err != nil {
		return err
	}
	fmt.Fprintf(out, "  all 6 storage nodes registered and up (%s)\n", since(start))
	vol, created, err := getOrCreateVolume(ctx, ctl, defaultVolume, o.pgSize)
	if err != nil {
		return err
	}
	if !resumed {
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
	if err := cl.StartDB(ctx, writerID, "writer", defaultVolume, addrs[writerID], "--write-timeout", o.writeTimeout.String()); err != nil {
		return err
	}
	fmt.Fprintf(out, "  writer ready at http://%s, recovery done (%s)\n", addrs[writerID], since(start))

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
	fmt.Fprintf(out, "  control plane  %s   log %s\n", addrs["control"], filepath.Join(dir, "control.log"))
	for _, id := range storageIDs() {
		fmt.Fprintf(out, "  storage %s     %s   log %s\n", id, addrs[id], filepath.Join(dir, id+".log"))
	}
	fmt.Fprintf(out, "  writer (SQL)   http://%s   log %s\n", addrs[writerID], filepath.Join(dir, writerID+".log"))
	fmt.Fprintf(out, "  cluster file   %s\n", filepath.Join(dir, clusterFileName))
	fmt.Fprintf(out, "Try: %s sql --dir %s -e \"SELECT sqlite_version()\"\n", self, shellQuote(o.dir))
	fmt.Fprintf(out, "Ctrl-C stops the cluster; running `%s up --dir %s` again resumes it.\n", self, shellQuote(o.dir))

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
			fmt.Fprintf(out, "!! %s (%s%s, pid %d) %s. It is not restarted; `%s restart %s --dir %s` starts it again. Log: %s\n",
				e.ID, e.Role, where, e.Pid, how, self, e.ID, shellQuote(o.dir), e.Log)
		}
	}
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
		for _, id := range append([]string{"control"}, storageIDs()...) {
			if addrs[id] == "" {
				return nil, false, fmt.Errorf("%s lists no address for %s", path, id)
			}
		}
		if addrs[writerID] == "" {
			// A cluster made before `up` ran a writer: the port after s6.
			host, port, err := net.SplitHostPort(addrs["control"])
			if err != nil {
				return nil, false, fmt.Errorf("%s: control address %q: %w", path, addrs["control"], err)
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
	if basePort <= 0 || basePort > 65535-7 {
		return nil, false, fmt.Errorf("--base-port %d: want a port from 1 to %d", basePort, 65535-7)
	}
	addrs["control"] = fmt.Sprintf("127.0.0.1:%d", basePort)
	for i, id := range storageIDs() {
		addrs[id] = fmt.Sprintf("127.0.0.1:%d", basePort+1+i)
	}
	addrs[writerID] = fmt.Sprintf("127.0.0.1:%d", basePort+7)
	return addrs, false, nil
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
	comp, err := cl.StartAgain(id)
	if err != nil {
		if cl.Running(id) {
			err = fmt.Errorf("%s is running; stop it before restarting it", id)
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
	err = cl.WaitReady(ctx, id, -1, func(why string) {
		var stopped []string
		for _, o := range cl.Components() {
			if !cl.Running(o.ID) {
				stopped = append(stopped, o.ID)
			}
		}
		send(restartEvent{Event: "waiting", Pid: comp.Pid, Why: why, Stopped: stopped})
	})
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

func restartCmd() *cobra.Command {
	var dir string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "restart ID [--dir D] [--wait T]",
		Short: "Start a stopped component of a running `borealis up` again",
		Long: `Start a stopped component (control, s1..s6, writer) of the cluster that a running
"borealis up" manages in --dir, with the same id, address and data. The
running "up" starts it, so it stays under its supervision, and updates
cluster.json with the new pid as soon as the process runs.

It then waits up to --wait for the component to become ready. A component
can take longer: a writer's crash recovery needs a read quorum of every PG
and a write quorum to acknowledge its truncation, so with too many storage
nodes down it waits until they are back. Then restart says what the
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
