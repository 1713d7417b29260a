package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// RepairConfig tunes the leader's repair loop.
type RepairConfig struct {
	// After is how long a node may be down before its segments are
	// replaced (0: DefaultRepairAfter).
	After time.Duration
	// Interval is the time between passes (0: 500ms).
	Interval time.Duration
	// MaxChanges bounds the PGs in a change at once (0: 256).
	MaxChanges int
	// RPCTimeout bounds one Declare or SegmentSCLs call (0: 5s).
	RPCTimeout time.Duration
	// Now is the clock (nil: time.Now); tests move it on.
	Now func() time.Time
}

func (c RepairConfig) withDefaults() RepairConfig {
	if c.After <= 0 {
		c.After = DefaultRepairAfter
	}
	if c.Interval <= 0 {
		c.Interval = 500 * time.Millisecond
	}
	if c.MaxChanges <= 0 {
		c.MaxChanges = 256
	}
	if c.RPCTimeout <= 0 {
		c.RPCTimeout = 5 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// declareBatch bounds the segments of one Declare call.
const declareBatch = 512

// repairer is the leader's repair loop: each pass reads the nodes' states,
// asks PlanRepair about the PGs that need it and does what it says. It
// touches only PGs with a segment on a node that failed, is removed or
// draining, and PGs in a change: an index of every PG, kept by an etcd
// watch, finds them without reading the PGs on each pass. It also finds
// nodes that came back without their data (checked when a node comes back
// up, when its heartbeat stops listing a volume, and for every node when
// the loop starts) and has them hydrate what they lack.
type repairer struct {
	cat *Catalog
	// guard, if set, is the leader's election comparison: the catalog's
	// changes apply only while this control plane leads.
	guard   func() (clientv3.Cmp, bool)
	cfg     RepairConfig
	log     *slog.Logger
	metrics *repairMetrics
	idx     *pgIndex

	// reports are the latest Declare answers, by PG and node; repMu
	// guards them while a pass's declarations run in parallel.
	repMu   sync.Mutex
	reports map[PGKey]map[string]DeclaredState
	// last is the node states of the previous pass (nil before the first).
	last map[string]NodeState
	// checked is, by node, the boot its segments were last checked under
	// (Catalog.CheckedBoots); nil until read.
	checked map[string]string
	// probe is the nodes to check for missing segments.
	probe map[string]bool
	// retire is the final declarations owed to nodes that left a PG (the
	// leaving node after a completion, the joining one after a rollback or
	// retarget), so they stop taking its writes; sent while they are live,
	// until they answer.
	retire map[string]map[PGKey]*pb.SegmentSpec
	// waiting is the PGs that wait for capacity, by the AZ, as last logged.
	waiting map[PGKey]string

	connMu sync.Mutex
	conns  map[string]*grpc.ClientConn
}

func newRepairer(cat *Catalog, cfg RepairConfig, log *slog.Logger, m *repairMetrics) *repairer {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if m == nil {
		m = newRepairMetrics(nil)
	}
	return &repairer{
		cat: cat, cfg: cfg.withDefaults(), log: log, metrics: m, idx: newPGIndex(),
		reports: map[PGKey]map[string]DeclaredState{}, probe: map[string]bool{},
		retire: map[string]map[PGKey]*pb.SegmentSpec{}, waiting: map[PGKey]string{},
		conns: map[string]*grpc.ClientConn{},
	}
}

func (r *repairer) close() {
	r.connMu.Lock()
	defer r.connMu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = map[string]*grpc.ClientConn{}
}

// run runs passes every Interval until ctx ends.
func (r *repairer) run(ctx context.Context) {
	defer r.close()
	go r.idx.follow(ctx, r.cat)
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !r.idx.isReady() {
			continue
		}
		if err := r.pass(ctx); err != nil && ctx.Err() == nil {
			r.log.Debug("repair pass failed", "err", err)
		}
	}
}

// nodeFailed says whether a node's segments are to be replaced, and why.
func nodeFailed(n RepairNode, known bool, now time.Time, after time.Duration) (string, bool) {
	switch {
	case !known:
		return ReasonDown, true
	case n.Admin == AdminRemoved:
		return ReasonRemoved, true
	case n.Admin == AdminDraining:
		return ReasonDrain, true
	case !n.Live && now.Sub(n.LastHeartbeat) >= after:
		return ReasonDown, true
	}
	return "", false
}

func repairNodes(states map[string]NodeState, load Load) []RepairNode {
	out := make([]RepairNode, 0, len(states))
	for _, ns := range states {
		last := ns.LastHeartbeat
		if last.IsZero() {
			last = ns.RegisteredAt
		}
		out = append(out, RepairNode{ID: ns.ID, AZ: ns.AZ, Addr: ns.Addr, Live: ns.State == StateUp, LastHeartbeat: last, Admin: ns.Admin, Load: load.Segments[ns.ID]})
	}
	slices.SortFunc(out, func(a, b RepairNode) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// pass is one round of the loop.
func (r *repairer) pass(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	now := r.cfg.Now()
	states, err := r.cat.NodeStates(pctx)
	if err != nil {
		return err
	}
	if r.checked == nil {
		if r.checked, err = r.cat.CheckedBoots(pctx); err != nil {
			return err
		}
	}
	r.noteReturns(pctx, states)
	nodes := repairNodes(states, Load{})
	known := map[string]RepairNode{}
	for _, n := range nodes {
		known[n.ID] = n
	}
	var keys []PGKey
	for _, id := range r.idx.nodes() {
		n, ok := known[id]
		if _, bad := nodeFailed(n, ok, now, r.cfg.After); bad {
			keys = append(keys, r.idx.onNode(id)...)
		}
	}
	keys = append(keys, r.idx.inChange()...)
	slices.SortFunc(keys, comparePGKey)
	keys = slices.Compact(keys)
	pgs := r.idx.get(keys)

	if len(pgs) > 0 {
		load, err := r.cat.Load(pctx)
		if err != nil {
			return err
		}
		view := RepairView{Now: now, RepairAfter: r.cfg.After, MaxChanges: r.cfg.MaxChanges, Nodes: repairNodes(states, load), PGs: pgs, Reports: r.reports}
		acts := PlanRepair(view)
		r.execute(pctx, acts, states)
		r.metrics.set(pgs, acts)
	} else {
		r.metrics.set(nil, nil)
		clear(r.waiting)
	}
	r.sendRetires(pctx, states)
	r.probeNodes(pctx, states)
	r.forget(keys)
	return nil
}

func comparePGKey(a, b PGKey) int {
	if a.Volume != b.Volume {
		if a.Volume < b.Volume {
			return -1
		}
		return 1
	}
	return int(int64(a.PG) - int64(b.PG))
}

// forget drops the reports of PGs that need none any more.
func (r *repairer) forget(active []PGKey) {
	for k := range r.reports {
		if _, found := slices.BinarySearchFunc(active, k, comparePGKey); !found {
			delete(r.reports, k)
		}
	}
}

// noteReturns marks for a check the nodes that restarted (their heartbeat
// carries another boot id than the one they were last checked under) and
// those whose heartbeat stopped listing a volume it listed. A node seen for
// the first time with no check recorded is taken as it is: it is new, or
// was checked by no leader before (a cluster's first start, when every
// node's first records are still on their way and a check would find
// nodes a moment behind their peers).
func (r *repairer) noteReturns(ctx context.Context, states map[string]NodeState) {
	for id, ns := range states {
		if ns.State != StateUp || ns.Admin != "" {
			continue
		}
		if ns.BootID != "" {
			switch checked, ok := r.checked[id]; {
			case !ok:
				if err := r.cat.SetCheckedBoot(ctx, id, ns.BootID); err == nil {
					r.checked[id] = ns.BootID
				}
			case checked != ns.BootID:
				r.probe[id] = true
			}
		}
		prev, seen := r.last[id]
		if seen && prev.State == StateUp && prev.ReportsHosted && ns.ReportsHosted {
			for _, v := range prev.Hosted {
				if !slices.Contains(ns.Hosted, v) {
					r.probe[id] = true
					break
				}
			}
		}
	}
	r.last = states
}

// execute runs PlanRepair's actions: the catalog's changes first, each
// followed by the declarations of the new membership, then the Declares the
// plan asked for, one call per node.
func (r *repairer) execute(ctx context.Context, acts []RepairAction, states map[string]NodeState) {
	specs := newSpecCache(r.cat, states)
	toDeclare := map[string][]declareItem{}
	waiting := map[PGKey]string{}
	for _, a := range acts {
		var pg PG
		var err error
		attrs := []any{"volume_id", a.PG.Volume, "pg", a.PG.PG, "epoch", a.Epoch, "leaving", a.Leaving.Node, "joining", a.Joining.Node, "reason", a.Reason}
		switch a.Kind {
		case ActWait:
			waiting[a.PG] = a.AZ
			if r.waiting[a.PG] != a.AZ {
				r.log.Warn("repair: PG degraded, waiting for capacity", "volume_id", a.PG.Volume, "pg", a.PG.PG, "failed", a.Leaving.Node, "reason", a.Reason, "az", a.AZ)
			}
			continue
		case ActDeclare:
			pgv, ok := r.idx.getOne(a.PG)
			if !ok || pgv.MembershipEpoch != a.Epoch {
				continue
			}
			for _, n := range a.Nodes {
				toDeclare[n] = append(toDeclare[n], declareItem{pg: pgv, hydrate: n == a.Hydrate})
			}
			continue
		}
		var guards []clientv3.Cmp
		if r.guard != nil {
			cmp, leading := r.guard()
			if !leading {
				return
			}
			guards = append(guards, cmp)
		}
		switch a.Kind {
		case ActBegin:
			pg, err = r.cat.BeginChange(ctx, a.PG.Volume, a.PG.PG, a.Leaving, a.Joining, a.Reason, guards...)
		case ActRetarget:
			pg, err = r.cat.RetargetChange(ctx, a.PG.Volume, a.PG.PG, a.Epoch, a.Joining, guards...)
		case ActComplete:
			pg, err = r.cat.CompleteChange(ctx, a.PG.Volume, a.PG.PG, a.Epoch, guards...)
			attrs = append(attrs, "target", a.Target)
		case ActRollback:
			pg, err = r.cat.RollbackChange(ctx, a.PG.Volume, a.PG.PG, a.Epoch, guards...)
		}
		if errors.Is(err, ErrNotLeader) {
			return
		}
		if err != nil {
			if errors.Is(err, ErrInvalidState) || errors.Is(err, ErrNotFound) {
				// Decided on a view the watch had not caught up with; the
				// next pass decides on the fresh one.
				r.log.Debug("repair step refused", append(attrs, "step", a.Kind, "err", err)...)
			} else {
				r.log.Warn("repair step failed", append(attrs, "step", a.Kind, "err", err)...)
			}
			continue
		}
		r.idx.put(pg)
		r.metrics.step(a)
		attrs = append(attrs, "new_epoch", pg.MembershipEpoch)
		switch a.Kind {
		case ActBegin:
			r.log.Warn("repair started: "+a.Leaving.Node+"'s segment moves to "+a.Joining.Node, attrs...)
		case ActRetarget:
			r.log.Warn("repair: the joining node failed; another takes its place", attrs...)
		case ActComplete:
			r.log.Info("repair complete", attrs...)
		case ActRollback:
			r.log.Info("repair rolled back: the PG keeps its members", attrs...)
		}
		// The new membership goes to its members at once; the node that
		// left, to retire.
		for _, s := range pg.hosts() {
			if states[s.Node].State == StateUp {
				toDeclare[s.Node] = append(toDeclare[s.Node], declareItem{pg: pg, hydrate: pg.Change != nil && s.Node == pg.Change.Joining})
			}
		}
		gone := a.Leaving.Node // complete: F; retarget: the failed joining node
		if a.Kind == ActRollback {
			gone = a.Joining.Node
		}
		if a.Kind != ActBegin && gone != "" && !holds(pg, gone) {
			spec, err := specs.spec(ctx, pg, false)
			if err == nil {
				if r.retire[gone] == nil {
					r.retire[gone] = map[PGKey]*pb.SegmentSpec{}
				}
				r.retire[gone][pg.Key()] = spec
			}
		}
	}
	r.waiting = waiting
	// Every node at once: a node that hangs costs the pass one timeout,
	// not one per node.
	var wg sync.WaitGroup
	for node, items := range toDeclare {
		ns, ok := states[node]
		if !ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = r.declare(ctx, ns.Node, items, specs)
		}()
	}
	wg.Wait()
}

type declareItem struct {
	pg      PG
	hydrate bool
}

// declare sends items to one node and records its answers. It returns an
// error if some were not answered.
func (r *repairer) declare(ctx context.Context, n Node, items []declareItem, specs *specCache) error {
	var batch []*pb.SegmentSpec
	var batchPGs []PG
	var failed error
	flush := func() {
		if len(batch) == 0 {
			return
		}
		resp, err := r.callDeclare(ctx, n, batch)
		switch {
		case err == nil:
			r.record(n.ID, batchPGs, resp)
		case len(batch) > 1 && !transient(err):
			// A node judges every spec of a call before it applies any: one
			// it refuses (a PG whose volume it dropped, say) must not hold
			// the others back.
			for i, spec := range batch {
				resp, err := r.callDeclare(ctx, n, []*pb.SegmentSpec{spec})
				if err != nil {
					r.log.Debug("repair: declaration refused", "node", n.ID, "volume_id", spec.GetVolume(), "pg", spec.GetPg(), "err", err)
					failed = err
					continue
				}
				r.record(n.ID, batchPGs[i:i+1], resp)
			}
		default:
			r.log.Debug("repair: declare failed", "node", n.ID, "segments", len(batch), "err", err)
			failed = err
		}
		batch, batchPGs = batch[:0], batchPGs[:0]
	}
	for _, it := range items {
		spec, err := specs.spec(ctx, it.pg, it.hydrate)
		if err != nil {
			r.log.Debug("repair: cannot build a declaration", "volume_id", it.pg.VolumeID, "pg", it.pg.PG, "err", err)
			failed = err
			continue
		}
		batch = append(batch, spec)
		batchPGs = append(batchPGs, it.pg)
		if len(batch) == declareBatch {
			flush()
		}
	}
	flush()
	return failed
}

// transient: the node did not answer (it may next time), as opposed to
// refusing what it was told.
func transient(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return true
	}
	return false
}

func (r *repairer) callDeclare(ctx context.Context, n Node, specs []*pb.SegmentSpec) (*pb.DeclareResponse, error) {
	conn, err := r.conn(n.Addr)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, r.cfg.RPCTimeout)
	defer cancel()
	return pb.NewStorageClient(conn).Declare(rctx, &pb.DeclareRequest{Specs: specs})
}

