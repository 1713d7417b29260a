package volume

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/quorum"
	"github.com/borealis-db/borealis/internal/recovery"
	"github.com/borealis-db/borealis/internal/segment"
)

// DefaultRecoverRPCTimeout is RecoverConfig.RPCTimeout's default.
const DefaultRecoverRPCTimeout = 5 * time.Second

// recoverPoll is how often Recover asks again for what is not there yet: a
// truncation a write quorum has not acknowledged, or records at or below the
// recovered VDL that gossip is still copying to a write quorum.
const recoverPoll = 100 * time.Millisecond

// RecoverPG is one PG of the volume and its membership: recovery needs a
// read quorum of every set, and the truncation a write quorum of every set.
type RecoverPG struct {
	PG         uint32
	Membership Membership
}

// members returns every segment of the PG, of any set.
func (p RecoverPG) members() []Member { return p.Membership.Members() }

// RecoverConfig describes a recovery. RecoverConfigFromControl fills it from
// the control plane.
type RecoverConfig struct {
	VolumeID uint64
	// Incarnation is the volume's (see Config.Incarnation): recovery
	// declares it, and a segment of another incarnation under the same id
	// (another volume, from a replaced catalog) does not count. 0: none.
	Incarnation uint64
	// Epoch is the new writer's epoch, already bumped in the control plane
	// (AcquireWriter): storage refuses every older writer from the moment it
	// sees it.
	Epoch uint64
	// LAL must be at least the allocation limit of the writer that crashed:
	// it never allocated beyond its VDL + LAL, so that is what the
	// truncation must cover. Default DefaultLAL.
	LAL uint64
	// PageSize and PagesPerPG are the volume's geometry, for Recovered.Apply.
	PageSize   int
	PagesPerPG uint64
	// PGs lists every PG of the volume with its segments.
	PGs []RecoverPG
	// Prior lists the truncation ranges of earlier recoveries as the control
	// plane recorded them.
	Prior []recovery.Prior
	// Record stores the truncation range in the control plane before any
	// segment is truncated, so that a recovery interrupted midway is known
	// to the next one (through Prior). pgs is how many PGs the volume has.
	// Required: only tests that have no control plane may skip it with
	// SkipRecord.
	Record func(ctx context.Context, epoch, after, through uint64, pgs uint32) error
	// SkipRecord runs without Record (tests only).
	SkipRecord bool
	// RPCTimeout bounds each storage RPC. Default 5s.
	RPCTimeout  time.Duration
	DialOptions []grpc.DialOption
	Logger      *slog.Logger
	// Waiting, if set, is told what the recovery waits for each time it
	// finds it still waiting (segments of a PG it needs that have not
	// answered), and nil once that wait is over. A recovery that lacks a
	// write quorum of a PG waits for as long as ctx lasts; this is how its
	// caller can say why, rather than only that it is not done. It is
	// called from Recover's goroutine and must not block.
	Waiting func(*RecoverWait)
}

// RecoverWait is what a running recovery waits for: members of one PG that
// it needs and that have not yet answered as it must.
type RecoverWait struct {
	PG uint32
	// Step is "Truncate" (a write quorum must acknowledge the truncation)
	// or "durable" (gossip must copy the records at or below the VDL to a
	// write quorum; Tail is the PG's last LSN at or below it). Recover
	// itself does not wait for "SegmentInfo", a read quorum to answer: it
	// fails with a RecoverError, and a caller that tries again can
	// describe its wait with this Step.
	Step string
	Tail uint64
	// Have of the PG's Segments did what Step asks; Need must.
	Have, Need, Segments int
	// Causes says why each of the others has not, as far as known.
	Causes []SegmentError
}

func (w *RecoverWait) String() string {
	var b strings.Builder
	switch w.Step {
	case "SegmentInfo":
		fmt.Fprintf(&b, "waiting for a read quorum of PG %d: %d of its %d segments answered, %d must", w.PG, w.Have, w.Segments, w.Need)
	case "Truncate":
		fmt.Fprintf(&b, "waiting for a write quorum of PG %d to acknowledge the truncation: %d of its %d segments did, %d must", w.PG, w.Have, w.Segments, w.Need)
	default:
		fmt.Fprintf(&b, "waiting for a write quorum of PG %d to hold its records up to LSN %d (gossip copies them): %d of its %d segments do, %d must", w.PG, w.Tail, w.Have, w.Segments, w.Need)
	}
	for i, c := range w.Causes {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s (%s): %s", c.Member.NodeID, c.Member.Addr, shortCause(c.Err))
	}
	return b.String()
}

// shortCause is err's message without gRPC's wrapping of a failed dial,
// which is most of it when a node is down: a status that lists every
// missing segment stays readable.
func shortCause(err error) string {
	if err == nil {
		return "no answer yet"
	}
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, `connection error: desc = "transport: Error while dialing: `); ok {
		return "unreachable (" + strings.TrimSuffix(rest, `"`) + ")"
	}
	return msg
}

