package volume

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// catalogTimeout bounds one call to the control plane.
const catalogTimeout = 10 * time.Second

// FromControl places a volume's PGs where the control plane's catalog says
// they are, and grows the volume through it, a PG at a time. It follows the
// catalog's watch of the volume, so PGs that others add are known without
// asking.
type FromControl struct {
	ctl   pb.ControlClient
	name  string
	volID uint64 // set by Configure

	mu  sync.Mutex
	pgs map[uint32]Membership
	// set is the client's SetMembership (Config.Follow): told of every PG
	// whose membership epoch rises.
	set func(pg uint32, m Membership)
}

// NewFromControl returns the placement of the named volume.
func NewFromControl(ctl pb.ControlClient, volume string) *FromControl {
	return &FromControl{ctl: ctl, name: volume, pgs: map[uint32]Membership{}}
}

// Configure fills cfg's volume identity and geometry (id, incarnation, page
// size, PG size) from the catalog, sets its Placement and Grow to the
// catalog's, and follows the volume's changes until ctx ends.
func (f *FromControl) Configure(ctx context.Context, cfg *Config) error {
	v, err := f.ctl.GetVolume(ctx, &pb.GetVolumeRequest{Name: f.name})
	if err != nil {
		return fmt.Errorf("volume %s: %w", f.name, err)
	}
	f.ConfigureFrom(ctx, cfg, v)
	return nil
}

// ConfigureFrom is Configure for a volume as the catalog described it
// already (AcquireWriter's answer).
func (f *FromControl) ConfigureFrom(ctx context.Context, cfg *Config, v *pb.VolumeInfo) {
	cfg.VolumeID, cfg.Incarnation, cfg.PageSize, cfg.PagesPerPG = v.Id, v.Incarnation, int(v.PageSize), v.PagesPerPg
	cfg.Placement, cfg.Grow, cfg.Refresh, cfg.Follow = f.Placement, f.Grow, f.Refresh, f.follow
	f.volID = v.Id
	f.note(v.PgList...)
	go f.watch(ctx, v.Id)
}

// note keeps each PG's membership the catalog showed, if it is newer than
// the one known, and tells the client of those that changed.
func (f *FromControl) note(pgs ...*pb.PGInfo) {
	type change struct {
		pg uint32
		m  Membership
	}
	var changed []change
	f.mu.Lock()
	for _, p := range pgs {
		m := membershipOf(p)
		if old, ok := f.pgs[p.Pg]; ok && old.Epoch >= m.Epoch {
			continue
		}
		f.pgs[p.Pg] = m
		changed = append(changed, change{p.Pg, m})
	}
	set := f.set
	f.mu.Unlock()
	if set != nil {
		for _, ch := range changed {
			set(ch.pg, ch.m)
		}
	}
}

// follow is Config.Follow: the client's SetMembership hears of changes.
func (f *FromControl) follow(set func(pg uint32, m Membership)) {
	f.mu.Lock()
	f.set = set
	f.mu.Unlock()
}

// Known returns the PG's membership if the catalog has shown it already.
func (f *FromControl) Known(pg uint32) (Membership, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.pgs[pg]
	return m, ok
}

// watch keeps the cache current from the control plane's watch of the
// volume, reconnecting until ctx ends. A PG changed while the watch was
// down is caught up by the first refusal of a node that knows its new
// membership (Refresh).
func (f *FromControl) watch(ctx context.Context, volID uint64) {
	for ctx.Err() == nil {
		stream, err := f.ctl.WatchVolume(ctx, &pb.WatchVolumeRequest{VolumeId: volID})
		if err == nil {
			for {
				p, err := stream.Recv()
				if err != nil {
					break
				}
				f.note(p)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Placement returns the PG's membership, or ErrNoSuchPG if the volume has
// not grown that far.
func (f *FromControl) Placement(pg uint32) (Membership, error) {
	if m, ok := f.Known(pg); ok {
		return m, nil
	}
	return f.Refresh(pg)
}

// Refresh returns the PG's membership as the catalog has it now, or
// ErrNoSuchPG if the volume has not grown that far.
func (f *FromControl) Refresh(pg uint32) (Membership, error) {
	// One PG, and the volume without its PGs: the cost of a lookup does
	// not grow with the volume.
	ctx, cancel := context.WithTimeout(context.Background(), catalogTimeout)
	defer cancel()
	p, err := f.ctl.GetPG(ctx, &pb.GetPGRequest{VolumeId: f.volID, Pg: pg})
	if err == nil {
		f.note(p)
		return membershipOf(p), nil
	}
	if status.Code(err) != codes.NotFound {
		return Membership{}, fmt.Errorf("volume %s: PG %d: %w", f.name, pg, err)
	}
	v, err := f.ctl.GetVolume(ctx, &pb.GetVolumeRequest{Name: f.name, WithoutPgs: true})
	if err != nil {
		return Membership{}, fmt.Errorf("volume %s: %w", f.name, err)
	}
	if pg >= v.Pgs {
		return Membership{}, fmt.Errorf("volume %s has %d PG(s), not PG %d: %w", f.name, v.Pgs, pg, ErrNoSuchPG)
	}
	return Membership{}, fmt.Errorf("the catalog lists no segments for PG %d of volume %s", pg, f.name)
}

// Grow adds PGs to the volume, one at a time, until it holds pg, and returns
// pg's segments. Racing writers are safe: adding an existing PG returns it.
func (f *FromControl) Grow(pg uint32) (Membership, error) {
	ctx, cancel := context.WithTimeout(context.Background(), catalogTimeout)
	defer cancel()
	v, err := f.ctl.GetVolume(ctx, &pb.GetVolumeRequest{Name: f.name, WithoutPgs: true})
	if err != nil {
		return Membership{}, fmt.Errorf("volume %s: %w", f.name, err)
	}
	if pg < v.Pgs {
		return f.Placement(pg)
	}
	for next := v.Pgs; ; next++ {
		p, err := f.ctl.AddPG(ctx, &pb.AddPGRequest{Volume: f.name, Pg: next})
		if err != nil {
			return Membership{}, fmt.Errorf("grow volume %s to PG %d: %w", f.name, next, err)
		}
		f.note(p)
		if next == pg {
			return membershipOf(p), nil
		}
	}
}

// membershipOf is a PG's membership as the catalog describes it: its set,
// and during a change the next one too.
func membershipOf(p *pb.PGInfo) Membership {
	m := Membership{Epoch: p.MembershipEpoch, Sets: [][]Member{membersOf(p.Segments)}}
	if len(p.NextSegments) > 0 {
		m.Sets = append(m.Sets, membersOf(p.NextSegments))
	}
	if ch := p.GetChange(); ch != nil && len(p.NextSegments) > 0 {
		m.Joining = ch.GetJoining()
	}
	return m
}

func membersOf(segs []*pb.SegmentInfo) []Member {
	out := make([]Member, len(segs))
	for i, s := range segs {
		out[i] = Member{NodeID: s.Node, AZ: s.Az, Addr: s.Addr}
	}
	return out
}
