package control

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Failover kinds and states (FailoverInfo).
const (
	FailoverUnplanned = "unplanned"
	FailoverPlanned   = "planned"

	// FailoverDraining: planned; the old writer finishes what it has in
	// flight and hands the lease over.
	FailoverDraining = "draining"
	// FailoverChoosing: no replica can be promoted now; a writer instance
	// that starts may take the lease.
	FailoverChoosing = "choosing"
	// FailoverPromoting: the target takes the lease, recovers and opens.
	FailoverPromoting = "promoting"
	FailoverDone      = "done"
	FailoverFailed    = "failed"
)

// Failover is one failover of a volume's writer role, as the catalog keeps
// it (failover/<volume-id>): the current one, or the last.
type Failover struct {
	Version   int      `json:"version"`
	VolumeID  uint64   `json:"volume_id"`
	Round     uint64   `json:"round"`
	Kind      string   `json:"kind"`
	Reason    string   `json:"reason"`
	From      string   `json:"from,omitempty"`
	FromEpoch uint64   `json:"from_epoch"`
	State     string   `json:"state"`
	Target    string   `json:"target,omitempty"`
	Tried     []string `json:"tried,omitempty"`
	Why       string   `json:"why,omitempty"`
	Epoch     uint64   `json:"epoch,omitempty"`
	// Times are unix milliseconds of the control plane's clock.
	DetectedMs int64 `json:"detected_unix_ms"`
	DecidedMs  int64 `json:"decided_unix_ms,omitempty"`
	DoneMs     int64 `json:"done_unix_ms,omitempty"`
	DeadlineMs int64 `json:"deadline_unix_ms,omitempty"`
	// The steps, as the instances report them.
	LeaseMs     uint32 `json:"lease_ms,omitempty"`
	EpochMs     uint32 `json:"epoch_ms,omitempty"`
	RecoveryMs  uint32 `json:"recovery_ms,omitempty"`
	OpenMs      uint32 `json:"open_ms,omitempty"`
	DrainMs     uint32 `json:"drain_ms,omitempty"`
	HandoverVDL uint64 `json:"handover_vdl,omitempty"`
	VDL         uint64 `json:"vdl,omitempty"`
	Warm        bool   `json:"warm,omitempty"`
}

// Pending reports whether the failover is under way.
func (f *Failover) Pending() bool {
	return f != nil && (f.State == FailoverDraining || f.State == FailoverChoosing || f.State == FailoverPromoting)
}

// Admits reports whether holder may take the writer lease now, under this
// failover: while one is under way with a target, only the target may (a
// restarted old writer, or a zombie, must not win the race); a choosing
// failover without a target admits anyone.
func (f *Failover) Admits(holder string, now time.Time) error {
	if !f.Pending() || f.Target == "" || f.Target == holder {
		return nil
	}
	if f.State == FailoverPromoting && f.DeadlineMs > 0 && now.UnixMilli() > f.DeadlineMs {
		// The target is late; the leader chooses again on its next look,
		// and until then nobody else takes over behind its back.
		return fmt.Errorf("%w: volume failover round %d is choosing a new target (%s did not take the lease in time)", ErrFailingOver, f.Round, f.Target)
	}
	return fmt.Errorf("%w: failover round %d promotes %s (%s); %s may not take the writer lease meanwhile", ErrFailingOver, f.Round, f.Target, f.State, holder)
}

// AdmitsWriter reports whether holder may take the writer lease now: as
// Admits says under a failover under way; and with none under way, once a
// writer has held the lease (epoch > 0), only if no other instance is a
// registered replica. A writer instance that restarts when its lease is
// gone would otherwise race the leader, which promotes a replica the
// moment it sees the lease gone, and could take the role back cold; it
// follows as a replica instead. The first writer of a volume, and a
// writer with no replica, take the lease as they come.
func (f *Failover) AdmitsWriter(holder string, epoch uint64, replicas []string, now time.Time) error {
	if err := f.Admits(holder, now); err != nil {
		return err
	}
	if f.Pending() || epoch == 0 {
		return nil
	}
	var others []string
	for _, id := range replicas {
		if id != holder {
			others = append(others, id)
		}
	}
	if len(others) == 0 {
		return nil
	}
	return fmt.Errorf("%w: it has live replicas (%s); when its writer lease is gone the control plane promotes one of them, and %s follows it as a replica", ErrFailingOver, strings.Join(others, ", "), holder)
}

// FailoverView is what the leading control plane sees of a volume when it
// decides: the writer lease, the registered writer, the replicas.
type FailoverView struct {
	Now      time.Time
	VolumeID uint64
	// Epoch is the volume epoch (0: no writer ever took the lease).
	Epoch uint64
	// Holder holds the writer lease now ("" when nobody does), at
	// HolderEpoch; Ready: it registered as the writer at that epoch and
	// serves.
	Holder      string
	HolderEpoch uint64
	Ready       bool
	// LastHolder is the holder the leader saw last ("" if unknown, such as
	// after a change of leader).
	LastHolder string
	// Candidates are the volume's replicas (those registered: live).
	Candidates []PromotionCandidate
}

// FailoverTiming bounds the steps of a failover.
type FailoverTiming struct {
	// TakeLease is how long a target has to take the lease once chosen.
	TakeLease time.Duration
	// Drain is how long a planned failover's old writer has to hand over.
	Drain time.Duration
}

// DefaultFailoverTiming is the leader's.
var DefaultFailoverTiming = FailoverTiming{TakeLease: 3 * time.Second, Drain: 10 * time.Second}

