package instance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
	"github.com/borealis-db/borealis/internal/redostream"
	"github.com/borealis-db/borealis/internal/sqlvfs"
	"github.com/borealis-db/borealis/internal/volume"
)

// WriterConfig configures a writer.
type WriterConfig struct {
	// Volume is the volume's name in the catalog.
	Volume string
	// Ctl is the control plane's client.
	Ctl pb.ControlClient
	// Control is the control plane's address, as the status names it
	// while the writer waits for it.
	Control string
	// ID names the instance as the holder of the writer lease, and in the
	// catalog. Default "writer".
	ID string
	// AZ is the instance's availability zone, registered in the catalog.
	AZ string
	// Endpoint is the instance's SQL endpoint (host:port) as clients reach
	// it, registered in the catalog.
	Endpoint string
	// ReplicationListen is where the writer serves its redo stream to
	// replicas. Default 127.0.0.1:0 (a port the system picks; replicas
	// find it in the catalog).
	ReplicationListen string
	// Options are the database's (page cache, read age, connection hook);
	// the page size comes from the catalog. MaxReadAge defaults to
	// DefaultMaxReadAge.
	Options sqlvfs.Options
	// MaxConns is the number of read connections. Writes run on one
	// connection: a transaction holds the writer turn from its first read
	// to its end anyway, and one connection keeps SQLite's page cache,
	// which every other connection would drop each time one commits. Its
	// commits still pipeline when the caller defers their durability wait
	// (sqlvfs.DeferDurability). Default 64.
	MaxConns int
	// WriteTimeout is how long a commit waits for a write quorum before it
	// fails (and how long a write waits for an earlier commit that was not
	// acknowledged; see Writable). Default 10s.
	WriteTimeout time.Duration
	// LeaseTTL is the writer lease's time to live, and the catalog
	// registration's. Default DefaultLeaseTTL.
	LeaseTTL time.Duration
	// Yield, if set, is asked before each attempt to take the lease: true
	// means another instance is the writer (or is being promoted), and
	// Start gives way with ErrYielded rather than wait for the lease.
	Yield  func() bool
	Logger *slog.Logger
}

// DefaultLeaseTTL is the writer lease's time to live by default: the
// shortest etcd grants (its minimum TTL is 1.5 election timeouts, rounded
// up to a second; the embedded etcd's election timeout is 500 ms), so that
// a dead writer's lease is gone within a second and a replica promoted.
const DefaultLeaseTTL = time.Second

