package storage

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/segment"
)

// A segment's metadata lives under four keys so that each has one writer:
// the declaration and chain summary (append path), the durable SCL (append
// path, in every group), the highest writer VDL seen (append path) and the
// materializer's progress (materializer only).
const (
	metaDecl  = 'd'
	metaSCL   = 's'
	metaVDL   = 'v'
	metaMater = 'g'
	// metaHydrate: a hydration's progress (hydrateState), written by the
	// declaration that starts it and then by the hydration alone.
	metaHydrate = 'h'
)

func metaSubKey(vol uint64, pg uint32, sub byte) []byte {
	return append(metaKey(vol, pg), sub)
}

// declRecord is the persisted declaration of a segment.
type declRecord struct {
	Spec        []byte               `json:"spec"` // pb.SegmentSpec
	Epoch       uint64               `json:"epoch"`
	Truncations []segment.Truncation `json:"truncations,omitempty"`
}

// materState is the materializer's and GC's progress on a segment.
type materState struct {
	// Every record <= Materialized is folded into a page version, and older
	// versions of those pages are gone.
	Materialized uint64 `json:"materialized"`
	// Chain entries and records <= LogFloor are deleted.
	LogFloor uint64 `json:"log_floor"`
}

type segKey struct {
	vol uint64
	pg  uint32
}

func (k segKey) String() string { return fmt.Sprintf("volume %d PG %d", k.vol, k.pg) }

// seg is one hosted segment. Fields under "guarded by Node.mu" change only on
// the append path; the atomics are read lock-free by reads and background work.
type seg struct {
	key segKey

	// guarded by Node.mu
	spec  *pb.SegmentSpec
	chain *segment.Chain
	peers []*pb.Member // the other members of every set
	// retired: the node is in no set of the membership held (retiredFlag
	// is the same, for lock-free readers); joining are the members being
	// added by a change under way (see joiningMembers).
	retired bool
	joining map[string]bool

	durableSCL atomic.Uint64 // SCL of records known fsynced
	vdlSeen    atomic.Uint64 // highest writer VDL told (AppendRequest.vdl)
	readPoint  atomic.Uint64 // PGMRPL last reported by the writer
	retain     atomic.Uint64 // lowest SCL among members, last reported
	mat        atomic.Uint64 // materialized (and version-GC'd) up to
	logFloor   atomic.Uint64 // chain/record GC'd up to
	pages      atomic.Uint64 // pages per PG
	pageSize   atomic.Uint32
	peerSCLs   atomic.Pointer[map[string]uint64]

	retiredFlag atomic.Bool

	// hydrating: the segment copies its PG from a peer (see hydrate.go)
	// and counts toward no quorum; hydCopied and hydTotal are its progress
	// in page bytes. hydRecord (guarded by Node.mu): a hydration was begun
	// here, done or not. hyd is the hydration's state, owned by the
	// hydration's goroutine once it runs.
	hydrating atomic.Bool
	hydRecord bool
	hyd       hydrateState
	hydCopied atomic.Uint64
	hydTotal  atomic.Uint64
	hydRate   atomic.Uint64 // float64 bits: bytes per second of the copy under way

	// want is the PG tail a recovery truncation named; while the SCL is
	// below it the segment lacks records that exist, and gossip treats it
	// like a hole.
	want atomic.Uint64

	// strandedChecked is when (unix nanos) the node last asked the peers
	// whether any still holds the log after this segment's SCL, or first
	// found one that does not (see rehydrateIfStranded).
	strandedChecked atomic.Int64

	// hydrationWarned is when (unix nanos) the node last logged that this
	// segment needs hydration: once a minute, not every gossip round.
	hydrationWarned atomic.Int64

	// corruptCopy: the running hydration replaces data found damaged
	// here (rehydrate); its completion counts as a corruption repaired.
	corruptCopy atomic.Bool

	// dropped is set when the segment's volume is dropped (DropVolumes),
	// under Node.dropMu, so the materializer leaves it alone from then on.
	dropped atomic.Bool

	// lastMaterialized is touched only by the materializer goroutine.
	lastMaterialized time.Time
}

func (s *seg) firstPage() uint64 { return uint64(s.key.pg)*s.pages.Load() + 1 }

func (s *seg) holdsPage(page uint64) bool {
	first := s.firstPage()
	return page >= first && page < first+s.pages.Load()
}

func raise(a *atomic.Uint64, v uint64) {
	for {
		old := a.Load()
		if v <= old || a.CompareAndSwap(old, v) {
			return
		}
	}
}

func encodeDecl(spec *pb.SegmentSpec, chain *segment.Chain) ([]byte, error) {
	raw, err := proto.Marshal(spec)
	if err != nil {
		return nil, err
	}
	st := chain.State()
	return json.Marshal(declRecord{Spec: raw, Epoch: st.Epoch, Truncations: st.Truncations})
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// withIncarnation is spec with incarnation inc: spec itself if it has it,
// else a copy (a declaration's spec may be shared with its sender).
func withIncarnation(spec *pb.SegmentSpec, inc uint64) *pb.SegmentSpec {
	if spec.GetIncarnation() == inc {
		return spec
	}
	c := proto.Clone(spec).(*pb.SegmentSpec)
	c.Incarnation = inc
	return c
}

// noteIncarnation records the incarnation of a segment the node hosts from
// now on, if it has one (Node.incs). Called under Node.mu.
func (n *Node) noteIncarnation(s *seg) {
	if inc := s.spec.GetIncarnation(); inc != 0 {
		n.incs[s.key.vol] = inc
	}
}
