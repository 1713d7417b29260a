// Package cluster starts and stops local Borealis clusters made of real OS
// processes of the borealis binary, for benchmarks, tests and `borealis up`.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// Component is one process of a cluster, as cluster.json lists it.
type Component struct {
	Role string `json:"role"`
	ID   string `json:"id"`
	AZ   string `json:"az,omitempty"`
	Addr string `json:"addr"`
	Pid  int    `json:"pid"`
	Log  string `json:"log"`
	Dir  string `json:"dir,omitempty"`
	// A router's two endpoints (host:port); Addr is its cluster endpoint.
	ClusterEndpoint string `json:"cluster_endpoint,omitempty"`
	ReaderEndpoint  string `json:"reader_endpoint,omitempty"`
	// Metrics is where the process serves Prometheus metrics and pprof
	// (host:port), when it does.
	Metrics string `json:"metrics,omitempty"`
}

// File is the shape of cluster.json.
type File struct {
	Components []Component `json:"components"`
}

// ReadFile reads a cluster.json.
func ReadFile(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f File
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &f, nil
}

// Find returns the first component of the given role ("control",
// "writer", ...).
func (f *File) Find(role string) (Component, bool) {
	for _, c := range f.Components {
		if c.Role == role {
			return c, true
		}
	}
	return Component{}, false
}

// ControlAddrs is the gRPC addresses of the cluster's control planes,
// separated by commas, as every --control flag takes them; "" if it lists
// none.
func (f *File) ControlAddrs() string {
	var addrs []string
	for _, c := range f.Components {
		if c.Role == "control" {
			addrs = append(addrs, c.Addr)
		}
	}
	return strings.Join(addrs, ",")
}

// ControlPlanes returns the control-plane components, in the file's order.
func (f *File) ControlPlanes() []Component {
	var out []Component
	for _, c := range f.Components {
		if c.Role == "control" {
			out = append(out, c)
		}
	}
	return out
}

// ByID returns the component with the given id.
func (f *File) ByID(id string) (Component, bool) {
	for _, c := range f.Components {
		if c.ID == id {
			return c, true
		}
	}
	return Component{}, false
}

// Replicas returns the read replica components, in the file's order.
func (f *File) Replicas() []Component {
	var out []Component
	for _, c := range f.Components {
		if c.Role == "replica" {
			out = append(out, c)
		}
	}
	return out
}

// Storage returns the storage components.
func (f *File) Storage() []Component {
	var out []Component
	for _, c := range f.Components {
		if c.Role == "storage" {
			out = append(out, c)
		}
	}
	return out
}

// StorageAZs are the AZs of the six storage nodes s1..s6, two per AZ.
var StorageAZs = []string{"a", "a", "b", "b", "c", "c"}

// SegmentsPerAZ is how many segments of a PG each AZ holds: the storage
// nodes per AZ beyond it are spare capacity for repair.
const SegmentsPerAZ = 2

// StorageAZ is the AZ of the i-th storage node (from 0): s1..s6 as
// StorageAZs, then the spares s7, s8, s9, ... in AZs a, b, c in turn, so
// that any 3*N nodes are N per AZ.
func StorageAZ(i int) string {
	if i < len(StorageAZs) {
		return StorageAZs[i]
	}
	return [...]string{"a", "b", "c"}[(i-len(StorageAZs))%3]
}

// Cluster is a set of running processes started from one binary.
type Cluster struct {
	Binary string
	Dir    string
	// ControlAddr, when set, is passed to storage nodes, database
	// instances and the router as --control: the control planes' addresses,
	// separated by commas.
	ControlAddr string
	// ReadyWithin, if set, replaces how long a start waits for a
	// component to become ready (StorageReadyWithin, DBReadyWithin).
	ReadyWithin time.Duration
	// StorageMetrics: storage nodes started from now on serve metrics and
	// pprof (--metrics) on a free loopback port, named in their Component.
	StorageMetrics bool
	// RepairAfter, if set, is passed to the control planes started from
	// now on as --repair-after: how long a storage node may be down before
	// its segments move to a spare of its AZ.
	RepairAfter time.Duration
	// RepairRate, if set, is passed to the storage nodes started from now
	// on as --repair-rate: how fast their hydrations copy, such as 64MiB.
	RepairRate string

	exits chan Exit

	mu    sync.Mutex
	procs map[string]*proc
	order []string
}

