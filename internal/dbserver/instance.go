// Package dbserver is a database instance: SQLite on a Borealis volume
// (internal/sqlvfs), served over HTTP with JSON.
//
// A writer instance serves nothing until it holds the volume's writer lease,
// has bumped the volume epoch (which fences any older writer at every storage
// node) and has run crash recovery: it reads a read quorum of every PG,
// computes the VCL and VDL, records the truncation of everything above the
// VDL in the catalog and on a write quorum of every PG, and opens the volume
// at the VDL. It does this on every start, so a restart after any crash never
// shows a partial MTR and never loses an acknowledged one.
package dbserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/instance"
	"github.com/borealis-db/borealis/internal/redostream"
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
	// LeaseTTL is the writer lease's time to live. Default 5s.
	LeaseTTL time.Duration
	// MaxBodyBytes bounds a request body. Default DefaultMaxBodyBytes,
	// which admits the largest value the API takes (MaxValueBytes) as a blob
	// in base64.
	MaxBodyBytes int64
	// MaxRows bounds the rows of one query reply. Default 100,000.
	MaxRows int
	// MaxWriters is the number of writer connections (commits in flight),
	// and of read connections. Default 64.
	MaxWriters int
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
		c.LeaseTTL = 5 * time.Second
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxRows <= 0 {
		c.MaxRows = 100_000
	}
	if c.MaxWriters <= 0 {
		c.MaxWriters = 64
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Instance is a database instance.
type Instance struct {
	cfg  Config
	log  *slog.Logger
	conn *grpc.ClientConn
	ctl  pb.ControlClient

	mu     sync.Mutex
	status string
	db     *sqlvfs.DB
	vol    *volume.Client
	volID  uint64
	epoch  uint64
	ready  atomic.Bool
	lease  *pb.AcquireWriterResponse
	// retryWhy, after a start attempt failed, is why: the status keeps it
	// through the next attempt's quick steps (taking the lease, starting
	// recovery), so that a poll between two attempts learns what the
	// writer waits for, not which step of the retry it is in.
	retryWhy string
	// limbo is the highest LSN of a commit that was not acknowledged in
	// time (0: none); see writable.
	limbo uint64
	// restarts: Run takes the lease again when it is lost; an instance
	// from Start shuts down instead.
	restarts bool
	// lost is closed when the instance stops being the writer.
	lost     chan struct{}
	lostOnce *sync.Once
	closeVol func()

	// The writer's redo stream: the attempt's server, and the listener
	// that outlives attempts.
	stream   *redostream.Server
	replGRPC *grpc.Server
	replAddr string
	// rep is a replica's running state.
	rep *instance.Replica

	// hooks let tests stop the start at a chosen point; they are nil
	// outside tests, and set before Start or Run.
	hooks struct {
		// recovered runs in open once recovery has succeeded, before the
		// volume and the database open; lost is the attempt's.
		recovered func(lost <-chan struct{})
		// keeperDone runs when the keepLease of the given lease returns.
		keeperDone func(lease int64)
	}

	stats struct {
		executes, queries atomic.Uint64
	}
}

// New checks cfg and prepares an instance; Run or Start do the work.
func New(cfg Config) (*Instance, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(cfg.Control, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dbserver: control plane address %q: %w", cfg.Control, err)
	}
	return &Instance{
		cfg:    cfg,
		log:    cfg.Logger.With("instance", cfg.ID, "volume", cfg.Volume),
		conn:   conn,
		ctl:    pb.NewControlClient(conn),
		status: "starting",
	}, nil
}

func (s *Instance) setStatus(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.status, s.retryWhy = msg, ""
	s.mu.Unlock()
}

// setStep records a step of the start that normally passes in moments; it
// does not hide why the last attempt failed (see retryWhy).
func (s *Instance) setStep(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.mu.Lock()
	if s.retryWhy == "" {
		s.status = msg
	}
	s.mu.Unlock()
}

// setRetry records why a start attempt failed, as the status until an
// attempt gets further.
func (s *Instance) setRetry(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.status, s.retryWhy = msg, msg
	s.mu.Unlock()
}

// DB returns the SQL database once the instance is ready.
func (s *Instance) DB() *sqlvfs.DB {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db
}

// Health reports the instance's state.
func (s *Instance) Health() Health {
	s.mu.Lock()
	h := Health{Role: s.cfg.Role, Volume: s.cfg.Volume, VolumeID: s.volID, Epoch: s.epoch, Status: s.status}
	db, vol := s.db, s.vol
	s.mu.Unlock()
	h.Ready = s.ready.Load()
	if vol != nil {
		h.VDL = vol.VDL()
		st := vol.Stats()
		h.Stats.RedoBytes = st.RecordBytes
	}
	if db != nil {
		st := db.Stats()
		h.Stats.Commits, h.Stats.FullPageBytes = st.Commits, st.FullPageBytes
	}
	h.Stats.Executes, h.Stats.Queries = s.stats.executes.Load(), s.stats.queries.Load()
	h.ID, h.AZ, h.Endpoint = s.cfg.ID, s.cfg.AZ, s.cfg.Endpoint
	s.replicationHealth(&h)
	return h
}

// readable returns the database to query, or why there is none.
func (s *Instance) readable() (*sqlvfs.DB, *APIError) {
	if s.cfg.Role == RoleReplica {
		return s.replicaReadable()
	}
	s.mu.Lock()
	db, st := s.db, s.status
	s.mu.Unlock()
	if !s.ready.Load() || db == nil {
		return nil, apiErr(503, CodeNotReady, "the writer of volume %s is not ready: %s", s.cfg.Volume, st)
	}
	return db, nil
}

// writable returns the database to write to. After a commit that was not
// acknowledged, it first waits (up to the write timeout) until that commit
// is durable: new writes would otherwise pile up behind it, each with an
// unknown outcome.
func (s *Instance) writable(ctx context.Context) (*sqlvfs.DB, *APIError) {
	if s.cfg.Role == RoleReplica {
		return nil, s.notWriter()
	}
	db, e := s.readable()
	if e != nil {
		return nil, e
	}
	s.mu.Lock()
	vol, limbo := s.vol, s.limbo
	s.mu.Unlock()
	if limbo == 0 || vol == nil || vol.VDL() >= limbo {
		return db, nil
	}
	wctx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
	defer cancel()
	if err := vol.WaitDurable(wctx, limbo); err != nil {
		if errors.Is(err, volume.ErrFenced) {
			s.fenced(err)
			return nil, apiErr(409, CodeNotWriter, "this instance is no longer the writer of volume %s: %v", s.cfg.Volume, err)
		}
		return nil, apiErr(503, CodeStorageUnavailable, "an earlier commit (LSN %d) is still not acknowledged, and writes wait for it: %v", limbo, err)
	}
	s.mu.Lock()
	if s.limbo == limbo {
		s.limbo = 0
	}
	s.mu.Unlock()
	return db, nil
}

// noteUnacknowledged records a commit whose outcome is unknown.
func (s *Instance) noteUnacknowledged(lsn uint64) {
	s.mu.Lock()
	s.limbo = max(s.limbo, lsn)
	s.mu.Unlock()
}

// fenced is called when storage refuses this writer's epoch: another writer
// took over.
func (s *Instance) fenced(err error) {
	s.mu.Lock()
	once, lost := s.lostOnce, s.lost
	s.mu.Unlock()
	if once != nil {
		once.Do(func() {
			s.log.Error("fenced: another writer took over the volume", "err", err)
			s.ready.Store(false)
			close(lost)
			s.mu.Lock()
			restarts := s.restarts
			s.mu.Unlock()
			if !restarts {
				// Not inline: the caller still holds a connection, and
				// closing the database waits for it.
				go s.shutdown()
			}
		})
	}
}

// Start takes the writer lease (waiting while another holder has it), runs
// crash recovery and opens the database. The lease is kept until Close or
// until it is lost; see Run for an instance that takes it back.
func (s *Instance) Start(ctx context.Context) error {
	if s.cfg.Role == RoleReplica {
		return s.startReplica(ctx)
	}
	lease, err := s.acquire(ctx)
	if err != nil {
		return err
	}
	if err := s.open(ctx, lease); err != nil {
		s.release(lease)
		return err
	}
	return nil
}

// Run runs the instance until ctx ends: start, keep the lease, and start
// again (with a new epoch and a new recovery) whenever it is lost.
func (s *Instance) Run(ctx context.Context) error {
	if s.cfg.Role == RoleReplica {
		return s.runReplica(ctx)
	}
	s.mu.Lock()
	s.restarts = true
	s.mu.Unlock()
	for {
		lease, err := s.acquire(ctx)
		if err != nil {
			return err
		}
		if err := s.open(ctx, lease); err != nil {
			s.release(lease)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if why := readQuorumWait(err); why != "" {
				s.setRetry("recovering: %s; trying again every second", why)
				s.log.Warn("recovery found no read quorum; trying again", "err", err)
			} else {
				s.setRetry("start failed: %v; retrying", err)
				s.log.Error("start failed; retrying", "err", err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
			continue
		}
		s.mu.Lock()
		lost := s.lost
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			s.shutdown()
			return nil
		case <-lost:
		}
		s.shutdown()
		s.log.Warn("no longer the writer; starting again")
	}
}

// acquire takes the writer lease, waiting while another holder (such as a
// crashed writer whose lease has not yet expired) has it.
func (s *Instance) acquire(ctx context.Context) (*pb.AcquireWriterResponse, error) {
	delay := 100 * time.Millisecond
	for {
		s.setStep("taking the writer lease")
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := s.ctl.AcquireWriter(actx, &pb.AcquireWriterRequest{
			Volume: s.cfg.Volume, Holder: s.cfg.ID, TtlMs: uint32(s.cfg.LeaseTTL.Milliseconds()),
		})
		cancel()
		if err == nil {
			s.log.Info("took the writer lease", "epoch", resp.Epoch, "lease", resp.Lease)
			return resp, nil
		}
		switch status.Code(err) {
		case codes.NotFound, codes.InvalidArgument:
			return nil, fmt.Errorf("dbserver: volume %s: %s", s.cfg.Volume, status.Convert(err).Message())
		case codes.FailedPrecondition, codes.AlreadyExists, codes.Aborted:
			s.setStatus("waiting for the writer lease: %s", status.Convert(err).Message())
		default:
			s.setStatus("waiting for the control plane at %s: %s", s.cfg.Control, status.Convert(err).Message())
		}
		s.log.Info("waiting for the writer lease", "err", status.Convert(err).Message())
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, time.Second)
	}
}

// open recovers the volume under the new epoch and opens the database.
func (s *Instance) open(ctx context.Context, lease *pb.AcquireWriterResponse) (err error) {
	epoch := lease.Epoch
	s.setStep("recovering at epoch %d", epoch)
	s.mu.Lock()
	// /v1/health names the epoch being recovered under, which is the one
	// the catalog's lease shows.
	s.epoch = epoch
	s.mu.Unlock()
	// The lease is kept from now on, not from when the database opens: a
	// recovery that waits for storage nodes can last longer than the
	// lease's time to live, and a writer that let it lapse would, once
	// recovered, find it gone and have to recover all over again (while
	// `borealis status` showed no writer at all).
	lost := make(chan struct{})
	once := &sync.Once{}
	go s.keepLease(lease.Lease, lost, once)
	defer func() {
		if err != nil {
			once.Do(func() { close(lost) })
		}
	}()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-lost:
			cancel()
		case <-rctx.Done():
		}
	}()
	cfg := volume.Config{
		Epoch:        epoch,
		WriteTimeout: s.cfg.WriteTimeout,
		Logger:       s.cfg.Logger,
	}
	vctx, stopFollow := context.WithCancel(context.Background())
	// The catalog watch lives as long as this volume client.
	if err := volume.NewFromControl(s.ctl, s.cfg.Volume).Configure(vctx, &cfg); err != nil {
		stopFollow()
		return err
	}
	start := time.Now()
	rec, err := recoverVolume(rctx, s.ctl, s.cfg.Volume, epoch, &cfg, s.log, s.recoveryWaits(epoch))
	if err != nil {
		stopFollow()
		select {
		case <-lost:
			return fmt.Errorf("dbserver: lost the writer lease during the recovery of volume %s at epoch %d: %w", s.cfg.Volume, epoch, err)
		default:
		}
		return fmt.Errorf("dbserver: recovery of volume %s at epoch %d: %w", s.cfg.Volume, epoch, err)
	}
	s.log.Info("recovery done", "epoch", epoch, "vdl", cfg.BaseLSN, "took", time.Since(start).Round(time.Millisecond), "detail", rec)
	if h := s.hooks.recovered; h != nil {
		h(lost)
	}
	if _, err := s.serveReplication(); err != nil {
		stopFollow()
		return err
	}
	stream := s.newStream(rctx, cfg)
	cfg.Redo = stream
	vol, err := volume.Open(vctx, cfg)
	if err != nil {
		stream.Close()
		stopFollow()
		return err
	}
	stream.Attach(vol)
	db, err := sqlvfs.OpenDB(vol, withPolicy(sqlvfs.Options{PageSize: cfg.PageSize, CacheMiB: s.cfg.CacheMiB, MaxReadAge: s.cfg.MaxReadAge}))
	if err != nil {
		stream.Close()
		vol.Close()
		stopFollow()
		return err
	}
	db.Writer.SetMaxOpenConns(s.cfg.MaxWriters)
	db.Writer.SetMaxIdleConns(s.cfg.MaxWriters)
	db.Reader.SetMaxIdleConns(s.cfg.MaxWriters)
	// Each connection may use up to 256 MiB; queries beyond this many wait
	// for one rather than grow the process without bound.
	db.Reader.SetMaxOpenConns(s.cfg.MaxWriters)
	s.mu.Lock()
	// The lease may have been lost since recovery began: the volume and the
	// database opened on vctx, which outlives rctx, and recovery may have
	// succeeded just as rctx was cancelled. keepLease closes lost before it
	// does anything else, and marks the instance not ready under s.mu, so
	// this check and the publication below cannot interleave with it: an
	// attempt whose lease is gone never serves (it would serve without
	// renewals, and stale reads once another writer took over).
	select {
	case <-lost:
		s.mu.Unlock()
		stream.Close()
		db.Close()
		vol.Close()
		stopFollow()
		return fmt.Errorf("dbserver: lost the writer lease of volume %s at epoch %d before serving", s.cfg.Volume, epoch)
	default:
	}
	s.db, s.vol, s.volID, s.epoch = db, vol, cfg.VolumeID, epoch
	s.lost, s.lostOnce, s.lease, s.limbo = lost, once, lease, 0
	s.stream = stream
	s.closeVol = func() {
		stream.Close()
		db.Close()
		vol.Close()
		stopFollow()
	}
	s.status, s.retryWhy = "ready", ""
	s.ready.Store(true)
	s.mu.Unlock()
	go s.keepRegistration(lost)
	s.log.Info("serving as the writer", "epoch", epoch, "vdl", vol.VDL())
	return nil
}

