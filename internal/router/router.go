// Package router is Borealis's stateless router (DESIGN.md §3, "Replicas").
// It serves two endpoints, each on a listener of its own:
//
//   - the cluster endpoint (ClusterHandler) forwards every request to the
//     volume's current writer;
//   - the reader endpoint (ReaderHandler) balances POST /v1/query across the
//     healthy replicas, by least outstanding requests, and falls back to the
//     writer when no replica can answer. It never writes.
//
// The router learns where the instances are from the control plane's
// instance registry (Control.ListInstances, whose records are leased, so a
// dead instance drops out), and how they stand by polling each one's
// GET /v1/health. It keeps no state of its own beyond what it last learnt:
// any number of routers may serve the same volume.
//
// Both endpoints name the instance that answered in the Borealis-Instance
// response header, and answer GET /v1/health themselves with the router's
// status (Status).
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/sqlclient"
)

// Defaults of Config.
const (
	DefaultVolume        = "main"
	DefaultMaxLag        = time.Second
	DefaultRefresh       = 250 * time.Millisecond
	DefaultHealthTimeout = 500 * time.Millisecond
	// DefaultFailoverWait is how long the cluster endpoint waits for a
	// writer: a failover names a new one within seconds.
	DefaultFailoverWait = 10 * time.Second
	// DefaultMaxBodyBytes is the SQL API's default cap on a request body
	// (dbserver.DefaultMaxBodyBytes).
	DefaultMaxBodyBytes = 48 << 20
)

// ReplayBodyBytes bounds the request bodies the router buffers so that it
// can send them again to another instance. The cluster endpoint streams a
// larger body to the writer and never retries it; the reader endpoint
// buffers every query body (it must read min_lsn before it picks a
// replica), but only bigBodySlots larger than this at once.
const ReplayBodyBytes = 1 << 20

// InstanceHeader is the response header naming the instance (its catalog
// id) that answered a forwarded request.
const InstanceHeader = "Borealis-Instance"

// Roles and replica stream states, as the catalog and GET /v1/health name
// them.
const (
	RoleWriter      = "writer"
	RoleReplica     = "replica"
	StreamStreaming = "streaming"
	StreamStale     = "stale"
)

const (
	// listTimeout bounds one ListInstances call.
	listTimeout = 2 * time.Second
	// bigBodySlots is how many query bodies above ReplayBodyBytes the reader
	// endpoint holds at once; others wait for a slot.
	bigBodySlots = 4
	// maxReplicaTries is how many replicas a query tries before the writer:
	// a lagging replica answers only after waiting for min_lsn within its
	// bound, so trying all fifteen could take fifteen times that.
	maxReplicaTries = 2
	// logEvery rate-limits the log lines a failing instance or control
	// plane would repeat on every request or refresh.
	logEvery = 10 * time.Second
)

// Config configures a Router.
type Config struct {
	// Control is the control plane's gRPC address (host:port), or several
	// separated by commas (control.Dial). Required.
	Control string
	// Volume is the volume whose instances the router serves. Default
	// DefaultVolume.
	Volume string
	// MaxLag is the replication lag (a replica's health lag_ms) above which
	// the reader endpoint skips a replica. Default DefaultMaxLag (zero or
	// negative means the default).
	MaxLag time.Duration
	// Refresh is how often the router lists the volume's instances and
	// polls each one's health. Default DefaultRefresh.
	Refresh time.Duration
	// HealthTimeout bounds one health poll. Default DefaultHealthTimeout.
	HealthTimeout time.Duration
	// ClusterAddr is the cluster endpoint's address as clients reach it,
	// which the reader endpoint names when it refuses a write. Optional.
	ClusterAddr string
	// MaxBodyBytes bounds a query body on the reader endpoint (which reads
	// it whole). Default DefaultMaxBodyBytes. The cluster endpoint leaves
	// the bound to the writer.
	MaxBodyBytes int64
	// FailoverWait is how long, from its start, a request on the cluster
	// endpoint waits for a writer when there is none, or when the one it
	// tried could not be reached before the request went out (see
	// ClusterHandler). Default DefaultFailoverWait (zero means the
	// default); negative: it does not wait.
	FailoverWait time.Duration
	// Logger receives the router's log; nil discards it.
	Logger *slog.Logger
	// Transport carries forwarded requests and health polls. Default: a
	// clone of http.DefaultTransport, which Close releases.
	Transport http.RoundTripper
	// Writers says where writes go. Default: the control plane's
	// WatchWriter stream (the lease holder's registration once it is a
	// ready writer), and while that stream is not open, or the control
	// plane does not serve it, the catalog (the "writer" record with the
	// highest epoch). It is the seam through which the cluster endpoint
	// follows a failover.
	Writers WriterSource
}

