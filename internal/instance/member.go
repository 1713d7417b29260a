package instance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// MemberConfig configures a member.
type MemberConfig struct {
	// Writer configures the instance in both roles: as the writer, and (its
	// volume, control plane, id, AZ, endpoint, database options, lease TTL)
	// as a replica.
	Writer WriterConfig
	// PromotionTier is registered for failover while a replica.
	PromotionTier uint32
	// StartAs is the role to start in: RoleWriter takes the writer lease,
	// unless another instance is the writer or is being promoted (then it
	// starts as a replica); RoleReplica follows the writer.
	StartAs string
	// HandoverTimeout bounds a planned failover's drain. Default 5s.
	HandoverTimeout time.Duration
}

// Member is a database instance of a volume that is its writer or one of
// its replicas, and changes role as the control plane's failovers decide
// (DESIGN.md §3): a replica that a failover targets promotes itself
// (StartFrom: the lease, a new epoch, recovery, its database in place); a
// writer that loses the lease, or hands it over, comes back as a replica of
// whoever took it. It never serves as a second writer: storage fences an
// older epoch, and the writer refuses to serve once its lease may have
// expired.
type Member struct {
	cfg MemberConfig
	log *slog.Logger

	mu     sync.Mutex
	w      *Writer
	rep    *Replica
	status string

	// state is the volume's writer state from the control plane's
	// WatchWriter; changed is closed (and replaced) at each new one.
	state   atomic.Pointer[pb.WriterState]
	changed chan struct{}

	promotions, stepDowns atomic.Uint64
	lastSteps             atomic.Pointer[PromoteSteps]
}

// NewMember checks cfg and prepares a member; Run does the work.
func NewMember(cfg MemberConfig) (*Member, error) {
	if cfg.StartAs != RoleWriter && cfg.StartAs != RoleReplica {
		return nil, fmt.Errorf("instance: start as %q: want %q or %q", cfg.StartAs, RoleWriter, RoleReplica)
	}
	if cfg.Writer.Volume == "" || cfg.Writer.Ctl == nil {
		return nil, errors.New("instance: a member needs a volume and the control plane's client")
	}
	cfg.Writer.defaults()
	if cfg.HandoverTimeout <= 0 {
		cfg.HandoverTimeout = 5 * time.Second
	}
	return &Member{
		cfg: cfg, log: cfg.Writer.Logger.With("instance", cfg.Writer.ID, "volume", cfg.Writer.Volume),
		status: "starting", changed: make(chan struct{}),
	}, nil
}

// Writer is the member's writer while it is (or becomes) the writer, else
// nil.
func (m *Member) Writer() *Writer {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.w
}

// Replica is the member's replica while it is one, else nil.
func (m *Member) Replica() *Replica {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rep
}

// Role is the role the member has now ("" between two).
func (m *Member) Role() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.w != nil:
		return RoleWriter
	case m.rep != nil:
		return RoleReplica
	}
	return ""
}

// Status says what the member does between roles (a role's own status is
// its writer's or replica's).
func (m *Member) Status() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status
}

// Promotions and StepDowns count the member's changes of role.
func (m *Member) Promotions() uint64 { return m.promotions.Load() }
func (m *Member) StepDowns() uint64  { return m.stepDowns.Load() }

// LastPromotion is what the member's last promotion took (nil if none).
func (m *Member) LastPromotion() *PromoteSteps { return m.lastSteps.Load() }

// WriterState is the volume's writer state as last heard (nil before).
func (m *Member) WriterState() *pb.WriterState { return m.state.Load() }

func (m *Member) set(w *Writer, rep *Replica, status string) {
	m.mu.Lock()
	m.w, m.rep, m.status = w, rep, status
	m.mu.Unlock()
}

// Run runs the member until ctx ends, in whichever role the failovers
// give it.
func (m *Member) Run(ctx context.Context) error {
	go m.watch(ctx)
	role := m.cfg.StartAs
	for ctx.Err() == nil {
		var w *Writer
		if role == RoleWriter {
			w = m.startWriter(ctx)
		} else {
			w = m.runReplica(ctx)
		}
		if w == nil {
			role = RoleReplica
			continue
		}
		m.serveWriter(ctx, w)
		w.Close()
		m.set(nil, nil, "no longer the writer")
		if ctx.Err() != nil {
			break
		}
		m.stepDowns.Add(1)
		// Take the lease again if nobody else has it or is promoted to it
		// (a lease lost to a passing control-plane outage); else follow.
		role = RoleWriter
		if m.yield() {
			role = RoleReplica
		}
	}
	m.mu.Lock()
	w, rep := m.w, m.rep
	m.w, m.rep, m.status = nil, nil, "stopped"
	m.mu.Unlock()
	if w != nil {
		w.Close()
	}
	if rep != nil {
		rep.Close()
	}
	return ctx.Err()
}

