package router

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
)

// ClusterHandler returns the cluster endpoint: every request but
// GET /v1/health (the router's status) and GET /metrics (its metrics) goes,
// unchanged, to the volume's current writer (Config.Writers), whose answer
// comes back with InstanceHeader naming it.
//
// A failover leaves the volume without a writer that serves for a moment.
// A request whose body was buffered (at most ReplayBodyBytes) waits for
// one, up to Config.FailoverWait from its start (and never after its
// client went away), and is sent the moment the WriterSource names one
// (at once when it says it changed, else at the next Config.Refresh) in
// these cases, in which it provably did not run:
//
//   - there is no writer;
//   - the writer could not be reached before the whole request went out
//     (its connection refused, say: nothing reached it);
//   - the writer refused it before running anything: 503 not_ready or
//     409 not_writer, in the words a writer that is not serving (starting,
//     recovering, fenced, draining or stepping down) or a replica uses
//     (see refusedUnrun).
//
// Queries (readOnly) also wait, and are sent again, when the writer failed
// after they reached it. When the wait runs out the request is 503
// no_writer, saying how long it waited and what the last writer tried
// did. A write that reached a writer which then failed before it
// answered, or which answered not_ready or not_writer in words that do
// not say that nothing ran, may have committed: it is never sent again,
// and is 502 outcome_unknown, saying so.
//
// A streamed body (larger than ReplayBodyBytes) is sent once: it does not
// wait (503 no_writer at once, or 502 unavailable when the writer cannot
// be reached), and a writer's refusal of it comes back as it is.
func (r *Router) ClusterHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		start := time.Now()
		switch {
		case isHealth(req):
			r.serveHealth(w, req)
			return
		case isMetrics(req):
			r.MetricsHandler().ServeHTTP(w, req)
			return
		}
		b, err := readBody(req)
		if err != nil {
			if !clientGone(req) {
				writeError(w, http.StatusBadRequest, CodeBadRequest, "reading the request body: %v", err)
			}
			return
		}
		var until time.Time
		if r.cfg.FailoverWait > 0 && b.replayable() {
			until = start.Add(r.cfg.FailoverWait)
		}
		r.toWriter(w, req, b, readOnly(req), "", start, until)
	})
}

// readOnly says whether req changes nothing, so that sending it twice is
// harmless.
func readOnly(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	return req.URL.Path == "/v1/query"
}

func isHealth(req *http.Request) bool {
	return req.URL.Path == "/v1/health" && (req.Method == http.MethodGet || req.Method == http.MethodHead)
}

// Error codes of the SQL API that the cluster endpoint reads in a
// writer's refusal.
const (
	// CodeNotReady: the instance does not serve yet, or any more (503).
	CodeNotReady = "not_ready"
)

// refusedUnrun says whether a writer's refusal, of code and message, says
// that it ran nothing of the request, so that the request can go to the
// next writer. The SQL API answers not_ready and not_writer both before
// it runs anything and when a request under way meets the end of its
// writer (fenced mid-commit, or closed): the latter may have committed.
// Only the refusals made before anything ran are recognised here, by
// their words (internal/instance's NotReadyError, and a replica's
// refusals in internal/dbserver); a refusal in other words is taken as
// one whose outcome is unknown, so that a change of wording can cost a
// resend, never make one of a write that ran.
func refusedUnrun(code, msg string) bool {
	switch code {
	case CodeNotReady:
		// "the writer of volume V is not ready: STATUS", from Writable or
		// Readable; "the writer of volume V stopped while the request
		// ran" is the other kind.
		if strings.HasPrefix(msg, "the writer of volume ") && strings.Contains(msg, " is not ready: ") {
			return true
		}
		// A replica (an old writer back as one, or one not promoted yet)
		// runs nothing while not ready.
		return strings.HasPrefix(msg, "replica ") && (strings.Contains(msg, " is not ready: ") || strings.Contains(msg, " has not attached to the writer's redo stream yet"))
	case CodeNotWriter:
		// A replica never writes. A writer's own not_writer (fenced) is
		// answered in the same words before and after it ran the request.
		return strings.HasPrefix(msg, "instance ") && strings.Contains(msg, " is a read replica of volume ") && strings.Contains(msg, " and never writes")
	}
	return false
}