// WriterSource says which instance currently takes writes.
type WriterSource interface {
	// Writer returns the writer, or false when the volume has none.
	Writer() (Target, bool)
	// Refresh brings Writer up to date; the cluster endpoint calls it when
	// the writer refused a request as not_writer or could not be reached,
	// before it retries, and every Config.Refresh while it waits for a
	// writer (Config.FailoverWait).
	Refresh(ctx context.Context) error
}

// Target is an instance requests can be sent to.
type Target struct {
	// ID is the instance's catalog id (what InstanceHeader carries).
	ID string
	// Endpoint is its SQL API: host:port, or a base URL.
	Endpoint string
	// Epoch is the writer's epoch.
	Epoch uint64
}

// writerNotifier is a WriterSource that can say when its writer changes,
// so that a request waiting for a writer is sent the moment one is there
// rather than at the next Config.Refresh.
type writerNotifier interface {
	// Changed returns a channel that is closed when Writer's answer may
	// have changed after the call.
	Changed() <-chan struct{}
}

// Router serves a volume's cluster and reader endpoints. Its methods are
// safe for concurrent use.
type Router struct {
	cfg      Config
	log      *slog.Logger
	maxLagMS float64
	// writerless: no writer serves now (the volume fails over).
	writerless atomic.Bool
	conn       *grpc.ClientConn
	ctl        pb.ControlClient
	transport  http.RoundTripper
	ownsTr     *http.Transport // the default transport, closed by Close
	health     *http.Client
	writers    WriterSource
	watch      *watchWriters // the default WriterSource; nil if Config.Writers is set
	bigBodies  chan struct{}
	limited    limiter
	metrics    *metrics
	runOnce    sync.Once

	fmu      sync.Mutex
	followed Target    // the writer the cluster endpoint last followed ("" ID: none yet)
	since    time.Time // when it began following it
	changes  uint64    // how many times it followed another writer than before

	base   context.Context // ends with Close; the pollers run under it
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	insts    map[string]*instance // by catalog id
	listed   time.Time            // when the catalog was last listed successfully
	listErr  error                // the last listing's failure, nil once one succeeds
	rr       uint64               // round-robin among equally loaded replicas
	flight   *refreshFlight       // the listing under way, if any
	lastList time.Time            // when the last successful listing began
}

// instance is one catalog record with what its polls found.
type instance struct {
	id       string
	endpoint string // fixed: a record with another endpoint is another instance
	stop     context.CancelFunc
	// pollNow asks its poller for a poll at once (a writer change: its
	// role may have changed).
	pollNow chan struct{}
	// outstanding counts the requests forwarded to it that are not done.
	outstanding atomic.Int64
	served      atomic.Uint64

	// Guarded by Router.mu.
	info     *pb.InstanceInfo
	health   *sqlclient.Health // the last successful poll's answer
	polled   time.Time         // when the last successful poll began
	pollErr  error             // the last poll's failure; nil once one succeeds
	failed   error             // a forwarded request's connection failure
	failedAt time.Time         // cleared by a poll that began after it
	// fit is live while the polls find the instance fit (pollUnfit says
	// ""), and nil otherwise: the poll that finds it unfit cancels it, with
	// an *unfitError as its cause, and the one that finds it fit again
	// starts another. A query forwarded to it ends with it, so that one
	// held by a replica that stopped answering (a SIGSTOPped process's
	// kernel still takes the connection and the request) goes elsewhere
	// once a poll fails or times out, rather than waiting for as long as
	// the replica stays stopped.
	fit    context.Context
	endFit context.CancelCauseFunc
}