// record keeps a node's Declare answers for the PGs declared (a Declare
// names each segment by PG only, so answers are matched to the PGs of one
// volume at a time: a call's specs may span volumes, and the answer keeps
// their order).
func (r *repairer) record(node string, pgs []PG, resp *pb.DeclareResponse) {
	r.repMu.Lock()
	defer r.repMu.Unlock()
	segs := resp.GetSegments()
	for i, pg := range pgs {
		var d *pb.DeclaredSegment
		if i < len(segs) && segs[i].GetPg() == pg.PG {
			d = segs[i]
		} else {
			for _, s := range segs {
				if s.GetPg() == pg.PG {
					d = s
					break
				}
			}
		}
		if d == nil {
			continue
		}
		k := pg.Key()
		if r.reports[k] == nil {
			r.reports[k] = map[string]DeclaredState{}
		}
		st := DeclaredState{Epoch: d.GetMembershipEpoch(), SCL: d.GetScl(), Highest: d.GetHighest(), Hydrating: d.GetHydrating(), Retired: d.GetRetired()}
		prev, had := r.reports[k][node]
		r.reports[k][node] = st
		if pg.Change != nil && node == pg.Change.Joining && (!had || prev.Hydrating != st.Hydrating) {
			r.log.Info("repair: joining member reports", "volume_id", pg.VolumeID, "pg", pg.PG, "node", node, "epoch", st.Epoch, "scl", st.SCL, "hydrating", st.Hydrating)
		}
	}
}

