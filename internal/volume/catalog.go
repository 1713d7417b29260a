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
	pgs map[uint32][]Member
}

// NewFromControl returns the placement of the named volume.
func NewFromControl(ctl pb.ControlClient, volume string) *FromControl {
	return &FromControl{ctl: ctl, name: volume, pgs: map[uint32][]Member{}}
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
	cfg.Placement, cfg.Grow = f.Placement, f.Grow
	f.volID = v.Id
	f.note(v.PgList...)
	go f.follow(ctx, v.Id)
}

func (f *FromControl) note(pgs ...*pb.PGInfo) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range pgs {
		f.pgs[p.Pg] = members(p)
	}
}

// Known returns the PG's segments if the catalog has shown them already.
func (f *FromControl) Known(pg uint32) ([]Member, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.pgs[pg]
	return m, ok
}

// follow keeps the cache current from the control plane's watch of the
// volume, reconnecting until ctx ends.
func (f *FromControl) follow(ctx context.Context, volID uint64) {
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

// Placement returns the PG's segments, or ErrNoSuchPG if the volume has not
// grown that far.
func (f *FromControl) Placement(pg uint32) ([]Member, error) {
	if m, ok := f.Known(pg); ok {
		return m, nil
	}
	// One PG, and the volume without its PGs: the cost of a lookup does
	// not grow with the volume.
	ctx, cancel := context.WithTimeout(context.Background(), catalogTimeout)
	defer cancel()
	p, err := f.ctl.GetPG(ctx, &pb.GetPGRequest{VolumeId: f.volID, Pg: pg})
	if err == nil {
		f.note(p)
		return members(p), nil
	}
	if status.Code(err) != codes.NotFound {
		return nil, fmt.Errorf("volume %s: PG %d: %w", f.name, pg, err)
	}
	v, err := f.ctl.GetVolume(ctx, &pb.GetVolumeRequest{Name: f.name, WithoutPgs: true})
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", f.name, err)
	}
	if pg >= v.Pgs {
		return nil, fmt.Errorf("volume %s has %d PG(s), not PG %d: %w", f.name, v.Pgs, pg, ErrNoSuchPG)
	}
	return nil, fmt.Errorf("the catalog lists no segments for PG %d of volume %s", pg, f.name)
}

// Grow adds PGs to the volume, one at a time, until it holds pg, and returns
// pg's segments. Racing writers are safe: adding an existing PG returns it.
func (f *FromControl) Grow(pg uint32) ([]Member, error) {
	ctx, cancel := context.WithTimeout(context.Background(), catalogTimeout)
	defer cancel()
	v, err := f.ctl.GetVolume(ctx, &pb.GetVolumeRequest{Name: f.name, WithoutPgs: true})
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", f.name, err)
	}
	if pg < v.Pgs {
		return f.Placement(pg)
	}
	for next := v.Pgs; ; next++ {
		p, err := f.ctl.AddPG(ctx, &pb.AddPGRequest{Volume: f.name, Pg: next})
		if err != nil {
			return nil, fmt.Errorf("grow volume %s to PG %d: %w", f.name, next, err)
		}
		f.note(p)
		if next == pg {
			return members(p), nil
		}
	}
}

func members(p *pb.PGInfo) []Member {
	out := make([]Member, len(p.Segments))
	for i, s := range p.Segments {
		out[i] = Member{NodeID: s.Node, AZ: s.Az, Addr: s.Addr}
	}
	return out
}
