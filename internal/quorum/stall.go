package quorum

import "time"

// Progress is what a writer knows of one segment while a record of its PG
// waits to become durable.
type Progress struct {
	// Reachable: the segment's stream is connected and answers.
	Reachable bool
	// SCL is the highest segment complete LSN the segment reported.
	SCL uint64
	// Unchanged is how long the SCL has stayed where it is: since it last
	// rose, the segment first reported it, or it received the record,
	// whichever is latest.
	Unchanged time.Duration
	// Received: the segment acknowledged a request that carried the
	// record. One that has not may only be behind the writer's queue to it
	// (a backlog, a slow fsync in flight): it is not judged behind yet.
	Received bool
	// Reported is how long ago the segment last reported its SCL. A segment
	// reports a PG's SCL only when a request carries that PG, so a quiet PG's
	// SCL can be old news: the segment may have filled its hole since.
	Reported time.Duration
}

// Stall is the verdict on a PG whose record at LSN has waited past the
// writer's timeout.
type Stall struct {
	// Stalled: the segments that can still make the record durable do not
	// form a write quorum, so waiting longer cannot help until the PG's
	// membership or its segments change. The wait should fail.
	Stalled bool
	// Unreachable are the members whose streams do not answer.
	Unreachable []SegmentID
	// Behind are the members that answer but hold the PG only below LSN and
	// have not moved for stuckAfter, as a fresh report shows: a segment with
	// a hole its peers can no longer fill (an emptied node whose peers
	// collected the log) acks every record and never completes one.
	Behind []SegmentID
	// Ask are the members that would be behind but whose last report is
	// older than fresh: they count toward the quorum meanwhile, and the
	// writer should ask them for their SCL now.
	Ask []SegmentID
}

// Judge decides whether a PG under c can still make the record at lsn
// durable. A member counts toward the write quorum only if it is reachable
// and either already holds the PG through lsn or has moved its SCL within
// stuckAfter (it is catching up, by gossip or from the writer's queue).
// Reachability alone is not enough: an answering segment that cannot
// complete the record would hold the wait open forever. A member is judged
// behind only on a report younger than fresh; an older one gets the benefit
// of the doubt and is listed in Ask.
func (c Config) Judge(lsn uint64, stuckAfter, fresh time.Duration, seg func(SegmentID) Progress) Stall {
	var st Stall
	can := map[SegmentID]bool{}
	for _, id := range c.Members() {
		p := seg(id)
		switch {
		case !p.Reachable:
			st.Unreachable = append(st.Unreachable, id)
		case p.SCL >= lsn || !p.Received || p.Unchanged < stuckAfter:
			can[id] = true
		case p.Reported >= fresh:
			can[id] = true
			st.Ask = append(st.Ask, id)
		default:
			st.Behind = append(st.Behind, id)
		}
	}
	st.Stalled = !c.WriteQuorum(func(id SegmentID) bool { return can[id] })
	return st
}