// toWriter forwards req to the writer, waiting and resending as
// ClusterHandler says. why, when set, says why a query came to the writer,
// for the refusals the router writes itself. until, when not zero, is how
// long (the request having begun at start) it may wait for a writer; when
// zero it does not wait, and sends once more (after a refresh) a request
// that did not reach the writer, or that the writer refused unrun.
func (r *Router) toWriter(w http.ResponseWriter, req *http.Request, b *body, readOnly bool, why string, start, until time.Time) {
	ctx := req.Context()
	r.awaitFirstListing(ctx)
	retried := false   // the one retry when not waiting
	refreshed := false // the immediate refresh after the first unreached writer
	var last *lastTry  // what the writer last tried did, while waiting
	// The time spent waiting for a writer, for the failover wait metric:
	// held is when the current wait began (zero: not waiting).
	var waited time.Duration
	var held time.Time
	didWait := false
	outcome := WaitSent
	startHold := func() {
		if held.IsZero() {
			held, didWait = time.Now(), true
			r.metrics.waiting.Add(1)
		}
	}
	endHold := func() {
		if !held.IsZero() {
			waited += time.Since(held)
			held = time.Time{}
			r.metrics.waiting.Add(-1)
		}
	}
	defer func() {
		endHold()
		if didWait {
			r.metrics.failoverWait.WithLabelValues(outcome).Observe(waited.Seconds())
		}
	}()
	// hold waits, from a state in which the request cannot be sent, for
	// the writer to change or the next refresh; false: it cannot wait (any
	// longer), and outcome says why.
	backoff := refusedRetryMin
	hold := func(changed <-chan struct{}, tick time.Duration) bool {
		if until.IsZero() {
			return false
		}
		startHold()
		if !r.pause(ctx, until, changed, tick) {
			outcome = WaitExpired
			if clientGone(req) {
				outcome = WaitCanceled
			}
			return false
		}
		return true
	}
	for {
		changed := r.writerChanged()
		t, ok := r.writers.Writer()
		r.noteWriter(t, ok)
		if !ok {
			if hold(changed, r.cfg.Refresh) {
				continue
			}
			if clientGone(req) {
				return
			}
			if until.IsZero() {
				r.noWriter(w, why)
			} else {
				r.waitedOut(w, why, start, last)
			}
			return
		}
		endHold()
		if last != nil {
			r.metrics.resent.Add(1)
		}
		done := r.begin(t.ID)
		sctx, stopWatch, release := r.whileWriter(ctx, t)
		resp, wrote, err := r.send(sctx, req, t.Endpoint, b)
		stopWatch()
		if err != nil {
			release()
			if d := context.Cause(sctx); errors.Is(d, errDeposed) {
				err = d
			}
			done()
			if !clientGone(req) {
				// The writer may be dead: its other pooled connections
				// are then dead too, and a request sent on one would have
				// an unknown outcome; one that dials finds out before it
				// sends anything.
				r.dropIdleConns()
			}
			if clientGone(req) {
				outcome = WaitCanceled
				return
			}
			// Nothing reached the writer, or a query did: wait for it,
			// or for another.
			safe := !wrote || readOnly
			wait := safe && !until.IsZero()
			retry := !wait && !retried && b.replayable() && safe
			if ok, n := r.limited.allow("writer " + t.ID); ok {
				r.log.Warn("the writer failed a request", "instance", t.ID, "endpoint", t.Endpoint, "path", req.URL.Path, "sent", wrote, "wait", wait, "retry", retry, "err", err, "suppressed", n)
			}
			switch {
			case wait:
				last = &lastTry{t: t, what: fmt.Sprintf("cannot be reached: %v", err)}
				if wrote {
					last.what = fmt.Sprintf("failed before it answered: %v", err)
				}
				if !refreshed && time.Now().Before(until) {
					// As likely as not the WriterSource already names
					// another.
					refreshed = true
					startHold()
					_ = r.refresh(ctx, until)
					continue
				}
				if hold(changed, r.cfg.Refresh) {
					continue
				}
				if !clientGone(req) {
					r.waitedOut(w, why, start, last)
				}
				return
			case retry:
				retried = true
				last = &lastTry{t: t}
				_ = r.writers.Refresh(ctx)
				continue
			}
			switch {
			case !wrote:
				writeError(w, http.StatusBadGateway, CodeUnavailable, "the writer %s (%s) cannot be reached: %v", t.ID, t.Endpoint, err)
			case readOnly:
				writeError(w, http.StatusBadGateway, CodeUnavailable, "the writer %s (%s) failed before it answered: %v", t.ID, t.Endpoint, err)
			default:
				r.outcomeUnknown(w, t, fmt.Sprintf("failed before it answered: %v", err))
			}
			return
		}
		if resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusConflict {
			if code, msg := peekError(resp); code == CodeNotReady || code == CodeNotWriter {
				unrun := readOnly || refusedUnrun(code, msg)
				switch {
				case !unrun:
					// It reached the writer, which gave up on it: it
					// may have committed before that.
					discard(resp)
					release()
					done()
					r.outcomeUnknown(w, t, fmt.Sprintf("answered %s: %s", code, msg))
					return
				case b.replayable() && !until.IsZero():
					// Not the writer yet (promoting), or no longer
					// (draining, stepping down, fenced, a replica
					// again): the request did not run; wait for the
					// writer that serves.
					discard(resp)
					release()
					done()
					if ok, n := r.limited.allow(code + " " + t.ID); ok {
						r.log.Info("the writer refused a request before running it; holding it for the writer that serves", "instance", t.ID, "endpoint", t.Endpoint, "epoch", t.Epoch, "code", code, "message", msg, "suppressed", n)
					}
					last = &lastTry{t: t, what: fmt.Sprintf("answered %s: %s", code, msg)}
					// A writer that just refused is asked again only
					// after a while, unless the WriterSource names
					// another first.
					if hold(changed, backoff) {
						backoff = min(2*backoff, r.cfg.Refresh)
						continue
					}
					if !clientGone(req) {
						r.waitedOut(w, why, start, last)
					}
					return
				case b.replayable() && !retried:
					discard(resp)
					release()
					done()
					retried = true
					last = &lastTry{t: t}
					_ = r.writers.Refresh(ctx)
					continue
				}
			}
		}
		err = relay(w, resp, t.ID)
		release()
		done()
		if err != nil {
			if !clientGone(req) {
				if ok, n := r.limited.allow("writer body " + t.ID); ok {
					r.log.Warn("the writer's answer was cut short; aborting the response", "instance", t.ID, "endpoint", t.Endpoint, "path", req.URL.Path, "err", err, "suppressed", n)
				}
			}
			abortResponse()
		}
		return
	}
}