// sendRetires sends the final declarations owed to live nodes.
func (r *repairer) sendRetires(ctx context.Context, states map[string]NodeState) {
	for node, specs := range r.retire {
		ns, ok := states[node]
		if !ok {
			delete(r.retire, node)
			continue
		}
		if ns.State != StateUp {
			continue
		}
		list := make([]*pb.SegmentSpec, 0, len(specs))
		for _, s := range specs {
			list = append(list, s)
		}
		for len(list) > 0 {
			n := min(len(list), declareBatch)
			if _, err := r.callDeclare(ctx, ns.Node, list[:n]); err != nil {
				r.log.Debug("repair: retiring declaration failed", "node", node, "err", err)
				break
			}
			for _, s := range list[:n] {
				delete(specs, PGKey{s.GetVolume(), s.GetPg()})
			}
			list = list[n:]
		}
		if len(specs) == 0 {
			delete(r.retire, node)
		}
	}
}

// probeNodes checks the nodes marked for it for segments they lack while a
// peer holds data of them, and has them hydrate those (no membership
// change: the node is a member, and until it is complete it counts toward
// no quorum). A node that cannot be asked is checked again next pass.
func (r *repairer) probeNodes(ctx context.Context, states map[string]NodeState) {
	for id := range r.probe {
		ns := states[id]
		if ns.State != StateUp || ns.Admin != "" {
			delete(r.probe, id)
			continue
		}
		if err := r.probeNode(ctx, ns, states); err != nil {
			r.log.Debug("repair: cannot check a node for missing segments; again next pass", "node", id, "err", err)
			continue
		}
		if ns.BootID != "" && r.checked[id] != ns.BootID {
			if err := r.cat.SetCheckedBoot(ctx, id, ns.BootID); err != nil {
				continue // checked again next pass
			}
			r.checked[id] = ns.BootID
		}
		delete(r.probe, id)
	}
}

