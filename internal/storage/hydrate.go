package storage

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/segment"
)

// Hydration: a segment that holds nothing of its PG (a new member, or one
// whose node came back empty) copies the PG from a peer that holds it, the
// source:
//
//  1. every page as of one LSN, the source's materialized point (base),
//     read from one view of the source's store; the source keeps that
//     view, and its log above the copy's tail, while the copy lasts, so
//     that a copy interrupted on either side resumes where it stopped;
//  2. the chain state at the base (installChain): SCL is the PG's last
//     record at or below it (the tail), materialized to it, which is only
//     true once every page is in;
//  3. the log after the tail, pulled from the source (catchUp), then
//     ordinary gossip.
//
// Until it is done the segment counts toward no quorum: its SCL covers
// only what it holds complete (nothing before step 2), it refuses reads,
// and neither the materializer nor gossip touch it. The writer's records
// that reach it meanwhile are kept, held above the SCL.

const (
	// hydrateChunkBytes bounds one chunk's page bytes by default.
	hydrateChunkBytes = 1 << 20
	// hydrateSourceIdle is how long a source keeps a copy's view with no
	// stream reading it, for the copier to resume after a crash.
	hydrateSourceIdle = 2 * time.Minute
	// hydrateProgressEvery is how often a copy logs its progress.
	hydrateProgressEvery = 5 * time.Second
	// hydrateRetryMax bounds the wait between failed attempts.
	hydrateRetryMax = 2 * time.Second
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// hydrateAskChunkBytes is the chunk size hydrations ask sources for (0:
// the source's default); tests make it small for many chunks.
var hydrateAskChunkBytes uint32

// hydrateState is a hydrating segment's persisted progress (metaHydrate).
// The key stays once the hydration is done (Done), so that a declaration
// with hydrate set, which the control plane repeats until it sees the
// copy complete, does not start another one.
type hydrateState struct {
	Source      string               `json:"source,omitempty"`
	Base        uint64               `json:"base,omitempty"`
	Tail        uint64               `json:"tail,omitempty"`
	Epoch       uint64               `json:"epoch,omitempty"`
	Truncations []segment.Truncation `json:"truncations,omitempty"`
	// Cursor: every page up to it is copied.
	Cursor    uint64 `json:"cursor,omitempty"`
	PagesDone bool   `json:"pages_done,omitempty"`
	// Recopy: the pages held are of a copy whose log no peer keeps; a new
	// copy replaces them.
	Recopy    bool   `json:"recopy,omitempty"`
	Installed bool   `json:"installed,omitempty"`
	Done      bool   `json:"done,omitempty"`
	Copied    uint64 `json:"copied,omitempty"`
	Total     uint64 `json:"total,omitempty"`
}

func (st hydrateState) encode() []byte {
	b, _ := json.Marshal(st)
	return b
}

// errBadChunk: a chunk failed its CRC; it is fetched again at once.
var errBadChunk = errors.New("hydration chunk failed its CRC32C")

// errLogCollected: the peers have collected the log after the pages
// copied (a source that restarted forgot its copy, and its pin on the
// log); a new copy at a newer base is needed.
var errLogCollected = errors.New("the peers have collected the log after the copied pages")

// hydrateChunkCRC is the CRC32C of a chunk's content: every field but the
// CRC, fixed-width big-endian, each page as number, LSN, length, data.
func hydrateChunkCRC(c *pb.HydrateChunk) uint32 {
	b := make([]byte, 0, 64)
	b = binary.BigEndian.AppendUint64(b, c.BaseLsn)
	b = binary.BigEndian.AppendUint64(b, c.TailLsn)
	b = binary.BigEndian.AppendUint64(b, c.Cursor)
	if c.Done {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = binary.BigEndian.AppendUint64(b, c.BytesTotal)
	b = binary.BigEndian.AppendUint64(b, c.Epoch)
	for _, t := range c.Truncations {
		b = binary.BigEndian.AppendUint64(b, t.After)
		b = binary.BigEndian.AppendUint64(b, t.Through)
		b = binary.BigEndian.AppendUint64(b, t.Epoch)
		b = binary.BigEndian.AppendUint64(b, t.Tail)
	}
	crc := crc32.Checksum(b, castagnoli)
	var h [24]byte
	for _, p := range c.Pages {
		binary.BigEndian.PutUint64(h[:], p.Page)
		binary.BigEndian.PutUint64(h[8:], p.Lsn)
		binary.BigEndian.PutUint64(h[16:], uint64(len(p.Data)))
		crc = crc32.Update(crc, castagnoli, h[:])
		crc = crc32.Update(crc, castagnoli, p.Data)
	}
	return crc
}

// rateLimiter paces the bytes of all of a node's hydrations together.
type rateLimiter struct {
	mu   sync.Mutex
	rate float64 // bytes per second; 0: unlimited
	next time.Time
}

// wait takes n bytes, waiting while the bytes taken before are ahead of
// the rate. It returns false if stop closed first.
func (l *rateLimiter) wait(stop <-chan struct{}, n int) bool {
	if l.rate <= 0 {
		return true
	}
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	at := l.next
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	l.mu.Unlock()
	d := time.Until(at)
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}

// Source side.

type sourceKey struct {
	seg  segKey
	node string
}

// hydrateSource is one copy this node serves: the view it reads from and
// what the copier needs to know of it.
type hydrateSource struct {
	snap                     *pebble.Snapshot
	base, tail, epoch, total uint64
	truncs                   []*pb.Truncation
	users                    int
	closed                   bool
	lastUsed                 time.Time
}

// Hydrate serves a copy of a PG's pages.
func (r *rpcServer) Hydrate(req *pb.HydrateRequest, stream pb.Storage_HydrateServer) error {
	n := r.n
	if h := n.hooks.hydrateServe.Load(); h != nil {
		(*h)(req)
	}
	s := n.segment(req.Volume, req.Pg)
	if s == nil {
		return toStatus(n.volumeDeletedOrNotHosted(req.Volume, req.Pg))
	}
	if req.FromNode == "" {
		return toStatus(refuse(pb.Reason_BAD_REQUEST, req.Volume, req.Pg, 0, "a hydration request must name the node that copies (from_node)"))
	}
	key := sourceKey{s.key, req.FromNode}
	if req.Release {
		n.releaseSource(key)
		return nil
	}
	if s.hydrating.Load() {
		return toStatus(refuse(pb.Reason_SEGMENT_BEHIND, req.Volume, req.Pg, 0, "node %s: segment of volume %d PG %d is hydrating itself and cannot be copied from", n.cfg.ID, req.Volume, req.Pg))
	}
	src, err := n.sourceFor(s, key, req.BaseLsn)
	if err != nil {
		return toStatus(err)
	}
	defer n.putSource(src)
	after := req.AfterPage
	if req.BaseLsn != src.base {
		// Another copy than the one asked for: it starts over.
		after = 0
	}
	limit := int(req.MaxChunkBytes)
	if limit <= 0 || limit > MaxMessageBytes/2 {
		limit = hydrateChunkBytes
	}
	vol, pg := s.key.vol, s.key.pg
	it, err := src.snap.NewIter(&pebble.IterOptions{
		LowerBound: pagePrefix(famVersion, vol, pg, after+1),
		UpperBound: prefixEnd(segPrefix(famVersion, vol, pg)),
	})
	if err != nil {
		return toStatus(err)
	}
	defer it.Close()
	chunk := &pb.HydrateChunk{Cursor: after}
	size := 0
	send := func(done bool) error {
		chunk.BaseLsn, chunk.TailLsn, chunk.BytesTotal, chunk.Epoch, chunk.Truncations = src.base, src.tail, src.total, src.epoch, src.truncs
		chunk.Done = done
		chunk.Crc32C = hydrateChunkCRC(chunk)
		n.touchSource(src)
		if err := stream.Send(chunk); err != nil {
			return err
		}
		chunk, size = &pb.HydrateChunk{Cursor: chunk.Cursor}, 0
		return nil
	}
	var cur *pb.HydratePage
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		page, lsn := binary.BigEndian.Uint64(k[13:21]), lastUint64(k)
		if lsn > src.base {
			continue
		}
		if cur != nil && cur.Page != page {
			chunk.Pages = append(chunk.Pages, cur)
			chunk.Cursor = cur.Page
			size += len(cur.Data)
			if size >= limit {
				if err := send(false); err != nil {
					return err
				}
			}
		}
		// Versions of a page come oldest first: the last one at or below
		// the base is the page as of it.
		img, err := decodeVersion(k, it.Value(), int(s.pageSize.Load()))
		if err != nil {
			// Not sent: the copier takes another source.
			ce := &errCorrupt{corruptItem{item: CorruptPageVersion, seg: s.key, page: page, lsn: lsn}, err}
			n.metCorruption(ce)
			return toStatus(refuseCorrupt(n, s, ce))
		}
		cur = &pb.HydratePage{Page: page, Lsn: lsn, Data: append([]byte(nil), img...)}
	}
	if err := it.Error(); err != nil {
		return toStatus(err)
	}
	if cur != nil {
		chunk.Pages = append(chunk.Pages, cur)
		chunk.Cursor = cur.Page
	}
	return send(true)
}

// sourceFor returns the copy of s to serve to key's node: the one begun
// before at base if the node still keeps it, else a new one from a view
// taken now, at the segment's materialized point.
func (n *Node) sourceFor(s *seg, key sourceKey, base uint64) (*hydrateSource, error) {
	n.hydMu.Lock()
	if src := n.sources[key]; src != nil && base != 0 && src.base == base {
		src.users++
		src.lastUsed = time.Now()
		n.hydMu.Unlock()
		return src, nil
	}
	n.hydMu.Unlock()
	// Under dropMu no materializer or GC step is half done: the view holds
	// every version up to the materialized point and none above it, and
	// the copy is registered (its pin on the log, see hydrationPins)
	// before a GC step can pass the base. dropMu comes before hydMu, as in
	// collectStep.
	n.dropMu.Lock()
	if err := n.droppedSegment(s); err != nil {
		n.dropMu.Unlock()
		return nil, err
	}
	src := &hydrateSource{snap: n.db.NewSnapshot(), base: s.mat.Load(), users: 1, lastUsed: time.Now()}
	n.hydMu.Lock()
	if old := n.sources[key]; old != nil {
		n.closeSourceLocked(key, old)
	}
	n.sources[key] = src
	n.hydMu.Unlock()
	n.dropMu.Unlock()
	n.mu.Lock()
	st := s.chain.State()
	n.mu.Unlock()
	src.epoch, src.truncs = st.Epoch, TruncationsToPB(st.Truncations)
	// Every record up to the base is in a page version, so the newest
	// version is the PG's last record at or below it.
	vol, pg := s.key.vol, s.key.pg
	it, err := src.snap.NewIter(&pebble.IterOptions{LowerBound: segPrefix(famVersion, vol, pg), UpperBound: prefixEnd(segPrefix(famVersion, vol, pg))})
	if err != nil {
		n.putSource(src)
		return nil, err
	}
	var pages, last uint64
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if lsn := lastUint64(k); lsn <= src.base {
			if p := binary.BigEndian.Uint64(k[13:21]); p != last || pages == 0 {
				pages++
				last = p
			}
			src.tail = max(src.tail, lsn)
		}
	}
	if err := it.Close(); err != nil {
		n.putSource(src)
		return nil, err
	}
	src.total = pages * uint64(s.pageSize.Load())
	n.log.Info("serving a hydration", "segment", s.key.String(), "to", key.node, "base_lsn", src.base, "tail_lsn", src.tail, "pages", pages, "bytes", src.total)
	return src, nil
}

