// Package storage is the storage node: it hosts segments of many volumes,
// persists redo in Pebble with group-committed fsyncs, fills holes by
// gossip, materializes pages in the background and serves pages at any LSN.
package storage

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/segment"
)

// Config configures a storage node.
type Config struct {
	ID  string
	AZ  string
	Dir string
	// GossipInterval is how often a segment compares notes with a peer.
	// Default 200ms.
	GossipInterval time.Duration
	// MaterializeInterval is how often the materializer looks for work when
	// idle. Default 50ms.
	MaterializeInterval time.Duration
	// IdleFlushAfter is how long appends must have stopped before the
	// store's memtables are flushed, freeing the logs they keep (see
	// idleFlushDue). Default 5s.
	IdleFlushAfter time.Duration
	// MinFreeBytes is the free disk space below which appends are refused
	// with DISK_FULL, so that the store never runs out of space in the middle
	// of a write. Default 64 MiB.
	MinFreeBytes uint64
	// MemTableBytes sizes Pebble's memtable. Records and page versions
	// live briefly (collected once materialized and read past); the larger
	// the memtable, the more of them are deleted before a flush would write
	// them to a table and compactions rewrite them. Default 64 MiB.
	MemTableBytes uint64
	// RepairRate bounds the bytes per second that the node's hydrations
	// copy, all together; 0: unlimited.
	RepairRate uint64
	// FS is the file system of everything the store writes: Pebble's
	// files, the node's identity and the damaged-store marker. Default
	// vfs.Default; tests run faults in process on errorfs and on in-memory
	// file systems cloned at a crash.
	FS vfs.FS
	// OnCorruption is told of each corruption the node meets (see
	// CorruptionInfo), after the node has logged it and started what
	// repair it can. The node never stops the process itself: the caller
	// decides, from StoreDamaged, whether the process goes on. Called from
	// the goroutine that met the damage; it must not block for long.
	OnCorruption func(CorruptionInfo)
	// ScrubRate bounds the bytes per second the background scrub reads to
	// verify stored records and page versions. Default 4 MiB/s.
	ScrubRate uint64
	// ScrubInterval is the least time between the starts of two scrub
	// passes over the store. Default 1 minute.
	ScrubInterval time.Duration
	Logger        *slog.Logger
}

