// Package volume is the writer's (and reader's) client of a Borealis volume.
//
// It turns mini-transactions (MTRs: the dirty pages of one SQLite
// transaction) into redo records, allocates their LSNs, ships them to the six
// segments of each protection group (PG) over one long-lived Append stream
// per storage node, tracks durability with internal/quorum (4 of 6 per PG),
// and acknowledges a commit once the volume durable LSN (VDL) passes it. It
// also reads pages back from one segment at a time, hedging to a second one
// when the first is slow.
//
// Shipping never waits for a slow segment: every node has its own queue and
// sender goroutine, and a commit completes as soon as the tracker has a write
// quorum of every PG involved. A node that fails is reconnected in the
// background; records that meanwhile became durable on four others are not
// resent to it (its own gossip fetches them from its peers).
package volume

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/quorum"
	"github.com/borealis-db/borealis/internal/redo"
	"github.com/borealis-db/borealis/internal/segment"
)

// Defaults and tuning constants.
const (
	// DefaultPageSize is the page size when Config.PageSize is 0.
	DefaultPageSize = 4096
	// DefaultPGBytes sizes a PG when Config.PagesPerPG is 0 (10 GiB, as in
	// DESIGN.md).
	DefaultPGBytes = 10 << 30
	// DefaultLAL is the allocation limit when Config.LAL is 0: at most this
	// many LSNs (one per record) are allocated beyond the VDL. 65536 records
	// is far more than needed to keep the pipeline full (64 committers with a
	// few pages each use a few hundred), while it bounds both the writer's
	// memory for undurable records (at most 256 MiB of 4 KiB full images, in
	// practice much less since most records are diffs) and the range a new
	// writer truncates in recovery.
	DefaultLAL = 1 << 16
	// DefaultWriteTimeout is Config.WriteTimeout's default.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultReadTimeout is Config.ReadTimeout's default.
	DefaultReadTimeout = 5 * time.Second

	// maxInflight is the number of unanswered Append requests allowed per
	// node; records queued meanwhile go out together in the next request.
	// One: a node syncs each request it is sent, so each further request in
	// flight is another fsync and another round of per-request work for
	// fewer records, while the records it would carry wait no longer in the
	// queue than behind the request in flight.
	maxInflight = 1
	// maxRequestBytes caps the record bytes of one Append request (gRPC's
	// default receive limit is 4 MiB).
	maxRequestBytes = 3 << 20
	// maxQueueBytes bounds one node's queue of unsent records. Beyond it the
	// records already durable on a write quorum (LSN <= PGCL) are dropped:
	// the node's gossip fetches them from its peers.
	maxQueueBytes = 64 << 20
	// gRPC flow-control windows of the connections to nodes (static, so no
	// BDP pings on the commit path). Responses are small acks and pages.
	streamWindowBytes = 4 << 20
	connWindowBytes   = 16 << 20
	// keepaliveEvery: a node with nothing to send for this long gets a
	// request with empty batches, carrying min_read_point and retain_lsn and
	// proving it reachable.
	keepaliveEvery = 500 * time.Millisecond
	// staleAfter: a connected node whose oldest unanswered request is older
	// than this is counted unreachable.
	staleAfter = 2 * time.Second
	// resetAfter: a stream whose oldest request has gone unanswered this long
	// is torn down and opened again.
	resetAfter = 10 * time.Second
	// Reconnect backoff of a failed Append stream. The cap is short because a
	// restarted node counts toward the write quorum only once it is fed again:
	// while it waits, one more failure stops commits. A connect attempt to a
	// dead node costs one refused SYN.
	minBackoff = 50 * time.Millisecond
	maxBackoff = 250 * time.Millisecond
	// stuckAfter: a segment that answers, holds its PG only below a waiting
	// record and has not raised its SCL for this long cannot count toward
	// the record's write quorum once WriteTimeout has passed (quorum.Judge).
	// A segment catching up raises its SCL with every gossip fill.
	stuckAfter = 2 * time.Second
	// reportFresh: a segment is judged behind only on an SCL it reported
	// this recently; an older report gets it asked for a new one (a node
	// reports a PG's SCL only in answer to a request that carries the PG).
	reportFresh = 500 * time.Millisecond
	// unavailableRecheck: after WriteTimeout, how often a waiter re-checks
	// whether the PG it waits for lacks a write quorum.
	unavailableRecheck = 100 * time.Millisecond
	// minHedge is the least delay before a read is hedged to another segment.
	minHedge = 2 * time.Millisecond
	// pageLSNCap bounds the page -> last LSN map used for PrevPageLSN. When
	// it fills up it is cleared: PrevPageLSN 0 means "unknown", which is
	// always allowed.
	pageLSNCap = 1 << 20
)