func (n *Node) touchSource(src *hydrateSource) {
	n.hydMu.Lock()
	src.lastUsed = time.Now()
	n.hydMu.Unlock()
}

func (n *Node) putSource(src *hydrateSource) {
	n.hydMu.Lock()
	defer n.hydMu.Unlock()
	src.users--
	src.lastUsed = time.Now()
	if src.closed && src.users == 0 {
		src.snap.Close()
	}
}

// closeSourceLocked forgets a copy; its view closes once no stream reads
// it. Called under hydMu.
func (n *Node) closeSourceLocked(key sourceKey, src *hydrateSource) {
	if n.sources[key] == src {
		delete(n.sources, key)
	}
	if src.closed {
		return
	}
	src.closed = true
	if src.users == 0 {
		src.snap.Close()
	}
}

func (n *Node) releaseSource(key sourceKey) {
	n.hydMu.Lock()
	defer n.hydMu.Unlock()
	if src := n.sources[key]; src != nil {
		n.closeSourceLocked(key, src)
		n.log.Info("hydration served", "segment", key.seg.String(), "to", key.node)
	}
}

// expireSources forgets the copies no stream has read for
// hydrateSourceIdle: their copier died or copies from another source.
func (n *Node) expireSources(now time.Time) {
	n.hydMu.Lock()
	defer n.hydMu.Unlock()
	for key, src := range n.sources {
		if src.users == 0 && now.Sub(src.lastUsed) > hydrateSourceIdle {
			n.closeSourceLocked(key, src)
			n.log.Info("forgot an idle hydration", "segment", key.seg.String(), "to", key.node)
		}
	}
}