// Node is a running storage node.
type Node struct {
	cfg Config
	log *slog.Logger
	// fs is the store's file system (see syncCountingFS).
	fs syncCountingFS
	db *pebble.DB

	// mu orders the append path: chain offers and the writes into the open
	// commit group happen together, so groups commit in offer order and an
	// ack never covers a record that is not yet synced.
	mu        sync.Mutex
	segs      map[segKey]*seg
	volEpochs map[uint64]uint64
	// deleted are the volume incarnations dropped here (DropVolumes), by
	// volume id; guarded by mu.
	deleted map[uint64]map[uint64]bool
	// incs is the nonzero incarnation of the segments held of each volume
	// (a node hosts one incarnation of an id; segments of none may be held
	// beside it); guarded by mu.
	incs map[uint64]uint64

	// dropMu is held by each materializer step and by DropVolumes, so that
	// no step writes into a volume after it is dropped.
	dropMu sync.Mutex

	// lastAppend is when an append last stored records (unix nanos), and
	// lastBackground when a materializer or GC step last wrote (materializer
	// goroutine only); flushedAt and emptiedAt, the latest of the two an
	// idle flush, and an emptying of the old logs, last covered (materializer
	// goroutine only). See maybeIdleFlush.
	lastAppend     atomic.Int64
	lastBackground int64
	flushedAt      int64
	emptiedAt      int64
	// hooks let tests stop the node at chosen points; nil otherwise.
	hooks struct {
		// materializeCommit runs in a materializer step, under dropMu,
		// just before its batch commits.
		materializeCommit atomic.Pointer[func(*seg)]
		// dropWaits runs when DropVolumes waits for dropMu.
		dropWaits atomic.Pointer[func()]
		// hydrateServe runs when the node is asked for a copy;
		// hydrateChunk on each chunk a hydration receives, before its CRC
		// is checked; hydrateStored after a chunk is stored.
		hydrateServe  atomic.Pointer[func(*pb.HydrateRequest)]
		hydrateChunk  atomic.Pointer[func(*pb.HydrateChunk)]
		hydrateStored atomic.Pointer[func(*seg, hydrateState)]
	}

	// hydMu guards the copies served to hydrating peers (sources), the
	// hydrations running here (hydrators), and hydClosed, set once Close
	// starts, after which no hydration starts.
	hydMu     sync.Mutex
	sources   map[sourceKey]*hydrateSource
	hydrators map[*seg]bool
	hydClosed bool
	repair    *rateLimiter
	// scrub paces the scrub's reads (Config.ScrubRate).
	scrub *rateLimiter
	// repairs queues the corrupt items met, for repairLoop; repairing
	// (guarded by repairMu) are those queued or under repair, so that
	// every read that meets one does not queue it again.
	repairs   chan corruptItem
	repairMu  sync.Mutex
	repairing map[corruptItem]bool
	// compactions queues the key ranges of dropped volumes for compactLoop.
	compactions chan [2][]byte

	commits *committer
	stats   counters

	// appending counts append requests between arrival and ack, so that
	// background work can yield to them.
	appending atomic.Int64

	peersMu sync.Mutex
	peers   map[string]*grpc.ClientConn
	// holeFound wakes gossip when a writer's append leaves a segment with a
	// hole.
	holeFound chan struct{}

	// failed is set when the store failed under us; from then on the node
	// refuses writes instead of acking what it may not hold.
	failed atomic.Pointer[error]
	// damaged is set once the store is marked damaged (storeDamaged).
	damaged atomic.Bool
	// diskFree is the free space of the data directory's file system, sampled
	// in the background; appends are refused below cfg.MinFreeBytes.
	diskFree atomic.Uint64

	stop   chan struct{}
	wg     sync.WaitGroup
	server *grpc.Server
	closed atomic.Bool
}

type counters struct {
	fsyncs            atomic.Uint64
	fileBytes         atomic.Uint64
	groupCommits      atomic.Uint64
	appendRequests    atomic.Uint64
	recordsAppended   atomic.Uint64
	recordsPulled     atomic.Uint64
	pullsServed       atomic.Uint64
	pagesMaterialized atomic.Uint64
	repairsStarted    atomic.Uint64
	repairsCompleted  atomic.Uint64
	hydratedBytes     atomic.Uint64
	hydrateBadChunks  atomic.Uint64
	hydrateDiskWaits  atomic.Uint64
	scrubbedItems     atomic.Uint64
	scrubbedBytes     atomic.Uint64
	corruptionsFound  atomic.Uint64
	corruptionsFixed  atomic.Uint64

	commitLatency prometheus.Histogram
	groupSize     prometheus.Histogram
}

