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

// Cluster is a set of running processes started from one binary.
type Cluster struct {
	Binary string
	Dir    string
	// ControlAddr, when set, is passed to storage nodes as --control, so they
	// register and heartbeat with the control plane.
	ControlAddr string

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
	cmd       *exec.Cmd
	done      chan struct{}
}

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
		args:      append([]string{"control", "--listen", addr, "--dir", dir}, extra...),
		ready:     controlReady,
	}
	if err := c.add(p); err != nil {
		return err
	}
	return c.launch(ctx, p)
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

// StartStorageNodes starts n storage nodes s1..sn, two per AZ, and waits
// until each answers.
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
			if err = c.StartStorage(ctx, id, StorageAZs[i%len(StorageAZs)], addr); !errors.Is(err, errExited) {
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
	if c.ControlAddr == "" {
		return fmt.Errorf("cluster: a database instance needs the control plane (ControlAddr)")
	}
	p := &proc{
		Component: Component{Role: role, ID: id, Addr: addr, Log: filepath.Join(c.Dir, id+".log")},
		args: append([]string{"db", "--role", role, "--volume", volume, "--control", c.ControlAddr,
			"--listen", addr, "--id", id}, extra...),
		httpReady: func(ctx context.Context) error {
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
				Ready bool `json:"ready"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
				return err
			}
			if !h.Ready {
				return fmt.Errorf("%s is not ready yet", id)
			}
			return nil
		},
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
		args:  []string{"storage", "--id", id, "--az", az, "--listen", addr, "--dir", dir, "--procs", "1"},
		ready: storageReady,
	}
	if c.ControlAddr != "" {
		p.args = append(p.args, "--control", c.ControlAddr)
	}
	if err := c.add(p); err != nil {
		return err
	}
	return c.launch(ctx, p)
}

func (c *Cluster) launch(ctx context.Context, p *proc) error {
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
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
	p.cmd, p.done, p.Pid = cmd, done, cmd.Process.Pid
	comp := p.Component
	c.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		close(done)
		select {
		case c.exits <- Exit{Component: comp, Err: err}:
		default:
		}
	}()
	wait := func() error { return waitReady(ctx, p.Addr, p.ready, done) }
	if p.httpReady != nil {
		wait = func() error { return waitHTTPReady(ctx, p.httpReady, done) }
	}
	if err := wait(); err != nil {
		tail, _ := os.ReadFile(p.Log)
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return fmt.Errorf("cluster: %s did not become ready: %w\n%s", p.ID, err, tail)
	}
	return nil
}

func waitReady(ctx context.Context, addr string, ready func(context.Context, *grpc.ClientConn) error, exited <-chan struct{}) error {
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
	return poll(ctx, 30*time.Second, 500*time.Millisecond, func(ctx context.Context) error { return ready(ctx, conn) }, exited)
}

func waitHTTPReady(ctx context.Context, ready func(context.Context) error, exited <-chan struct{}) error {
	// A writer's start includes waiting out a crashed writer's lease and
	// recovery: it gets longer than a storage node.
	return poll(ctx, 60*time.Second, time.Second, ready, exited)
}

// poll asks ready every 50 ms, each time for at most per, until it answers,
// the process exits, ctx ends or within has passed.
func poll(ctx context.Context, within, per time.Duration, ready func(context.Context) error, exited <-chan struct{}) error {
	deadline := time.Now().Add(within)
	for {
		cctx, cancel := context.WithTimeout(ctx, per)
		err := ready(cctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return errExited
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
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
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("cluster: signal %s: %w", id, err)
	}
	if sig == syscall.SIGKILL {
		<-p.done
	}
	return nil
}

// Kill SIGKILLs a component.
func (c *Cluster) Kill(id string) error { return c.Signal(id, syscall.SIGKILL) }

// Restart starts a stopped component again with the same id, address and data.
func (c *Cluster) Restart(ctx context.Context, id string) error {
	p, err := c.get(id)
	if err != nil {
		return err
	}
	select {
	case <-p.done:
	default:
		return fmt.Errorf("cluster: %s is still running", id)
	}
	return c.launch(ctx, p)
}

// Running reports whether a component's process is alive.
func (c *Cluster) Running(id string) bool {
	p, err := c.get(id)
	if err != nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
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
	c.mu.Lock()
	var stages [3][]*proc
	for _, p := range c.procs {
		if p.cmd == nil {
			continue
		}
		switch p.Role {
		case "storage":
			stages[1] = append(stages[1], p)
		case "control":
			stages[2] = append(stages[2], p)
		default:
			stages[0] = append(stages[0], p)
		}
	}
	c.mu.Unlock()
	// Database instances first, while the control plane can still take
	// their lease back (else the next start waits out its TTL) and storage
	// can still take their last commits; the control plane last.
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