// errDeposed ends a request in flight to a writer that another replaced.
var errDeposed = errors.New("it was replaced by a new writer before it answered (a writer paused past its lease, say); storage fences its epoch")

// deposedGrace is how long a request in flight to a writer that another
// replaced may still take before the router gives up on it.
const deposedGrace = 2 * time.Second

func (r *Router) whileWriter(ctx context.Context, t Target) (sctx context.Context, stop, release func()) {
	ch := r.writerChanged()
	if ch == nil {
		return ctx, func() {}, func() {}
	}
	sctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-sctx.Done():
				return
			case <-ch:
			}
			ch = r.writerChanged()
			if n, ok := r.writers.Writer(); ok && (n.ID != t.ID || n.Epoch > t.Epoch) {
				// A deposed writer that runs answers soon (its lease guard
				// refuses, storage fences its commit, or, handing over, it
				// finishes what it has): give it that long.
				select {
				case <-done:
				case <-sctx.Done():
				case <-time.After(deposedGrace):
					cancel(errDeposed)
				}
				return
			}
		}
	}()
	var once sync.Once
	return sctx, func() { once.Do(func() { close(done) }) }, func() { cancel(nil) }
}

// dropIdleConns closes the transport's idle connections.
func (r *Router) dropIdleConns() {
	if c, ok := r.transport.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// refusedRetryMin is how soon a request a writer refused unrun is sent to
// it again, if the WriterSource names no other first; the delay doubles
// up to Config.Refresh, so that a writer recovering for long is not asked
// by every held request many times a second.
const refusedRetryMin = 10 * time.Millisecond

// outcomeUnknown answers 502 outcome_unknown for a write that reached the
// writer t, which then did what (failed, gave up on it).
func (r *Router) outcomeUnknown(w http.ResponseWriter, t Target, what string) {
	r.metrics.outcomeUnknown.Add(1)
	if ok, n := r.limited.allow("unknown " + t.ID); ok {
		r.log.Warn("a write reached the writer, which did not answer it: its outcome is unknown, and it is not sent again", "instance", t.ID, "endpoint", t.Endpoint, "epoch", t.Epoch, "what", what, "suppressed", n)
	}
	writeError(w, http.StatusBadGateway, CodeOutcomeUnknown, "the writer %s (%s) %s; the write reached it, so its outcome is unknown: it may or may not have been applied. The router did not send it again; check whether it took effect before retrying it", t.ID, t.Endpoint, what)
}

// pause waits, for a writer to appear, come back or serve, until changed
// is closed or tick passes (refreshing the writer then). It returns false,
// at once, when ctx ended or there is no waiting left before until (zero:
// no waiting at all).
func (r *Router) pause(ctx context.Context, until time.Time, changed <-chan struct{}, tick time.Duration) bool {
	if until.IsZero() || ctx.Err() != nil {
		return false
	}
	left := time.Until(until)
	if left <= 0 {
		return false
	}
	t := time.NewTimer(min(tick, left))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-changed:
		return true
	case <-t.C:
	}
	_ = r.refresh(ctx, until)
	return ctx.Err() == nil
}