// recoveryWaits returns the recovery's Waiting: it puts what recovery waits
// for into the status, which /v1/health reports (a restart of the writer
// while storage nodes are down can wait for as long as they are), and logs
// it when the wait starts or changes its shape.
func (s *Instance) recoveryWaits(epoch uint64) func(*volume.RecoverWait) {
	var last string
	return func(w *volume.RecoverWait) {
		if w == nil {
			s.setStatus("recovering at epoch %d", epoch)
			if last != "" {
				s.log.Info("recovery goes on: the segments it waited for answered", "epoch", epoch)
			}
			last = ""
			return
		}
		s.setStatus("recovering at epoch %d: %s", epoch, w)
		shape := fmt.Sprintf("%s %d %d/%d", w.Step, w.PG, w.Have, w.Need)
		if shape != last {
			last = shape
			s.log.Warn("recovery waits", "epoch", epoch, "why", w.String())
		}
	}
}

// keepLease renews the writer lease until it is lost: the control plane
// says it is gone, or no renewal succeeded for a whole TTL (the control
// plane may have expired it, and a new writer may be serving; storage fences
// this one's writes by epoch, but its reads would go stale). Then the
// instance stops serving: Run takes the lease again, with a new epoch and a
// new recovery; an instance from Start shuts down.
//
// Only the keepLease that closes lost acts on the instance: once the
// attempt has ended otherwise (it failed, was fenced or shut down), what
// its renewal returns concerns a lease that is no longer the instance's,
// and the instance may already serve under the next attempt's.
func (s *Instance) keepLease(lease int64, lost chan struct{}, once *sync.Once) {
	if h := s.hooks.keeperDone; h != nil {
		defer h(lease)
	}
	t := time.NewTicker(s.cfg.LeaseTTL / 3)
	defer t.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-lost:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.LeaseTTL/3)
		_, err := s.ctl.RenewWriter(ctx, &pb.RenewWriterRequest{Lease: lease})
		cancel()
		select {
		case <-lost:
			// The attempt ended while the renewal was in flight (Run may
			// have released the lease: the answer says it is gone).
			return
		default:
		}
		why := ""
		switch {
		case err == nil:
			lastOK = time.Now()
			continue
		case status.Code(err) == codes.NotFound, status.Code(err) == codes.FailedPrecondition:
			// The control plane answers an expired (or released) lease
			// with FailedPrecondition (control.ErrLeaseExpired).
			why = "the writer lease expired"
		case time.Since(lastOK) >= s.cfg.LeaseTTL:
			why = fmt.Sprintf("the writer lease could not be renewed for %s, its time to live", s.cfg.LeaseTTL)
		default:
			s.log.Warn("cannot renew the writer lease; retrying", "err", err, "since_last_renewal", time.Since(lastOK).Round(time.Millisecond))
			continue
		}
		won := false
		once.Do(func() {
			close(lost)
			won = true
		})
		if !won {
			return
		}
		s.log.Error("no longer the writer: "+why, "err", err)
		// Under s.mu, with lost already closed: open either published
		// before (and this unpublishes) or sees lost closed and fails.
		s.mu.Lock()
		s.ready.Store(false)
		restarts := s.restarts
		s.mu.Unlock()
		if !restarts {
			s.shutdown()
			s.setStatus("stopped: %s", why)
		}
		return
	}
}