// Open opens (or creates) the node's store in cfg.Dir and starts its
// background work. Call Serve to answer RPCs.
func Open(cfg Config) (*Node, error) {
	if cfg.ID == "" {
		return nil, errors.New("storage: node id is required")
	}
	if cfg.Dir == "" {
		return nil, errors.New("storage: data directory is required")
	}
	if cfg.GossipInterval <= 0 {
		cfg.GossipInterval = 200 * time.Millisecond
	}
	if cfg.IdleFlushAfter <= 0 {
		cfg.IdleFlushAfter = 5 * time.Second
	}
	if cfg.MaterializeInterval <= 0 {
		cfg.MaterializeInterval = 50 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MinFreeBytes == 0 {
		cfg.MinFreeBytes = 64 << 20
	}
	if cfg.MemTableBytes == 0 {
		cfg.MemTableBytes = 64 << 20
	}
	if cfg.FS == nil {
		cfg.FS = vfs.Default
	}
	if cfg.ScrubRate == 0 {
		cfg.ScrubRate = 4 << 20
	}
	if cfg.ScrubInterval <= 0 {
		cfg.ScrubInterval = time.Minute
	}
	n := &Node{
		cfg:       cfg,
		log:       cfg.Logger.With("node", cfg.ID),
		segs:      map[segKey]*seg{},
		volEpochs: map[uint64]uint64{},
		deleted:   map[uint64]map[uint64]bool{},
		incs:      map[uint64]uint64{},
		peers:     map[string]*grpc.ClientConn{},
		holeFound: make(chan struct{}, 1),
		stop:      make(chan struct{}),

		compactions: make(chan [2][]byte, 64),
		sources:     map[sourceKey]*hydrateSource{},
		hydrators:   map[*seg]bool{},
		repair:      &rateLimiter{rate: float64(cfg.RepairRate)},
		scrub:       &rateLimiter{rate: float64(cfg.ScrubRate)},
		repairs:     make(chan corruptItem, 64),
		repairing:   map[corruptItem]bool{},
	}
	n.stats.commitLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "borealis", Subsystem: "storage", Name: "group_commit_seconds",
		Help:    "Time to write and sync one group commit.",
		Buckets: prometheus.ExponentialBuckets(50e-6, 2, 14),
	})
	n.stats.groupSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "borealis", Subsystem: "storage", Name: "group_commit_requests",
		Help:    "Append requests sharing one group commit.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 10),
	})
	if err := mkdirAllSynced(cfg.FS, cfg.Dir); err != nil {
		return nil, fmt.Errorf("storage: create data directory: %w", err)
	}
	if err := n.checkIdentity(); err != nil {
		return nil, err
	}
	n.fs = syncCountingFS{FS: cfg.FS, syncs: &n.stats.fsyncs, written: &n.stats.fileBytes, logs: newLogFiles()}
	db, err := n.openStore()
	if err != nil {
		return nil, err
	}
	n.db = db
	if err := n.load(); err != nil {
		db.Close()
		if !isCorruption(err) {
			return nil, err
		}
		// What the store says of its segments is damaged: the same as a
		// store Pebble cannot open.
		if err := n.moveStoreAside(err); err != nil {
			return nil, err
		}
		if n.db, err = n.openPebble(); err != nil {
			return nil, err
		}
		n.resetLoaded()
		if err := n.load(); err != nil {
			n.db.Close()
			return nil, err
		}
	}
	n.commits = newCommitter(n)
	n.sampleDiskFree()
	n.wg.Add(7)
	go func() { defer n.wg.Done(); n.scrubLoop() }()
	go func() { defer n.wg.Done(); n.repairLoop() }()
	go func() { defer n.wg.Done(); n.compactLoop() }()
	go func() { defer n.wg.Done(); n.diskFreeLoop() }()
	go func() { defer n.wg.Done(); n.commits.run() }()
	go func() { defer n.wg.Done(); n.materializeLoop() }()
	go func() { defer n.wg.Done(); n.gossipLoop() }()
	for _, s := range n.segments() {
		if s.hydrating.Load() {
			n.startHydration(s)
		}
	}
	return n, nil
}

// checkIdentity refuses to open a directory that belongs to another node:
// two nodes sharing one store would each believe they hold a full segment.
func (n *Node) checkIdentity() error {
	path := filepath.Join(n.cfg.Dir, "node.json")
	type identity struct {
		ID string `json:"id"`
		AZ string `json:"az"`
	}
	b, err := readFile(n.cfg.FS, path)
	if errors.Is(err, os.ErrNotExist) {
		b, _ = json.Marshal(identity{ID: n.cfg.ID, AZ: n.cfg.AZ})
		return writeFileSync(n.cfg.FS, path, b)
	}
	if err != nil {
		return fmt.Errorf("storage: read %s: %w", path, err)
	}
	var id identity
	if err := json.Unmarshal(b, &id); err != nil {
		return fmt.Errorf("storage: %s is corrupt (%v); it names the node that owns this directory", path, err)
	}
	if id.ID != n.cfg.ID || id.AZ != n.cfg.AZ {
		return fmt.Errorf("storage: directory %s belongs to node %s in AZ %s, not %s in AZ %s", n.cfg.Dir, id.ID, id.AZ, n.cfg.ID, n.cfg.AZ)
	}
	return nil
}