// Member is one segment of a PG: the storage node holding it.
type Member struct{ NodeID, AZ, Addr string }

// Config configures a Client.
type Config struct {
	VolumeID uint64
	// Incarnation is the volume's (VolumeInfo.incarnation), declared with
	// every segment, so that storage nodes tell the volume apart from
	// another one with the same id in another catalog; 0 declares none.
	Incarnation uint64
	// Epoch is the volume epoch; it is sent in every request, and a node
	// that has seen a newer one fences this client (ErrFenced).
	Epoch uint64
	// PageSize in bytes; default 4096.
	PageSize int
	// PagesPerPG: PG i holds pages [i*N+1, (i+1)*N]. Default: 10 GiB worth.
	PagesPerPG uint64
	// Placement returns the membership of a PG: its segments (normally 6,
	// 2 per AZ), in two sets during a membership change. It is called the
	// first time the client touches the PG, outside the client's locks.
	Placement func(pg uint32) (Membership, error)
	// Grow, when set, is asked for a PG that Placement reports missing
	// (ErrNoSuchPG) the first time a write reaches it: the volume grows by
	// that PG (and any before it). A read of a missing PG reads zeros.
	Grow func(pg uint32) (Membership, error)
	// Refresh, when set, returns a PG's current membership from its source
	// (not from a cache): the client asks it when a storage node refuses a
	// request for counting acks under an older membership epoch than it
	// holds (STALE_MEMBERSHIP). Without it the client asks Placement.
	Refresh func(pg uint32) (Membership, error)
	// Follow, when set, is called once by Open with the client's
	// SetMembership, for the source to report each PG's changes of
	// membership as they happen.
	Follow func(set func(pg uint32, m Membership))
	// BaseLSN is the VDL recovered at open; 0 for a new volume. New LSNs
	// start at BaseLSN+1.
	BaseLSN uint64
	// PGTails gives, for a recovered volume, the last LSN <= BaseLSN of each
	// PG (from recovery). It is the backlink of the PG's first new record; a
	// PG missing from the map is taken as having no records yet.
	PGTails map[uint32]uint64
	// Truncations gives, for a recovered volume, each PG's recovery
	// truncations, oldest epoch first (Recovered.Truncations). They go into
	// every declaration of the PG, so a segment that missed the recovery
	// applies them before it takes this client's records; and reads above
	// BaseLSN avoid segments that have not applied this epoch's.
	Truncations map[uint32][]segment.Truncation
	// LAL is the allocation limit: no LSN above VDL+LAL is allocated, and
	// Submit blocks until the VDL catches up. Default DefaultLAL (65536).
	LAL uint64
	// WriteTimeout is how long a commit (or a Submit held back by the LAL)
	// waits for a PG without a write quorum before failing with
	// *UnavailableError. Default 10s.
	WriteTimeout time.Duration
	// ReadTimeout bounds each segment's answer to one GetPage; a read moves
	// on to the next segment after it. Default 5s.
	ReadTimeout time.Duration
	// DialOptions are appended to the client's own (insecure credentials,
	// fast reconnect backoff, a wire-byte stats handler).
	DialOptions []grpc.DialOption
	Logger      *slog.Logger

	// ReadOnly makes a read replica's client: it never writes (Submit fails
	// with ErrReadOnly) and opens no Append stream; its VDL is the one the
	// replica applied (SetVDL), and the PG tails and segment SCLs its reads
	// route by come from the writer's redo stream (NoteRedo, NotePGStates).
	ReadOnly bool
	// Redo, if set, is told of every MTR as it is submitted and of the VDL
	// as it rises: the writer's redo stream to replicas.
	Redo RedoObserver
}

// PageWrite is one page of an MTR.
type PageWrite struct {
	Page uint64
	// Old is the page's previous image; nil means the page is new and a
	// full image record is written.
	Old []byte
	New []byte
}