// refresh brings the writer up to date, giving up at until (if not zero).
func (r *Router) refresh(ctx context.Context, until time.Time) error {
	if !until.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, until)
		defer cancel()
	}
	return r.writers.Refresh(ctx)
}

// lastTry is the writer a request last tried, and what it did (""
// when the request was retried without waiting).
type lastTry struct {
	t    Target
	what string
}

// waitedOut answers 503 no_writer for a request that waited from start
// for a writer in vain; last, when set, is the writer it last tried.
func (r *Router) waitedOut(w http.ResponseWriter, why string, start time.Time, last *lastTry) {
	waited := time.Since(start).Round(time.Millisecond)
	if last != nil && last.what != "" {
		var msg strings.Builder
		if why != "" {
			msg.WriteString(why + ", and ")
		}
		fmt.Fprintf(&msg, "the writer of volume %q, %s (%s), %s; waited %s (--failover-wait %s) for it or another writer to serve; the request was not run: retry it once a writer has started or a failover is done",
			r.cfg.Volume, last.t.ID, last.t.Endpoint, last.what, waited, r.cfg.FailoverWait)
		writeError(w, http.StatusServiceUnavailable, CodeNoWriter, "%s", msg.String())
		return
	}
	r.noWriterMsg(w, why, fmt.Sprintf("; waited %s (--failover-wait %s) for one", waited, r.cfg.FailoverWait))
}

func (r *Router) noWriter(w http.ResponseWriter, why string) { r.noWriterMsg(w, why, "") }

// noWriterMsg answers 503 no_writer, with waited (if not "") after the
// catalog's part of the message.
func (r *Router) noWriterMsg(w http.ResponseWriter, why, waited string) {
	r.mu.Lock()
	listErr := r.listErr
	r.mu.Unlock()
	var msg strings.Builder
	if why != "" {
		msg.WriteString(why + ", and ")
	}
	fmt.Fprintf(&msg, "volume %q has no writer registered with the control plane", r.cfg.Volume)
	if r.watch != nil {
		msg.WriteString(r.watch.failoverNote())
	}
	if listErr != nil {
		fmt.Fprintf(&msg, " as last listed (the latest listing failed: %v)", listErr)
	}
	msg.WriteString(waited)
	if waited != "" {
		msg.WriteString("; the request was not run: retry it once a writer has started or a failover is done")
	} else {
		msg.WriteString("; retry once a writer has started or a failover is done")
	}
	writeError(w, http.StatusServiceUnavailable, CodeNoWriter, "%s", msg.String())
}