// writeFileSync writes path whole, through a synced temporary file renamed
// over it, so that a crash leaves the old content or the new.
func writeFileSync(fs vfs.FS, path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := fs.Create(tmp, vfs.WriteCategoryUnspecified)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := fs.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(fs, filepath.Dir(path))
}

// mkdirAllSynced creates dir and its missing parents, and syncs the parent
// of each directory it created, so that a crash does not lose the entry
// (and all below it, the store included).
func mkdirAllSynced(fs vfs.FS, dir string) error {
	var created []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := fs.Stat(d); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		created = append(created, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, d := range created {
		if parent := filepath.Dir(d); parent != d {
			if err := syncDir(fs, parent); err != nil {
				return err
			}
		}
	}
	return nil
}

func syncDir(fs vfs.FS, dir string) error {
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return err
	}
	return d.Close()
}

func readFile(fs vfs.FS, path string) ([]byte, error) {
	f, err := fs.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// load rebuilds every segment's chain from the store: the persisted SCL, then
// every chain entry above it.
func (n *Node) load() error {
	it, err := n.db.NewIter(&pebble.IterOptions{LowerBound: []byte{famEpoch}, UpperBound: []byte{famEpoch + 1}})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		n.volEpochs[binary.BigEndian.Uint64(it.Key()[1:])] = binary.BigEndian.Uint64(it.Value())
	}
	if err := it.Close(); err != nil {
		return err
	}
	it, err = n.db.NewIter(&pebble.IterOptions{LowerBound: []byte{famDeleted}, UpperBound: []byte{famDeleted + 1}})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		var inc uint64 // a tombstone written before incarnations: x vol
		switch len(k) {
		case 1 + 8:
		case 1 + 8 + 8:
			inc = binary.BigEndian.Uint64(k[9:])
		default:
			continue
		}
		vol := binary.BigEndian.Uint64(k[1:])
		if n.deleted[vol] == nil {
			n.deleted[vol] = map[uint64]bool{}
		}
		n.deleted[vol][inc] = true
	}
	if err := it.Close(); err != nil {
		return err
	}
	it, err = n.db.NewIter(&pebble.IterOptions{LowerBound: []byte{famMeta}, UpperBound: []byte{famMeta + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		vol, pg, sub, ok := parseMetaKey(it.Key())
		if !ok || sub != metaDecl {
			continue
		}
		key := segKey{vol: vol, pg: pg}
		s, err := n.loadSegment(key, it.Value())
		if err != nil {
			return fmt.Errorf("storage: load %s: %w", key, err)
		}
		n.segs[key] = s
		n.noteIncarnation(s)
	}
	return nil
}

func (n *Node) loadSegment(key segKey, declBytes []byte) (*seg, error) {
	var d declRecord
	if err := json.Unmarshal(declBytes, &d); err != nil {
		return nil, fmt.Errorf("%w: declaration: %w", errCorruptMeta, err)
	}
	spec := &pb.SegmentSpec{}
	if err := proto.Unmarshal(d.Spec, spec); err != nil {
		return nil, fmt.Errorf("%w: segment spec: %w", errCorruptMeta, err)
	}
	var scl uint64
	if v, ok, err := n.get(metaSubKey(key.vol, key.pg, metaSCL)); err != nil {
		return nil, err
	} else if ok {
		scl = binary.BigEndian.Uint64(v)
	}
	var ms materState
	if v, ok, err := n.get(metaSubKey(key.vol, key.pg, metaMater)); err != nil {
		return nil, err
	} else if ok {
		if err := json.Unmarshal(v, &ms); err != nil {
			return nil, fmt.Errorf("%w: materializer state: %w", errCorruptMeta, err)
		}
	}
	s := n.newSeg(key, spec, segment.New(segment.State{SCL: scl, Epoch: d.Epoch, Truncations: d.Truncations}))
	s.mat.Store(ms.Materialized)
	s.logFloor.Store(ms.LogFloor)
	s.readPoint.Store(ms.Materialized)
	it, err := n.db.NewIter(&pebble.IterOptions{
		LowerBound: chainKey(key.vol, key.pg, scl+1),
		UpperBound: prefixEnd(segPrefix(famChain, key.vol, key.pg)),
	})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		e, ok := decodeChainEntry(it.Value())
		if !ok {
			return nil, fmt.Errorf("%w: chain entry at LSN %d", errCorruptMeta, lastUint64(it.Key()))
		}
		s.chain.Offer(segment.Entry{LSN: lastUint64(it.Key()), PrevLSN: e.prev, Epoch: e.epoch})
	}
	// Everything in the store was synced before it was acked, and what was
	// not acked but reached the WAL is as good: it is on disk.
	s.durableSCL.Store(s.chain.SCL())
	if v, ok, err := n.get(metaSubKey(key.vol, key.pg, metaVDL)); err != nil {
		return nil, err
	} else if ok {
		s.vdlSeen.Store(binary.BigEndian.Uint64(v))
	}
	if v, ok, err := n.get(metaSubKey(key.vol, key.pg, metaHydrate)); err != nil {
		return nil, err
	} else if ok {
		if err := json.Unmarshal(v, &s.hyd); err != nil {
			return nil, fmt.Errorf("%w: hydration state: %w", errCorruptMeta, err)
		}
		s.hydRecord = true
		s.hydrating.Store(!s.hyd.Done)
		s.hydCopied.Store(s.hyd.Copied)
		s.hydTotal.Store(s.hyd.Total)
	}
	n.noteWant(s)
	return s, nil
}