func (s *Instance) release(lease *pb.AcquireWriterResponse) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := s.ctl.ReleaseWriter(ctx, &pb.ReleaseWriterRequest{Lease: lease.Lease}); err != nil {
		s.log.Warn("could not release the writer lease; it expires by itself", "err", err)
	}
}

// shutdown stops serving, closes the database and the volume client and
// releases the lease.
func (s *Instance) shutdown() {
	s.mu.Lock()
	s.ready.Store(false)
	closeVol, lease := s.closeVol, s.lease
	lost, once := s.lost, s.lostOnce
	s.closeVol, s.lease = nil, nil
	s.db, s.vol, s.stream = nil, nil, nil
	s.status = "stopped"
	s.mu.Unlock()
	// The served attempt ends here: its keepLease stops rather than renew
	// (or, once the lease is released, report lost) a lease that is no
	// longer kept, as after Run's context ends.
	if once != nil {
		once.Do(func() { close(lost) })
	}
	if closeVol != nil {
		closeVol()
	}
	if lease != nil {
		s.release(lease)
	}
}

// Close stops an instance started with Start: it closes the database and
// the volume client and releases the lease.
func (s *Instance) Close() error {
	s.mu.Lock()
	lost, once := s.lost, s.lostOnce
	s.mu.Unlock()
	if once != nil {
		once.Do(func() { close(lost) })
	}
	s.shutdown()
	s.mu.Lock()
	g, rep := s.replGRPC, s.rep
	s.replGRPC, s.rep = nil, nil
	s.mu.Unlock()
	if g != nil {
		g.Stop()
	}
	if rep != nil {
		rep.Close()
	}
	return s.conn.Close()
}
