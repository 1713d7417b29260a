package router

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// Failover states of pb.FailoverInfo during which the writer the failover
// started from is on its way out.
const (
	FailoverDraining  = "draining"
	FailoverChoosing  = "choosing"
	FailoverPromoting = "promoting"
)

// How the router follows the writer (FollowStatus.Source).
const (
	// SourceWatch: a WatchWriter stream is open and has delivered the
	// writer's state.
	SourceWatch = "watch"
	// SourceCatalog: the control plane does not serve WatchWriter
	// (Unimplemented), or the stream is not open; the catalog's listings
	// (every Config.Refresh) say who the writer is.
	SourceCatalog = "catalog"
)

const (
	// watchRetryMin and watchRetryMax bound the backoff between attempts
	// to open the WatchWriter stream after it broke: short, since while it
	// is down the router learns of a new writer only a listing later.
	watchRetryMin = 50 * time.Millisecond
	watchRetryMax = time.Second
	// watchUnimplementedRetry is how long the router follows the catalog
	// before it asks again a control plane that answered Unimplemented:
	// one upgraded in place starts serving the stream.
	watchUnimplementedRetry = 30 * time.Second
)

// watchWriters is the default WriterSource. It keeps a WatchWriter stream
// open to the control plane, which sends the writer's state at once and
// again on every change, so that the cluster endpoint learns of a new
// writer as soon as the catalog does rather than a listing later. While
// the stream is not open (the control plane restarting, or one that
// answers Unimplemented), it falls back to the catalog's listings, which
// Router.Run keeps making for the reader endpoint anyway.
type watchWriters struct {
	r       *Router
	catalog catalogWriters

	mu sync.Mutex
	// state is the last state received (nil before the first); live says
	// a stream is open and has delivered it.
	state *pb.WriterState
	live  bool
	// unimplemented: the control plane does not serve WatchWriter.
	unimplemented bool
	err           error // why the stream last failed; nil while live
	// changed is closed, and replaced, whenever Writer's answer may have
	// changed: a state arrived, or the stream broke.
	changed chan struct{}
}

func newWatchWriters(r *Router) *watchWriters {
	return &watchWriters{r: r, catalog: catalogWriters{r}, changed: make(chan struct{})}
}

// Writer is the watched state's writer while the stream is live: the
// control plane's word is then newer than any listing. Otherwise it is the
// catalog's writer, or the last watched one if that has a higher epoch.
func (ws *watchWriters) Writer() (Target, bool) {
	ws.mu.Lock()
	st, live := ws.state, ws.live
	ws.mu.Unlock()
	watched, wok := writerOf(st)
	if live {
		return watched, wok
	}
	listed, lok := ws.catalog.Writer()
	switch {
	case wok && (!lok || watched.Epoch > listed.Epoch):
		return watched, true
	case lok:
		return listed, true
	}
	return Target{}, false
}

// Refresh lists the catalog, unless the stream is live: then the control
// plane pushes every change, and there is nothing to ask.
func (ws *watchWriters) Refresh(ctx context.Context) error {
	ws.mu.Lock()
	live := ws.live
	ws.mu.Unlock()
	if live {
		return nil
	}
	return ws.catalog.Refresh(ctx)
}

// Changed returns a channel closed at the next change of the writer's
// state (see writerNotifier).
func (ws *watchWriters) Changed() <-chan struct{} {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.changed
}

// notifyLocked wakes the requests waiting for a change. ws.mu must be held.
func (ws *watchWriters) notifyLocked() {
	close(ws.changed)
	ws.changed = make(chan struct{})
}