type proc struct {
	Component
	args  []string
	ready func(ctx context.Context, conn *grpc.ClientConn) error
	// httpReady replaces ready for processes that answer HTTP.
	httpReady func(ctx context.Context) error
	// within is how long a start waits for ready by default.
	within time.Duration
	cmd    *exec.Cmd
	done   chan struct{}
	// exitErr is what Wait returned, once done is closed.
	exitErr error
	// logFrom is the size of the log when the process started: what it
	// wrote comes after (the log is appended to by every process of the
	// component).
	logFrom int64
	// starting is set while StartAgain launches a new process, so that
	// two restarts at once cannot both start one.
	starting bool
}

// Default times a start waits for a component to become ready.
const (
	// StorageReadyWithin is for storage nodes and the control plane.
	StorageReadyWithin = 30 * time.Second
	// DBReadyWithin is for database instances: their start includes waiting
	// out a crashed writer's lease and recovery.
	DBReadyWithin = 60 * time.Second
)

func storageReady(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := pb.NewStorageClient(conn).Stats(ctx, &pb.StatsRequest{})
	return err
}

func controlReady(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := pb.NewControlClient(conn).Status(ctx, &pb.StatusRequest{})
	return err
}

// StartControl starts the control plane process (id "control") with its
// data in Dir/control and waits until it answers.
func (c *Cluster) StartControl(ctx context.Context, addr string, extra ...string) error {
	const id = "control"
	dir := filepath.Join(c.Dir, id)
	p := &proc{
		Component: Component{Role: "control", ID: id, Addr: addr, Dir: dir, Log: filepath.Join(c.Dir, id+".log")},
		args:      append(append([]string{"control", "--listen", addr, "--dir", dir}, c.controlFlags()...), extra...),
		ready:     controlReady,
		within:    StorageReadyWithin,
	}
	if err := c.add(p); err != nil {
		return err
	}
	return c.launch(ctx, p)
}

// ControlSpec is one control plane of StartControlPlanes: its id (its etcd
// member's name), AZ, gRPC address and its etcd member's client and peer
// addresses (host:port).
type ControlSpec struct {
	ID, AZ, Addr, ClientAddr, PeerAddr string
}

// InitialCluster is the etcd initial cluster of specs: every member's peer
// URL, as `borealis control --initial-cluster` takes it.
func InitialCluster(specs []ControlSpec) string {
	parts := make([]string, len(specs))
	for i, s := range specs {
		parts[i] = s.ID + "=http://" + s.PeerAddr
	}
	return strings.Join(parts, ",")
}

// StartControlPlanes starts control-plane processes that each embed one
// member of one etcd cluster, with their data in Dir/ID, all at once (a
// member is ready only when a majority runs), and waits until each
// answers. extra flags are passed to each.
func (c *Cluster) StartControlPlanes(ctx context.Context, specs []ControlSpec, extra ...string) error {
	ic := InitialCluster(specs)
	procs := make([]*proc, len(specs))
	for i, s := range specs {
		dir := filepath.Join(c.Dir, s.ID)
		procs[i] = &proc{
			Component: Component{Role: "control", ID: s.ID, AZ: s.AZ, Addr: s.Addr, Dir: dir, Log: filepath.Join(c.Dir, s.ID+".log")},
			args: append([]string{"control", "--name", s.ID, "--az", s.AZ, "--listen", s.Addr, "--dir", dir,
				"--client-listen", s.ClientAddr, "--peer-listen", s.PeerAddr, "--initial-cluster", ic}, append(c.controlFlags(), extra...)...),
			ready:  controlReady,
			within: StorageReadyWithin,
		}
		if err := c.add(procs[i]); err != nil {
			return err
		}
	}
	for _, p := range procs {
		if err := c.start(p); err != nil {
			return err
		}
	}
	errs := make([]error, len(procs))
	var wg sync.WaitGroup
	for i, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.waitReady(ctx, p, c.within(p), nil)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// controlFlags are the flags every control plane gets from the cluster's
// settings.
func (c *Cluster) controlFlags() []string {
	if c.RepairAfter > 0 {
		return []string{"--repair-after", c.RepairAfter.String()}
	}
	return nil
}

func (c *Cluster) add(p *proc) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.procs[p.ID]; ok {
		return fmt.Errorf("cluster: %s already exists", p.ID)
	}
	c.procs[p.ID] = p
	c.order = append(c.order, p.ID)
	return nil
}

// New prepares a cluster rooted at dir. Nothing runs until Start calls.
func New(binary, dir string) *Cluster {
	return &Cluster{Binary: binary, Dir: dir, procs: map[string]*proc{}, exits: make(chan Exit, 64)}
}