// closeSources closes every copy's view, once no RPC runs.
func (n *Node) closeSources() {
	n.hydMu.Lock()
	defer n.hydMu.Unlock()
	for key, src := range n.sources {
		n.closeSourceLocked(key, src)
	}
}

// hydrationPins are the bases of the copies served of s: the copiers pull
// the log after them next, so it is kept (the PG has no record between a
// copy's tail and its base).
func (n *Node) hydrationPins(s *seg) []uint64 {
	n.hydMu.Lock()
	defer n.hydMu.Unlock()
	var out []uint64
	for key, src := range n.sources {
		if key.seg == s.key {
			out = append(out, src.base)
		}
	}
	return out
}

// touchCopy notes that node still works on its copy of s (it pulls the
// log after the copy's pages), so that the copy, and its pin on the log,
// does not expire.
func (n *Node) touchCopy(s *seg, node string) {
	n.hydMu.Lock()
	defer n.hydMu.Unlock()
	if src := n.sources[sourceKey{s.key, node}]; src != nil {
		src.lastUsed = time.Now()
	}
}

// Copier side.

// hydrationDue reports whether a declaration with hydrate set starts a
// hydration of s: it has never hydrated, and holds nothing complete (a
// segment with data is a member that needs no copy; one created empty by
// a writer's append after its node came back empty needs one). Called
// under Node.mu.
func (n *Node) hydrationDue(s *seg) bool {
	return !s.hydRecord && !s.hydrating.Load() && !s.retired && s.chain.SCL() == 0 && s.mat.Load() == 0
}

