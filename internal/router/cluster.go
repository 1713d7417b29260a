package router

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// ClusterHandler returns the cluster endpoint: every request but
// GET /v1/health (the router's status) goes, unchanged, to the volume's
// current writer (Config.Writers), whose answer comes back with
// InstanceHeader naming it.
//
// When the writer refuses the request as not_writer (409), the router
// refreshes its writer and sends the request once more, if it can: the
// body must have been buffered (at most ReplayBodyBytes; a larger one is
// streamed and never sent twice).
//
// A failover leaves the volume without a writer for a few seconds: with
// no writer, or when the writer tried could not be reached before the
// request went out (its connection refused, say: nothing reached it, so
// nothing can have been applied), a request whose body was buffered waits
// for one, refreshing the catalog every Config.Refresh, up to
// Config.FailoverWait from its start (and never after its client went
// away), and is sent then; when the wait runs out it is 503 no_writer,
// saying how long it waited. A streamed body does not wait (503 no_writer
// at once, or 502 unavailable). A write that fully reached a writer which
// then failed may have committed: it is never sent again, and is 502
// unavailable saying so. A query in that case is sent once more.
func (r *Router) ClusterHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		start := time.Now()
		if isHealth(req) {
			r.serveHealth(w, req)
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

// toWriter forwards req to the writer, refreshing it and retrying as
// ClusterHandler says. why, when set, says why a query came to the writer,
// for the refusals the router writes itself. until, when not zero, is how
// long (the request having begun at start) it may wait for a writer that
// is missing or cannot be reached; when zero it does not wait, and retries
// an unreached writer once.
func (r *Router) toWriter(w http.ResponseWriter, req *http.Request, b *body, readOnly bool, why string, start, until time.Time) {
	ctx := req.Context()
	r.awaitFirstListing(ctx)
	retried := false   // the one retry after not_writer, or a query's failure
	refreshed := false // the immediate refresh after the first unreached writer
	for {
		t, ok := r.writers.Writer()
		if !ok {
			if r.pause(ctx, until) {
				continue
			}
			if clientGone(req) {
				return
			}
			if until.IsZero() {
				r.noWriter(w, why)
			} else {
				r.waitedOut(w, why, start, nil)
			}
			return
		}
		done := r.begin(t.ID)
		resp, wrote, err := r.send(ctx, req, t.Endpoint, b)
		if err != nil {
			done()
			if clientGone(req) {
				return
			}
			// Nothing reached the writer: wait for it, or for another.
			wait := !wrote && !until.IsZero()
			retry := wait || !retried && b.replayable() && (!wrote || readOnly)
			if ok, n := r.limited.allow("writer " + t.ID); ok {
				r.log.Warn("the writer failed a request", "instance", t.ID, "endpoint", t.Endpoint, "path", req.URL.Path, "sent", wrote, "retry", retry, "err", err, "suppressed", n)
			}
			switch {
			case wait && !refreshed && time.Now().Before(until):
				// As likely as not the catalog already names another.
				refreshed = true
				_ = r.refresh(ctx, until)
				continue
			case wait:
				if r.pause(ctx, until) {
					continue
				}
				if !clientGone(req) {
					r.waitedOut(w, why, start, &unreached{t, err})
				}
				return
			case retry:
				retried = true
				_ = r.writers.Refresh(ctx)
				continue
			}
			switch {
			case !wrote:
				writeError(w, http.StatusBadGateway, CodeUnavailable, "the writer %s (%s) cannot be reached: %v", t.ID, t.Endpoint, err)
			case readOnly:
				writeError(w, http.StatusBadGateway, CodeUnavailable, "the writer %s (%s) failed before it answered: %v", t.ID, t.Endpoint, err)
			default:
				writeError(w, http.StatusBadGateway, CodeUnavailable, "the writer %s (%s) failed before it answered: %v; the request may or may not have been applied", t.ID, t.Endpoint, err)
			}
			return
		}
		if resp.StatusCode == http.StatusConflict && !retried && b.replayable() && peek(resp) == CodeNotWriter {
			// A writer that was fenced, or demoted: the catalog will name
			// the new one.
			discard(resp)
			done()
			if ok, n := r.limited.allow("not_writer " + t.ID); ok {
				r.log.Info("the writer refused a request as not_writer; refreshing", "instance", t.ID, "endpoint", t.Endpoint, "epoch", t.Epoch, "suppressed", n)
			}
			retried = true
			_ = r.writers.Refresh(ctx)
			continue
		}
		err = relay(w, resp, t.ID)
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

// pause waits, for a writer to appear or come back, until the next
// refresh, and refreshes the writer. It returns false, at once, when ctx
// ended or there is no waiting left before until (zero: no waiting at all).
func (r *Router) pause(ctx context.Context, until time.Time) bool {
	if until.IsZero() || ctx.Err() != nil {
		return false
	}
	left := time.Until(until)
	if left <= 0 {
		return false
	}
	t := time.NewTimer(min(r.cfg.Refresh, left))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
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

// unreached is the writer a request last tried and could not reach.
type unreached struct {
	t   Target
	err error
}

// waitedOut answers 503 no_writer for a request that waited from start
// for a writer in vain; last, when set, is the writer it last tried.
func (r *Router) waitedOut(w http.ResponseWriter, why string, start time.Time, last *unreached) {
	waited := time.Since(start).Round(time.Millisecond)
	if last != nil {
		var msg strings.Builder
		if why != "" {
			msg.WriteString(why + ", and ")
		}
		fmt.Fprintf(&msg, "the writer of volume %q, %s (%s), cannot be reached: %v; waited %s (--failover-wait %s) for it or another writer; retry once a writer has started or a failover is done",
			r.cfg.Volume, last.t.ID, last.t.Endpoint, last.err, waited, r.cfg.FailoverWait)
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
	if listErr != nil {
		fmt.Fprintf(&msg, " as last listed (the latest listing failed: %v)", listErr)
	}
	msg.WriteString(waited)
	msg.WriteString("; retry once a writer has started or a failover is done")
	writeError(w, http.StatusServiceUnavailable, CodeNoWriter, "%s", msg.String())
}
