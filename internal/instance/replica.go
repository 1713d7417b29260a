// Package instance is a database instance's lifecycle on a volume. A
// replica (this file) keeps no data of its own: it reads the volume's pages
// from storage through a read-only volume client, keeps a page cache in
// memory, follows the writer's redo stream (internal/redostream) with the
// apply rules of internal/replica, and registers itself in the catalog
// under a lease, with its replication state.
package instance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
	"github.com/borealis-db/borealis/internal/redostream"
	"github.com/borealis-db/borealis/internal/replica"
	"github.com/borealis-db/borealis/internal/sqlvfs"
	"github.com/borealis-db/borealis/internal/volume"
)

// Roles.
const (
	RoleWriter  = "writer"
	RoleReplica = "replica"
)

// DefaultMaxReadAge bounds a replica's read transactions by default.
const DefaultMaxReadAge = 5 * time.Minute

// ReplicaConfig configures a replica.
type ReplicaConfig struct {
	Volume string
	// Ctl is the control plane's client.
	Ctl pb.ControlClient
	ID  string
	AZ  string
	// Endpoint is the replica's SQL endpoint (host:port), registered in the
	// catalog.
	Endpoint string
	// Options are the database's (page cache, read age, connection hook);
	// the page size comes from the catalog.
	Options sqlvfs.Options
	// LeaseTTL is the registration's time to live. Default 5s.
	LeaseTTL time.Duration
	// PromotionTier is registered for failover.
	PromotionTier uint32
	// MaxConns bounds the database's read connections (0: database/sql's
	// default).
	MaxConns int
	Logger   *slog.Logger
}

// Replica is a running read replica.
type Replica struct {
	cfg    ReplicaConfig
	log    *slog.Logger
	rctx   context.Context
	vol    *volume.Client
	db     *sqlvfs.DB
	volID  uint64
	cancel context.CancelFunc
	done   sync.WaitGroup

	mu       sync.Mutex
	f        *replica.Follower
	writer   string // the writer's SQL endpoint
	heard    time.Time
	streamAt time.Time // when the current subscription started (tests wait on it)
	started  bool
	// behindSince is the writer's clock when the oldest VDL not yet applied
	// was reached (0: caught up).
	behindSince int64
	// vdlAt is the writer's clock when it reached the newest VDL it sent,
	// and applyDelay how long after that moment the replica applied it:
	// the lag of the last commit seen.
	vdlAt      int64
	applyDelay time.Duration
	// applies remembers when recent VDLs were applied (ascending), for
	// AppliedAt.
	applies applyRing
	// decoded are the records of received MTR parts, by first LSN, until
	// applied (or dropped with the subscription).
	decoded map[uint64][]redo.Record
	lease   int64
}

type applyMark struct {
	vdl uint64
	at  time.Time
}

const applyMarks = 8192