// unfitError is the cause with which an instance's fit context ends.
type unfitError struct {
	id  string
	why string
}

func (e *unfitError) Error() string {
	return fmt.Sprintf("replica %s turned unfit (%s)", e.id, e.why)
}

// refreshFlight is one ListInstances call that concurrent refreshes share.
type refreshFlight struct {
	started time.Time
	done    chan struct{}
	err     error
}

// New returns a router of cfg.Volume's instances. It does not contact the
// control plane: Run lists the instances, and the first request waits for
// that listing.
func New(cfg Config) (*Router, error) {
	if cfg.Control == "" {
		return nil, errors.New("router: Config.Control (the control plane's gRPC address) is required")
	}
	if cfg.Volume == "" {
		cfg.Volume = DefaultVolume
	}
	if cfg.MaxLag <= 0 {
		cfg.MaxLag = DefaultMaxLag
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.HealthTimeout <= 0 {
		cfg.HealthTimeout = DefaultHealthTimeout
	}
	if cfg.FailoverWait == 0 {
		cfg.FailoverWait = DefaultFailoverWait
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("volume", cfg.Volume)
	// control.Dial reconnects within a second and sends keepalives: a
	// WatchWriter stream to a control plane that hangs (SIGSTOPped, or
	// cut off) breaks within seconds instead of waiting forever, and is
	// opened again on another.
	conn, err := control.Dial(cfg.Control)
	if err != nil {
		return nil, fmt.Errorf("router: control plane address %q: %w", cfg.Control, err)
	}
	r := &Router{
		cfg:       cfg,
		log:       log,
		maxLagMS:  float64(cfg.MaxLag) / float64(time.Millisecond),
		conn:      conn,
		ctl:       pb.NewControlClient(conn),
		transport: cfg.Transport,
		bigBodies: make(chan struct{}, bigBodySlots),
		insts:     map[string]*instance{},
	}
	if r.transport == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 64
		r.transport, r.ownsTr = tr, tr
	}
	r.health = &http.Client{
		Transport:     r.transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	r.writers = cfg.Writers
	if r.writers == nil {
		r.watch = newWatchWriters(r)
		r.writers = r.watch
	}
	r.metrics = newMetrics(r)
	r.base, r.cancel = context.WithCancel(context.Background())
	return r, nil
}

// Run lists the volume's instances every Config.Refresh until ctx ends or
// the router is closed, and returns nil then. Each instance listed is
// polled for its health on its own, at the same interval, until it leaves
// the catalog. A failed listing keeps the instances last listed (their
// polls still tell which are alive) and is logged. With the default
// Config.Writers, it also keeps the WatchWriter stream open.
func (r *Router) Run(ctx context.Context) error {
	if r.watch != nil {
		r.runOnce.Do(func() {
			wctx, cancel := context.WithCancel(r.base)
			stop := context.AfterFunc(ctx, cancel)
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				defer stop()
				r.watch.run(wctx)
			}()
		})
	}
	t := time.NewTicker(r.cfg.Refresh)
	defer t.Stop()
	for {
		_ = r.refreshSince(ctx, time.Now())
		w, ok := r.writers.Writer()
		r.writerless.Store(!ok)
		if r.watch == nil || !r.watch.isLive() {
			// Listings are how the writer is found: count its changes.
			r.noteWriter(w, ok)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.base.Done():
			return nil
		case <-t.C:
		}
	}
}

// Close stops the health polls and releases the control plane connection
// and the default transport's idle connections. Requests under way finish
// on the state last learnt; the router must not be used afterwards.
func (r *Router) Close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
	r.conn.Close()
	if r.ownsTr != nil {
		r.ownsTr.CloseIdleConnections()
	}
}

