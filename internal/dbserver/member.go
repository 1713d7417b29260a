package dbserver

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/borealis-db/borealis/internal/instance"
	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/sqlvfs"
)

// memberRole is the lifecycle of an instance whose role failovers change:
// an instance.Member's. It answers as the writer while the member is the
// writer, and as a replica while it is one.
type memberRole struct {
	cfg Config
	m   *instance.Member
}

// start is refused: a member has no single start, Run serves whichever
// role the failovers give it.
func (r memberRole) start(context.Context) error {
	return errors.New("dbserver: an instance whose role failovers change runs with Run, not Start")
}

func (r memberRole) run(ctx context.Context) error { return r.m.Run(ctx) }

// close is the end of Run's context; the member closes its role itself.
func (r memberRole) close() error { return nil }

// current is the role the member has now: the writer's or a replica's
// face, or nil between the two.
func (r memberRole) current() face {
	if w := r.m.Writer(); w != nil {
		return writerRole{w}
	}
	if rep := r.m.Replica(); rep != nil {
		return &replicaRole{cfg: r.cfg, rep: rep}
	}
	return nil
}

func (r memberRole) between() *APIError {
	return apiErr(http.StatusServiceUnavailable, CodeNotReady, "instance %s of volume %s is changing role: %s", r.cfg.ID, r.cfg.Volume, orUnknown(r.m.Status()))
}

func (r memberRole) readable() (*sqlvfs.DB, *APIError) {
	if c := r.current(); c != nil {
		return c.readable()
	}
	return nil, r.between()
}

func (r memberRole) writable(ctx context.Context) (*sqlvfs.DB, *APIError) {
	if c := r.current(); c != nil {
		return c.writable(ctx)
	}
	return nil, r.between()
}

func (r memberRole) health(h *Health) {
	h.Role = r.m.Role()
	if c := r.current(); c != nil {
		c.health(h)
	} else {
		h.Status = r.m.Status()
	}
	h.Roles = &sqlclient.RoleHealth{Promotions: r.m.Promotions(), StepDowns: r.m.StepDowns()}
	if p := r.m.LastPromotion(); p != nil {
		h.Roles.LastPromotion = &sqlclient.PromotionHealth{
			LeaseMS: msf(p.Lease), EpochMS: msf(p.Epoch), RecoveryMS: msf(p.Recovery), OpenMS: msf(p.Open), VDL: p.VDL, Warm: p.Warm,
		}
	}
}

func msf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