// StartReplica opens the volume read-only, registers the replica and starts
// following the writer's stream. It serves reads at once, at the VDL it
// has applied (none until its first subscription starts: Ready is false
// until then).
func StartReplica(ctx context.Context, cfg ReplicaConfig) (*Replica, error) {
	if cfg.ID == "" {
		return nil, errors.New("instance: a replica needs an id")
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 5 * time.Second
	}
	if cfg.Options.MaxReadAge <= 0 {
		cfg.Options.MaxReadAge = DefaultMaxReadAge
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Replica{cfg: cfg, log: cfg.Logger.With("replica", cfg.ID, "volume", cfg.Volume), f: replica.NewFollower(), decoded: map[uint64][]redo.Record{}}
	vcfg := volume.Config{ReadOnly: true, Logger: cfg.Logger}
	rctx, cancel := context.WithCancel(context.Background())
	if err := volume.NewFromControl(cfg.Ctl, cfg.Volume).Configure(rctx, &vcfg); err != nil {
		cancel()
		return nil, err
	}
	vol, err := volume.Open(rctx, vcfg)
	if err != nil {
		cancel()
		return nil, err
	}
	r.cfg.Options.PageSize = vcfg.PageSize
	r.vol, r.volID, r.cancel, r.rctx = vol, vcfg.VolumeID, cancel, rctx
	if err := r.register(ctx); err != nil {
		r.close()
		return nil, err
	}
	r.done.Add(2)
	go func() {
		defer r.done.Done()
		redostream.Follow(rctx, redostream.SubscriberConfig{
			ReplicaID: cfg.ID,
			VolumeID:  vcfg.VolumeID,
			Writer:    r.findWriter,
			Position:  r.position,
			Report:    r.report,
			Handle:    r.handle,
			Lost:      r.lost,
			Logger:    r.log,
		})
	}()
	go func() {
		defer r.done.Done()
		r.keepRegistration(rctx)
	}()
	return r, nil
}

// DB is the replica's database (read connections only), nil until the
// replica attached to the writer's stream for the first time (Ready).
func (r *Replica) DB() *sqlvfs.DB {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.db
}

// Volume is the replica's read-only volume client.
func (r *Replica) Volume() *volume.Client { return r.vol }

// VolumeID is the volume's id.
func (r *Replica) VolumeID() uint64 { return r.volID }

// Applied is the VDL the replica exposes.
func (r *Replica) Applied() uint64 { return r.vol.VDL() }

// Ready reports whether the replica serves: it attached to a stream once
// (before that it knows no VDL to read at; storage may have collected
// everything below the writer's) and opened its database there.
func (r *Replica) Ready() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.db != nil
}