// beginHydration marks s hydrating and returns the write that persists
// it, to be synced before the hydration starts. Called under Node.mu.
func (n *Node) beginHydration(s *seg) (func(*pebble.Batch), error) {
	if err := n.droppedSegment(s); err != nil {
		return nil, err
	}
	s.hydRecord = true
	s.hydrating.Store(true)
	s.hyd = hydrateState{}
	n.stats.repairsStarted.Add(1)
	n.log.Info("segment hydrates from a peer", "segment", s.key.String())
	key, raw := metaSubKey(s.key.vol, s.key.pg, metaHydrate), s.hyd.encode()
	return func(b *pebble.Batch) { b.Set(key, raw, nil) }, nil
}

// startHydration runs s's hydration in the background, unless it runs
// already or the node is closing.
func (n *Node) startHydration(s *seg) {
	n.hydMu.Lock()
	defer n.hydMu.Unlock()
	if n.hydClosed || n.hydrators[s] {
		return
	}
	n.hydrators[s] = true
	n.wg.Add(1)
	go n.runHydration(s)
}

func (n *Node) stopping() bool {
	select {
	case <-n.stop:
		return true
	default:
		return false
	}
}

func (n *Node) runHydration(s *seg) {
	defer n.wg.Done()
	finished := false
	defer func() {
		n.hydMu.Lock()
		delete(n.hydrators, s)
		n.hydMu.Unlock()
		// A new hydration begun (rehydrate) while this one was ending
		// found it running and did not start; it starts now.
		if finished && s.hydrating.Load() {
			n.startHydration(s)
		}
	}()
	wait := 50 * time.Millisecond
	var warned time.Time
	// A retired segment (its change rolled back) copies nothing more.
	for !n.stopping() && !s.dropped.Load() && !s.retiredFlag.Load() {
		err := n.hydrateStep(s)
		if err == nil {
			finished = true
			return
		}
		if n.stopping() || s.dropped.Load() {
			return
		}
		if errors.Is(err, errBadChunk) {
			continue
		}
		// Once every half minute: a source may stay unavailable for long.
		level := slog.LevelDebug
		if time.Since(warned) >= 30*time.Second {
			level, warned = slog.LevelWarn, time.Now()
		}
		n.log.Log(context.Background(), level, "hydration attempt failed; trying again", "segment", s.key.String(), "err", err)
		select {
		case <-n.stop:
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, hydrateRetryMax)
	}
}

// hydrateStep takes s's hydration as far as it goes: the pages, the chain
// state, the log after it.
func (n *Node) hydrateStep(s *seg) error {
	if !s.hyd.PagesDone {
		if err := n.copyPages(s); err != nil {
			return err
		}
	}
	if !s.hyd.Installed {
		if err := n.installChain(s); err != nil {
			return err
		}
	}
	if err := n.catchUp(s); err != nil {
		if errors.Is(err, errLogCollected) {
			return n.recopy(s, err)
		}
		return err
	}
	return n.finishHydration(s)
}