// Client is the volume client. It is safe for concurrent use.
type Client struct {
	cfg   Config
	log   *slog.Logger
	ctx   context.Context // cancelled by Close or fencing: stops the senders
	stop  context.CancelFunc
	wg    sync.WaitGroup
	dials []grpc.DialOption

	vdl atomic.Uint64 // copy of the tracker's VDL, readable without mu
	// roEpoch is a read-only client's stream epoch (SetStreamEpoch), sent
	// with its reads.
	roEpoch atomic.Uint64
	mrp     atomic.Uint64 // min_read_point sent to storage

	mu       sync.Mutex
	tracker  *quorum.Tracker
	pageLast map[uint64]uint64
	pgs      map[uint32]*pgState
	nodes    map[string]*node
	waiters  waitHeap
	pins     map[uint64]int
	pinAt    map[uint64]time.Time
	// floor and floorHeld: the replicas' part of the PGMRPL (SetReadFloor).
	floor     uint64
	floorSet  bool
	floorHeld bool
	// A read-only client's view of the PGs from the redo stream: each PG's
	// LSNs (as pgState.lsns), recovered LSN and segment SCLs.
	roTails     map[uint32][]uint64
	roRecovered map[uint32]uint64
	roSCLs      map[uint32]map[string]uint64
	fenced      error
	closed      bool

	// Placement lookups in progress, so concurrent first touches of a PG
	// call Placement once.
	resolving map[uint32]chan struct{}

	st counters
}

// pgState is the client's view of one PG. Fields marked immutable are set
// before the pgState is published in Client.pgs.
type pgState struct {
	idx uint32 // immutable
	// mem is the PG's current membership; it is replaced (under Client.mu)
	// when the membership changes, never modified.
	mem    atomic.Pointer[pgMembership]
	since  time.Time         // immutable: when the client first touched the PG
	retain atomic.Uint64     // lowest SCL among members that may pull (retainLocked)
	scl    map[string]uint64 // guarded by Client.mu: node id -> last known SCL
	// sclAt (guarded by Client.mu) is when each member's SCL last rose, or
	// was first reported: a wait past WriteTimeout does not count a segment
	// that answers but has stood still below the record (quorum.Judge).
	sclAt map[string]time.Time
	// reportAt (guarded by Client.mu) is when each member last reported its
	// SCL of this PG, risen or not.
	reportAt map[string]time.Time
	// recv (guarded by Client.mu) is when each member first acknowledged a
	// request carrying the PG's oldest pending record (pending[0]): only a
	// member that has it can be judged behind on it (quorum.Judge).
	recv    map[string]received
	written bool     // guarded by Client.mu: configured in the tracker and declared to nodes
	last    uint64   // guarded by Client.mu: last LSN in the PG (backlink)
	first   uint64   // guarded by Client.mu: first LSN this client allocated in the PG
	pending []uint64 // guarded by Client.mu: allocated LSNs above PGCL, ascending
	// lsns (guarded by Client.mu) are the PG's LSNs this client knows,
	// ascending: every LSN it allocated in the PG above the oldest read
	// point (min_read_point), plus the last one at or below it as an anchor.
	// A segment's SCL never exceeds its PG's last record, so a read at R is
	// served by a segment whose SCL reaches the PG's last LSN <= R
	// (see pgTailLocked).
	lsns   []uint64
	warned time.Time // guarded by Client.mu: last unavailability log
	// recovered (immutable) is the After of this epoch's truncation of the
	// PG, 0 if none: a segment that lacks it serves no read above it.
	recovered uint64
	_         [0]func() // not comparable
}

// Open creates a client. It dials nothing until a PG is first touched.
func Open(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Placement == nil {
		return nil, errors.New("volume: Config.Placement is required")
	}
	if cfg.PageSize == 0 {
		cfg.PageSize = DefaultPageSize
	}
	if cfg.PageSize < 0 || cfg.PageSize > 1<<24 {
		return nil, fmt.Errorf("volume: bad page size %d", cfg.PageSize)
	}
	if cfg.PagesPerPG == 0 {
		cfg.PagesPerPG = uint64(DefaultPGBytes / cfg.PageSize)
	}
	if cfg.LAL == 0 {
		cfg.LAL = DefaultLAL
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = DefaultReadTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &Client{
		cfg:         cfg,
		log:         cfg.Logger.With("volume_id", cfg.VolumeID),
		tracker:     quorum.NewTracker(cfg.BaseLSN),
		pageLast:    make(map[uint64]uint64),
		pgs:         make(map[uint32]*pgState),
		nodes:       make(map[string]*node),
		pins:        make(map[uint64]int),
		pinAt:       make(map[uint64]time.Time),
		roTails:     make(map[uint32][]uint64),
		roRecovered: make(map[uint32]uint64),
		roSCLs:      make(map[uint32]map[string]uint64),
		resolving:   make(map[uint32]chan struct{}),
	}
	c.vdl.Store(cfg.BaseLSN)
	c.mrp.Store(cfg.BaseLSN)
	c.ctx, c.stop = context.WithCancel(context.Background())
	if cfg.Follow != nil {
		cfg.Follow(func(pg uint32, m Membership) {
			if err := c.SetMembership(pg, m); err != nil {
				c.log.Warn("membership change not taken", "pg", pg, "err", err)
			}
		})
	}
	c.dials = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: minBackoff, Multiplier: 2, Jitter: 0.2, MaxDelay: maxBackoff},
			MinConnectTimeout: 2 * time.Second,
		}),
		grpc.WithStatsHandler(&wireStats{c: c}),
		// Static windows turn off gRPC's BDP estimator, which otherwise
		// pings the node on nearly every small Append response.
		grpc.WithStaticStreamWindowSize(streamWindowBytes),
		grpc.WithStaticConnWindowSize(connWindowBytes),
	}, cfg.DialOptions...)
	return c, nil
}

