// Package dbserver serves a database instance, SQLite on a Borealis volume,
// over HTTP with JSON. The instance's lifecycle is internal/instance's: a
// writer (instance.Writer: the lease, recovery, the redo stream) or a
// replica (instance.Replica); this package is its HTTP face (the API, its
// limits and policy, health and metrics).
package dbserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/instance"
	"github.com/borealis-db/borealis/internal/sqlvfs"
	"github.com/borealis-db/borealis/internal/volume"
)

// Roles.
const (
	RoleWriter  = instance.RoleWriter
	RoleReplica = instance.RoleReplica
)

// Config configures an instance.
type Config struct {
	// Role is RoleWriter or RoleReplica.
	Role string
	// Volume is the volume's name in the catalog.
	Volume string
	// Control is the control plane's gRPC address.
	Control string
	// ID names the instance as the holder of the writer lease.
	ID string
	// CacheMiB sizes the page cache. Default sqlvfs.DefaultCacheMiB.
	CacheMiB int
	// WriteTimeout is how long a commit waits for a write quorum before it
	// fails with storage_unavailable. Default 10s.
	WriteTimeout time.Duration
	// RequestTimeout bounds one request, from the handler's start: waiting
	// for room in the body budget, the body's arrival, and its SQL, which
	// is interrupted when it runs out (code timeout). A runaway statement
	// would otherwise hold a connection (and, writing, the writer turn) for
	// as long as its client waits. Default 2m, or a minute more than
	// WriteTimeout if that is longer.
	RequestTimeout time.Duration
	// LeaseTTL is the writer lease's time to live. Default instance.DefaultLeaseTTL.
	LeaseTTL time.Duration
	// MaxBodyBytes bounds a request body. Default DefaultMaxBodyBytes,
	// which admits the largest value the API takes (MaxValueBytes) as a blob
	// in base64.
	MaxBodyBytes int64
	// MaxRows bounds the rows of one query reply. Default 100,000.
	MaxRows int
	// MaxReaders is the number of read connections: queries run at once.
	// Writes share one connection (see execute). Default 64.
	MaxReaders int
	Logger     *slog.Logger

	// AZ is the instance's availability zone, registered in the catalog.
	AZ string
	// Endpoint is the instance's SQL endpoint (host:port) as clients reach
	// it, registered in the catalog.
	Endpoint string
	// ReplicationListen is where a writer serves its redo stream to
	// replicas. Default 127.0.0.1:0 (a port the system picks; replicas
	// find it in the catalog).
	ReplicationListen string
	// MaxReadAge bounds how long a read transaction may stay pinned at its
	// read point (snapshot_too_old beyond). Default 5m.
	MaxReadAge time.Duration
	// MinLSNWait bounds how long a query with min_lsn waits for the
	// instance to reach it (lagging beyond). Default 1s.
	MinLSNWait time.Duration
	// PromotionTier is a replica's tier for failover.
	PromotionTier uint32
}