// writeQuorumSize is how many of p's members a write quorum takes.
func (r *recoverer) writeQuorumSize(p RecoverPG) int {
	n := 0
	for _, s := range r.qconfig(p).Sets {
		n = max(n, s.Write)
	}
	return n
}

// waiting reports w (nil: no longer waiting) to RecoverConfig.Waiting.
func (r *recoverer) waiting(w *RecoverWait) {
	if r.cfg.Waiting != nil {
		r.cfg.Waiting(w)
	}
}

// Recovered is what a recovery decided. Apply puts it into the Config of
// the new writer's Client.
type Recovered struct {
	VolumeID uint64
	Epoch    uint64
	// BaseLSN is the recovered VDL: every commit the old writer
	// acknowledged is at or below it, and no MTR ends above it. It is
	// durable on a write quorum of every PG when Recover returns.
	BaseLSN uint64
	// VCL: every LSN up to it was found on some PG's best segment.
	VCL uint64
	// Floor is the highest VDL the old writer told any answering segment.
	Floor uint64
	// After and Through bound the truncation (After == BaseLSN).
	After, Through uint64
	// PGTails: each PG's last LSN at or below BaseLSN (0: none).
	PGTails map[uint32]uint64
	// Truncations: each PG's recovery truncations, oldest epoch first.
	Truncations map[uint32][]segment.Truncation
	PGs         []RecoveredPG
	Took        time.Duration
}

// RecoveredPG reports one PG's recovery.
type RecoveredPG struct {
	PG uint32
	// Answered is how many segments answered SegmentInfo; NotHosted of them
	// hold no segment of the PG.
	Answered, NotHosted int
	// From is the segment whose record headers were read ("" if the PG
	// holds nothing), up to Upto.
	From    string
	Upto    uint64
	Headers int
	Tail    uint64
	// Truncated is how many segments acknowledged the truncation before
	// Recover returned (those that host nothing count).
	Truncated int
}

// Apply sets what a Client of the recovered volume needs: the volume, the
// new epoch, BaseLSN, PGTails and Truncations. Geometry and placement come
// from elsewhere (NewFromControl's Configure, or RecoverConfig's).
func (r Recovered) Apply(cfg *Config) {
	cfg.VolumeID = r.VolumeID
	cfg.Epoch = r.Epoch
	cfg.BaseLSN = r.BaseLSN
	cfg.PGTails = r.PGTails
	cfg.Truncations = r.Truncations
}

// RecoverError reports a recovery that could not go on because too few
// segments of a PG answered or acknowledged. Causes says why each of the
// others did not.
type RecoverError struct {
	Volume uint64
	PG     uint32
	// Step is what was asked: "SegmentInfo", "Truncate" or "durable".
	Step   string
	Causes []SegmentError
	Err    error
}

func (e *RecoverError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "volume %d: recovery stopped at PG %d (%s): %v", e.Volume, e.PG, e.Step, e.Err)
	writeCauses(&b, e.Causes)
	return b.String()
}

func (e *RecoverError) Unwrap() error { return e.Err }