func (r *repairer) probeNode(ctx context.Context, ns NodeState, states map[string]NodeState) error {
	n := ns.Node
	byVol := map[uint64][]PG{}
	for _, pg := range r.idx.get(r.idx.onNode(n.ID)) {
		// A joining segment hydrates by its change already.
		if pg.Change != nil && pg.Change.Joining == n.ID {
			continue
		}
		byVol[pg.VolumeID] = append(byVol[pg.VolumeID], pg)
	}
	// The volumes it says it holds too: it may hold segments of PGs it left
	// while it was away.
	for _, v := range ns.Hosted {
		if _, ok := byVol[v]; !ok {
			byVol[v] = nil
		}
	}
	specs := newSpecCache(r.cat, states)
	for vol, pgs := range byVol {
		own, err := r.segmentSCLs(ctx, n.Addr, vol)
		if err != nil {
			return fmt.Errorf("ask %s for its segments of volume id %d: %w", n.ID, vol, err)
		}
		if err := r.retireStrays(ctx, n, vol, own, specs); err != nil {
			return err
		}
		absent := slices.DeleteFunc(slices.Clone(pgs), func(pg PG) bool { return own[pg.PG] > 0 })
		if len(absent) == 0 {
			continue
		}
		peers := map[string]HostedSCLs{}
		for _, pg := range absent {
			for _, s := range pg.hosts() {
				if _, asked := peers[s.Node]; asked || s.Node == n.ID || states[s.Node].State != StateUp {
					continue
				}
				h, err := r.segmentSCLs(ctx, states[s.Node].Addr, vol)
				if err != nil {
					h = HostedSCLs{}
				}
				peers[s.Node] = h
			}
		}
		missing := MissingSegments(n.ID, absent, own, peers)
		if len(missing) == 0 {
			continue
		}
		var items []declareItem
		for _, pg := range absent {
			if slices.Contains(missing, pg.PG) {
				items = append(items, declareItem{pg: pg, hydrate: true})
			}
		}
		r.log.Warn("repair: node came back without segments its peers hold; it hydrates them", "node", n.ID, "volume_id", vol, "pgs", len(items))
		if err := r.declare(ctx, n, items, specs); err != nil {
			return fmt.Errorf("tell %s to hydrate %d segment(s) of volume id %d: %w", n.ID, len(items), vol, err)
		}
		r.metrics.rehydrated.Add(float64(len(items)))
	}
	return nil
}