func (n *Node) newSeg(key segKey, spec *pb.SegmentSpec, chain *segment.Chain) *seg {
	s := &seg{key: key, chain: chain}
	n.setSpec(s, spec)
	return s
}

func (n *Node) setSpec(s *seg, spec *pb.SegmentSpec) {
	s.spec = spec
	s.pages.Store(spec.PagesPerPg)
	s.pageSize.Store(spec.PageSize)
	s.retired = !inSomeSet(spec, n.cfg.ID)
	s.retiredFlag.Store(s.retired)
	s.joining = joiningMembers(spec)
	s.peers = nil
	for _, m := range memberUnion(spec) {
		if m.NodeId != n.cfg.ID {
			s.peers = append(s.peers, m)
		}
	}
}

func (n *Node) get(key []byte) ([]byte, bool, error) {
	v, closer, err := n.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	out := append([]byte(nil), v...)
	closer.Close()
	return out, true, nil
}

func (n *Node) segment(vol uint64, pg uint32) *seg {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.segs[segKey{vol, pg}]
}

func (n *Node) segments() []*seg {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]*seg, 0, len(n.segs))
	for _, s := range n.segs {
		out = append(out, s)
	}
	return out
}

// Close stops background work and closes the store.
func (n *Node) Close() error {
	if !n.closed.CompareAndSwap(false, true) {
		return nil
	}
	n.mu.Lock()
	srv := n.server
	n.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
	n.hydMu.Lock()
	n.hydClosed = true
	n.hydMu.Unlock()
	close(n.stop)
	n.commits.close()
	n.wg.Wait()
	n.closeSources()
	n.peersMu.Lock()
	for _, c := range n.peers {
		c.Close()
	}
	n.peersMu.Unlock()
	return n.db.Close()
}