func (c *WriterConfig) defaults() {
	if c.ID == "" {
		c.ID = RoleWriter
	}
	if c.ReplicationListen == "" {
		c.ReplicationListen = "127.0.0.1:0"
	}
	if c.Options.MaxReadAge <= 0 {
		c.Options.MaxReadAge = DefaultMaxReadAge
	}
	if c.Options.CacheMiB <= 0 {
		c.Options.CacheMiB = sqlvfs.DefaultCacheMiB
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 64
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Writer is the writer of a volume: SQLite on the volume (internal/sqlvfs),
// with the volume's redo stream served to its replicas.
//
// A writer serves nothing until it holds the volume's writer lease, has
// bumped the volume epoch (which fences any older writer at every storage
// node) and has run crash recovery: it reads a read quorum of every PG,
// computes the VCL and VDL, records the truncation of everything above the
// VDL in the catalog and on a write quorum of every PG, and opens the volume
// at the VDL. It does this on every start, so a restart after any crash never
// shows a partial MTR and never loses an acknowledged one.
type Writer struct {
	cfg WriterConfig
	log *slog.Logger
	ctl pb.ControlClient

	mu     sync.Mutex
	status string
	db     *sqlvfs.DB
	vol    *volume.Client
	volID  uint64
	epoch  uint64
	ready  atomic.Bool
	// leaseUntil is the monotonic time (monoNow) until which the lease is
	// certainly alive in etcd.
	leaseUntil atomic.Int64
	// draining: a planned failover hands the role over; new writes are
	// refused.
	draining atomic.Pointer[string]
	// lastAcquire is how long the AcquireWriter call that succeeded took.
	lastAcquire atomic.Int64
	lease       *pb.AcquireWriterResponse
	// retryWhy, after a start attempt failed, is why: the status keeps it
	// through the next attempt's quick steps (taking the lease, starting
	// recovery), so that a poll between two attempts learns what the
	// writer waits for, not which step of the retry it is in.
	retryWhy string
	// limbo is the highest LSN of a commit that was not acknowledged in
	// time (0: none); see Writable.
	limbo uint64
	// restarts: Run takes the lease again when it is lost; a writer from
	// Start shuts down instead.
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

	// hooks let tests stop the start at a chosen point; they are nil
	// outside tests, and set before Start or Run.
	hooks struct {
		// recovered runs in open once recovery has succeeded, before the
		// volume and the database open; lost is the attempt's.
		recovered func(lost <-chan struct{})
		// keeperDone runs when the keepLease of the given lease returns.
		keeperDone func(lease int64)
	}
}

// NewWriter checks cfg and prepares a writer; Run or Start do the work.
func NewWriter(cfg WriterConfig) (*Writer, error) {
	if cfg.Volume == "" {
		return nil, errors.New("instance: a volume name is required")
	}
	if cfg.Ctl == nil {
		return nil, errors.New("instance: a writer needs the control plane's client")
	}
	cfg.defaults()
	return &Writer{
		cfg:    cfg,
		log:    cfg.Logger.With("instance", cfg.ID, "volume", cfg.Volume),
		ctl:    cfg.Ctl,
		status: "starting",
	}, nil
}

// NewOpenWriter is a writer that serves db on vol as they are, ready at
// once: it takes no lease, runs no recovery and serves no redo stream
// (cfg.Ctl may be nil). For the tests of the layers above, over a volume
// opened by hand; Close closes db and vol.
func NewOpenWriter(cfg WriterConfig, db *sqlvfs.DB, vol *volume.Client) *Writer {
	cfg.defaults()
	w := &Writer{
		cfg:    cfg,
		log:    cfg.Logger.With("instance", cfg.ID, "volume", cfg.Volume),
		ctl:    cfg.Ctl,
		status: "ready",
		db:     db,
		vol:    vol,
	}
	sizePools(db, cfg.MaxConns)
	w.closeVol = func() { db.Close(); vol.Close() }
	w.ready.Store(true)
	return w
}

// sizePools gives the database one writer connection (see
// WriterConfig.MaxConns) and n read connections.
func sizePools(db *sqlvfs.DB, n int) {
	db.Writer.SetMaxOpenConns(1)
	db.Writer.SetMaxIdleConns(1)
	db.Reader.SetMaxIdleConns(n)
	// Each connection may use up to 256 MiB; queries beyond this many wait
	// for one rather than grow the process without bound.
	db.Reader.SetMaxOpenConns(n)
}

func (w *Writer) setStatus(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	w.mu.Lock()
	w.status, w.retryWhy = msg, ""
	w.mu.Unlock()
}

// setStep records a step of the start that normally passes in moments; it
// does not hide why the last attempt failed (see retryWhy).
func (w *Writer) setStep(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	w.mu.Lock()
	if w.retryWhy == "" {
		w.status = msg
	}
	w.mu.Unlock()
}

// setRetry records why a start attempt failed, as the status until an
// attempt gets further.
func (w *Writer) setRetry(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	w.mu.Lock()
	w.status, w.retryWhy = msg, msg
	w.mu.Unlock()
}

// DB returns the SQL database while the writer serves (nil otherwise).
func (w *Writer) DB() *sqlvfs.DB {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.db
}

// Volume returns the volume client while the writer serves (nil
// otherwise).
func (w *Writer) Volume() *volume.Client {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.vol
}

// Stream returns the redo stream of the attempt that serves (nil
// otherwise).
func (w *Writer) Stream() *redostream.Server {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stream
}

// Ready reports whether the writer serves.
func (w *Writer) Ready() bool { return w.ready.Load() }

// Status says what the writer does: "ready", or what it waits for, or why
// it stopped.
func (w *Writer) Status() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.status
}

// Epoch is the volume epoch the writer serves under, or recovers under
// while it starts (the one the catalog's lease shows).
func (w *Writer) Epoch() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.epoch
}