// retireStrays declares to n the current membership of each PG of vol it
// holds a segment of but is no member of (it left the PG while it was away,
// and the declaration that retires it was never answered), so that it
// takes none of the PG's writes.
func (r *repairer) retireStrays(ctx context.Context, n Node, vol uint64, own HostedSCLs, specs *specCache) error {
	pgs := map[uint32]PG{}
	for pgNum := range own {
		if pg, ok := r.idx.getOne(PGKey{vol, pgNum}); ok {
			pgs[pgNum] = pg
		}
	}
	stray := StraySegments(n.ID, own, pgs)
	if len(stray) == 0 {
		return nil
	}
	items := make([]declareItem, len(stray))
	for i, p := range stray {
		items[i] = declareItem{pg: pgs[p]}
	}
	r.log.Info("repair: node holds segments of PGs it left; telling it they are retired", "node", n.ID, "volume_id", vol, "pgs", len(items))
	if err := r.declare(ctx, n, items, specs); err != nil {
		return fmt.Errorf("retire %d segment(s) of volume id %d on %s: %w", len(items), vol, n.ID, err)
	}
	return nil
}

func (r *repairer) segmentSCLs(ctx context.Context, addr string, vol uint64) (HostedSCLs, error) {
	conn, err := r.conn(addr)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, r.cfg.RPCTimeout)
	defer cancel()
	resp, err := pb.NewStorageClient(conn).SegmentSCLs(rctx, &pb.SegmentSCLsRequest{Volume: vol})
	if err != nil {
		return nil, err
	}
	out := HostedSCLs{}
	for _, s := range resp.GetSegments() {
		out[s.GetPg()] = s.GetScl()
	}
	return out, nil
}

