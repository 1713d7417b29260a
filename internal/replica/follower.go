// Package replica holds a read replica's apply rules as a pure state
// machine, and the PGMRPL aggregate the writer keeps of its replicas' read
// points. Neither has goroutines, clocks or I/O: the shell feeds them what
// arrived and carries out what they decide, and the simulator runs the same
// code over a lossy, reordering, duplicating stream.
//
// The writer streams every MTR as it submits it, before it is durable, then
// VDL updates as the VDL rises. A Follower buffers the MTRs and applies them
// only once a VDL covers them, each atomically and in LSN order, so that
// what it exposes is always the volume's state at some VDL the writer
// computed: every commit it shows was acknowledged (or about to be), and it
// never shows part of an MTR.
//
// LSNs are allocated without gaps across the whole volume, so an MTR whose
// first LSN is not one above the previous MTR's last reveals a gap in the
// stream: the Follower drops what it buffered and asks to subscribe again
// from what it applied. A stream that starts somewhere else than where the
// Follower stands (another epoch, or a writer that no longer holds the MTRs
// it missed) makes it resync: the cache may hold page images older than the
// new start, so it is dropped, and the Follower resumes at the start, which
// is a VDL. A stream of an older epoch than the one followed comes from a
// fenced writer: it is refused like a gap.
package replica

// MTR is one mini-transaction as the stream carries it: records with LSNs
// First..Last (all of them; Last is the CPL).
type MTR struct {
	First, Last uint64
	// Records are the encoded redo records, opaque to the Follower.
	Records [][]byte
}

// Message is what arrives from the writer's stream, or about it.
type Message struct {
	Kind Kind
	// Start: the stream's epoch, the LSN after which it carries every MTR,
	// and the writer's VDL at that moment (>= From).
	Epoch uint64
	From  uint64
	// Start and VDL: the writer's VDL.
	VDL uint64
	// Received: the MTR, or a part of it: Partial says more of its records
	// follow in the next message (a large MTR is sent in parts).
	MTR     MTR
	Partial bool
}

// Kind is a Message's kind.
type Kind int

const (
	// Start is a subscription's first message.
	Start Kind = iota + 1
	// Received is an MTR of the current subscription.
	Received
	// VDL is a VDL update of the current subscription: every MTR at or
	// below it is durable.
	VDL
	// Lost: the subscription ended (the stream broke).
	Lost
)

// State is where the Follower stands with the writer.
type State int

const (
	// Connecting: it never attached to a stream yet.
	Connecting State = iota
	// Streaming: attached to a stream.
	Streaming
	// Stale: its stream ended or has a gap; it serves what it applied and
	// waits for a new subscription.
	Stale
)

func (s State) String() string {
	switch s {
	case Connecting:
		return "connecting"
	case Streaming:
		return "streaming"
	case Stale:
		return "stale"
	}
	return "unknown"
}

// Ready is what the shell must do after a Step, in this order: drop the
// whole cache if Resync, apply each MTR of Apply atomically, then expose
// Applied as the read point of new read transactions. If Resubscribe, the
// current stream is useless: close it and subscribe again with Hello
// (Epoch, Applied).
type Ready struct {
	Resync      bool
	Apply       []MTR
	Applied     uint64
	Resubscribe bool
}

// Follower is a replica's view of the writer's redo stream.
type Follower struct {
	state State
	// epoch of the stream followed (0: none yet).
	epoch uint64
	// applied is the VDL exposed: the state readers see.
	applied uint64
	// next is the first LSN the next MTR of the stream must have.
	next uint64
	// pending are received MTRs above applied, in LSN order and contiguous
	// from applied+1 (when not empty).
	pending []MTR
	// partial is the MTR being received in parts (nil: none).
	partial *MTR
	// writerVDL is the newest VDL the writer told of.
	writerVDL uint64
	resyncs   uint64
}

// NewFollower returns a Follower that has applied nothing.
func NewFollower() *Follower { return &Follower{} }

// State is where the Follower stands.
func (f *Follower) State() State { return f.state }

// Epoch is the epoch of the stream it follows (or followed last).
func (f *Follower) Epoch() uint64 { return f.epoch }

// Applied is the VDL it exposes.
func (f *Follower) Applied() uint64 { return f.applied }

// WriterVDL is the newest VDL the writer told it of (at least Applied).
func (f *Follower) WriterVDL() uint64 { return max(f.writerVDL, f.applied) }

// Resyncs counts the times it dropped its cache to resume elsewhere.
func (f *Follower) Resyncs() uint64 { return f.resyncs }

// Pending is the number of MTRs received and not applied yet.
func (f *Follower) Pending() int { return len(f.pending) }