// ObserveEpochs takes the volumes' current epochs from the control plane: a
// writer with an older one is refused from then on, even on segments it has
// not written yet. Epochs only go up.
func (n *Node) ObserveEpochs(epochs map[uint64]uint64) error {
	n.mu.Lock()
	raised := map[uint64]uint64{}
	for vol, epoch := range epochs {
		// A heartbeat's list may predate the volume's delete.
		if epoch > n.volEpochs[vol] && !n.volumeGone(vol) {
			n.log.Info("volume epoch raised by the control plane", "volume", vol, "from", n.volEpochs[vol], "to", epoch)
			n.volEpochs[vol] = epoch
			raised[vol] = epoch
		}
	}
	if len(raised) == 0 {
		n.mu.Unlock()
		return nil
	}
	// Through the committer, so that it lands in order with the appends'
	// own epoch writes.
	g := n.commits.join(func(b *pebble.Batch, _ *group) {
		for vol, epoch := range raised {
			b.Set(epochKey(vol), u64(epoch), nil)
		}
	})
	n.mu.Unlock()
	<-g.done
	return g.err
}

// fence raises the volume's epoch for a recovering writer and returns once
// it is synced; every append accepted before it is synced too (groups commit
// in order), so an SCL read afterwards counts all an older writer got
// acknowledged here. An epoch older than the node's is refused.
func (n *Node) fence(vol, epoch uint64) error {
	n.mu.Lock()
	if err := n.volumeDeleted(vol); err != nil {
		n.mu.Unlock()
		return err
	}
	if cur := n.volEpochs[vol]; epoch < cur {
		n.mu.Unlock()
		return refuse(pb.Reason_STALE_EPOCH, vol, 0, 0, "volume %d: recovery with epoch %d is older than epoch %d already seen; a newer writer has taken over", vol, epoch, cur)
	}
	raise := epoch > n.volEpochs[vol]
	if raise {
		n.log.Info("volume epoch raised by a recovering writer", "volume", vol, "from", n.volEpochs[vol], "to", epoch)
		n.volEpochs[vol] = epoch
	}
	g := n.commits.join(func(b *pebble.Batch, _ *group) {
		if raise {
			b.Set(epochKey(vol), u64(epoch), nil)
		}
	})
	n.mu.Unlock()
	<-g.done
	return g.err
}

func (n *Node) fail(err error) {
	if n.failed.CompareAndSwap(nil, &err) {
		n.log.Error("storage node stops accepting writes; restart it to recover from what is on disk", "err", err)
	}
}

// failure returns why the node stopped accepting writes, or nil.
func (n *Node) failure() error {
	if p := n.failed.Load(); p != nil {
		return fmt.Errorf("storage node %s stopped accepting writes: %w", n.cfg.ID, *p)
	}
	return nil
}

func (n *Node) sampleDiskFree() {
	u, err := n.cfg.FS.GetDiskUsage(n.cfg.Dir)
	if errors.Is(err, vfs.ErrUnsupported) {
		// A file system that cannot tell (in memory, in tests) is not
		// judged full.
		n.diskFree.Store(math.MaxUint64)
		return
	}
	if err != nil {
		n.log.Warn("cannot read free disk space", "dir", n.cfg.Dir, "err", err)
		return
	}
	n.diskFree.Store(u.AvailBytes)
}

func (n *Node) diskFreeLoop() {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
			n.sampleDiskFree()
		}
	}
}

// DiskUsage reports the bytes the store occupies on disk: Pebble's count,
// with its logs as they are on disk (Pebble counts an old log it keeps to
// recycle as long as it was when it became obsolete, which the node may
// have emptied since; see logFiles).
func (n *Node) DiskUsage() uint64 {
	m := n.db.Metrics()
	logs, _, err := n.fs.logBytes(n.pebbleDir(), func() int { return int(m.WAL.Files) })
	if err != nil {
		return m.DiskSpaceUsage()
	}
	return m.DiskSpaceUsage() - m.WAL.PhysicalSize - m.WAL.ObsoletePhysicalSize + logs
}