func (r *repairer) conn(addr string) (*grpc.ClientConn, error) {
	r.connMu.Lock()
	defer r.connMu.Unlock()
	if c, ok := r.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("storage node address %s: %w", addr, err)
	}
	r.conns[addr] = c
	return c, nil
}

// specCache builds the declarations of one pass, reading each volume once.
// Members' addresses are their node records' (a segment keeps the address
// its node had when it was placed; a node may have moved since).
type specCache struct {
	cat    *Catalog
	addrOf map[string]string

	mu   sync.Mutex
	vols map[uint64]*Volume
}

func newSpecCache(cat *Catalog, states map[string]NodeState) *specCache {
	addrOf := make(map[string]string, len(states))
	for id, ns := range states {
		addrOf[id] = ns.Addr
	}
	return &specCache{cat: cat, vols: map[uint64]*Volume{}, addrOf: addrOf}
}

// spec is the declaration of pg's membership: its set, and during a change
// the next one too, at its membership epoch. It carries no truncations: the
// catalog knows their ranges but not each PG's tail, which the writer that
// recovered gave its segments; a hydrating segment copies a peer that
// applied them.
func (s *specCache) spec(ctx context.Context, pg PG, hydrate bool) (*pb.SegmentSpec, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.vols[pg.VolumeID]
	if !ok {
		vol, err := s.cat.VolumeByID(ctx, pg.VolumeID)
		if err != nil {
			if !errors.Is(err, ErrNotFound) {
				return nil, err
			}
			vol = Volume{}
		}
		v = &vol
		s.vols[pg.VolumeID] = v
	}
	if v.ID == 0 {
		return nil, fmt.Errorf("%w: volume id %d is gone", ErrNotFound, pg.VolumeID)
	}
	spec := &pb.SegmentSpec{
		Volume: v.ID, Incarnation: v.Incarnation, Pg: pg.PG, PageSize: uint32(v.PageSize), PagesPerPg: v.PagesPerPG,
		MembershipEpoch: pg.MembershipEpoch, Hydrate: hydrate,
	}
	spec.MemberSets = append(spec.MemberSets, s.memberSet(pg.Segments))
	if pg.Change != nil && len(pg.Next) > 0 {
		spec.MemberSets = append(spec.MemberSets, s.memberSet(pg.Next))
	}
	return spec, nil
}