// yield reports whether another instance holds the lease or is the target
// of a failover under way.
func (m *Member) yield() bool { return OtherIsWriter(m.state.Load(), m.cfg.Writer.ID) }

// startWriter starts as the writer: the lease (unless it yields), recovery
// and the database. It returns nil when another instance is the writer.
func (m *Member) startWriter(ctx context.Context) *Writer {
	m.awaitState(ctx, 2*time.Second)
	for ctx.Err() == nil {
		wc := m.cfg.Writer
		wc.Yield = m.yield
		w, err := NewWriter(wc)
		if err != nil {
			m.set(nil, nil, err.Error())
			return nil
		}
		m.set(w, nil, "starting as the writer")
		err = w.Start(ctx)
		if err == nil {
			return w
		}
		w.Close()
		m.set(nil, nil, "")
		if errors.Is(err, ErrYielded) {
			m.log.Info("another instance is the writer; following it as a replica")
			return nil
		}
		if ctx.Err() != nil {
			return nil
		}
		why := readQuorumWait(err)
		if why == "" {
			why = err.Error()
		}
		m.set(nil, nil, "writer start failed: "+why+"; retrying")
		m.log.Warn("writer start failed; retrying", "err", err)
		sleepCtx(ctx, time.Second)
	}
	return nil
}

// runReplica follows the writer as a replica until a failover chooses this
// member; it returns the promoted writer then (nil if ctx ended, or the
// promotion failed).
func (m *Member) runReplica(ctx context.Context) *Writer {
	wc := m.cfg.Writer
	var rep *Replica
	for rep == nil {
		m.set(nil, nil, "starting as a replica")
		r, err := StartReplica(ctx, ReplicaConfig{
			Volume: wc.Volume, Ctl: wc.Ctl, ID: wc.ID, AZ: wc.AZ, Endpoint: wc.Endpoint,
			Options: wc.Options, LeaseTTL: wc.LeaseTTL, PromotionTier: m.cfg.PromotionTier,
			MaxConns: wc.MaxConns, Logger: wc.Logger,
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			m.set(nil, nil, "replica start failed: "+err.Error()+"; retrying")
			m.log.Warn("replica start failed; retrying", "err", err)
			sleepCtx(ctx, time.Second)
			continue
		}
		rep = r
	}
	m.set(nil, rep, "")
	for {
		round, ok := m.waitChosen(ctx)
		if !ok {
			return nil
		}
		m.log.Warn("chosen by failover round; promoting", "round", round)
		pc := wc
		// Another chosen meanwhile (this one was late): give way, and
		// go on as a replica.
		pc.Yield = m.yield
		w, err := NewWriter(pc)
		if err != nil {
			rep.Close()
			return nil
		}
		chosen := time.Now()
		stopReports := m.reportWaits(round, w)
		// The replica serves reads until it stops following; from then on
		// the instance answers as the (starting) writer.
		steps, detached, err := w.StartFrom(ctx, rep, func() { m.set(w, nil, "promoting") })
		stopReports()
		if err != nil {
			w.Close()
			m.report(&pb.ReportFailoverRequest{Round: round, State: "failed", Why: err.Error()})
			if !detached {
				m.log.Warn("did not take the writer lease; following the writer again", "round", round, "err", err)
				m.set(nil, rep, "")
				continue
			}
			m.set(nil, nil, "")
			m.log.Error("promotion failed; following the writer again", "round", round, "err", err)
			return nil
		}
		m.afterPromotion(round, chosen, w, steps)
		return w
	}
}

// afterPromotion records and reports a promotion that succeeded.
func (m *Member) afterPromotion(round uint64, chosen time.Time, w *Writer, steps PromoteSteps) {
	m.promotions.Add(1)
	m.lastSteps.Store(&steps)
	m.log.Warn("promoted: serving as the writer", "round", round, "took", time.Since(chosen).Round(time.Millisecond),
		"lease", steps.Lease.Round(time.Millisecond), "epoch", steps.Epoch.Round(time.Millisecond),
		"recovery", steps.Recovery.Round(time.Millisecond), "open", steps.Open.Round(time.Millisecond), "vdl", steps.VDL, "warm", steps.Warm)
	m.report(&pb.ReportFailoverRequest{
		Round: round, State: "done", Epoch: w.Epoch(), Vdl: steps.VDL, Warm: steps.Warm,
		LeaseMs: ms(steps.Lease), EpochMs: ms(steps.Epoch), RecoveryMs: ms(steps.Recovery), OpenMs: ms(steps.Open),
	})
}

// awaitState waits up to d for the first writer state, so that a writer
// that starts while another serves follows it rather than first try for the
// lease (AcquireWriter would refuse it all the same).
func (m *Member) awaitState(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for m.state.Load() == nil {
		m.mu.Lock()
		changed := m.changed
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			return
		case <-changed:
		}
	}
}

