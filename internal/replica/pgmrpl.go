package replica

import "time"

// PGMRPL is the writer's aggregate of the read floors its replicas report:
// the volume's PGMRPL is the lowest of the writer's own oldest read point
// and every live replica's floor, and storage may collect page versions
// below it.
//
// Each report is leased: a replica that stops reporting (dead, paused or cut
// off) stops holding storage's GC back once its report is older than the
// TTL. A writer that just started does not know its replicas' floors yet,
// and a replica keeps the read points it pinned under the previous writer;
// so for one TTL after the start the aggregate holds (Value reports held)
// unless every replica it was told to expect has reported.
type PGMRPL struct {
	ttl     time.Duration
	start   time.Time
	expect  map[string]bool
	reports map[string]floorReport
}

type floorReport struct {
	floor uint64
	at    time.Time
	// provisional: a stand-in the writer made up (a subscription's start),
	// which holds GC back but does not end the start's hold.
	provisional bool
}

// NewPGMRPL returns an aggregate whose reports live for ttl, started at
// start; expect names the replicas known to exist then (from the catalog),
// whose first reports end the hold early.
func NewPGMRPL(ttl time.Duration, start time.Time, expect []string) *PGMRPL {
	a := &PGMRPL{ttl: ttl, start: start, expect: map[string]bool{}, reports: map[string]floorReport{}}
	for _, id := range expect {
		a.expect[id] = true
	}
	return a
}

// Begin restarts the start's hold at now (the writer became reachable).
func (a *PGMRPL) Begin(now time.Time) { a.start = now }

// Report records replica id's floor at now.
func (a *PGMRPL) Report(id string, floor uint64, now time.Time) {
	a.reports[id] = floorReport{floor: floor, at: now}
}

// Provisional records a floor for replica id that it did not report (the
// start of its subscription): it lowers the aggregate like a report, never
// raises a live report's floor, and does not end the start's hold.
func (a *PGMRPL) Provisional(id string, floor uint64, now time.Time) {
	if r, ok := a.reports[id]; ok && now.Sub(r.at) <= a.ttl {
		floor = min(floor, r.floor)
		a.reports[id] = floorReport{floor: floor, at: now, provisional: r.provisional}
		return
	}
	a.reports[id] = floorReport{floor: floor, at: now, provisional: true}
}

// Forget drops replica id's report at once (it deregistered cleanly).
func (a *PGMRPL) Forget(id string) {
	delete(a.reports, id)
	delete(a.expect, id)
}

// Value returns the PGMRPL given the writer's own oldest read point: the
// lowest of own and every report younger than the TTL. held means the
// aggregate cannot tell yet (the writer's first TTL, with expected replicas
// not reported): the caller must not raise what storage keeps.
func (a *PGMRPL) Value(own uint64, now time.Time) (v uint64, held bool) {
	v = own
	for id, r := range a.reports {
		if now.Sub(r.at) > a.ttl {
			delete(a.reports, id)
			continue
		}
		v = min(v, r.floor)
	}
	if now.Sub(a.start) < a.ttl {
		for id := range a.expect {
			if r, ok := a.reports[id]; !ok || r.provisional {
				return v, true
			}
		}
	}
	return v, false
}

// Live returns the ids whose reports are younger than the TTL at now, and
// their floors.
func (a *PGMRPL) Live(now time.Time) map[string]uint64 {
	out := map[string]uint64{}
	for id, r := range a.reports {
		if now.Sub(r.at) <= a.ttl {
			out[id] = r.floor
		}
	}
	return out
}