// Recover recovers a volume for a new writer: it fences older writers on
// every segment of every PG as it asks for the segment's state (so none can
// make a record durable behind its back), computes the VDL from a read
// quorum of each
// (internal/recovery), records the truncation range in the control plane,
// truncates every segment (a write quorum of each PG must acknowledge), and
// waits until the records at or below the VDL are on a write quorum of
// every PG. Redoing a recovery that was interrupted, under the same epoch,
// is harmless; if it now finds another range it fails with
// recovery.ErrEpochUsed, and the writer must take a new epoch.
//
// It fails with an error wrapping ErrFenced if a storage node has seen a
// newer epoch.
func Recover(ctx context.Context, cfg RecoverConfig) (Recovered, error) {
	start := time.Now()
	if cfg.Epoch == 0 {
		return Recovered{}, errors.New("volume: recovery needs the new writer's epoch (at least 1)")
	}
	if len(cfg.PGs) == 0 {
		return Recovered{}, fmt.Errorf("volume %d: recovery needs the volume's PGs", cfg.VolumeID)
	}
	if cfg.Record == nil && !cfg.SkipRecord {
		return Recovered{}, fmt.Errorf("volume %d: recovery needs RecoverConfig.Record to record the truncation in the control plane", cfg.VolumeID)
	}
	if cfg.LAL == 0 {
		cfg.LAL = DefaultLAL
	}
	if cfg.RPCTimeout <= 0 {
		cfg.RPCTimeout = DefaultRecoverRPCTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &recoverer{cfg: cfg, log: cfg.Logger.With("volume_id", cfg.VolumeID, "epoch", cfg.Epoch), conns: map[string]*grpc.ClientConn{}}
	defer r.close()
	pgCount := uint32(0)
	seen := map[uint32]bool{}
	for _, p := range cfg.PGs {
		if seen[p.PG] {
			return Recovered{}, fmt.Errorf("volume %d: PG %d is listed twice", cfg.VolumeID, p.PG)
		}
		seen[p.PG] = true
		if err := p.Membership.validate(); err != nil {
			return Recovered{}, fmt.Errorf("volume %d: PG %d: %w", cfg.VolumeID, p.PG, err)
		}
		for _, m := range p.members() {
			if err := r.dial(m); err != nil {
				return Recovered{}, err
			}
		}
		pgCount = max(pgCount, p.PG+1)
	}
	r.log.Info("recovery: asking every segment for its state", "pgs", len(cfg.PGs), "lal", cfg.LAL)

	in, infos, err := r.gather(ctx)
	if err != nil {
		return Recovered{}, err
	}
	res, err := r.decide(ctx, in, infos)
	if err != nil {
		return Recovered{}, err
	}
	r.log.Info("recovery: decided", "floor", res.Floor, "vcl", res.VCL, "vdl", res.VDL, "after", res.After, "through", res.Through)

	if cfg.Record != nil {
		if err := cfg.Record(ctx, cfg.Epoch, res.After, res.Through, pgCount); err != nil {
			return Recovered{}, fmt.Errorf("volume %d: record the truncation (%d, %d] of epoch %d in the control plane: %w", cfg.VolumeID, res.After, res.Through, cfg.Epoch, err)
		}
		r.log.Info("recovery: truncation recorded in the control plane", "after", res.After, "through", res.Through, "pgs", pgCount)
	}

	acks, behind, err := r.truncate(ctx, res)
	if err != nil {
		return Recovered{}, err
	}
	if err := r.awaitDurable(ctx, res, behind); err != nil {
		return Recovered{}, err
	}

	out := Recovered{
		VolumeID: cfg.VolumeID, Epoch: cfg.Epoch, BaseLSN: res.VDL, VCL: res.VCL, Floor: res.Floor,
		After: res.After, Through: res.Through, PGTails: res.Tails, Truncations: res.Truncations,
		Took: time.Since(start),
	}
	for _, pr := range res.PGs {
		rp := RecoveredPG{PG: pr.PG, From: string(pr.From), Upto: pr.Upto, Headers: pr.Headers, Tail: pr.Tail, Truncated: acks[pr.PG]}
		for _, a := range in.PGs[indexOfPG(in.PGs, pr.PG)].Answers {
			rp.Answered++
			if a.NotHosted {
				rp.NotHosted++
			}
		}
		out.PGs = append(out.PGs, rp)
	}
	r.log.Info("recovery: done", "base_lsn", out.BaseLSN, "vcl", out.VCL, "truncated", fmt.Sprintf("(%d, %d]", out.After, out.Through), "took", out.Took.Round(time.Millisecond))
	return out, nil
}

func indexOfPG(pgs []recovery.PG, pg uint32) int {
	return slices.IndexFunc(pgs, func(p recovery.PG) bool { return p.PG == pg })
}

type recoverer struct {
	cfg   RecoverConfig
	log   *slog.Logger
	conns map[string]*grpc.ClientConn // by address
}

func (r *recoverer) dial(m Member) error {
	if _, ok := r.conns[m.Addr]; ok {
		return nil
	}
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64 << 20)),
	}, r.cfg.DialOptions...)
	conn, err := grpc.NewClient(m.Addr, opts...)
	if err != nil {
		return fmt.Errorf("volume %d: storage node %s has a bad address %q: %w", r.cfg.VolumeID, m.NodeID, m.Addr, err)
	}
	r.conns[m.Addr] = conn
	return nil
}

func (r *recoverer) client(m Member) pb.StorageClient { return pb.NewStorageClient(r.conns[m.Addr]) }

func (r *recoverer) close() {
	for _, c := range r.conns {
		c.Close()
	}
}

func (r *recoverer) qconfig(p RecoverPG) quorum.Config {
	c := quorum.Config{Epoch: p.Membership.Epoch}
	for _, s := range p.Membership.Sets {
		ids := make([]quorum.SegmentID, len(s))
		for i, m := range s {
			ids[i] = quorum.SegmentID(m.NodeID)
		}
		c.Sets = append(c.Sets, quorum.Default(ids))
	}
	return c
}

// segInfo is one member's SegmentInfo answer, or why there is none.
type segInfo struct {
	m   Member
	ans *recovery.Answer
	err error
}