// refreshSince returns once a listing that began at or after since is done,
// starting one unless one is under way: concurrent callers share a call. It
// returns that listing's error.
func (r *Router) refreshSince(ctx context.Context, since time.Time) error {
	for {
		r.mu.Lock()
		if !r.lastList.IsZero() && !r.lastList.Before(since) {
			r.mu.Unlock()
			return nil
		}
		if f := r.flight; f != nil {
			r.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			if !f.started.Before(since) {
				return f.err
			}
			continue
		}
		f := &refreshFlight{started: time.Now(), done: make(chan struct{})}
		r.flight = f
		r.mu.Unlock()

		// Shared by every caller waiting: no one caller's cancellation
		// ends it.
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), listTimeout)
		f.err = r.list(lctx, f.started)
		cancel()
		r.mu.Lock()
		r.flight = nil
		close(f.done)
		r.mu.Unlock()
		return f.err
	}
}

// list calls ListInstances and applies its answer.
func (r *Router) list(ctx context.Context, started time.Time) error {
	resp, err := r.ctl.ListInstances(ctx, &pb.ListInstancesRequest{Volume: r.cfg.Volume})
	if err != nil {
		err = fmt.Errorf("listing the instances of volume %q at the control plane %s: %s", r.cfg.Volume, r.cfg.Control, status.Convert(err).Message())
		r.mu.Lock()
		r.listErr = err
		r.mu.Unlock()
		if ok, suppressed := r.limited.allow("list"); ok {
			r.log.Warn("cannot list the volume's instances; keeping those last listed", "control", r.cfg.Control, "err", err, "suppressed", suppressed)
		}
		return err
	}
	r.apply(resp.GetInstances(), started)
	return nil
}

// apply makes the catalog's records the router's instances: it starts
// polling the new ones and stops polling those that left.
func (r *Router) apply(records []*pb.InstanceInfo, started time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	seen := make(map[string]bool, len(records))
	for _, info := range records {
		if info.GetVolume() != r.cfg.Volume || info.GetId() == "" || info.GetSqlEndpoint() == "" {
			continue
		}
		seen[info.Id] = true
		in := r.insts[info.Id]
		if in != nil && in.endpoint != info.SqlEndpoint {
			r.log.Info("instance moved", "instance", in.id, "from", in.endpoint, "to", info.SqlEndpoint)
			in.retire("it moved to " + info.SqlEndpoint)
			in = nil
		}
		if in == nil {
			ctx, stop := context.WithCancel(r.base)
			in = &instance{id: info.Id, endpoint: info.SqlEndpoint, stop: stop, pollNow: make(chan struct{}, 1)}
			r.insts[in.id] = in
			r.wg.Add(1)
			go r.poll(ctx, in)
			r.log.Info("instance joined", "instance", in.id, "role", info.Role, "endpoint", in.endpoint, "epoch", info.Epoch)
		}
		in.info = info
	}
	for id, in := range r.insts {
		if !seen[id] {
			in.retire("it left the catalog")
			delete(r.insts, id)
			r.log.Info("instance left the catalog", "instance", id, "endpoint", in.endpoint)
		}
	}
	r.listed, r.listErr = time.Now(), nil
	if started.After(r.lastList) {
		r.lastList = started
	}
}

// poll asks in for its health every Config.Refresh until ctx ends.
func (r *Router) poll(ctx context.Context, in *instance) {
	defer r.wg.Done()
	c := sqlclient.Client{Endpoint: in.endpoint, HTTP: r.health}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-in.pollNow:
			t.Stop() // reset below; since Go 1.23 a stopped timer sends nothing
		}
		began := time.Now()
		pctx, cancel := context.WithTimeout(ctx, r.cfg.HealthTimeout)
		h, err := c.Health(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		was := in.pollErr
		if err != nil {
			in.pollErr = err
		} else {
			in.health, in.polled, in.pollErr = h, began, nil
			if in.failed != nil && began.After(in.failedAt) {
				in.failed = nil
			}
		}
		why := r.pollUnfit(in)
		var cut int64
		switch {
		case why != "" && in.fit != nil:
			cut = in.outstanding.Load()
			in.endFit(&unfitError{id: in.id, why: why})
			in.fit, in.endFit = nil, nil
		case why == "" && in.fit == nil:
			in.fit, in.endFit = context.WithCancelCause(context.Background())
		}
		r.mu.Unlock()
		switch {
		case err != nil && was == nil:
			r.log.Warn("health poll failed; the instance takes no queries until a poll succeeds", "instance", in.id, "endpoint", in.endpoint, "err", err)
		case err == nil && was != nil:
			r.log.Info("health poll succeeds again", "instance", in.id, "endpoint", in.endpoint)
		}
		if cut > 0 {
			r.log.Warn("an instance turned unfit with queries under way; they go elsewhere", "instance", in.id, "endpoint", in.endpoint, "why", why, "outstanding", cut)
		}
		t.Reset(r.cfg.Refresh)
	}
}