// TableBytes reports the bytes of the store's sorted tables: the data itself,
// without the write-ahead log files that Pebble keeps for reuse.
func (n *Node) TableBytes() uint64 {
	m := n.db.Metrics()
	return m.Table.Local.LiveSize + m.BlobFiles.Local.LiveSize
}

// WALBytes reports the bytes of the live write-ahead log and of the old log
// files Pebble keeps to recycle, as they are on disk. Pebble's physical size
// of the live logs counts a log it created (rather than recycled) as 0 until
// the log is closed, so live is the larger of it and the bytes written to
// the live logs.
func (n *Node) WALBytes() (live, recyclable uint64) {
	m := n.db.Metrics()
	live = liveWAL(m)
	if _, old, err := n.fs.logBytes(n.pebbleDir(), func() int { return int(m.WAL.Files) }); err == nil {
		return live, old
	}
	return live, m.WAL.ObsoletePhysicalSize
}

// liveWALBytes is WALBytes' live alone, without listing the logs.
func (n *Node) liveWALBytes() uint64 { return liveWAL(n.db.Metrics()) }

func liveWAL(m *pebble.Metrics) uint64 { return max(m.WAL.PhysicalSize, m.WAL.Size) }

// emptyObsoleteLogs truncates the logs Pebble keeps to recycle (see
// logFiles), and returns the bytes it freed.
func (n *Node) emptyObsoleteLogs() (uint64, error) {
	return n.fs.emptyObsolete(n.pebbleDir(), func() int { return int(n.db.Metrics().WAL.Files) })
}

func (n *Node) pebbleDir() string { return filepath.Join(n.cfg.Dir, "pebble") }

// Compact forces a full compaction, so that deleted data leaves the disk;
// used by tests that check disk use follows live data.
func (n *Node) Compact() error {
	if err := n.db.Flush(); err != nil {
		return err
	}
	return n.db.Compact(context.Background(), []byte{0}, []byte{0xff}, true)
}

type pebbleLogger struct {
	log *slog.Logger
	n   *Node
}

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, plainErrors(args)...), "component", "pebble")
}

// Fatalf is Pebble stopping on an error it cannot go on from (a failed
// write of its manifest, a broken invariant); its code after the call
// assumes the call does not return. The node does not stop the process
// (see Config.OnCorruption): it marks the store damaged, refuses writes,
// tells the caller, and parks the calling goroutine for good rather than
// let Pebble go on from a state it gave up on.
func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, plainErrors(args)...)
	l.log.Error(msg, "component", "pebble")
	if l.n != nil {
		l.n.storeDamaged(CorruptionInfo{Item: StoreStopped, Err: errors.New(msg)})
	}
	select {}
}

// plainErrors turns errors into their messages: pebble formats with %+v,
// which prints a stack trace for every wrapped cause and buries a
// corruption report (file, block, checksum) under a hundred lines.
func plainErrors(args []any) []any {
	out := make([]any, len(args))
	for i, a := range args {
		if err, ok := a.(error); ok {
			a = err.Error()
		}
		out[i] = a
	}
	return out
}

// Flow-control windows of the gRPC server. Static windows turn off gRPC's
// BDP estimator, which otherwise answers nearly every small Append request
// with a PING and a connection WINDOW_UPDATE (and the peer with a PING ack):
// extra writes, reads and wake-ups on both ends on the commit path. The
// windows are large enough for a full Append request (the writer caps one at
// 3 MiB of records) and for several streams at once.
const (
	streamWindowBytes = 8 << 20
	connWindowBytes   = 32 << 20
)

func serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		grpc.MaxSendMsgSize(MaxMessageBytes),
		// WaitForHandlers: Close must not close the store under a running RPC.
		grpc.WaitForHandlers(true),
		grpc.StaticStreamWindowSize(streamWindowBytes),
		grpc.StaticConnWindowSize(connWindowBytes),
	}
}