// VolumeID is the volume's id, once the writer has served (0 before).
func (w *Writer) VolumeID() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.volID
}

// Start takes the writer lease (waiting while another holder has it), runs
// crash recovery and opens the database. The lease is kept until Close or
// until it is lost; see Run for a writer that takes it back.
func (w *Writer) Start(ctx context.Context) error {
	lease, err := w.acquire(ctx)
	if err != nil {
		return err
	}
	if err := w.open(ctx, lease, nil); err != nil {
		w.release(lease)
		return err
	}
	return nil
}

// Run runs the writer until ctx ends: start, keep the lease, and start
// again (with a new epoch and a new recovery) whenever it is lost.
func (w *Writer) Run(ctx context.Context) error {
	w.mu.Lock()
	w.restarts = true
	w.mu.Unlock()
	for {
		lease, err := w.acquire(ctx)
		if err != nil {
			return err
		}
		if err := w.open(ctx, lease, nil); err != nil {
			w.release(lease)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if why := readQuorumWait(err); why != "" {
				w.setRetry("recovering: %s; trying again every second", why)
				w.log.Warn("recovery found no read quorum; trying again", "err", err)
			} else {
				w.setRetry("start failed: %v; retrying", err)
				w.log.Error("start failed; retrying", "err", err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
			continue
		}
		w.mu.Lock()
		lost := w.lost
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			w.shutdown()
			return nil
		case <-lost:
		}
		w.shutdown()
		w.log.Warn("no longer the writer; starting again")
	}
}

// adoption is a replica's database that open promotes in place (keeping
// its page cache), with what the promotion measures.
type adoption struct {
	db *sqlvfs.DB
	// applied is the VDL the replica had applied when it stopped.
	applied uint64
	// Filled in by open.
	recovery, openTook time.Duration
	vdl                uint64
	warm               bool
}

// open recovers the volume under the new epoch and opens the database, or
// promotes adopt's.
func (w *Writer) open(ctx context.Context, lease *pb.AcquireWriterResponse, adopt *adoption) (err error) {
	epoch := lease.Epoch
	w.setStep("recovering at epoch %d", epoch)
	w.mu.Lock()
	// /v1/health names the epoch being recovered under, which is the one
	// the catalog's lease shows.
	w.epoch = epoch
	w.mu.Unlock()
	// The lease is kept from now on, not from when the database opens: a
	// recovery that waits for storage nodes can last longer than the
	// lease's time to live, and a writer that let it lapse would, once
	// recovered, find it gone and have to recover all over again (while
	// `borealis status` showed no writer at all).
	lost := make(chan struct{})
	once := &sync.Once{}
	go w.keepLease(lease.Lease, lost, once)
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
		WriteTimeout: w.cfg.WriteTimeout,
		Logger:       w.cfg.Logger,
	}
	vctx, stopFollow := context.WithCancel(context.Background())
	// The catalog watch lives as long as this volume client.
	// The lease's answer describes the volume at the new epoch: no need to
	// ask the catalog again.
	var described *pb.VolumeInfo
	if v := lease.Volume; v != nil && v.VolumeEpoch == epoch {
		described = v
		volume.NewFromControl(w.ctl, w.cfg.Volume).ConfigureFrom(vctx, &cfg, v)
	} else if err := volume.NewFromControl(w.ctl, w.cfg.Volume).Configure(vctx, &cfg); err != nil {
		stopFollow()
		return err
	}
	start := time.Now()
	rec, err := recoverVolume(rctx, w.ctl, w.cfg.Volume, described, epoch, &cfg, w.log, w.recoveryWaits(epoch))
	if err != nil {
		stopFollow()
		select {
		case <-lost:
			return fmt.Errorf("instance: lost the writer lease during the recovery of volume %s at epoch %d: %w", w.cfg.Volume, epoch, err)
		default:
		}
		return fmt.Errorf("instance: recovery of volume %s at epoch %d: %w", w.cfg.Volume, epoch, err)
	}
	w.log.Info("recovery done", "epoch", epoch, "vdl", cfg.BaseLSN, "took", time.Since(start).Round(time.Millisecond), "detail", rec)
	opened := time.Now()
	if adopt != nil {
		adopt.recovery, adopt.vdl = opened.Sub(start), cfg.BaseLSN
	}
	if h := w.hooks.recovered; h != nil {
		h(lost)
	}
	if _, err := w.serveReplication(); err != nil {
		stopFollow()
		return err
	}
	stream := w.newStream(rctx, cfg)
	cfg.Redo = stream
	vol, err := volume.Open(vctx, cfg)
	if err != nil {
		stream.Close()
		stopFollow()
		return err
	}
	stream.Attach(vol)
	opts := w.cfg.Options
	opts.PageSize = cfg.PageSize
	var db *sqlvfs.DB
	if adopt != nil {
		db = adopt.db
		var lacking []redo.Record
		if cfg.BaseLSN > adopt.applied {
			// MTRs durable before the old writer died that the replica
			// never received: read them from storage and apply them to
			// the cache, which then stays warm.
			var rerr error
			if lacking, rerr = vol.RedoSince(rctx, adopt.applied); rerr != nil {
				w.log.Warn("cannot read the MTRs the replica lacks; its page cache is dropped", "applied", adopt.applied, "vdl", cfg.BaseLSN, "err", rerr)
				lacking = nil
			}
		}
		adopt.warm, err = db.Promote(vol, lacking...)
	} else {
		db, err = sqlvfs.OpenDB(vol, opts)
	}
	if err != nil {
		stream.Close()
		vol.Close()
		stopFollow()
		return err
	}
	sizePools(db, w.cfg.MaxConns)
	w.mu.Lock()
	// The lease may have been lost since recovery began: the volume and the
	// database opened on vctx, which outlives rctx, and recovery may have
	// succeeded just as rctx was cancelled. keepLease closes lost before it
	// does anything else, and marks the writer not ready under w.mu, so
	// this check and the publication below cannot interleave with it: an
	// attempt whose lease is gone never serves (it would serve without
	// renewals, and stale reads once another writer took over).
	select {
	case <-lost:
		w.mu.Unlock()
		stream.Close()
		db.Close()
		vol.Close()
		stopFollow()
		return fmt.Errorf("instance: lost the writer lease of volume %s at epoch %d before serving", w.cfg.Volume, epoch)
	default:
	}
	w.db, w.vol, w.volID, w.epoch = db, vol, cfg.VolumeID, epoch
	w.lost, w.lostOnce, w.lease, w.limbo = lost, once, lease, 0
	w.stream = stream
	w.closeVol = func() {
		stream.Close()
		db.Close()
		vol.Close()
		stopFollow()
	}
	w.status, w.retryWhy = "ready", ""
	w.ready.Store(true)
	w.mu.Unlock()
	if adopt != nil {
		adopt.openTook = time.Since(opened)
	}
	go w.keepRegistration(lost)
	w.log.Info("serving as the writer", "epoch", epoch, "vdl", vol.VDL())
	return nil
}

// shutdown stops serving, closes the database and the volume client and
// releases the lease.
func (w *Writer) shutdown() {
	w.mu.Lock()
	w.ready.Store(false)
	closeVol, lease := w.closeVol, w.lease
	lost, once := w.lost, w.lostOnce
	w.closeVol, w.lease = nil, nil
	w.db, w.vol, w.stream = nil, nil, nil
	w.status = "stopped"
	w.mu.Unlock()
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
		w.release(lease)
	}
}

// Close stops a writer started with Start (or one whose Run has returned):
// it closes the database and the volume client, releases the lease and
// stops serving the redo stream. The control plane's client is the
// caller's.
func (w *Writer) Close() error {
	w.mu.Lock()
	lost, once := w.lost, w.lostOnce
	w.mu.Unlock()
	if once != nil {
		once.Do(func() { close(lost) })
	}
	w.shutdown()
	w.mu.Lock()
	g := w.replGRPC
	w.replGRPC = nil
	w.mu.Unlock()
	if g != nil {
		g.Stop()
	}
	return nil
}