// gather asks every member of every PG for SegmentInfo, all at once, and
// returns the answers as recovery's input, with what each member said.
func (r *recoverer) gather(ctx context.Context) (recovery.Input, map[uint32][]segInfo, error) {
	in := recovery.Input{Epoch: r.cfg.Epoch, LAL: r.cfg.LAL, Prior: r.cfg.Prior}
	infos := map[uint32][]segInfo{}
	var wg sync.WaitGroup
	for _, p := range r.cfg.PGs {
		ms := p.members()
		row := make([]segInfo, len(ms))
		infos[p.PG] = row
		for i, m := range ms {
			wg.Go(func() { row[i] = r.askInfo(ctx, p.PG, m) })
		}
	}
	wg.Wait()
	for _, p := range r.cfg.PGs {
		pg := recovery.PG{PG: p.PG, Config: r.qconfig(p)}
		for _, si := range infos[p.PG] {
			if si.ans != nil {
				pg.Answers = append(pg.Answers, *si.ans)
			} else if errors.Is(si.err, ErrFenced) {
				return in, nil, si.err
			}
		}
		in.PGs = append(in.PGs, pg)
	}
	return in, infos, nil
}

func (r *recoverer) askInfo(ctx context.Context, pg uint32, m Member) segInfo {
	rctx, cancel := context.WithTimeout(ctx, r.cfg.RPCTimeout)
	defer cancel()
	// The request fences older writers on the node first, so the answer
	// counts every record an older writer could still get acknowledged
	// here: once a read quorum of a PG is fenced, it can never again get
	// the four acks that make a record durable.
	resp, err := r.client(m).SegmentInfo(rctx, &pb.SegmentInfoRequest{Volume: r.cfg.VolumeID, Pg: pg, FenceEpoch: r.cfg.Epoch})
	id := quorum.SegmentID(m.NodeID)
	switch {
	case reasonOf(err) == pb.Reason_PG_NOT_HOSTED:
		return segInfo{m: m, ans: &recovery.Answer{Segment: id, NotHosted: true}}
	case reasonOf(err) == pb.Reason_STALE_EPOCH:
		return segInfo{m: m, err: fmt.Errorf("%w (storage node %s refused recovery under epoch %d of volume %d: %v)", ErrFenced, m.NodeID, r.cfg.Epoch, r.cfg.VolumeID, plainErr(err))}
	case err != nil:
		r.log.Warn("recovery: segment did not answer", "pg", pg, "node", m.NodeID, "addr", m.Addr, "err", err)
		return segInfo{m: m, err: plainErr(err)}
	}
	if got := resp.GetSpec().GetIncarnation(); got != 0 && r.cfg.Incarnation != 0 && got != r.cfg.Incarnation {
		// Another volume that had this id, in a catalog since replaced: its
		// records are not this volume's, whatever their LSNs.
		err := fmt.Errorf("storage node %s holds incarnation %d of volume id %d, and the catalog's volume is incarnation %d: another volume's data, not counted", m.NodeID, got, r.cfg.VolumeID, r.cfg.Incarnation)
		r.log.Warn("recovery: segment belongs to another volume of the same id", "pg", pg, "node", m.NodeID, "err", err)
		return segInfo{m: m, err: err}
	}
	ts := make([]segment.Truncation, len(resp.Truncations))
	for i, t := range resp.Truncations {
		ts[i] = segment.Truncation{After: t.After, Through: t.Through, Epoch: t.Epoch, Tail: t.Tail}
	}
	return segInfo{m: m, ans: &recovery.Answer{Segment: id, SCL: resp.Scl, VDLSeen: resp.VdlSeen, Highest: resp.Highest, Truncations: ts}}
}

// plainErr keeps a gRPC status's message without its "rpc error: code =
// ..." prefix, for error messages that list many segments.
func plainErr(err error) error {
	if st, ok := status.FromError(err); ok {
		return errors.New(st.Message())
	}
	return err
}