func (s *specCache) memberSet(segs []Segment) *pb.MemberSet {
	ms := &pb.MemberSet{}
	for _, sg := range segs {
		addr := sg.Addr
		if a := s.addrOf[sg.Node]; a != "" {
			addr = a
		}
		ms.Members = append(ms.Members, &pb.Member{NodeId: sg.Node, Az: sg.AZ, Addr: addr})
	}
	return ms
}

// ---- the index of PGs ----

// pgIndex is every PG of the catalog, by key and by node, with those in a
// change, kept by an etcd watch on the PG keys (follow).
type pgIndex struct {
	mu       sync.Mutex
	ready    bool
	pgs      map[PGKey]PG
	byNode   map[string]map[PGKey]struct{}
	changing map[PGKey]struct{}
}

func newPGIndex() *pgIndex {
	return &pgIndex{pgs: map[PGKey]PG{}, byNode: map[string]map[PGKey]struct{}{}, changing: map[PGKey]struct{}{}}
}

func (x *pgIndex) isReady() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.ready
}

func (x *pgIndex) delLocked(k PGKey) {
	old, ok := x.pgs[k]
	if !ok {
		return
	}
	for _, s := range old.hosts() {
		if m := x.byNode[s.Node]; m != nil {
			delete(m, k)
			if len(m) == 0 {
				delete(x.byNode, s.Node)
			}
		}
	}
	delete(x.pgs, k)
	delete(x.changing, k)
}

// put records pg unless the index has a later membership of it.
func (x *pgIndex) put(pg PG) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.putLocked(pg)
}

func (x *pgIndex) putLocked(pg PG) {
	k := pg.Key()
	if old, ok := x.pgs[k]; ok && old.MembershipEpoch > pg.MembershipEpoch {
		return
	}
	x.delLocked(k)
	x.pgs[k] = pg
	for _, s := range pg.hosts() {
		if x.byNode[s.Node] == nil {
			x.byNode[s.Node] = map[PGKey]struct{}{}
		}
		x.byNode[s.Node][k] = struct{}{}
	}
	if pg.Change != nil {
		x.changing[k] = struct{}{}
	}
}

func (x *pgIndex) del(k PGKey) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.delLocked(k)
}

func (x *pgIndex) nodes() []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]string, 0, len(x.byNode))
	for id := range x.byNode {
		out = append(out, id)
	}
	return out
}

func (x *pgIndex) onNode(id string) []PGKey {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]PGKey, 0, len(x.byNode[id]))
	for k := range x.byNode[id] {
		out = append(out, k)
	}
	return out
}

func (x *pgIndex) inChange() []PGKey {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]PGKey, 0, len(x.changing))
	for k := range x.changing {
		out = append(out, k)
	}
	return out
}