// run keeps a WatchWriter stream open until ctx ends, opening it again
// after a short backoff when it breaks.
func (ws *watchWriters) run(ctx context.Context) {
	delay := watchRetryMin
	for ctx.Err() == nil {
		received, err := ws.follow(ctx)
		if ctx.Err() != nil {
			return
		}
		if received {
			delay = watchRetryMin
		}
		wait := delay
		if status.Code(err) == codes.Unimplemented {
			wait = watchUnimplementedRetry
		} else {
			delay = min(2*delay, watchRetryMax)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// follow opens one stream and applies what it sends until it breaks. It
// says whether it received anything, and why it broke.
func (ws *watchWriters) follow(ctx context.Context) (received bool, err error) {
	r := ws.r
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := r.ctl.WatchWriter(sctx, &pb.WatchWriterRequest{Volume: r.cfg.Volume})
	if err == nil {
		for {
			var st *pb.WriterState
			if st, err = stream.Recv(); err != nil {
				break
			}
			received = true
			ws.apply(st)
		}
	}
	if ctx.Err() != nil {
		return received, err
	}
	ws.broken(err)
	return received, err
}

// apply takes a state the stream sent.
func (ws *watchWriters) apply(st *pb.WriterState) {
	r := ws.r
	ws.mu.Lock()
	was, wasLive, wasUnimpl := ws.state, ws.live, ws.unimplemented
	ws.state, ws.live, ws.unimplemented, ws.err = st, true, false, nil
	ws.notifyLocked()
	ws.mu.Unlock()
	if !wasLive {
		r.log.Info("following the writer through the control plane's WatchWriter stream", "control", r.cfg.Control, "holder", st.GetHolder(), "epoch", st.GetEpoch(), "after_unimplemented", wasUnimpl)
	}
	if f := st.GetFailover(); f != nil && (was.GetFailover().GetRound() != f.GetRound() || was.GetFailover().GetState() != f.GetState()) {
		r.log.Info("failover", "round", f.GetRound(), "kind", f.GetKind(), "state", f.GetState(), "from", f.GetFrom(), "target", f.GetTarget(), "why", f.GetWhy())
	}
	t, ok := writerOf(st)
	r.noteWriter(t, ok)
	// The instances' roles change with the writer: list them and poll
	// them now, so that the reader endpoint stops sending queries to a
	// replica that was promoted, and takes the old writer back as a
	// replica, without waiting for the next refresh.
	if writerKey(was) != writerKey(st) {
		r.kick()
	}
}

// broken records that the stream failed with err.
func (ws *watchWriters) broken(err error) {
	r := ws.r
	unimpl := status.Code(err) == codes.Unimplemented
	ws.mu.Lock()
	wasLive, wasUnimpl := ws.live, ws.unimplemented
	ws.live, ws.unimplemented = false, unimpl
	ws.err = fmt.Errorf("WatchWriter at the control plane %s: %s", r.cfg.Control, status.Convert(err).Message())
	ws.notifyLocked()
	ws.mu.Unlock()
	switch {
	case unimpl && !wasUnimpl:
		r.log.Info("the control plane does not serve WatchWriter; following the writer through the catalog's listings", "control", r.cfg.Control, "refresh", r.cfg.Refresh)
	case unimpl:
	case wasLive:
		r.log.Warn("the WatchWriter stream broke; following the catalog's listings until it is open again", "control", r.cfg.Control, "err", err)
	default:
		if ok, n := r.limited.allow("watch"); ok {
			r.log.Warn("cannot open the WatchWriter stream; following the catalog's listings", "control", r.cfg.Control, "err", err, "suppressed", n)
		}
	}
}

// followStatus is the source's part of Status.Following.
func (ws *watchWriters) followStatus(fs *FollowStatus) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	fs.Source = SourceCatalog
	if ws.live {
		fs.Source = SourceWatch
	}
	fs.WatchUnimplemented = ws.unimplemented
	if ws.err != nil {
		fs.WatchError = ws.err.Error()
	}
	if st := ws.state; st != nil {
		fs.Holder, fs.LeaseEpoch, fs.Revision = st.GetHolder(), st.GetEpoch(), st.GetRevision()
		if f := st.GetFailover(); f != nil {
			fs.Failover = &FailoverStatus{Round: f.GetRound(), Kind: f.GetKind(), State: f.GetState(), From: f.GetFrom(), Target: f.GetTarget(), Why: f.GetWhy()}
		}
	}
}

// writerKey identifies the writer a state names, ready or not, to tell
// when the instances' roles may have changed.
func writerKey(st *pb.WriterState) string {
	w := st.GetWriter()
	return fmt.Sprintf("%s/%d/%s/%s/%s", st.GetHolder(), st.GetEpoch(), w.GetId(), w.GetState(), st.GetFailover().GetState())
}

// writerOf is the writer requests go to in st, if any: the registration of
// the lease's holder, as a writer that is ready. While a failover is under
// way, the writer it started from is not one, even if its registration is
// still there: it is draining or stepping down (a planned switchover), or
// dead.
func writerOf(st *pb.WriterState) (Target, bool) {
	w := st.GetWriter()
	if w == nil || w.GetRole() != RoleWriter || w.GetState() != "ready" || w.GetSqlEndpoint() == "" {
		return Target{}, false
	}
	if st.GetHolder() != w.GetId() {
		// The lease is gone, or someone else took it: this registration
		// is the past.
		return Target{}, false
	}
	if f := st.GetFailover(); f != nil && w.GetId() == f.GetFrom() && (f.GetFromEpoch() == 0 || w.GetEpoch() <= f.GetFromEpoch()) {
		switch f.GetState() {
		case FailoverDraining, FailoverChoosing, FailoverPromoting:
			return Target{}, false
		}
	}
	epoch := w.GetEpoch()
	if epoch == 0 {
		epoch = st.GetEpoch()
	}
	return Target{ID: w.GetId(), Endpoint: w.GetSqlEndpoint(), Epoch: epoch}, true
}

// failoverNote describes, for a no_writer message, the failover under way
// ("" if none is, or the stream never said).
func (ws *watchWriters) failoverNote() string {
	ws.mu.Lock()
	f := ws.state.GetFailover()
	ws.mu.Unlock()
	switch f.GetState() {
	case FailoverDraining, FailoverChoosing, FailoverPromoting:
	default:
		return ""
	}
	note := fmt.Sprintf(" ready to serve: a %s failover is under way (round %d, %s", orDash(f.GetKind()), f.GetRound(), f.GetState())
	if f.GetTarget() != "" {
		note += " " + f.GetTarget()
	}
	if f.GetWhy() != "" {
		note += ": " + f.GetWhy()
	}
	return note + ")"
}