// VDL returns the volume durable LSN.
func (c *Client) VDL() uint64 { return c.vdl.Load() }

// failedLocked returns the error every operation fails with, if any.
func (c *Client) failedLocked() error {
	if c.fenced != nil {
		return c.fenced
	}
	if c.closed {
		return ErrClosed
	}
	return nil
}

func (c *Client) pgOf(page uint64) (uint32, error) {
	if page == 0 {
		return 0, errors.New("volume: page 0 does not exist (pages are numbered from 1)")
	}
	idx := (page - 1) / c.cfg.PagesPerPG
	if idx > math.MaxUint32 {
		return 0, fmt.Errorf("volume: page %d is beyond the last possible PG", page)
	}
	return uint32(idx), nil
}

// ErrNoSuchPG is what Placement returns for a PG the volume does not have
// yet: nothing was ever written there.
var ErrNoSuchPG = errors.New("volume: no such PG yet")

// pg returns the state of PG idx, calling Placement (outside the lock) the
// first time, and Grow for a write to a PG that does not exist yet.
func (c *Client) pg(ctx context.Context, idx uint32, write bool) (*pgState, error) {
	for {
		c.mu.Lock()
		if err := c.failedLocked(); err != nil {
			c.mu.Unlock()
			return nil, err
		}
		if p, ok := c.pgs[idx]; ok {
			c.mu.Unlock()
			return p, nil
		}
		if ch, ok := c.resolving[idx]; ok {
			c.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		ch := make(chan struct{})
		c.resolving[idx] = ch
		c.mu.Unlock()

		ms, err := c.cfg.Placement(idx)
		if errors.Is(err, ErrNoSuchPG) && write && c.cfg.Grow != nil {
			ms, err = c.cfg.Grow(idx)
		}
		if err == nil {
			err = ms.validate()
		}

		c.mu.Lock()
		delete(c.resolving, idx)
		close(ch)
		if err != nil {
			c.mu.Unlock()
			return nil, fmt.Errorf("volume %d: placement of PG %d: %w", c.cfg.VolumeID, idx, err)
		}
		p := c.newPGLocked(idx, ms)
		c.mu.Unlock()
		return p, nil
	}
}

func (c *Client) newPGLocked(idx uint32, ms Membership) *pgState {
	p := &pgState{idx: idx, since: time.Now(), scl: make(map[string]uint64), sclAt: make(map[string]time.Time), reportAt: make(map[string]time.Time), recv: make(map[string]received)}
	for _, t := range c.cfg.Truncations[idx] {
		if t.Epoch == c.cfg.Epoch {
			p.recovered = t.After
		}
	}
	p.mem.Store(c.newMembershipLocked(p, ms))
	if t, ok := c.cfg.PGTails[idx]; ok && t > 0 {
		p.last = t
		p.lsns = []uint64{t}
	}
	c.pgs[idx] = p
	return p
}

// prepared is one page write turned into a record payload, before its LSN.
type prepared struct {
	pg     *pgState
	page   uint64
	kind   redo.PayloadKind
	ranges []redo.Range
	image  []byte
}

// Submit turns one MTR into redo records, allocates their LSNs, registers
// them with the durability tracker and queues them to the segments of their
// PGs. It returns the MTR's last LSN (its CPL) without waiting for
// durability; pass it to WaitDurable.
//
// A page with Old == nil becomes a full-image record; otherwise a diff
// against Old. Pages identical to Old produce no record; an MTR with no
// changes at all returns the last allocated LSN, so that waiting for it still
// orders the caller after every earlier commit.
//
// Submit blocks while the MTR's last LSN would exceed VDL+LAL; after
// WriteTimeout it fails with *UnavailableError if a PG holding the VDL back
// has no write quorum.
func (c *Client) Submit(ctx context.Context, mtr []PageWrite) (uint64, error) {
	if c.cfg.ReadOnly {
		return 0, ErrReadOnly
	}
	recs := make([]prepared, 0, len(mtr))
	for _, w := range mtr {
		if len(w.New) != c.cfg.PageSize {
			return 0, fmt.Errorf("volume: page %d: new image is %d bytes, want %d", w.Page, len(w.New), c.cfg.PageSize)
		}
		if w.Old != nil && len(w.Old) != c.cfg.PageSize {
			return 0, fmt.Errorf("volume: page %d: old image is %d bytes, want %d", w.Page, len(w.Old), c.cfg.PageSize)
		}
		idx, err := c.pgOf(w.Page)
		if err != nil {
			return 0, err
		}
		p, err := c.pg(ctx, idx, true)
		if err != nil {
			return 0, err
		}
		r := prepared{pg: p, page: w.Page}
		if w.Old == nil {
			r.kind, r.image = redo.KindImage, w.New
		} else {
			r.ranges = redo.Diff(w.Old, w.New)
			if len(r.ranges) == 0 {
				continue
			}
			n := 0
			for _, rg := range r.ranges {
				n += redo.RangeOverhead + len(rg.Data)
			}
			if n >= len(w.New) {
				r.kind, r.ranges, r.image = redo.KindImage, nil, w.New
			} else {
				r.kind = redo.KindDiff
			}
		}
		recs = append(recs, r)
	}
	if uint64(len(recs)) > c.cfg.LAL {
		return 0, fmt.Errorf("volume: MTR of %d records exceeds the allocation limit %d", len(recs), c.cfg.LAL)
	}

	c.mu.Lock()
	if err := c.failedLocked(); err != nil {
		c.mu.Unlock()
		return 0, err
	}
	if len(recs) == 0 {
		lsn := c.tracker.LastAllocated()
		c.mu.Unlock()
		return lsn, nil
	}
	// Back-pressure: never allocate above VDL+LAL.
	var start time.Time
	for {
		end := c.tracker.LastAllocated() + uint64(len(recs))
		if end <= c.tracker.VDL()+c.cfg.LAL {
			break // allocate, still holding mu
		}
		c.mu.Unlock()
		if start.IsZero() {
			start = time.Now()
		}
		if err := c.waitVDL(ctx, end-c.cfg.LAL, start); err != nil {
			return 0, err
		}
		c.mu.Lock()
		if err := c.failedLocked(); err != nil {
			c.mu.Unlock()
			return 0, err
		}
	}

	type nodeBatch struct {
		n       *node
		entries []*entry
	}
	var batches []nodeBatch
	var published [][]byte
	if c.cfg.Redo != nil {
		published = make([][]byte, 0, len(recs))
	}
	first := c.tracker.LastAllocated() + 1
	byNode := map[*node]int{}
	for i := range recs {
		r := &recs[i]
		p := r.pg
		lsn := c.tracker.LastAllocated() + 1
		cpl := i == len(recs)-1
		pm := p.mem.Load()
		if !p.written {
			c.tracker.SetConfig(p.idx, pm.qcfg)
			p.written = true
			for _, n := range pm.nodes {
				n.addPG(p)
			}
		}
		if err := c.tracker.Allocated(lsn, p.idx, cpl); err != nil {
			// A bug: LSNs are allocated strictly increasing under mu.
			c.mu.Unlock()
			return 0, fmt.Errorf("volume: allocating LSN %d: %w", lsn, err)
		}
		rec := redo.Record{
			Volume:      c.cfg.VolumeID,
			PG:          p.idx,
			Page:        r.page,
			LSN:         lsn,
			PrevLSN:     p.last,
			PrevPageLSN: c.pageLast[r.page],
			Epoch:       c.cfg.Epoch,
			CPL:         cpl,
			Kind:        r.kind,
			Ranges:      r.ranges,
			Image:       r.image,
		}
		p.last = lsn
		if p.first == 0 {
			p.first = lsn
		}
		if len(c.pageLast) >= pageLSNCap {
			clear(c.pageLast)
		}
		c.pageLast[r.page] = lsn
		p.pending = append(p.pending, lsn)
		mrp := c.mrp.Load()
		k := 0
		for k+1 < len(p.lsns) && p.lsns[k+1] <= mrp {
			k++
		}
		if k > 0 {
			p.lsns = append(p.lsns[:0], p.lsns[k:]...)
		}
		p.lsns = append(p.lsns, lsn)
		e := &entry{pg: p, lsn: lsn, data: rec.Encode()}
		c.st.records.Add(1)
		c.st.recordBytes.Add(uint64(len(e.data)))
		if published != nil {
			published = append(published, e.data)
		}
		for _, n := range pm.nodes {
			j, ok := byNode[n]
			if !ok {
				j = len(batches)
				byNode[n] = j
				batches = append(batches, nodeBatch{n: n})
			}
			batches[j].entries = append(batches[j].entries, e)
		}
	}
	for _, b := range batches {
		b.n.enqueue(b.entries)
	}
	lsn := c.tracker.LastAllocated()
	if published != nil {
		// Under mu: the redo stream sees MTRs in LSN order, each before
		// any VDL that covers it.
		c.cfg.Redo.Submitted(first, lsn, published)
	}
	c.mu.Unlock()
	for _, b := range batches {
		b.n.signal()
	}
	c.st.commits.Add(1)
	return lsn, nil
}

// WaitDurable returns when VDL >= lsn. It fails with ctx's error, with an
// error wrapping ErrFenced, or, once WriteTimeout has passed, with
// *UnavailableError if a PG that lsn depends on has no write quorum of
// reachable segments (while every such PG has one it keeps waiting).
func (c *Client) WaitDurable(ctx context.Context, lsn uint64) error {
	return c.waitVDL(ctx, lsn, time.Now())
}

// Commit is Submit followed by WaitDurable.
func (c *Client) Commit(ctx context.Context, mtr []PageWrite) (uint64, error) {
	lsn, err := c.Submit(ctx, mtr)
	if err != nil {
		return 0, err
	}
	return lsn, c.WaitDurable(ctx, lsn)
}

// waitVDL waits until VDL >= target (see WaitDurable); start is when the
// caller began waiting, for WriteTimeout.
func (c *Client) waitVDL(ctx context.Context, target uint64, start time.Time) error {
	c.mu.Lock()
	if err := c.failedLocked(); err != nil {
		c.mu.Unlock()
		return err
	}
	if c.vdl.Load() >= target {
		c.mu.Unlock()
		return nil
	}
	w := &waiter{lsn: target, ch: make(chan struct{})}
	heap.Push(&c.waiters, w)
	c.mu.Unlock()

	timer := time.NewTimer(time.Until(start.Add(c.cfg.WriteTimeout)))
	defer timer.Stop()
	for {
		select {
		case <-w.ch:
			c.mu.Lock()
			err := c.failedLocked()
			c.mu.Unlock()
			if err != nil && c.vdl.Load() < target {
				return err
			}
			return nil
		case <-ctx.Done():
			c.removeWaiter(w)
			return ctx.Err()
		case <-timer.C:
			if ue := c.unavailable(target, time.Since(start)); ue != nil {
				c.removeWaiter(w)
				return ue
			}
			timer.Reset(unavailableRecheck)
		}
	}
}

func (c *Client) removeWaiter(w *waiter) {
	c.mu.Lock()
	if w.index >= 0 {
		heap.Remove(&c.waiters, w.index)
	}
	c.mu.Unlock()
}

// wakeLocked releases waiters whose LSN the VDL has reached, or all of them
// when the client failed.
func (c *Client) wakeLocked(vdl uint64, all bool) {
	for len(c.waiters) > 0 && (all || c.waiters[0].lsn <= vdl) {
		w := heap.Pop(&c.waiters).(*waiter)
		close(w.ch)
	}
}

// unavailable returns the error for a waiter of target if a PG holding it
// back cannot make it durable (quorum.Judge): its segments that are
// reachable and holding or approaching the record do not form a write
// quorum. nil otherwise: the wait goes on.
func (c *Client) unavailable(target uint64, waited time.Duration) *UnavailableError {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tracker.VDL() >= target {
		return nil
	}
	var worst *pgState
	var worstStall quorum.Stall
	var worstProg map[quorum.SegmentID]quorum.Progress
	idxs := make([]uint32, 0, len(c.pgs))
	for idx := range c.pgs {
		idxs = append(idxs, idx)
	}
	slices.Sort(idxs)
	for _, idx := range idxs {
		p := c.pgs[idx]
		if len(p.pending) == 0 || p.pending[0] > target {
			continue
		}
		pm := p.mem.Load()
		byID := make(map[quorum.SegmentID]*node, len(pm.nodes))
		for _, n := range pm.nodes {
			byID[quorum.SegmentID(n.m.NodeID)] = n
		}
		prog := make(map[quorum.SegmentID]quorum.Progress, len(pm.nodes))
		st := pm.qcfg.Judge(p.pending[0], stuckAfter, reportFresh, func(id quorum.SegmentID) quorum.Progress {
			var pr quorum.Progress
			if n := byID[id]; n != nil {
				pr = n.progress(now, p.scl[n.m.NodeID], p.sclAt[n.m.NodeID], p.reportAt[n.m.NodeID], p.recv[n.m.NodeID], p.pending[0])
			}
			prog[id] = pr
			return pr
		})
		for _, id := range st.Ask {
			byID[id].askReport()
		}
		if !st.Stalled {
			continue
		}
		if worst == nil || p.pending[0] < worst.pending[0] {
			worst, worstStall, worstProg = p, st, prog
		}
	}
	if worst == nil {
		return nil
	}
	wm := worst.mem.Load()
	e := &UnavailableError{
		Volume:   c.cfg.VolumeID,
		PG:       worst.idx,
		Segments: len(wm.members),
		LSN:      target,
		PGLSN:    worst.pending[0],
		Waited:   waited,
	}
	for _, id := range worstStall.Unreachable {
		i := slices.IndexFunc(wm.members, func(m Member) bool { return m.NodeID == string(id) })
		e.Unreachable = append(e.Unreachable, wm.members[i])
		e.Causes = append(e.Causes, wm.nodes[i].unreachableCause(now))
	}
	for _, id := range worstStall.Behind {
		i := slices.IndexFunc(wm.members, func(m Member) bool { return m.NodeID == string(id) })
		pr := worstProg[id]
		e.Behind = append(e.Behind, BehindSegment{Member: wm.members[i], SCL: pr.SCL, Unchanged: pr.Unchanged})
	}
	if now.Sub(worst.warned) > 5*time.Second {
		worst.warned = now
		c.log.Warn("PG cannot make commits durable; they fail", "pg", worst.idx, "err", e.Error())
	}
	return e
}

// received marks when a member first acknowledged a request carrying the
// record at head, its PG's oldest pending LSN then.
type received struct {
	head uint64
	at   time.Time
}

// onAcks applies one Append response's acks from node n; sent are the
// records of the request it answers.
func (c *Client) onAcks(n *node, acks []*pb.SegmentAck, sent []*entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fenced != nil || c.closed {
		return
	}
	defer c.noteReceivedLocked(n.m.NodeID, sent)
	seg := quorum.SegmentID(n.m.NodeID)
	now := time.Now()
	connectedAt := n.connectedSince()
	for _, a := range acks {
		p, ok := c.pgs[a.GetPg()]
		if !ok || !p.written {
			continue
		}
		c.tracker.Ack(p.idx, seg, a.GetScl())
		p.noteSCLLocked(n.m.NodeID, a.GetScl(), now, connectedAt)
		p.trimPendingLocked(c.tracker.PGCL(p.idx))
		p.retain.Store(c.retainLocked(p, now))
	}
	c.advancedLocked(now)
}

// advancedLocked publishes a VDL the tracker raised: it wakes the waiters
// it reaches and tells the redo stream.
func (c *Client) advancedLocked(now time.Time) {
	if vdl := c.tracker.VDL(); vdl > c.vdl.Load() {
		c.vdl.Store(vdl)
		c.wakeLocked(vdl, false)
		c.updateMRPLocked()
		if c.cfg.Redo != nil {
			c.cfg.Redo.Durable(vdl, now)
		}
	}
}

// noteReceivedLocked records, for each PG whose oldest pending record is in
// sent (LSN order), that node nodeID now holds it.
func (c *Client) noteReceivedLocked(nodeID string, sent []*entry) {
	now := time.Now()
	for i, e := range sent {
		if i+1 < len(sent) && sent[i+1].pg == e.pg {
			continue // the PG's last record in the request
		}
		p := e.pg
		if len(p.pending) == 0 || e.lsn < p.pending[0] {
			continue
		}
		if r := p.recv[nodeID]; r.head != p.pending[0] {
			p.recv[nodeID] = received{head: p.pending[0], at: now}
		}
	}
}

// pgTailLocked returns the PG's last LSN <= readLSN as far as this client
// knows (0: unknown). A segment's SCL counts only its own PG's records, so a
// read at readLSN needs a segment whose SCL reaches this tail, not readLSN
// itself; GetPage carries it as pg_tail_lsn.
func (c *Client) pgTailLocked(p *pgState, readLSN uint64) uint64 {
	l := p.lsns
	if c.cfg.ReadOnly {
		l = c.roTails[p.idx]
	}
	if len(l) == 0 || readLSN < l[0] {
		return 0
	}
	i := sort.Search(len(l), func(i int) bool { return l[i] > readLSN })
	return l[i-1]
}

// noteSCLLocked records an SCL member nodeID reported at now. A report is
// taken only if it rises, except that the first report on a stream opened
// after the last one (reconnected) replaces what was known: a node that came
// back with its directory emptied holds nothing of the PG, whatever it said
// before. It reports whether the SCL changed.
func (p *pgState) noteSCLLocked(nodeID string, scl uint64, now, connectedAt time.Time) bool {
	p.reportAt[nodeID] = now
	old, known := p.scl[nodeID]
	at := p.sclAt[nodeID]
	if known && scl <= old && !(scl < old && connectedAt.After(at)) {
		return false
	}
	p.sclAt[nodeID] = now
	p.scl[nodeID] = scl
	return scl != old
}

// fence marks the client fenced (a node refused its epoch as stale).
func (c *Client) fence(nodeID string, err error) {
	c.mu.Lock()
	if c.fenced != nil || c.closed {
		c.mu.Unlock()
		return
	}
	c.fenced = fmt.Errorf("%w (storage node %s refused epoch %d of volume %d: %v)", ErrFenced, nodeID, c.cfg.Epoch, c.cfg.VolumeID, err)
	c.wakeLocked(0, true)
	c.mu.Unlock()
	c.log.Error("volume client fenced: a newer writer exists", "node", nodeID, "epoch", c.cfg.Epoch, "err", err)
	c.stop()
}

// PinReadPoint returns the current VDL as a read point and keeps it as the
// volume's oldest read point (sent to storage as min_read_point, so versions
// it needs are not garbage-collected) until release is called. With nothing
// pinned, the VDL stands in.
func (c *Client) PinReadPoint() (lsn uint64, release func()) {
	c.mu.Lock()
	lsn = c.vdl.Load()
	// The newest pin's time: ReadFloor may leave a read point out only
	// once every transaction pinned there is too old.
	c.pinAt[lsn] = time.Now()
	c.pins[lsn]++
	c.updateMRPLocked()
	c.mu.Unlock()
	var once sync.Once
	return lsn, func() {
		once.Do(func() {
			c.mu.Lock()
			if c.pins[lsn]--; c.pins[lsn] <= 0 {
				delete(c.pins, lsn)
				delete(c.pinAt, lsn)
			}
			c.updateMRPLocked()
			c.mu.Unlock()
		})
	}
}

func (c *Client) updateMRPLocked() {
	lo := c.vdl.Load()
	for l := range c.pins {
		if l < lo {
			lo = l
		}
	}
	if c.floorSet {
		lo = min(lo, c.floor)
	}
	if c.floorHeld {
		// 0 raises nothing at storage: what the previous writer's replicas
		// pinned stays readable until they report.
		lo = 0
	}
	c.mrp.Store(lo)
}

// SegmentSCLs returns, for each segment of pg, the SCL known from acks and
// reads (0: none known yet): the highest reported, or, after the node
// reconnected, its first report since (see noteSCLLocked).
func (c *Client) SegmentSCLs(pg uint32) map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.pgs[pg]
	if !ok {
		return map[string]uint64{}
	}
	pm := p.mem.Load()
	out := make(map[string]uint64, len(pm.members))
	for _, m := range pm.members {
		out[m.NodeID] = p.scl[m.NodeID]
	}
	return out
}

// Close stops shipping and closes the connections. Pending waits fail with
// ErrClosed (or the fencing error). Records not yet durable stay undurable.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.wakeLocked(0, true)
	nodes := make([]*node, 0, len(c.nodes))
	for _, n := range c.nodes {
		nodes = append(nodes, n)
	}
	c.mu.Unlock()
	c.stop()
	c.wg.Wait()
	var errs []error
	for _, n := range nodes {
		if n.conn == nil {
			continue
		}
		if err := n.conn.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// waiter is one goroutine waiting for the VDL to reach lsn.
type waiter struct {
	lsn   uint64
	ch    chan struct{}
	index int
}

type waitHeap []*waiter

func (h waitHeap) Len() int           { return len(h) }
func (h waitHeap) Less(i, j int) bool { return h[i].lsn < h[j].lsn }
func (h waitHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *waitHeap) Push(x any) {
	w := x.(*waiter)
	w.index = len(*h)
	*h = append(*h, w)
}
func (h *waitHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	w.index = -1
	return w
}