// decide plans, pulls the headers the plan needs and decides. A segment
// that fails to give its headers is dropped from the answers and the plan
// made again without it.
func (r *recoverer) decide(ctx context.Context, in recovery.Input, infos map[uint32][]segInfo) (recovery.Result, error) {
	for {
		plan, err := recovery.NewPlan(in)
		var nq *recovery.NoReadQuorumError
		if errors.As(err, &nq) {
			re := &RecoverError{Volume: r.cfg.VolumeID, PG: nq.PG, Step: "SegmentInfo", Err: err}
			for _, si := range infos[nq.PG] {
				if slices.Contains(nq.Missing, quorum.SegmentID(si.m.NodeID)) {
					re.Causes = append(re.Causes, SegmentError{Member: si.m, Err: si.err})
				}
			}
			return recovery.Result{}, re
		}
		if err != nil {
			return recovery.Result{}, fmt.Errorf("volume %d: %w", r.cfg.VolumeID, err)
		}
		r.log.Info("recovery: a read quorum of every PG answered", "floor", plan.Floor, "highest", plan.Highest)
		headers := map[uint32][]recovery.Header{}
		type failed struct {
			pg  uint32
			seg quorum.SegmentID
			err error
		}
		var fails []failed
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, pull := range plan.Pulls {
			if !pull.Needed() {
				continue
			}
			m := memberOf(infos[pull.PG], pull.From)
			wg.Go(func() {
				hs, err := r.pullHeaders(ctx, m, pull)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					fails = append(fails, failed{pull.PG, pull.From, err})
					return
				}
				headers[pull.PG] = hs
				r.log.Info("recovery: read record headers", "pg", pull.PG, "node", m.NodeID, "after", pull.After, "upto", pull.Upto, "headers", len(hs))
			})
		}
		wg.Wait()
		if len(fails) == 0 {
			res, err := plan.Decide(headers)
			if err != nil {
				return recovery.Result{}, fmt.Errorf("volume %d: %w", r.cfg.VolumeID, err)
			}
			return res, nil
		}
		if ctx.Err() != nil {
			return recovery.Result{}, ctx.Err()
		}
		for _, f := range fails {
			r.log.Warn("recovery: no record headers from segment; planning without it", "pg", f.pg, "node", f.seg, "err", f.err)
			i := indexOfPG(in.PGs, f.pg)
			in.PGs[i].Answers = slices.DeleteFunc(slices.Clone(in.PGs[i].Answers), func(a recovery.Answer) bool { return a.Segment == f.seg })
			for k := range infos[f.pg] {
				if infos[f.pg][k].m.NodeID == string(f.seg) {
					infos[f.pg][k].ans, infos[f.pg][k].err = nil, fmt.Errorf("record headers: %w", plainErr(f.err))
				}
			}
		}
	}
}

func memberOf(infos []segInfo, id quorum.SegmentID) Member {
	for _, si := range infos {
		if si.m.NodeID == string(id) {
			return si.m
		}
	}
	return Member{NodeID: string(id)}
}

// pullHeaders reads the headers a pull asks for: (After, SCL], up to the
// first one above Upto.
func (r *recoverer) pullHeaders(ctx context.Context, m Member, pull recovery.Pull) ([]recovery.Header, error) {
	var out []recovery.Header
	after := pull.After
	for {
		rctx, cancel := context.WithTimeout(ctx, r.cfg.RPCTimeout)
		resp, err := r.client(m).Pull(rctx, &pb.PullRequest{Volume: r.cfg.VolumeID, Pg: pull.PG, After: after, MaxBytes: 1 << 20, HeadersOnly: true})
		cancel()
		if err != nil {
			return nil, err
		}
		if resp.LogFloor > pull.After {
			return nil, fmt.Errorf("node %s collected the log of PG %d up to LSN %d, above the floor %d", m.NodeID, pull.PG, resp.LogFloor, pull.After)
		}
		for _, h := range resp.Headers {
			if h.Lsn > pull.SCL {
				return out, nil
			}
			out = append(out, recovery.Header{LSN: h.Lsn, PrevLSN: h.PrevLsn, Epoch: h.Epoch, Page: h.Page, CPL: h.Cpl})
			if h.Lsn > pull.Upto {
				return out, nil
			}
			after = h.Lsn
		}
		if !resp.More || len(resp.Headers) == 0 {
			return out, nil
		}
	}
}