// catalogWriters is the default WriterSource: the catalog's "writer"
// record with the highest epoch (then the newest, then the lowest id).
type catalogWriters struct{ r *Router }

func (c catalogWriters) Writer() (Target, bool) {
	r := c.r
	r.mu.Lock()
	defer r.mu.Unlock()
	var best *pb.InstanceInfo
	for _, in := range r.insts {
		i := in.info
		if i.GetRole() != RoleWriter {
			continue
		}
		if best == nil || i.Epoch > best.Epoch ||
			i.Epoch == best.Epoch && (i.UpdatedUnixMs > best.UpdatedUnixMs || i.UpdatedUnixMs == best.UpdatedUnixMs && i.Id < best.Id) {
			best = i
		}
	}
	if best == nil {
		return Target{}, false
	}
	return Target{ID: best.Id, Endpoint: best.SqlEndpoint, Epoch: best.Epoch}, true
}

func (c catalogWriters) Refresh(ctx context.Context) error {
	return c.r.refreshSince(ctx, time.Now())
}

// awaitFirstListing waits, until ctx ends, for the catalog's first
// listing, so that a router just started does not answer no_writer for
// want of having asked.
func (r *Router) awaitFirstListing(ctx context.Context) {
	r.mu.Lock()
	listed := !r.lastList.IsZero()
	r.mu.Unlock()
	if !listed {
		_ = r.refreshSince(ctx, time.Time{})
	}
}

// unfit says why in cannot take queries now, or "" if it can (min_lsn
// aside). r.mu and not r.fmu must be held.
//
// The reader endpoint balances over replicas only: the writer takes
// queries there as the fallback when no replica fits, not as one more
// replica, so that reads do not take from writes while replicas can serve
// them. A replica that was promoted therefore stops being a candidate as
// soon as the router follows it as the writer, before its catalog record
// and health polls say so; the old writer becomes one once it has come
// back as a replica, registered as one and is polled streaming.
func (r *Router) unfit(in *instance) string {
	if in.info.GetRole() != RoleReplica {
		return fmt.Sprintf("catalog role %q", in.info.GetRole())
	}
	if w := r.followedWriter(); w.ID == in.id {
		return "the writer: promoted"
	}
	why := r.pollUnfit(in)
	if in.failed != nil && in.pollErr == nil && in.health != nil {
		return "a request to it failed (" + in.failed.Error() + "); waiting for a health poll"
	}
	return why
}

// pollUnfit says why in's health polls keep it from taking queries, or ""
// if they do not: its last poll failed, or none succeeded yet, or the last
// answer is not that of a ready replica streaming within Config.MaxLag.
// r.mu must be held.
func (r *Router) pollUnfit(in *instance) string {
	switch {
	case in.pollErr != nil:
		return "health poll failed: " + in.pollErr.Error()
	case in.health == nil:
		return "not polled yet"
	}
	h := in.health
	switch {
	case h.Role != RoleReplica || h.Replica == nil:
		return fmt.Sprintf("reports role %q", h.Role)
	case !h.Ready:
		return "not ready: " + orDash(h.Status)
	case r.writerless.Load():
		// No writer serves (a failover): nothing commits, so a replica
		// whose stream broke with the writer lags no further behind; it
		// serves what it applied, and min_lsn still holds for those who
		// must read their writes.
		return ""
	case h.Replica.Stream != StreamStreaming && h.Replica.Stream != StreamStale:
		return "stream " + orDash(h.Replica.Stream)
	case h.Replica.LagMS > r.maxLagMS && h.Replica.Stream == StreamStale:
		return fmt.Sprintf("stream stale, lag %.0f ms above the %s bound", h.Replica.LagMS, r.cfg.MaxLag)
	case h.Replica.LagMS > r.maxLagMS:
		return fmt.Sprintf("lag %.0f ms above the %s bound", h.Replica.LagMS, r.cfg.MaxLag)
	}
	// A replica whose stream just ended (the writer died, or it
	// resubscribes) is fit while its lag, which counts the time since it
	// last heard the writer, is within the bound.
	return ""
}