// Step takes one message and returns what to do.
func (f *Follower) Step(m Message) Ready {
	switch m.Kind {
	case Start:
		return f.start(m)
	case Received:
		if f.state != Streaming {
			return f.ready()
		}
		return f.received(m.MTR, m.Partial)
	case VDL:
		if f.state != Streaming {
			return f.ready()
		}
		return f.vdl(m.VDL)
	case Lost:
		if f.state == Streaming {
			f.state = Stale
		}
		f.pending, f.partial = nil, nil
		return f.ready()
	}
	return f.ready()
}

func (f *Follower) ready() Ready { return Ready{Applied: f.applied} }

func (f *Follower) start(m Message) Ready {
	if m.Epoch < f.epoch {
		// A writer of an older epoch than the one followed was fenced by
		// it (a zombie the catalog still named): the MTRs it streams
		// above its VDL were discarded, and the newer epoch's VDL
		// learned here would cover them. Refuse its stream.
		return f.gap()
	}
	rd := Ready{}
	f.pending, f.partial = nil, nil
	// The stream goes on exactly where this Follower stands only if it
	// starts at what was applied: every MTR above is then in it, and the
	// cache holds the state at applied (a new epoch that starts there
	// recovered at that VDL: nothing happened in between that was ever
	// applied). Otherwise the MTRs between applied and From were never
	// applied here, so cached images may be older than From: drop them and
	// stand at From (a VDL: the volume's state there is whole). A start
	// below applied (a protocol error) keeps applied, and the MTRs it
	// resends up to applied are skipped.
	if m.From != f.applied {
		rd.Resync = true
		if f.epoch != 0 {
			f.resyncs++
		}
	}
	if m.Epoch != f.epoch {
		// Only this epoch's VDLs say what its stream covers.
		f.writerVDL = m.VDL
	}
	f.epoch = m.Epoch
	f.applied = max(f.applied, m.From)
	f.next = m.From + 1
	f.writerVDL = max(f.writerVDL, m.VDL)
	f.state = Streaming
	rd.Applied = f.applied
	return rd
}

func (f *Follower) received(mtr MTR, partial bool) Ready {
	if mtr.Last < mtr.First {
		return f.gap()
	}
	if mtr.Last < f.next {
		// A duplicate, or one at or below what a resync skipped.
		return f.ready()
	}
	if mtr.First != f.next {
		return f.gap()
	}
	f.next = mtr.Last + 1
	if f.partial != nil {
		// The next part of the MTR being assembled.
		f.partial.Last = mtr.Last
		f.partial.Records = append(f.partial.Records, mtr.Records...)
		mtr = *f.partial
	}
	if partial {
		if f.partial == nil {
			cp := MTR{First: mtr.First, Last: mtr.Last, Records: append([][]byte(nil), mtr.Records...)}
			f.partial = &cp
		}
		return f.ready()
	}
	f.partial = nil
	if mtr.Last <= f.applied {
		// Resent after a start below applied: already in the state.
		return f.ready()
	}
	f.pending = append(f.pending, mtr)
	// A VDL that arrived ahead of its MTRs covers them now.
	return f.advance(Ready{})
}

// complete is the last LSN of the last MTR received whole.
func (f *Follower) complete() uint64 {
	if f.partial != nil {
		return f.partial.First - 1
	}
	return f.next - 1
}

func (f *Follower) vdl(v uint64) Ready {
	if v > f.complete() {
		// The writer sends every MTR before the VDL that covers it: a VDL
		// beyond the last MTR received means some were lost.
		f.writerVDL = max(f.writerVDL, v)
		return f.gap()
	}
	f.writerVDL = max(f.writerVDL, v)
	return f.advance(Ready{})
}

// advance applies the pending MTRs the writer's VDL covers, once every one
// of them has arrived: the state exposed is always the one at a VDL the
// writer reached (a start's VDL can be ahead of the MTRs that follow it).
func (f *Follower) advance(rd Ready) Ready {
	if f.complete() < f.writerVDL {
		rd.Applied = f.applied
		return rd
	}
	k := 0
	for k < len(f.pending) && f.pending[k].Last <= f.writerVDL {
		k++
	}
	if k > 0 {
		rd.Apply = append(rd.Apply, f.pending[:k]...)
		f.applied = f.pending[k-1].Last
		f.pending = append(f.pending[:0:0], f.pending[k:]...)
	}
	rd.Applied = f.applied
	return rd
}

// gap ends the subscription: what was buffered is dropped, and the shell
// subscribes again from Applied.
func (f *Follower) gap() Ready {
	f.pending, f.partial = nil, nil
	f.state = Stale
	return Ready{Applied: f.applied, Resubscribe: true}
}