// truncate sends the truncation to every member of every PG and returns,
// per PG, how many acknowledged once each PG has a write quorum of them. A
// member that hosts no segment of the PG counts: it holds nothing, and a
// segment created later gets the truncation with its declaration. Members
// that fail are asked again until the context ends. It also returns the PGs
// whose acknowledged SCLs do not yet show a write quorum complete up to the
// PG's tail.
func (r *recoverer) truncate(ctx context.Context, res recovery.Result) (map[uint32]int, []RecoverPG, error) {
	type result struct {
		pg  uint32
		m   Member
		scl uint64
		err error
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel() // stragglers learn the truncation from declarations or gossip
	results := make(chan result)
	send := func(pg uint32, m Member) {
		ts := res.Truncations[pg]
		last := ts[len(ts)-1]
		prior := make([]*pb.Truncation, 0, len(ts)-1)
		for _, t := range ts[:len(ts)-1] {
			prior = append(prior, &pb.Truncation{After: t.After, Through: t.Through, Epoch: t.Epoch, Tail: t.Tail})
		}
		go func() {
			actx, acancel := context.WithTimeout(rctx, r.cfg.RPCTimeout)
			defer acancel()
			resp, err := r.client(m).Truncate(actx, &pb.TruncateRequest{Volume: r.cfg.VolumeID, Pg: pg, Epoch: last.Epoch,
				After: last.After, Through: last.Through, Tail: last.Tail, Prior: prior})
			out := result{pg: pg, m: m, err: err}
			if err == nil {
				out.scl = resp.Scl
			} else if reasonOf(err) == pb.Reason_PG_NOT_HOSTED {
				out.err = nil
			}
			select {
			case results <- out:
			case <-rctx.Done():
			}
		}()
	}
	acked := map[uint32]map[quorum.SegmentID]bool{}
	complete := map[uint32]map[quorum.SegmentID]bool{} // acked with SCL >= tail
	causes := map[uint32]map[string]error{}
	pending := 0
	pendingPG := map[uint32]int{} // asked and not yet answered, by PG
	for _, p := range r.cfg.PGs {
		acked[p.PG] = map[quorum.SegmentID]bool{}
		complete[p.PG] = map[quorum.SegmentID]bool{}
		causes[p.PG] = map[string]error{}
		for _, m := range p.members() {
			send(p.PG, m)
			pending++
			pendingPG[p.PG]++
		}
	}
	qcfgs := map[uint32]quorum.Config{}
	byPG := map[uint32]RecoverPG{}
	for _, p := range r.cfg.PGs {
		qcfgs[p.PG] = r.qconfig(p)
		byPG[p.PG] = p
	}
	// report tells Waiting about a PG that has no write quorum of
	// acknowledgements once each member has answered its latest request
	// (so the counts are of one round) and one failed: from then on the
	// recovery waits for that member, or another, to come back.
	reported := false
	report := func(pg uint32) {
		if r.cfg.Waiting == nil || pendingPG[pg] > 0 || len(causes[pg]) == 0 || qcfgs[pg].WriteQuorum(func(s quorum.SegmentID) bool { return acked[pg][s] }) {
			return
		}
		p := byPG[pg]
		w := &RecoverWait{PG: pg, Step: "Truncate", Have: len(acked[pg]), Need: r.writeQuorumSize(p), Segments: len(p.members())}
		for _, m := range p.members() {
			if err, ok := causes[pg][m.NodeID]; ok {
				w.Causes = append(w.Causes, SegmentError{Member: m, Err: err})
			}
		}
		reported = true
		r.waiting(w)
	}
	done := func() bool {
		for pg, q := range qcfgs {
			if !q.WriteQuorum(func(s quorum.SegmentID) bool { return acked[pg][s] }) {
				return false
			}
		}
		return true
	}
	var retry []result
	var tick <-chan time.Time
	for !done() {
		select {
		case x := <-results:
			pending--
			pendingPG[x.pg]--
			if x.err == nil {
				acked[x.pg][quorum.SegmentID(x.m.NodeID)] = true
				if x.scl >= res.Tails[x.pg] {
					complete[x.pg][quorum.SegmentID(x.m.NodeID)] = true
				}
				delete(causes[x.pg], x.m.NodeID)
				r.log.Debug("recovery: segment truncated", "pg", x.pg, "node", x.m.NodeID, "scl", x.scl)
				report(x.pg)
				continue
			}
			if reasonOf(x.err) == pb.Reason_STALE_EPOCH {
				return nil, nil, fmt.Errorf("%w (storage node %s refused the truncation of volume %d under epoch %d: %v)", ErrFenced, x.m.NodeID, r.cfg.VolumeID, r.cfg.Epoch, plainErr(x.err))
			}
			if st, ok := status.FromError(x.err); ok && reasonOf(x.err) != pb.Reason_REASON_UNSPECIFIED && ctx.Err() == nil {
				// A refusal (not a lost connection) will not change by asking again.
				return nil, nil, &RecoverError{Volume: r.cfg.VolumeID, PG: x.pg, Step: "Truncate", Err: errors.New("a storage node refused the truncation"),
					Causes: []SegmentError{{Member: x.m, Err: errors.New(st.Message())}}}
			}
			causes[x.pg][x.m.NodeID] = plainErr(x.err)
			report(x.pg)
			retry = append(retry, x)
			if tick == nil {
				tick = time.After(recoverPoll)
			}
		case <-tick:
			tick = nil
			for _, x := range retry {
				send(x.pg, x.m)
				pending++
				pendingPG[x.pg]++
			}
			retry = nil
		case <-ctx.Done():
			for _, p := range r.cfg.PGs {
				if !qcfgs[p.PG].WriteQuorum(func(s quorum.SegmentID) bool { return acked[p.PG][s] }) {
					re := &RecoverError{Volume: r.cfg.VolumeID, PG: p.PG, Step: "Truncate", Err: fmt.Errorf("no write quorum acknowledged the truncation: %w", ctx.Err())}
					for _, m := range p.members() {
						if !acked[p.PG][quorum.SegmentID(m.NodeID)] {
							re.Causes = append(re.Causes, SegmentError{Member: m, Err: causes[p.PG][m.NodeID]})
						}
					}
					return nil, nil, re
				}
			}
			return nil, nil, ctx.Err()
		}
	}
	if reported {
		r.waiting(nil)
	}
	out := map[uint32]int{}
	for pg, a := range acked {
		out[pg] = len(a)
	}
	var behind []RecoverPG
	for _, p := range r.cfg.PGs {
		if !qcfgs[p.PG].WriteQuorum(func(s quorum.SegmentID) bool { return complete[p.PG][s] }) {
			behind = append(behind, p)
		}
	}
	r.log.Info("recovery: a write quorum of every PG applied the truncation", "pgs", len(out), "unanswered", pending, "pgs_not_yet_durable", len(behind))
	return out, behind, nil
}

// awaitDurable waits until, in every PG, a write quorum of segments is
// complete up to the PG's tail: recovery may have found records at or below
// the VDL on fewer than four segments (the old writer never acknowledged
// them), and the new writer counts everything at or below its BaseLSN as
// durable. Gossip copies them; a segment below its truncation's tail pulls
// at once.
func (r *recoverer) awaitDurable(ctx context.Context, res recovery.Result, pgs []RecoverPG) error {
	last := map[uint32]map[string]error{}
	have := map[uint32]int{}
	reported := false
	for round := 0; len(pgs) > 0; round++ {
		if round > 0 {
			select {
			case <-ctx.Done():
				p := pgs[0]
				re := &RecoverError{Volume: r.cfg.VolumeID, PG: p.PG, Step: "durable",
					Err: fmt.Errorf("fewer than a write quorum of segments are complete up to the PG's tail at LSN %d (at or below the VDL %d): %w", res.Tails[p.PG], res.VDL, ctx.Err())}
				for _, m := range p.members() {
					if err, ok := last[p.PG][m.NodeID]; ok {
						re.Causes = append(re.Causes, SegmentError{Member: m, Err: err})
					}
				}
				return re
			case <-time.After(recoverPoll):
			}
		}
		var missing []RecoverPG
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, p := range pgs {
			tail := res.Tails[p.PG]
			complete := map[quorum.SegmentID]bool{}
			errs := map[string]error{}
			var pmu sync.Mutex
			var pwg sync.WaitGroup
			for _, m := range p.members() {
				pwg.Go(func() {
					rctx, cancel := context.WithTimeout(ctx, r.cfg.RPCTimeout)
					defer cancel()
					resp, err := r.client(m).SegmentInfo(rctx, &pb.SegmentInfoRequest{Volume: r.cfg.VolumeID, Pg: p.PG})
					pmu.Lock()
					defer pmu.Unlock()
					switch {
					case reasonOf(err) == pb.Reason_PG_NOT_HOSTED:
						if tail == 0 {
							complete[quorum.SegmentID(m.NodeID)] = true
						} else if derr := r.declare(ctx, p, m, res.Truncations[p.PG]); derr != nil {
							errs[m.NodeID] = fmt.Errorf("hosts no segment of the PG, whose records go up to LSN %d, and declaring it failed: %w", tail, derr)
						} else {
							// Its gossip fills it from now on.
							errs[m.NodeID] = fmt.Errorf("hosted no segment of the PG, whose records go up to LSN %d; declared it", tail)
						}
					case err != nil:
						errs[m.NodeID] = plainErr(err)
					case resp.Scl >= tail:
						complete[quorum.SegmentID(m.NodeID)] = true
					default:
						errs[m.NodeID] = fmt.Errorf("complete only to LSN %d of %d", resp.Scl, tail)
					}
				})
			}
			wg.Go(func() {
				pwg.Wait()
				if !r.qconfig(p).WriteQuorum(func(s quorum.SegmentID) bool { return complete[s] }) {
					mu.Lock()
					missing = append(missing, p)
					last[p.PG] = errs
					have[p.PG] = len(complete)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		slices.SortFunc(missing, func(a, b RecoverPG) int { return cmp.Compare(a.PG, b.PG) })
		if len(missing) > 0 && (round == 0 || len(missing) < len(pgs)) {
			r.log.Info("recovery: waiting for gossip to copy records at or below the VDL to a write quorum", "pg", missing[0].PG, "tail", res.Tails[missing[0].PG], "pgs_waiting", len(missing))
		}
		if len(missing) > 0 && r.cfg.Waiting != nil {
			p := missing[0]
			w := &RecoverWait{PG: p.PG, Step: "durable", Tail: res.Tails[p.PG], Have: have[p.PG], Need: r.writeQuorumSize(p), Segments: len(p.members())}
			for _, m := range p.members() {
				if err, ok := last[p.PG][m.NodeID]; ok {
					w.Causes = append(w.Causes, SegmentError{Member: m, Err: err})
				}
			}
			reported = true
			r.waiting(w)
		}
		pgs = missing
	}
	if reported {
		r.waiting(nil)
	}
	return nil
}

// declare makes m host its segment of p, with the PG's truncations, so that
// its gossip copies the PG's records: the old writer may have reached too
// few nodes for records at or below the VDL to be durable without it. It is
// an Append of the declaration alone, under the new epoch.
func (r *recoverer) declare(ctx context.Context, p RecoverPG, m Member, ts []segment.Truncation) error {
	if r.cfg.PageSize <= 0 || r.cfg.PagesPerPG == 0 {
		return errors.New("RecoverConfig has no page size or PG size to declare it with")
	}
	spec := &pb.SegmentSpec{Volume: r.cfg.VolumeID, Incarnation: r.cfg.Incarnation, Pg: p.PG, PageSize: uint32(r.cfg.PageSize), PagesPerPg: r.cfg.PagesPerPG, MembershipEpoch: p.Membership.Epoch}
	for _, set := range p.Membership.Sets {
		ms := &pb.MemberSet{}
		for _, mm := range set {
			ms.Members = append(ms.Members, &pb.Member{NodeId: mm.NodeID, Az: mm.AZ, Addr: mm.Addr})
		}
		spec.MemberSets = append(spec.MemberSets, ms)
	}
	for _, t := range ts {
		spec.Truncations = append(spec.Truncations, &pb.Truncation{After: t.After, Through: t.Through, Epoch: t.Epoch, Tail: t.Tail})
	}
	rctx, cancel := context.WithTimeout(ctx, r.cfg.RPCTimeout)
	defer cancel()
	stream, err := r.client(m).Append(rctx)
	if err != nil {
		return plainErr(err)
	}
	req := &pb.AppendRequest{Seq: 1, Volume: r.cfg.VolumeID, Epoch: r.cfg.Epoch, Declare: []*pb.SegmentSpec{spec}, Batches: []*pb.SegmentBatch{{Pg: p.PG}}}
	if err := stream.Send(req); err != nil {
		_, rerr := stream.Recv()
		return plainErr(errors.Join(err, rerr))
	}
	if _, err := stream.Recv(); err != nil {
		return plainErr(err)
	}
	r.log.Info("recovery: declared a segment the old writer never reached, so that gossip fills it", "pg", p.PG, "node", m.NodeID)
	return stream.CloseSend()
}

// RecoverConfigFromControl describes the named volume for Recover, as the
// control plane's catalog has it: its id and geometry, every PG with its
// segments, the truncation ranges earlier recoveries recorded, and a Record
// that records this one through ctl. epoch is the new writer's (from
// AcquireWriter).
func RecoverConfigFromControl(ctx context.Context, ctl pb.ControlClient, name string, epoch uint64) (RecoverConfig, error) {
	v, err := ctl.GetVolume(ctx, &pb.GetVolumeRequest{Name: name})
	if err != nil {
		return RecoverConfig{}, fmt.Errorf("volume %s: %w", name, err)
	}
	return RecoverConfigOf(ctl, name, v, epoch)
}

// RecoverConfigOf is RecoverConfigFromControl for a volume as the catalog
// described it already (AcquireWriter's answer).
func RecoverConfigOf(ctl pb.ControlClient, name string, v *pb.VolumeInfo, epoch uint64) (RecoverConfig, error) {
	if v.VolumeEpoch != epoch {
		return RecoverConfig{}, fmt.Errorf("%w: volume %s is at epoch %d in the control plane, not %d", ErrFenced, name, v.VolumeEpoch, epoch)
	}
	cfg := RecoverConfig{VolumeID: v.Id, Incarnation: v.Incarnation, Epoch: epoch, PageSize: int(v.PageSize), PagesPerPG: v.PagesPerPg}
	for _, p := range v.PgList {
		cfg.PGs = append(cfg.PGs, RecoverPG{PG: p.Pg, Membership: membershipOf(p)})
	}
	if len(cfg.PGs) != int(v.Pgs) {
		return RecoverConfig{}, fmt.Errorf("volume %s has %d PGs, and the catalog lists segments for %d of them", name, v.Pgs, len(cfg.PGs))
	}
	for _, t := range v.Truncations {
		cfg.Prior = append(cfg.Prior, recovery.Prior{Epoch: t.Epoch, After: t.After, Through: t.Through, PGs: t.Pgs})
	}
	cfg.Record = func(ctx context.Context, epoch, after, through uint64, pgs uint32) error {
		_, err := ctl.RecordTruncation(ctx, &pb.RecordTruncationRequest{Volume: name, Epoch: epoch, After: after, Through: through, Pgs: pgs})
		return err
	}
	return cfg, nil
}