// pick chooses, among the replicas not tried that can take a query and
// have applied minLSN, the one with the fewest outstanding requests (ties
// in turn), and counts the request as outstanding on it. It returns the
// replica's fit context too, which ends when a poll finds it unfit. nil if
// none.
func (r *Router) pick(minLSN uint64, tried map[string]bool) (*instance, context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var cands, near []*instance
	for _, in := range r.insts {
		if tried[in.id] || r.unfit(in) != "" {
			continue
		}
		if in.health.VDL < minLSN {
			near = append(near, in)
			continue
		}
		cands = append(cands, in)
	}
	if len(cands) == 0 && len(tried) == 0 {
		// The VDLs polled are up to a refresh old, and a commit that just
		// returned is newer than all of them: a fit replica trails the
		// writer by far less than that, and waits (up to its
		// --min-lsn-wait) for the LSN. Only the first try goes there, so
		// that a replica that cannot reach it sends the query to the
		// writer after one wait.
		cands = near
	}
	if len(cands) == 0 {
		return nil, nil
	}
	slices.SortFunc(cands, func(a, b *instance) int { return strings.Compare(a.id, b.id) })
	start := int(r.rr % uint64(len(cands)))
	r.rr++
	var best *instance
	for i := range cands {
		c := cands[(start+i)%len(cands)]
		if best == nil || c.outstanding.Load() < best.outstanding.Load() {
			best = c
		}
	}
	best.outstanding.Add(1)
	return best, best.fit
}

// candidates counts the replicas that can take queries, and those of them
// that have applied minLSN.
func (r *Router) candidates(minLSN uint64) (healthy, applied int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, in := range r.insts {
		if r.unfit(in) == "" {
			healthy++
			if in.health.VDL >= minLSN {
				applied++
			}
		}
	}
	return healthy, applied
}

// markFailed keeps in from taking queries until a poll that begins after
// now succeeds.
func (r *Router) markFailed(in *instance, err error) {
	r.mu.Lock()
	in.failed, in.failedAt = err, time.Now()
	r.mu.Unlock()
}

// begin counts a request to the instance id as outstanding (if the catalog
// lists it) and returns what ends it.
func (r *Router) begin(id string) func() {
	r.mu.Lock()
	in := r.insts[id]
	r.mu.Unlock()
	if in == nil {
		return func() {}
	}
	in.outstanding.Add(1)
	return in.done
}

// retire stops polling in and ends its fit context, so that the queries in
// flight to it are sent elsewhere now: once it is not polled, no poll would
// end that context, and a query sent to an instance that stopped answering
// as its record expired would wait for its own deadline. Called under
// Router.mu.
func (in *instance) retire(why string) {
	in.stop()
	if in.endFit != nil {
		in.endFit(&unfitError{id: in.id, why: why})
		in.fit, in.endFit = nil, nil
	}
}

// done ends a request counted as outstanding on in.
func (in *instance) done() {
	in.outstanding.Add(-1)
	in.served.Add(1)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// limiter rate-limits log lines by key.
type limiter struct {
	mu   sync.Mutex
	last map[string]*limited
}

type limited struct {
	at         time.Time
	suppressed int
}

// allow says whether a line of key may be logged now, and how many were
// suppressed since the last one.
func (l *limiter) allow(key string) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last = map[string]*limited{}
	}
	e := l.last[key]
	now := time.Now()
	if e == nil {
		l.last[key] = &limited{at: now}
		return true, 0
	}
	if now.Sub(e.at) < logEvery {
		e.suppressed++
		return false, 0
	}
	n := e.suppressed
	e.at, e.suppressed = now, 0
	return true, n
}