// Exit reports a component's process that ended.
type Exit struct {
	Component
	Err error // as returned by Wait: nil for a clean exit
}

// Exits delivers every process exit, whoever caused it.
func (c *Cluster) Exits() <-chan Exit { return c.exits }

// FreeAddr returns a loopback address with a port that was free just now.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// StartStorageNodes starts n storage nodes s1..sn, in the AZs StorageAZ
// gives (two per AZ for the first six, then the others round the AZs), and
// waits until each answers.
func (c *Cluster) StartStorageNodes(ctx context.Context, n int) error {
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("s%d", i+1)
		var err error
		// A port found free can be taken by another process before the
		// node binds it; then the node exits at once and another is tried.
		for try := 0; try < 3; try++ {
			var addr string
			if addr, err = FreeAddr(); err != nil {
				return err
			}
			if err = c.StartStorage(ctx, id, StorageAZ(i), addr); !errors.Is(err, errExited) {
				break
			}
			c.forget(id)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// errExited: a process exited before it became ready.
var errExited = errors.New("process exited")

func (c *Cluster) forget(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.procs, id)
	for i, o := range c.order {
		if o == id {
			c.order = append(c.order[:i], c.order[i+1:]...)
			break
		}
	}
}

// StartDB starts a database instance (`borealis db`) of the given role
// ("writer") on volume, serving SQL over HTTP at addr, and waits until its
// /v1/health says it is ready (recovery done). extra flags are passed on.
func (c *Cluster) StartDB(ctx context.Context, id, role, volume, addr string, extra ...string) error {
	p, err := c.dbProc(id, role, volume, addr, extra)
	if err != nil {
		return err
	}
	if err := c.add(p); err != nil {
		return err
	}
	return c.launch(ctx, p)
}

// dbProc is the process of a database instance (`borealis db`).
func (c *Cluster) dbProc(id, role, volume, addr string, extra []string) (*proc, error) {
	if c.ControlAddr == "" {
		return nil, fmt.Errorf("cluster: a database instance needs the control plane (ControlAddr)")
	}
	az, metrics := "", ""
	for i := 0; i+1 < len(extra); i++ {
		switch extra[i] {
		case "--az":
			az = extra[i+1]
		case "--metrics":
			metrics = extra[i+1]
		}
	}
	return &proc{
		Component: Component{Role: role, ID: id, AZ: az, Addr: addr, Log: filepath.Join(c.Dir, id+".log"), Metrics: metrics},
		args: append([]string{"db", "--role", role, "--volume", volume, "--control", c.ControlAddr,
			"--listen", addr, "--id", id}, extra...),
		httpReady: func(ctx context.Context) error { return dbReady(ctx, addr) },
		within:    DBReadyWithin,
	}, nil
}

// ReplicaSpec is one replica of StartReplicas.
type ReplicaSpec struct {
	ID, AZ, Addr string
	// Extra flags are passed on to `borealis db`.
	Extra []string
}

// ReplicaReadyWithin is how long StartReplicas waits for a replica by
// default: a replica recovers nothing, it opens the volume and attaches to
// the writer's redo stream.
const ReplicaReadyWithin = 30 * time.Second

// StartReplicas starts read replicas of volume, all at once, listed in the
// order of specs, and waits for each to be ready (attached to the writer's
// redo stream) in parallel, for at most within (0: ReplicaReadyWithin, or
// ReadyWithin if set). errs[i] is what became of specs[i]: nil once ready,
// or a *NotReadyError (the replica's process may still run, and become
// ready later). It returns a single error instead when nothing could be
// started (a bad spec, an id taken).
func (c *Cluster) StartReplicas(ctx context.Context, volume string, specs []ReplicaSpec, within time.Duration) (errs []error, err error) {
	if within <= 0 {
		within = ReplicaReadyWithin
		if c.ReadyWithin > 0 {
			within = c.ReadyWithin
		}
	}
	procs := make([]*proc, len(specs))
	for i, s := range specs {
		p, err := c.dbProc(s.ID, "replica", volume, s.Addr, append([]string{"--az", s.AZ}, s.Extra...))
		if err != nil {
			return nil, err
		}
		procs[i] = p
	}
	errs = make([]error, len(specs))
	var wg sync.WaitGroup
	for i, p := range procs {
		if err := c.add(p); err != nil {
			errs[i] = err
			continue
		}
		if err := c.start(p); err != nil {
			errs[i] = err
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.waitReady(ctx, p, within, nil)
		}()
	}
	wg.Wait()
	return errs, nil
}

// dbReady asks a database instance's /v1/health whether it is ready, and
// if not, returns what it says it waits for.
func dbReady(ctx context.Context, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/health", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var h struct {
		Ready   bool   `json:"ready"`
		Status  string `json:"status"`
		Replica *struct {
			Stream string `json:"stream"`
			Writer string `json:"writer"`
		} `json:"replica"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return err
	}
	if h.Ready {
		return nil
	}
	// The status says what it waits for (the lease, or the segments
	// recovery needs), which is what a caller waiting for it wants to tell
	// its user.
	switch {
	case h.Replica != nil && strings.HasPrefix(h.Status, "ready"):
		// A replica that opened the volume, but has not attached to the
		// writer's redo stream yet: it knows no VDL to read at.
		writer := h.Replica.Writer
		if writer == "" {
			writer = "none registered yet"
		}
		return fmt.Errorf("waiting to attach to the writer's redo stream (stream %s; writer: %s)", h.Replica.Stream, writer)
	case h.Status == "":
		return errors.New("not ready yet")
	}
	return errors.New(h.Status)
}

// StartReplica starts a read replica (`borealis db --role replica`) of
// volume in AZ az, serving SQL at addr, and waits until it is ready
// (attached to the writer's redo stream).
func (c *Cluster) StartReplica(ctx context.Context, id, az, volume, addr string, extra ...string) error {
	return c.StartDB(ctx, id, "replica", volume, addr, append([]string{"--az", az}, extra...)...)
}

// StartRouter starts the router (`borealis router`) of volume with its
// cluster endpoint at clusterAddr and its reader endpoint at readerAddr,
// and waits until both answer.
func (c *Cluster) StartRouter(ctx context.Context, id, volume, clusterAddr, readerAddr string, extra ...string) error {
	if c.ControlAddr == "" {
		return fmt.Errorf("cluster: the router needs the control plane (ControlAddr)")
	}
	health := func(ctx context.Context, addr string) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/health", nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	p := &proc{
		Component: Component{Role: "router", ID: id, Addr: clusterAddr, Log: filepath.Join(c.Dir, id+".log"),
			ClusterEndpoint: clusterAddr, ReaderEndpoint: readerAddr},
		args: append([]string{"router", "--control", c.ControlAddr, "--volume", volume,
			"--listen", clusterAddr, "--reader-listen", readerAddr}, extra...),
		httpReady: func(ctx context.Context) error {
			if err := health(ctx, clusterAddr); err != nil {
				return err
			}
			return health(ctx, readerAddr)
		},
		within: StorageReadyWithin,
	}
	if err := c.add(p); err != nil {
		return err
	}
	return c.launch(ctx, p)
}

// StartStorage starts one storage node process and waits until it answers.
func (c *Cluster) StartStorage(ctx context.Context, id, az, addr string) error {
	dir := filepath.Join(c.Dir, id)
	p := &proc{
		Component: Component{Role: "storage", ID: id, AZ: az, Addr: addr, Dir: dir, Log: filepath.Join(c.Dir, id+".log")},
		// One P per node: the nodes of a local cluster share the machine's
		// cores (see `borealis storage --procs`).
		args:   []string{"storage", "--id", id, "--az", az, "--listen", addr, "--dir", dir, "--procs", "1"},
		ready:  storageReady,
		within: StorageReadyWithin,
	}
	if c.ControlAddr != "" {
		p.args = append(p.args, "--control", c.ControlAddr)
	}
	if c.RepairRate != "" {
		p.args = append(p.args, "--repair-rate", c.RepairRate)
	}
	if c.StorageMetrics {
		m, err := FreeAddr()
		if err != nil {
			return err
		}
		p.args = append(p.args, "--metrics", m)
		p.Metrics = m
	}
	if err := c.add(p); err != nil {
		return err
	}
	return c.launch(ctx, p)
}

// launch starts p's process and waits until it is ready.
func (c *Cluster) launch(ctx context.Context, p *proc) error {
	if err := c.start(p); err != nil {
		return err
	}
	return c.waitReady(ctx, p, c.within(p), nil)
}

func (c *Cluster) within(p *proc) time.Duration {
	if c.ReadyWithin > 0 {
		return c.ReadyWithin
	}
	return p.within
}

// start starts p's process, without waiting for it to answer.
func (c *Cluster) start(p *proc) error {
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	var logFrom int64
	if st, err := logf.Stat(); err == nil {
		logFrom = st.Size()
	}
	cmd := exec.Command(c.Binary, p.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so a Ctrl-C to the parent is ours to pass on.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("cluster: start %s: %w", p.ID, err)
	}
	done := make(chan struct{})
	c.mu.Lock()
	p.cmd, p.done, p.Pid, p.exitErr, p.logFrom = cmd, done, cmd.Process.Pid, nil, logFrom
	comp := p.Component
	c.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		c.mu.Lock()
		p.exitErr = err
		c.mu.Unlock()
		close(done)
		select {
		case c.exits <- Exit{Component: comp, Err: err}:
		default:
		}
	}()
	return nil
}

// NotReadyError reports a component that did not become ready: its process
// exited first, or it still runs and did not answer as ready in time.
type NotReadyError struct {
	Component // as started: its pid and log
	// Exited: the process ended; Err is how (as Wait returned it, nil for a
	// clean exit). Otherwise Err is what the last readiness check said,
	// such as what a writer waits for.
	Exited bool
	Err    error
	Waited time.Duration
	// LogTail is the end of the component's log, whole lines.
	LogTail []string
}

func (e *NotReadyError) Error() string {
	var b strings.Builder
	if e.Exited {
		fmt.Fprintf(&b, "cluster: %s (pid %d) exited before it became ready", e.ID, e.Pid)
		if e.Err != nil {
			fmt.Fprintf(&b, " (%v)", e.Err)
		}
	} else {
		fmt.Fprintf(&b, "cluster: %s (pid %d) did not become ready within %s: %v", e.ID, e.Pid, e.Waited.Round(time.Second), e.Err)
	}
	if len(e.LogTail) == 0 {
		fmt.Fprintf(&b, "; it wrote nothing to its log %s", e.Log)
		return b.String()
	}
	fmt.Fprintf(&b, "\nthe last lines it wrote to its log %s:", e.Log)
	for _, l := range e.LogTail {
		b.WriteString("\n  ")
		b.WriteString(l)
	}
	return b.String()
}

// Unwrap lets errors.Is(err, errExited) tell an exit from a slow start.
func (e *NotReadyError) Unwrap() error {
	if e.Exited {
		return errExited
	}
	return e.Err
}

// logTailLines is how many lines of a log a NotReadyError quotes.
const logTailLines = 20

// waitReady waits until p answers as ready. within <= 0 waits for as long
// as the process runs and ctx lasts. progress, if set, is told what the
// readiness check says each time that changes.
func (c *Cluster) waitReady(ctx context.Context, p *proc, within time.Duration, progress func(string)) error {
	c.mu.Lock()
	comp, done, logFrom := p.Component, p.done, p.logFrom
	c.mu.Unlock()
	start := time.Now()
	var err error
	if p.httpReady != nil {
		err = poll(ctx, within, time.Second, p.httpReady, done, progress)
	} else {
		err = waitGRPCReady(ctx, p.Addr, p.ready, done, within, progress)
	}
	if err == nil || (ctx.Err() != nil && errors.Is(err, ctx.Err())) {
		return err
	}
	e := &NotReadyError{Component: comp, Err: err, Waited: time.Since(start)}
	select {
	case <-done:
		e.Exited = true
		c.mu.Lock()
		e.Err = p.exitErr
		c.mu.Unlock()
	default:
	}
	e.LogTail, _ = TailLines(p.Log, logFrom, logTailLines)
	return e
}

func waitGRPCReady(ctx context.Context, addr string, ready func(context.Context, *grpc.ClientConn) error, exited <-chan struct{}, within time.Duration, progress func(string)) error {
	// The process is still starting: retry the connection quickly, not with
	// gRPC's default one-second backoff.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.5, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		return err
	}
	defer conn.Close()
	return poll(ctx, within, 500*time.Millisecond, func(ctx context.Context) error { return ready(ctx, conn) }, exited, progress)
}

// poll asks ready every 50 ms, each time for at most per, until it answers,
// the process exits, ctx ends or within (if positive) has passed. progress,
// if set, gets ready's error each time its text changes.
func poll(ctx context.Context, within, per time.Duration, ready func(context.Context) error, exited <-chan struct{}, progress func(string)) error {
	deadline := time.Now().Add(within)
	last := ""
	for {
		cctx, cancel := context.WithTimeout(ctx, per)
		err := ready(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if progress != nil && err.Error() != last {
			last = err.Error()
			progress(last)
		}
		select {
		case <-exited:
			return errExited
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if within > 0 && time.Now().After(deadline) {
			return err
		}
	}
}

func (c *Cluster) get(id string) (*proc, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.procs[id]
	if !ok {
		return nil, fmt.Errorf("cluster: no component %q", id)
	}
	return p, nil
}

// Signal sends sig to a component. SIGKILL also waits for it to be gone.
func (c *Cluster) Signal(id string, sig syscall.Signal) error {
	p, err := c.get(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	cmd, done := p.cmd, p.done
	c.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("cluster: %s was never started", id)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("cluster: signal %s: %w", id, err)
	}
	if sig == syscall.SIGKILL {
		<-done
	}
	return nil
}

// Kill SIGKILLs a component.
func (c *Cluster) Kill(id string) error { return c.Signal(id, syscall.SIGKILL) }

// Restart starts a stopped component again with the same id, address and
// data, and waits until it is ready (as long as its first start would).
func (c *Cluster) Restart(ctx context.Context, id string) error {
	if _, err := c.StartAgain(id); err != nil {
		return err
	}
	return c.WaitReady(ctx, id, 0, nil)
}

// StartAgain starts a stopped component again with the same id, address
// and data, and returns it with its new pid, without waiting for it to be
// ready: a caller can record the new process at once (cluster.json), and
// then WaitReady.
func (c *Cluster) StartAgain(id string) (Component, error) {
	c.mu.Lock()
	p, ok := c.procs[id]
	if !ok {
		c.mu.Unlock()
		return Component{}, fmt.Errorf("cluster: no component %q", id)
	}
	running := p.starting
	if p.done != nil {
		select {
		case <-p.done:
		default:
			running = true
		}
	}
	if running {
		c.mu.Unlock()
		return Component{}, fmt.Errorf("cluster: %s is still running", id)
	}
	p.starting = true
	c.mu.Unlock()
	err := c.start(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	p.starting = false
	return p.Component, err
}

// WaitReady waits until a component answers as ready, for at most within
// (0: as long as a start of its kind waits by default; negative: for as long
// as its process runs and ctx lasts). progress, if set, is told what the
// component says it is waiting for each time that changes. The error is a
// *NotReadyError unless ctx ended.
func (c *Cluster) WaitReady(ctx context.Context, id string, within time.Duration, progress func(string)) error {
	p, err := c.get(id)
	if err != nil {
		return err
	}
	if within == 0 {
		within = c.within(p)
	}
	return c.waitReady(ctx, p, within, progress)
}

// Running reports whether a component's process is alive.
func (c *Cluster) Running(id string) bool {
	p, err := c.get(id)
	if err != nil {
		return false
	}
	c.mu.Lock()
	done, starting := p.done, p.starting
	c.mu.Unlock()
	if starting {
		return true
	}
	select {
	case <-done:
		return false
	default:
		return done != nil
	}
}

// Components lists every component in start order.
func (c *Cluster) Components() []Component {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Component, 0, len(c.order))
	for _, id := range c.order {
		out = append(out, c.procs[id].Component)
	}
	return out
}

// WriteFile writes cluster.json atomically.
func (c *Cluster) WriteFile(path string) error {
	b, err := json.MarshalIndent(File{Components: c.Components()}, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Stop ends every process: SIGTERM, then SIGKILL after grace, a stage at a
// time.
func (c *Cluster) Stop(grace time.Duration) {
	type running struct {
		cmd  *exec.Cmd
		done chan struct{}
	}
	c.mu.Lock()
	var stages [4][]running
	for _, p := range c.procs {
		if p.cmd == nil {
			continue
		}
		r := running{p.cmd, p.done}
		switch p.Role {
		case "router", "replica":
			stages[0] = append(stages[0], r)
		case "storage":
			stages[2] = append(stages[2], r)
		case "control":
			stages[3] = append(stages[3], r)
		default:
			stages[1] = append(stages[1], r)
		}
	}
	c.mu.Unlock()
	// The router and the replicas first (nothing is sent to the writer's
	// redo stream for them to follow any more), then the writer, while
	// the control plane can still take every instance's lease and record
	// back (else the next start waits out the writer lease's TTL) and
	// storage can still take the last commits; the control plane last.
	for _, procs := range stages {
		deadline := time.Now().Add(grace)
		for _, p := range procs {
			p.cmd.Process.Signal(syscall.SIGCONT)
			p.cmd.Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			select {
			case <-p.done:
			case <-time.After(time.Until(deadline)):
				p.cmd.Process.Kill()
				<-p.done
			}
		}
	}
}