// openDB opens the database once the first stream start set the VDL, and
// publishes it. The page cache it filled while it opened may hold pages
// older than MTRs applied meanwhile (applied to no cache): it is dropped
// before the database serves.
func (r *Replica) openDB() {
	defer r.done.Done()
	delay := 100 * time.Millisecond
	for r.rctx.Err() == nil {
		db, err := sqlvfs.OpenReplicaDB(r.vol, r.cfg.Options)
		if err == nil {
			if r.cfg.MaxConns > 0 {
				db.Reader.SetMaxIdleConns(r.cfg.MaxConns)
				db.Reader.SetMaxOpenConns(r.cfg.MaxConns)
			}
			r.mu.Lock()
			db.Resync(r.vol.VDL())
			r.db = db
			r.mu.Unlock()
			r.log.Info("serving reads", "applied", r.vol.VDL())
			return
		}
		r.log.Warn("cannot open the database on the volume yet; retrying", "applied", r.vol.VDL(), "err", err)
		select {
		case <-r.rctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// Writer is the writer's SQL endpoint as the catalog last showed it.
func (r *Replica) Writer() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writer
}

// WaitApplied waits until the replica has applied lsn, or ctx ends.
func (r *Replica) WaitApplied(ctx context.Context, lsn uint64) error {
	return r.vol.WaitDurable(ctx, lsn)
}

// AppliedAt returns when the replica applied a VDL at or above lsn (the
// first such), if it remembers; false if it has not applied lsn yet or the
// moment is too old to be remembered.
func (r *Replica) AppliedAt(lsn uint64) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.applies.len()
	i := sort.Search(n, func(i int) bool { return r.applies.at(i).vdl >= lsn })
	if i == n || (i == 0 && n == applyMarks) {
		return time.Time{}, false
	}
	return r.applies.at(i).at, true
}

// applyRing holds the last applyMarks applyMarks, oldest first.
type applyRing struct {
	marks []applyMark
	head  int // index of the oldest once full
}

func (a *applyRing) len() int { return len(a.marks) }

func (a *applyRing) at(i int) applyMark { return a.marks[(a.head+i)%len(a.marks)] }

func (a *applyRing) add(m applyMark) {
	if len(a.marks) < applyMarks {
		a.marks = append(a.marks, m)
		return
	}
	a.marks[a.head] = m
	a.head = (a.head + 1) % applyMarks
}

// Status is the replica's replication state.
type Status struct {
	State     replica.State
	Epoch     uint64
	Applied   uint64
	WriterVDL uint64
	LagLSN    uint64
	Lag       time.Duration
	ReadFloor uint64
	Writer    string
	Resyncs   uint64
}

// Status reports the replica's replication state now.
func (r *Replica) Status() Status {
	now := time.Now()
	r.mu.Lock()
	st := Status{
		State:     r.f.State(),
		Epoch:     r.f.Epoch(),
		Applied:   r.f.Applied(),
		WriterVDL: r.f.WriterVDL(),
		Writer:    r.writer,
		Resyncs:   r.f.Resyncs(),
	}
	st.LagLSN = st.WriterVDL - st.Applied
	st.Lag = r.applyDelay
	if r.behindSince != 0 {
		st.Lag = max(st.Lag, now.Sub(time.UnixMicro(r.behindSince)))
	}
	if st.State != replica.Streaming && !r.heard.IsZero() {
		st.Lag = max(st.Lag, now.Sub(r.heard))
	}
	r.mu.Unlock()
	st.ReadFloor = r.vol.ReadFloor(now, r.cfg.Options.MaxReadAge)
	return st
}

// handle takes one message of the stream (redostream.SubscriberConfig).
func (r *Replica) handle(m *pb.ReplicationMessage) bool {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.heard = now
	switch k := m.Kind.(type) {
	case *pb.ReplicationMessage_Start:
		clear(r.decoded) // the Follower drops what it buffered
		if k.Start.Epoch >= r.f.Epoch() {
			// The tails at From are known before From is exposed. (The
			// Follower refuses an older epoch's stream: a fenced writer's.)
			r.vol.SetStreamEpoch(k.Start.Epoch)
			r.vol.NotePGStates(redostream.PGStatesOf(k.Start.Pgs))
			r.streamAt = now
		}
	case *pb.ReplicationMessage_Pgs:
		r.vol.NotePGStates(redostream.PGStatesOf(k.Pgs.Pgs))
		return false
	case *pb.ReplicationMessage_Vdl:
		if k.Vdl.Vdl > r.f.Applied() {
			if r.behindSince == 0 {
				r.behindSince = k.Vdl.DurableUnixUs
			}
			r.vdlAt = k.Vdl.DurableUnixUs
		} else if r.f.State() == replica.Streaming {
			// A heartbeat of a VDL already applied: the replica is
			// current, however late it applied that VDL (after a pause,
			// a backlog).
			r.applyDelay = 0
		}
	}
	if mtr := m.GetMtr(); mtr != nil {
		// A record that does not decode must not be exposed: its PG's tail
		// would go unnoted, and reads would route to segments that lack
		// it. Drop the stream and what it buffered; the writer sends the
		// MTR again on the next subscription.
		recs := make([]redo.Record, len(mtr.Records))
		for i, b := range mtr.Records {
			rec, err := redo.Decode(b)
			if err != nil {
				r.log.Error("a record of the writer's stream does not decode; subscribing again", "first", mtr.FirstLsn, "last", mtr.LastLsn, "err", err)
				r.f.Step(replica.Message{Kind: replica.Lost})
				clear(r.decoded)
				return true
			}
			recs[i] = rec
		}
		// Kept for apply, which gets the MTR (its parts put together)
		// back from the Follower once the VDL covers it.
		r.decoded[mtr.FirstLsn] = recs
	}
	msg, ok := redostream.MessageOf(m)
	if !ok {
		return false
	}
	before := r.f.Applied()
	rd := r.f.Step(msg)
	if msg.Kind == replica.Start {
		switch {
		case !r.started:
			r.log.Info("attached to the writer's redo stream", "epoch", msg.Epoch, "from", msg.From, "vdl", msg.VDL)
		case rd.Resync:
			r.log.Warn("attached again after missing MTRs: dropped the page cache and resumed at the writer's VDL", "epoch", msg.Epoch, "from", msg.From, "applied_before", before)
		default:
			r.log.Info("attached again, resuming where it stood", "epoch", msg.Epoch, "from", msg.From)
		}
		if !r.started {
			r.started = true
			r.done.Add(1)
			defer func() { go r.openDB() }()
		}
	}
	r.apply(rd, now)
	return rd.Resubscribe
}

// apply carries out a Ready: drop the cache, apply the MTRs, expose the
// VDL. Called under r.mu.
func (r *Replica) apply(rd replica.Ready, now time.Time) {
	if rd.Resync && r.db != nil {
		r.db.Resync(rd.Applied)
	}
	for _, mtr := range rd.Apply {
		recs, bad := r.records(mtr)
		for _, rec := range recs {
			r.vol.NoteRedo(rec.PG, rec.LSN)
		}
		if r.db == nil {
			continue // no cache yet: storage serves every page
		}
		if bad {
			r.db.Resync(mtr.Last)
			continue
		}
		if err := r.db.Apply(mtr.Last, recs); err != nil {
			r.log.Error("an MTR did not apply to the page cache; its pages were dropped from it", "last", mtr.Last, "err", err)
		}
	}
	for lsn := range r.decoded {
		if lsn <= rd.Applied {
			delete(r.decoded, lsn) // a duplicate of what is applied
		}
	}
	if rd.Resubscribe {
		clear(r.decoded)
	}
	before := r.vol.VDL()
	r.vol.SetVDL(rd.Applied)
	if rd.Applied > before {
		r.applies.add(applyMark{vdl: rd.Applied, at: now})
	}
	if rd.Applied >= r.f.WriterVDL() {
		r.behindSince = 0
	}
	if rd.Applied > before && r.vdlAt != 0 {
		// The writer's clock against this one: on one machine, the lag
		// itself; across machines, skew is floored at zero.
		r.applyDelay = max(0, now.Sub(time.UnixMicro(r.vdlAt)))
	}
}

func (r *Replica) lost(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.f.Step(replica.Message{Kind: replica.Lost})
	clear(r.decoded)
}

// records returns mtr's records as handle decoded them, part by part
// (decoding what it does not find, which only a bug would cause).
func (r *Replica) records(mtr replica.MTR) (recs []redo.Record, bad bool) {
	recs = make([]redo.Record, 0, len(mtr.Records))
	for lsn := mtr.First; lsn <= mtr.Last; {
		part, ok := r.decoded[lsn]
		if !ok {
			break
		}
		delete(r.decoded, lsn)
		recs = append(recs, part...)
		lsn += uint64(len(part))
	}
	if len(recs) == len(mtr.Records) {
		return recs, false
	}
	recs = recs[:0]
	for _, b := range mtr.Records {
		rec, err := redo.Decode(b)
		if err != nil {
			r.log.Error("a record of the writer's stream does not decode; dropping the page cache", "first", mtr.First, "last", mtr.Last, "err", err)
			return recs, true
		}
		recs = append(recs, rec)
	}
	return recs, false
}

func (r *Replica) position() (uint64, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.f.Epoch(), r.f.Applied()
}

func (r *Replica) report() (uint64, uint64) {
	return r.vol.ReadFloor(time.Now(), r.cfg.Options.MaxReadAge), r.vol.VDL()
}

// findWriter looks the writer's redo stream up in the catalog.
func (r *Replica) findWriter(ctx context.Context) (string, error) {
	w, err := WriterRecord(ctx, r.cfg.Ctl, r.cfg.Volume)
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	r.writer = w.SqlEndpoint
	r.mu.Unlock()
	if w.ReplicationEndpoint == "" {
		return "", fmt.Errorf("the writer %s of volume %s serves no redo stream", w.Id, r.cfg.Volume)
	}
	return w.ReplicationEndpoint, nil
}

// WriterRecord returns the catalog's record of a volume's writer: the
// writer record of the highest epoch.
func WriterRecord(ctx context.Context, ctl pb.ControlClient, volumeName string) (*pb.InstanceInfo, error) {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := ctl.ListInstances(lctx, &pb.ListInstancesRequest{Volume: volumeName})
	if err != nil {
		return nil, fmt.Errorf("listing the instances of volume %s: %w", volumeName, err)
	}
	var w *pb.InstanceInfo
	for _, in := range resp.Instances {
		if in.Role == RoleWriter && (w == nil || in.Epoch > w.Epoch) {
			w = in
		}
	}
	if w == nil {
		return nil, fmt.Errorf("volume %s has no writer registered", volumeName)
	}
	return w, nil
}

func (r *Replica) info() *pb.InstanceInfo {
	st := r.Status()
	return &pb.InstanceInfo{
		Volume: r.cfg.Volume, Id: r.cfg.ID, Role: RoleReplica, Az: r.cfg.AZ,
		SqlEndpoint: r.cfg.Endpoint, Epoch: st.Epoch, Vdl: st.Applied, ReadPoint: st.ReadFloor,
		State: st.State.String(), UpdatedUnixMs: time.Now().UnixMilli(), PromotionTier: r.cfg.PromotionTier,
	}
}

func (r *Replica) register(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := r.cfg.Ctl.RegisterInstance(rctx, &pb.RegisterInstanceRequest{Info: r.info(), TtlMs: uint32(r.cfg.LeaseTTL.Milliseconds())})
	if err != nil {
		return fmt.Errorf("instance: registering replica %s of volume %s: %w", r.cfg.ID, r.cfg.Volume, err)
	}
	r.mu.Lock()
	r.lease = resp.Lease
	r.mu.Unlock()
	return nil
}

// keepRegistration renews the registration with the current state, and
// registers again if the lease was lost (the control plane restarted, or
// the replica was paused past its TTL).
func (r *Replica) keepRegistration(ctx context.Context) {
	t := time.NewTicker(r.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		lease := r.lease
		r.mu.Unlock()
		cctx, cancel := context.WithTimeout(ctx, r.cfg.LeaseTTL/3)
		_, err := r.cfg.Ctl.RenewInstance(cctx, &pb.RenewInstanceRequest{Lease: lease, Info: r.info()})
		cancel()
		if err == nil || ctx.Err() != nil {
			continue
		}
		if c := status.Code(err); c == codes.FailedPrecondition || c == codes.NotFound {
			r.log.Warn("the replica's registration lapsed; registering again", "err", err)
			if err := r.register(ctx); err != nil {
				r.log.Warn("cannot register the replica; retrying", "err", err)
			}
			continue
		}
		r.log.Warn("cannot renew the replica's registration; retrying", "err", err)
	}
}

// catchUp waits, up to d, until the replica has applied the newest VDL the
// writer sent it: a replica about to be promoted applies what is already
// on its way before it stops following, and keeps its cache warm for it.
func (r *Replica) catchUp(ctx context.Context, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		st := r.Status()
		if st.Applied >= st.WriterVDL {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// Detach stops following the writer and renewing the registration (which
// a writer's registration of the same id replaces), and returns the
// database (nil if it never opened) and the VDL it applied, for a
// promotion that keeps its cache (sqlvfs.DB.Promote). The replica is done
// with: the caller owns the database, and closes the read-only volume
// client with Retire once reads begun on it ended.
func (r *Replica) Detach() (*sqlvfs.DB, uint64) {
	r.cancel()
	r.done.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	db := r.db
	r.db = nil
	return db, r.vol.VDL()
}

// Retire closes the read-only volume client of a detached replica once no
// read pins it (or after the maximum read age, when such a read fails
// anyway).
func (r *Replica) Retire() {
	deadline := time.Now().Add(r.cfg.Options.MaxReadAge)
	for r.vol.Pinned() > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	r.vol.Close()
}

// Close stops following, deregisters and closes the database.
func (r *Replica) Close() error {
	r.mu.Lock()
	lease := r.lease
	r.mu.Unlock()
	if lease != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		r.cfg.Ctl.DeregisterInstance(ctx, &pb.DeregisterInstanceRequest{Lease: lease})
		cancel()
	}
	return r.close()
}

func (r *Replica) close() error {
	r.cancel()
	r.done.Wait()
	var err error
	if r.db != nil {
		err = r.db.Close()
	}
	if verr := r.vol.Close(); err == nil {
		err = verr
	}
	return err
}