func (c *Config) defaults() error {
	if c.Role == "" {
		c.Role = RoleWriter
	}
	if c.Role != RoleWriter && c.Role != RoleReplica {
		return fmt.Errorf("dbserver: role %q: want %q or %q", c.Role, RoleWriter, RoleReplica)
	}
	if c.ReplicationListen == "" {
		c.ReplicationListen = "127.0.0.1:0"
	}
	if c.MaxReadAge <= 0 {
		c.MaxReadAge = instance.DefaultMaxReadAge
	}
	if c.MinLSNWait <= 0 {
		c.MinLSNWait = time.Second
	}
	if c.Volume == "" {
		return errors.New("dbserver: a volume name is required")
	}
	if c.Control == "" {
		return errors.New("dbserver: the control plane's address is required")
	}
	if c.ID == "" {
		c.ID = c.Role
	}
	if c.CacheMiB <= 0 {
		c.CacheMiB = sqlvfs.DefaultCacheMiB
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = max(2*time.Minute, c.WriteTimeout+time.Minute)
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = instance.DefaultLeaseTTL
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxRows <= 0 {
		c.MaxRows = 100_000
	}
	if c.MaxReaders <= 0 {
		c.MaxReaders = 64
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Instance is a database instance served over HTTP: the HTTP face of a
// writer or a replica, whose lifecycle is its role's.
type Instance struct {
	cfg  Config
	log  *slog.Logger
	conn *grpc.ClientConn // the control plane's (nil in tests)

	// role is the instance's lifecycle: w's on a writer, rep's on a
	// replica (the other is nil).
	role role
	w    *instance.Writer
	// m is the member whose role failovers change (nil in tests that serve
	// a writer or a replica as it is).
	m *instance.Member

	stats struct {
		executes, queries atomic.Uint64
	}
}

// role is an instance's lifecycle as its HTTP face needs it.
type role interface {
	start(ctx context.Context) error
	run(ctx context.Context) error
	close() error
	face
}

// face is how an instance answers in the role it has now: the writer's or a
// replica's.
type face interface {
	// readable returns the database to query, or why there is none.
	readable() (*sqlvfs.DB, *APIError)
	// writable returns the database to write to, or the refusal.
	writable(ctx context.Context) (*sqlvfs.DB, *APIError)
	// health fills in the role's part of h: readiness, status, volume,
	// epoch, VDL, read point, commit counters and replication.
	health(h *Health)
}

// New checks cfg and prepares an instance; Run or Start do the work.
func New(cfg Config) (*Instance, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	conn, err := control.Dial(cfg.Control)
	if err != nil {
		return nil, fmt.Errorf("dbserver: control plane address %q: %w", cfg.Control, err)
	}
	ctl := pb.NewControlClient(conn)
	s := &Instance{
		cfg:  cfg,
		log:  cfg.Logger.With("instance", cfg.ID, "volume", cfg.Volume),
		conn: conn,
	}
	m, err := instance.NewMember(instance.MemberConfig{
		Writer: writerConfig(cfg, ctl), PromotionTier: cfg.PromotionTier, StartAs: cfg.Role,
	})
	if err != nil {
		conn.Close()
		return nil, err
	}
	s.m, s.role = m, memberRole{cfg: cfg, m: m}
	return s, nil
}

// writerConfig is the writer's part of cfg.
func writerConfig(cfg Config, ctl pb.ControlClient) instance.WriterConfig {
	return instance.WriterConfig{
		Volume: cfg.Volume, Ctl: ctl, Control: cfg.Control,
		ID: cfg.ID, AZ: cfg.AZ, Endpoint: cfg.Endpoint, ReplicationListen: cfg.ReplicationListen,
		Options:  withPolicy(sqlvfs.Options{CacheMiB: cfg.CacheMiB, MaxReadAge: cfg.MaxReadAge}),
		MaxConns: cfg.MaxReaders, WriteTimeout: cfg.WriteTimeout, LeaseTTL: cfg.LeaseTTL, Logger: cfg.Logger,
	}
}

// DB returns a writer's SQL database once it is ready (nil on a replica).
func (s *Instance) DB() *sqlvfs.DB {
	w := s.Writer()
	if w == nil {
		return nil
	}
	return w.DB()
}

// Writer is the instance's writer while it is the writer (nil on a
// replica).
func (s *Instance) Writer() *instance.Writer {
	if s.m != nil {
		return s.m.Writer()
	}
	return s.w
}

// Member is the instance's member (nil on an instance served as it is).
func (s *Instance) Member() *instance.Member { return s.m }

// Health reports the instance's state.
func (s *Instance) Health() Health {
	h := Health{Role: s.cfg.Role, Volume: s.cfg.Volume}
	s.role.health(&h)
	h.Stats.Executes, h.Stats.Queries = s.stats.executes.Load(), s.stats.queries.Load()
	h.ID, h.AZ, h.Endpoint = s.cfg.ID, s.cfg.AZ, s.cfg.Endpoint
	return h
}

// readable returns the database to query, or why there is none.
func (s *Instance) readable() (*sqlvfs.DB, *APIError) { return s.role.readable() }

// writable returns the database to write to, or why there is none: on a
// writer, after a commit that was not acknowledged, once that commit is
// durable (see instance.Writer.Writable).
func (s *Instance) writable(ctx context.Context) (*sqlvfs.DB, *APIError) {
	return s.role.writable(ctx)
}

// noteUnacknowledged records a commit whose outcome is unknown.
func (s *Instance) noteUnacknowledged(lsn uint64) {
	if w := s.Writer(); w != nil {
		w.NoteUnacknowledged(lsn)
	}
}

// fenced is called when storage refuses this writer's epoch: another writer
// took over.
func (s *Instance) fenced(err error) {
	if w := s.Writer(); w != nil {
		w.Fenced(err)
	}
}

// writerVolume is a writer's volume client while it serves (nil otherwise,
// and on a replica).
func (s *Instance) writerVolume() *volume.Client {
	w := s.Writer()
	if w == nil {
		return nil
	}
	return w.Volume()
}

// Start starts the instance once: a writer takes the writer lease (waiting
// while another holder has it), runs crash recovery and opens the
// database, and keeps the lease until Close or until it is lost; a replica
// opens the volume and starts following the writer. See Run for an
// instance that starts again.
func (s *Instance) Start(ctx context.Context) error { return s.role.start(ctx) }

// Run runs the instance until ctx ends: a writer starts, keeps the lease,
// and starts again (with a new epoch and a new recovery) whenever it is
// lost; a replica retries its start until it succeeds.
func (s *Instance) Run(ctx context.Context) error { return s.role.run(ctx) }

// Close stops the instance: a writer closes the database and the volume
// client and releases the lease; a replica deregisters and closes.
func (s *Instance) Close() error {
	s.role.close()
	if s.conn == nil {
		return nil
	}
	return s.conn.Close()
}