// DecideFailover is the leader's failover step: given the stored record
// (nil: none) and the view, it returns the record to store, or nil when
// nothing changes. It is pure: no I/O, no clock but v.Now.
//
//   - The lease is held: a pending failover whose target (or anyone, at a
//     newer epoch) took it waits for it to serve, and is done once the
//     holder registered ready.
//   - The lease is gone after a writer held it (the epoch is not 0): a
//     failover starts, unless one is under way. It promotes the first
//     replica in PromotionOrder that it has not tried this round; a target
//     that did not take the lease in time, or whose registration went
//     away, is tried no more, and the next is chosen. With no replica to
//     promote it waits in "choosing", and a writer instance that starts
//     (up restarts it) takes the lease.
//   - A planned failover whose old writer did not hand over in time fails;
//     the old writer keeps the role.
func DecideFailover(rec *Failover, v FailoverView, t FailoverTiming) *Failover {
	now := v.Now.UnixMilli()
	if v.Holder != "" {
		if !rec.Pending() {
			return nil
		}
		next := *rec
		if v.HolderEpoch <= rec.FromEpoch {
			// The old writer still holds the lease.
			if rec.State == FailoverDraining && now > rec.DeadlineMs {
				next.State, next.DoneMs = FailoverFailed, now
				next.Why = fmt.Sprintf("%s did not hand the writer role over within %s; it remains the writer", rec.From, t.Drain)
				return &next
			}
			return nil
		}
		next.Target, next.Epoch = v.Holder, v.HolderEpoch
		if next.State != FailoverPromoting {
			if next.State == FailoverChoosing {
				// Its why said no replica could be promoted; one holds
				// the lease now.
				next.Why = ""
			}
			next.State = FailoverPromoting
			if next.DecidedMs == 0 {
				next.DecidedMs = now
			}
		}
		if v.Ready {
			next.State, next.Why = FailoverDone, ""
			if next.DoneMs == 0 {
				next.DoneMs = now
			}
		}
		next.DeadlineMs = 0
		if failoverEqual(&next, rec) {
			return nil
		}
		return &next
	}

	var next Failover
	switch {
	case rec.Pending():
		next = *rec
	case v.Epoch == 0:
		// No writer ever held the lease: the first one is starting.
		return nil
	default:
		next = Failover{
			Version: RecordVersion, VolumeID: v.VolumeID, Kind: FailoverUnplanned,
			From: v.LastHolder, FromEpoch: v.Epoch, State: FailoverChoosing, DetectedMs: now,
		}
		if rec != nil {
			next.Round = rec.Round
			if next.From == "" && rec.State == FailoverDone {
				next.From = rec.Target
			}
		}
		next.Round++
		who := "the writer"
		if next.From != "" {
			who = next.From
		}
		next.Reason = fmt.Sprintf("the writer lease of %s (epoch %d) expired or was released", who, v.Epoch)
	}

	live := map[string]bool{}
	for _, c := range v.Candidates {
		if c.Live {
			live[c.ID] = true
		}
	}
	switch next.State {
	case FailoverDraining:
		// The old writer released the lease: the target takes it now.
		next.State, next.DecidedMs, next.DeadlineMs = FailoverPromoting, now, now+t.TakeLease.Milliseconds()
		if live[next.Target] {
			break
		}
		next.Tried = appendOnce(next.Tried, next.Target)
		next.Why = fmt.Sprintf("the switchover's target %s went away", next.Target)
		choose(&next, v, now, t)
	case FailoverPromoting:
		switch {
		case next.Target == "":
			// The target reported that it could not promote
			// (ReportFailover): the why is its cause, and it is tried.
			choose(&next, v, now, t)
		case !live[next.Target] || now > next.DeadlineMs:
			why := fmt.Sprintf("%s did not take the writer lease within %s", next.Target, t.TakeLease)
			if !live[next.Target] {
				why = fmt.Sprintf("%s went away before it served", next.Target)
			}
			next.Tried = appendOnce(next.Tried, next.Target)
			next.Why = why
			choose(&next, v, now, t)
		}
	case FailoverChoosing:
		choose(&next, v, now, t)
	}
	if rec != nil && failoverEqual(&next, rec) {
		return nil
	}
	return &next
}

// choose makes the first untried live candidate the target; when every
// live one was tried, it starts over with them (a replica that failed for a
// passing reason may succeed now); with none it waits in choosing.
func choose(f *Failover, v FailoverView, now int64, t FailoverTiming) {
	order, err := PromotionOrder(v.Candidates)
	if err != nil {
		order = nil
	}
	pick := ""
	for _, c := range order {
		if !slices.Contains(f.Tried, c.ID) {
			pick = c.ID
			break
		}
	}
	if pick == "" && len(order) > 0 {
		f.Tried = nil
		pick = order[0].ID
	}
	if pick == "" {
		f.State, f.Target, f.DeadlineMs = FailoverChoosing, "", 0
		reason := "no live replica to promote"
		if strings.HasPrefix(f.Why, reason) {
			// Said on an earlier pass, with its cause: rewriting it would
			// drop the cause, and store the record again on every pass.
			return
		}
		if f.Why != "" {
			reason += " (" + f.Why + ")"
		}
		f.Why = reason + "; a writer instance that starts takes the lease"
		return
	}
	if f.State == FailoverChoosing {
		// Its why said there was no replica to promote; now there is.
		f.Why = ""
	}
	f.State, f.Target, f.DecidedMs, f.DeadlineMs = FailoverPromoting, pick, now, now+t.TakeLease.Milliseconds()
}

func appendOnce(list []string, id string) []string {
	if id == "" || slices.Contains(list, id) {
		return list
	}
	return append(list, id)
}

func failoverEqual(a, b *Failover) bool {
	return encode(a) == encode(b)
}