func (x *pgIndex) get(keys []PGKey) []PG {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]PG, 0, len(keys))
	for _, k := range keys {
		if pg, ok := x.pgs[k]; ok {
			out = append(out, pg)
		}
	}
	return out
}

func (x *pgIndex) getOne(k PGKey) (PG, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	pg, ok := x.pgs[k]
	return pg, ok
}

// follow loads every PG, then applies the watch's events from the revision
// after, until ctx ends; if the watch breaks (a compaction, etcd away) it
// loads again.
func (x *pgIndex) follow(ctx context.Context, cat *Catalog) {
	prefix := cat.pgsPrefix()
	for ctx.Err() == nil {
		resp, err := cat.cli.Get(ctx, prefix, clientv3.WithPrefix())
		if err != nil {
			sleepCtx(ctx, 200*time.Millisecond)
			continue
		}
		pgs, err := decodeAll[PG](resp.Kvs)
		if err != nil {
			sleepCtx(ctx, time.Second)
			continue
		}
		x.mu.Lock()
		x.pgs, x.byNode, x.changing = map[PGKey]PG{}, map[string]map[PGKey]struct{}{}, map[PGKey]struct{}{}
		for _, pg := range pgs {
			x.putLocked(pg)
		}
		x.ready = true
		x.mu.Unlock()
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range cat.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
			if wr.Canceled || wr.CompactRevision != 0 || wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete {
					if k, ok := parsePGKey(strings.TrimPrefix(string(ev.Kv.Key), prefix)); ok {
						x.del(k)
					}
					continue
				}
				if pg, err := decode[PG](ev.Kv); err == nil {
					x.put(pg)
				}
			}
		}
		cancel()
	}
}

// parsePGKey reads "<volume %020d>/<pg %010d>".
func parsePGKey(s string) (PGKey, bool) {
	v, p, ok := strings.Cut(s, "/")
	if !ok {
		return PGKey{}, false
	}
	vol, err1 := strconv.ParseUint(v, 10, 64)
	pg, err2 := strconv.ParseUint(p, 10, 32)
	return PGKey{vol, uint32(pg)}, err1 == nil && err2 == nil
}

// ---- metrics ----

// repairMetrics are the repair loop's Prometheus metrics.
type repairMetrics struct {
	steps      *prometheus.CounterVec
	rehydrated prometheus.Counter
	inChange   prometheus.Gauge
	waiting    prometheus.Gauge
}

func newRepairMetrics(reg prometheus.Registerer) *repairMetrics {
	m := &repairMetrics{
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "borealis", Subsystem: "control", Name: "repair_steps_total",
			Help: "Membership changes this control plane made while it led, by step (begin, retarget, complete, rollback) and reason (down, removed, drain).",
		}, []string{"step", "reason"}),
		rehydrated: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "borealis", Subsystem: "control", Name: "repair_rehydrated_segments_total",
			Help: "Segments a node that came back without them was told to hydrate (Declare with hydrate), no membership change.",
		}),
		inChange: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "borealis", Subsystem: "control", Name: "repair_pgs_in_change",
			Help: "PGs in a membership change as the last repair pass saw them.",
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "borealis", Subsystem: "control", Name: "repair_pgs_waiting_for_capacity",
			Help: "PGs degraded with no spare node in the AZ of a failed member, as the last repair pass saw them.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.steps, m.rehydrated, m.inChange, m.waiting)
	}
	return m
}

func (m *repairMetrics) step(a RepairAction) { m.steps.WithLabelValues(a.Kind, a.Reason).Inc() }

func (m *repairMetrics) set(pgs []PG, acts []RepairAction) {
	n := 0
	for _, pg := range pgs {
		if pg.Change != nil {
			n++
		}
	}
	w := map[PGKey]bool{}
	for _, a := range acts {
		if a.Kind == ActWait {
			w[a.PG] = true
		}
	}
	m.inChange.Set(float64(n))
	m.waiting.Set(float64(len(w)))
}