// recopy starts a new copy of the pages, at a newer base than the one
// installed: the SCL only goes up, from the installed tail to the new one,
// and the segment stays out of quorums and reads meanwhile.
func (n *Node) recopy(s *seg, why error) error {
	st := hydrateState{Source: s.hyd.Source, Recopy: true}
	n.dropMu.Lock()
	err := n.droppedSegment(s)
	if err == nil {
		err = n.db.Set(metaSubKey(s.key.vol, s.key.pg, metaHydrate), st.encode(), pebble.NoSync)
	}
	n.dropMu.Unlock()
	if err != nil {
		return err
	}
	n.log.Warn("hydration copies the pages again", "segment", s.key.String(), "scl", s.durableSCL.Load(), "reason", why)
	s.hyd = st
	s.hydCopied.Store(0)
	s.hydRate.Store(0)
	return why
}

// sourceCandidates are the peers of s that hold the PG and are not
// hydrating, the most complete first, prefer first if it is one.
func (n *Node) sourceCandidates(s *seg, prefer string) []*pb.Member {
	n.mu.Lock()
	peers := slices.Clone(s.peers)
	n.mu.Unlock()
	type cand struct {
		m   *pb.Member
		scl uint64
	}
	var cs []cand
	for _, p := range peers {
		conn, err := n.peerConn(p.Addr)
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := pb.NewStorageClient(conn).SegmentSCLs(ctx, &pb.SegmentSCLsRequest{Volume: s.key.vol})
		cancel()
		if err != nil {
			continue
		}
		for _, h := range resp.Segments {
			if h.Pg == s.key.pg && !h.Hydrating {
				cs = append(cs, cand{p, h.Scl})
			}
		}
	}
	slices.SortStableFunc(cs, func(a, b cand) int {
		if (a.m.NodeId == prefer) != (b.m.NodeId == prefer) {
			if a.m.NodeId == prefer {
				return -1
			}
			return 1
		}
		return cmp.Compare(b.scl, a.scl)
	})
	out := make([]*pb.Member, len(cs))
	for i, c := range cs {
		out[i] = c.m
	}
	return out
}

// progress logs a copy's progress every hydrateProgressEvery.
type progress struct {
	start  time.Time
	from   uint64
	logged time.Time
}

// note keeps the copy's rate on s (for SegmentInfo) after each chunk, and
// logs a progress line every hydrateProgressEvery, and when forced.
func (p *progress) note(n *Node, s *seg, copied, total uint64, force bool) {
	now := time.Now()
	rate, eta, ok := HydrationPace(copied-p.from, total-min(total, p.from), now.Sub(p.start))
	s.hydRate.Store(math.Float64bits(rate))
	if !force && now.Sub(p.logged) < hydrateProgressEvery {
		return
	}
	p.logged = now
	etaText := "unknown"
	if ok {
		etaText = eta.Round(time.Second).String()
	}
	n.log.Info("hydration progress", "segment", s.key.String(), "source", s.hyd.Source, "bytes_copied", copied, "bytes_total", total,
		"rate_bytes_per_second", int64(rate), "eta", etaText)
}

// HydrationPace is a copy's rate, copied bytes of total over elapsed, and
// the time left at that rate; ok is false while it cannot be told (nothing
// copied yet, no total, no time).
func HydrationPace(copied, total uint64, elapsed time.Duration) (rate float64, eta time.Duration, ok bool) {
	if copied == 0 || total == 0 || elapsed <= 0 {
		return 0, 0, false
	}
	rate = float64(copied) / elapsed.Seconds()
	left := float64(total) - float64(copied)
	if left < 0 {
		left = 0
	}
	return rate, time.Duration(left / rate * float64(time.Second)), true
}

// copyPages copies every page as of the source's base, chunk by chunk,
// each stored with the cursor after it, so that a copy resumes after the
// last chunk stored.
func (n *Node) copyPages(s *seg) error {
	cands := n.sourceCandidates(s, s.hyd.Source)
	if len(cands) == 0 {
		return fmt.Errorf("no peer of %s holds the PG and is not hydrating itself", s.key)
	}
	var errs []error
	for _, src := range cands {
		err := n.copyPagesFrom(s, src)
		if err == nil || errors.Is(err, errBadChunk) || n.stopping() {
			return err
		}
		errs = append(errs, fmt.Errorf("from %s: %w", src.NodeId, err))
	}
	return errors.Join(errs...)
}