// waitChosen waits until a failover makes this member its target and the
// lease is free; it returns the failover's round.
func (m *Member) waitChosen(ctx context.Context) (uint64, bool) {
	me := m.cfg.Writer.ID
	for {
		m.mu.Lock()
		changed := m.changed
		m.mu.Unlock()
		if round, ok := ChosenToPromote(m.state.Load(), me); ok {
			return round, true
		}
		select {
		case <-ctx.Done():
			return 0, false
		case <-changed:
		}
	}
}

// serveWriter serves as the writer until the attempt ends (the lease is
// lost, storage fenced it) or ctx ends; a planned failover from this
// writer hands the role over.
func (m *Member) serveWriter(ctx context.Context, w *Writer) {
	m.set(w, nil, "")
	lost := w.Lost()
	me := m.cfg.Writer.ID
	handed := uint64(0)
	for {
		m.mu.Lock()
		changed := m.changed
		m.mu.Unlock()
		if f := AskedToHandOver(m.state.Load(), me); f != nil && f.Round != handed {
			handed = f.Round
			m.handover(ctx, w, f)
		}
		select {
		case <-ctx.Done():
			return
		case <-lost:
			return
		case <-changed:
		}
	}
}

func (m *Member) handover(ctx context.Context, w *Writer, f *pb.FailoverInfo) {
	m.log.Warn("planned failover: handing the writer role over", "round", f.Round, "to", f.Target)
	m.report(&pb.ReportFailoverRequest{Round: f.Round, State: "draining", Why: fmt.Sprintf("%s finishes the writes in flight", m.cfg.Writer.ID)})
	vdl, drained, err := w.Handover(ctx, f.Target, m.cfg.HandoverTimeout)
	if err != nil {
		m.log.Error("handover abandoned; still the writer", "round", f.Round, "err", err)
		return
	}
	m.report(&pb.ReportFailoverRequest{Round: f.Round, State: "handed_over", HandoverVdl: vdl, DrainMs: ms(drained)})
}

// reportWaits tells the control plane what the promotion waits for (the
// writer's status while it waits for the lease or for storage), so that
// status shows why a failover takes long; the returned func stops it.
func (m *Member) reportWaits(round uint64, w *Writer) func() {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		last := ""
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			st := w.Status()
			if st == last || !strings.Contains(st, ": ") {
				continue // a step, not a wait
			}
			last = st
			m.report(&pb.ReportFailoverRequest{Round: round, State: "waiting", Why: m.cfg.Writer.ID + " is " + st})
		}
	}()
	return func() { close(done) }
}

func (m *Member) report(r *pb.ReportFailoverRequest) {
	r.Volume, r.Instance = m.cfg.Writer.Volume, m.cfg.Writer.ID
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := m.cfg.Writer.Ctl.ReportFailover(ctx, r); err != nil {
		m.log.Warn("cannot report the failover's progress", "round", r.Round, "state", r.State, "err", err)
	}
}

// watch follows the volume's writer state from the control plane, and
// watches again whenever the stream breaks.
func (m *Member) watch(ctx context.Context) {
	delay := 50 * time.Millisecond
	for ctx.Err() == nil {
		stream, err := m.cfg.Writer.Ctl.WatchWriter(ctx, &pb.WatchWriterRequest{Volume: m.cfg.Writer.Volume})
		if err == nil {
			for {
				st, rerr := stream.Recv()
				if rerr != nil {
					err = rerr
					break
				}
				delay = 50 * time.Millisecond
				m.state.Store(st)
				m.mu.Lock()
				close(m.changed)
				m.changed = make(chan struct{})
				m.mu.Unlock()
			}
		}
		if ctx.Err() != nil {
			return
		}
		if status.Code(err) != codes.Unavailable {
			m.log.Debug("the writer-state watch ended; watching again", "err", err)
		}
		sleepCtx(ctx, delay)
		delay = min(2*delay, time.Second)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func ms(d time.Duration) uint32 { return uint32(d.Milliseconds()) }