func (n *Node) copyPagesFrom(s *seg, src *pb.Member) error {
	conn, err := n.peerConn(src.Addr)
	if err != nil {
		return err
	}
	req := &pb.HydrateRequest{Volume: s.key.vol, Pg: s.key.pg, FromNode: n.cfg.ID, MaxChunkBytes: hydrateAskChunkBytes}
	if s.hyd.Source == src.NodeId && s.hyd.Base != 0 {
		req.BaseLsn, req.AfterPage = s.hyd.Base, s.hyd.Cursor
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-n.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	stream, err := pb.NewStorageClient(conn).Hydrate(ctx, req)
	if err != nil {
		return err
	}
	prog := &progress{start: time.Now(), from: s.hyd.Copied, logged: time.Now()}
	first := true
	for {
		if n.stopping() {
			return errors.New("node is closing")
		}
		c, err := stream.Recv()
		if err == io.EOF {
			return fmt.Errorf("source %s ended the copy before its last page", src.NodeId)
		}
		if err != nil {
			return err
		}
		if h := n.hooks.hydrateChunk.Load(); h != nil {
			(*h)(c)
		}
		if got := hydrateChunkCRC(c); got != c.Crc32C {
			n.stats.hydrateBadChunks.Add(1)
			n.log.Warn("hydration chunk refused: its CRC32C does not match; fetching it again", "segment", s.key.String(), "source", src.NodeId,
				"after_page", s.hyd.Cursor, "crc", got, "want", c.Crc32C)
			return errBadChunk
		}
		st := s.hyd
		wipe := false
		if first && (req.BaseLsn == 0 || c.BaseLsn != req.BaseLsn) {
			// A new copy: what an earlier one stored is of another base.
			wipe = st.Copied > 0 || st.Cursor > 0 || st.Recopy
			st = hydrateState{Source: src.NodeId, Base: c.BaseLsn, Tail: c.TailLsn, Epoch: c.Epoch, Truncations: TruncationsFromPB(c.Truncations), Total: c.BytesTotal}
			n.log.Info("hydration copies pages", "segment", s.key.String(), "source", src.NodeId, "base_lsn", c.BaseLsn, "tail_lsn", c.TailLsn, "bytes_total", c.BytesTotal, "restarted", wipe)
			prog.from = 0
		}
		first = false
		bytes := 0
		for _, p := range c.Pages {
			bytes += len(p.Data)
		}
		if !n.waitDiskRoom(s, bytes) || !n.repair.wait(n.stop, bytes) {
			return errors.New("node is closing")
		}
		st.Cursor = c.Cursor
		st.Copied += uint64(bytes)
		st.PagesDone = c.Done
		if err := n.storeChunk(s, c, st, wipe); err != nil {
			return err
		}
		s.hyd = st
		s.hydCopied.Store(st.Copied)
		s.hydTotal.Store(st.Total)
		n.stats.hydratedBytes.Add(uint64(bytes))
		prog.note(n, s, st.Copied, st.Total, c.Done)
		if h := n.hooks.hydrateStored.Load(); h != nil {
			(*h)(s, st)
		}
		if c.Done {
			return nil
		}
	}
}

// hydrationRoom says whether a chunk of n bytes may be stored with free
// bytes left on the disk: a hydration leaves twice the reserve that appends
// are refused below (reserve), so that copying a PG onto a filling disk
// never costs the node the writes of the PGs it serves.
func hydrationRoom(free, reserve, n uint64) bool {
	return free >= 2*reserve && free-2*reserve >= n
}

// waitDiskRoom waits until the disk has room for a chunk of n bytes (see
// hydrationRoom), warning every half minute meanwhile. It returns false if
// the node closes first.
func (n *Node) waitDiskRoom(s *seg, bytes int) bool {
	var warned time.Time
	for !hydrationRoom(n.diskFree.Load(), n.cfg.MinFreeBytes, uint64(bytes)) {
		n.stats.hydrateDiskWaits.Add(1)
		if time.Since(warned) >= 30*time.Second {
			warned = time.Now()
			n.log.Warn("hydration paused: the disk is nearly full; it goes on once there is room (free space, or a larger disk)",
				"segment", s.key.String(), "free_bytes", n.diskFree.Load(), "kept_free_bytes", 2*n.cfg.MinFreeBytes, "chunk_bytes", bytes)
		}
		select {
		case <-n.stop:
			return false
		case <-time.After(250 * time.Millisecond):
		}
	}
	return true
}

// storeChunk writes a chunk's pages and the progress after it in one
// batch, unsynced: the chain state's synced write (installChain) covers
// them, and a crash before it loses at most progress to copy again.
func (n *Node) storeChunk(s *seg, c *pb.HydrateChunk, st hydrateState, wipe bool) error {
	n.dropMu.Lock()
	defer n.dropMu.Unlock()
	if err := n.droppedSegment(s); err != nil {
		return err
	}
	vol, pg := s.key.vol, s.key.pg
	b := n.db.NewBatch()
	defer b.Close()
	if wipe {
		b.DeleteRange(segPrefix(famVersion, vol, pg), prefixEnd(segPrefix(famVersion, vol, pg)), nil)
	}
	for _, p := range c.Pages {
		if !s.holdsPage(p.Page) || len(p.Data) != int(s.pageSize.Load()) || p.Lsn > c.BaseLsn {
			return fmt.Errorf("source sent page %d at LSN %d (%d bytes), which is not a page of %s as of LSN %d", p.Page, p.Lsn, len(p.Data), s.key, c.BaseLsn)
		}
		key := pageKey(famVersion, vol, pg, p.Page, p.Lsn)
		b.Set(key, encodeVersion(key, p.Data), nil)
	}
	b.Set(metaSubKey(vol, pg, metaHydrate), st.encode(), nil)
	return b.Commit(pebble.NoSync)
}

// installChain makes s's chain continue from the copy's tail: SCL the
// tail (or what the chain had, if higher), materialized to it, the
// source's truncations known. The records held above are offered again;
// those the new state refuses are deleted. Node.mu is held throughout, and
// the open commit groups are synced first, so that the store holds every
// record the chain does.
func (n *Node) installChain(s *seg) error {
	st := s.hyd
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.droppedSegment(s); err != nil {
		return err
	}
	flush := n.commits.join(func(*pebble.Batch, *group) {})
	<-flush.done
	if flush.err != nil {
		return flush.err
	}
	old := s.chain.State()
	state := segment.State{SCL: max(st.Tail, old.SCL), Epoch: max(old.Epoch, st.Epoch), Truncations: old.Truncations}
	for _, t := range st.Truncations {
		if !slices.ContainsFunc(state.Truncations, func(o segment.Truncation) bool { return o.Epoch == t.Epoch }) {
			state.Truncations = append(state.Truncations, t)
			state.Epoch = max(state.Epoch, t.Epoch)
		}
	}
	slices.SortStableFunc(state.Truncations, func(a, b segment.Truncation) int { return cmp.Compare(a.Epoch, b.Epoch) })
	chain := segment.New(state)
	vol, pg := s.key.vol, s.key.pg
	it, err := n.db.NewIter(&pebble.IterOptions{LowerBound: chainKey(vol, pg, 0), UpperBound: prefixEnd(segPrefix(famChain, vol, pg))})
	if err != nil {
		return err
	}
	var deletes [][]byte
	for it.First(); it.Valid(); it.Next() {
		lsn := lastUint64(it.Key())
		e, ok := decodeChainEntry(it.Value())
		if !ok {
			it.Close()
			return errCorruptChain(s, lsn)
		}
		// The pages hold every record up to the tail; the chain summarizes
		// those up to its SCL, and must take those above.
		if lsn > st.Tail && (lsn <= state.SCL || chain.Offer(segment.Entry{LSN: lsn, PrevLSN: e.prev, Epoch: e.epoch}) == segment.Accepted) {
			continue
		}
		deletes = append(deletes, chainKey(vol, pg, lsn), pageKey(famRecord, vol, pg, e.page, lsn))
	}
	if err := it.Close(); err != nil {
		return err
	}
	decl, err := encodeDecl(s.spec, chain)
	if err != nil {
		return err
	}
	st.Installed = true
	mater, _ := json.Marshal(materState{Materialized: st.Tail})
	hyd := st.encode()
	scl := chain.SCL()
	g := n.commits.join(func(b *pebble.Batch, g *group) {
		for _, k := range deletes {
			b.Delete(k, nil)
		}
		b.Set(metaSubKey(vol, pg, metaDecl), decl, nil)
		b.Set(metaSubKey(vol, pg, metaMater), mater, nil)
		b.Set(metaSubKey(vol, pg, metaHydrate), hyd, nil)
		g.scls[s] = scl
	})
	<-g.done
	if g.err != nil {
		return g.err
	}
	s.chain = chain
	s.mat.Store(st.Tail)
	s.logFloor.Store(0)
	raise(&s.readPoint, st.Tail)
	s.durableSCL.Store(scl)
	s.hyd = st
	n.noteWant(s)
	n.log.Info("hydration installed the copied pages", "segment", s.key.String(), "source", st.Source, "base_lsn", st.Base, "tail_lsn", st.Tail,
		"scl", scl, "records_dropped", len(deletes)/2)
	return nil
}

// catchUp pulls the log after the tail, from the source first, until the
// segment is as complete as the peer it pulls from.
func (n *Node) catchUp(s *seg) error {
	n.mu.Lock()
	peers := slices.Clone(s.peers)
	n.mu.Unlock()
	slices.SortStableFunc(peers, func(a, b *pb.Member) int {
		if (a.NodeId == s.hyd.Source) == (b.NodeId == s.hyd.Source) {
			return 0
		}
		if a.NodeId == s.hyd.Source {
			return -1
		}
		return 1
	})
	var errs []error
	collected := 0
	for _, p := range peers {
		for {
			before := s.durableSCL.Load()
			if err := n.pullFrom(s, p); err != nil {
				errs = append(errs, fmt.Errorf("from %s: %w", p.NodeId, err))
				break
			}
			if n.stopping() {
				return errors.New("node is closing")
			}
			var theirs uint64
			known := false
			if m := s.peerSCLs.Load(); m != nil {
				theirs, known = (*m)[p.NodeId]
			}
			if known && s.durableSCL.Load() >= theirs {
				return nil
			}
			if s.durableSCL.Load() == before {
				if n.collectedAfter(s, p) {
					collected++
				}
				errs = append(errs, fmt.Errorf("%s is complete to LSN %d and has not the records after LSN %d", p.NodeId, theirs, before))
				break
			}
		}
	}
	if collected > 0 && collected == len(errs) {
		return fmt.Errorf("%w (LSN %d): %w", errLogCollected, s.durableSCL.Load(), errors.Join(errs...))
	}
	return fmt.Errorf("the log after LSN %d is on no peer: %w", s.durableSCL.Load(), errors.Join(errs...))
}

// collectedAfter reports whether peer has collected records of s's PG
// above s's SCL: they exist, and it no longer holds them.
func (n *Node) collectedAfter(s *seg, peer *pb.Member) bool {
	conn, err := n.peerConn(peer.Addr)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	scl := s.durableSCL.Load()
	resp, err := pb.NewStorageClient(conn).Pull(ctx, &pb.PullRequest{Volume: s.key.vol, Pg: s.key.pg, After: scl, MaxBytes: 1, HeadersOnly: true})
	return err == nil && resp.LogFloor > scl && resp.Scl > scl
}

// finishHydration ends the hydration: from now on the segment takes part
// in quorums, reads, materializing and gossip like any other.
func (n *Node) finishHydration(s *seg) error {
	st := s.hyd
	st.Done = true
	n.mu.Lock()
	if err := n.droppedSegment(s); err != nil {
		n.mu.Unlock()
		return err
	}
	key, raw := metaSubKey(s.key.vol, s.key.pg, metaHydrate), st.encode()
	g := n.commits.join(func(b *pebble.Batch, _ *group) { b.Set(key, raw, nil) })
	n.mu.Unlock()
	<-g.done
	if g.err != nil {
		return g.err
	}
	s.hyd = st
	s.hydrating.Store(false)
	n.stats.repairsCompleted.Add(1)
	if s.corruptCopy.Swap(false) {
		n.stats.corruptionsFixed.Add(1)
	}
	n.log.Info("hydration complete", "segment", s.key.String(), "source", st.Source, "bytes_copied", st.Copied, "scl", s.durableSCL.Load())
	n.mu.Lock()
	var src *pb.Member
	for _, p := range s.peers {
		if p.NodeId == st.Source {
			src = p
		}
	}
	n.mu.Unlock()
	if src != nil {
		if conn, err := n.peerConn(src.Addr); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if stream, err := pb.NewStorageClient(conn).Hydrate(ctx, &pb.HydrateRequest{Volume: s.key.vol, Pg: s.key.pg, FromNode: n.cfg.ID, Release: true}); err == nil {
				stream.Recv()
			}
			cancel()
		}
	}
	return nil
}
