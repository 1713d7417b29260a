package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// ReaderHandler returns the reader endpoint. It serves POST /v1/query,
// GET /v1/health (the router's status) and GET /metrics (its metrics); it
// refuses anything else with 409
// not_writer naming the cluster endpoint, since it never writes.
//
// A query goes to a replica that can take it: its last health poll
// succeeded and says it is ready, streaming from the writer, no more than
// Config.MaxLag behind, and, if the query asks for min_lsn, that it has
// applied that LSN. Among those it picks the one with the fewest
// outstanding requests, in turn when several have as few. The body goes
// unchanged. If the replica answers 503 (lagging, not_ready, ...), cannot
// be reached, or turns unfit (a health poll fails, times out, or finds it
// not ready, not streaming or lagging) before its answer begins, the query
// goes to another (at most maxReplicaTries replicas in all), then to the
// writer, which also honours min_lsn; so does a query no replica can take.
// A replica that turns unfit or fails while its answer's body is under way
// has the response aborted. The answer carries InstanceHeader naming who
// gave it.
func (r *Router) ReaderHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch {
		case isHealth(req):
			r.serveHealth(w, req)
		case isMetrics(req):
			r.MetricsHandler().ServeHTTP(w, req)
		case req.URL.Path == "/v1/query" && req.Method == http.MethodPost:
			r.serveQuery(w, req)
		case req.URL.Path == "/v1/query":
			w.Header().Set("Allow", http.MethodPost)
			writeError(w, http.StatusMethodNotAllowed, CodeBadRequest, "%s %s: this endpoint takes POST", req.Method, req.URL.Path)
		default:
			where := "the cluster endpoint"
			if r.cfg.ClusterAddr != "" {
				where += " at " + r.cfg.ClusterAddr
			}
			writeError(w, http.StatusConflict, CodeNotWriter, "%s %s: this is the reader endpoint of volume %q, which serves only POST /v1/query and GET /v1/health; writes go to %s",
				req.Method, req.URL.Path, r.cfg.Volume, where)
		}
	})
}

func (r *Router) serveQuery(w http.ResponseWriter, req *http.Request) {
	buf, release, ok := r.readQuery(w, req)
	if !ok {
		return
	}
	defer release()
	r.awaitFirstListing(req.Context())
	var q struct {
		MinLSN uint64 `json:"min_lsn"`
	}
	if err := json.Unmarshal(buf, &q); err != nil {
		writeError(w, http.StatusBadRequest, CodeBadRequest, "the body is not a query: %v; want a JSON object with sql, params and an optional min_lsn (an unsigned integer)", err)
		return
	}
	// Buffered whole, the body can be sent again to each instance tried.
	b := &body{buf: buf}
	tried := map[string]bool{}
	var refusals []string
	for range maxReplicaTries {
		in, fit := r.pick(q.MinLSN, tried)
		if in == nil {
			break
		}
		tried[in.id] = true
		answered, refusal := r.tryReplica(w, req, in, fit, b)
		if answered {
			return
		}
		refusals = append(refusals, refusal)
	}
	var why string
	if len(refusals) > 0 {
		why = "no replica answered the query: " + strings.Join(refusals, ", ")
	} else if healthy, _ := r.candidates(q.MinLSN); healthy == 0 {
		why = "no replica can take queries"
	} else {
		why = fmt.Sprintf("no replica has applied min_lsn %d", q.MinLSN)
	}
	r.toWriter(w, req, b, true, why, time.Time{}, time.Time{})
}

// tryReplica forwards the query to the replica in, which pick counted as
// outstanding, and gives it back. The attempt ends when the client goes
// away, and when in's fit context (fit) ends, that is when a health poll
// finds in unfit: a replica that stopped answering (SIGSTOPped, its kernel
// still takes the connection and the request) gives no error, and only its
// failing polls tell. No other bound applies: a long query goes on for as
// long as the replica stays fit.
//
// It returns whether the query is done with (answered, or its client
// gone), and if not, why in did not answer: it refused with 503, failed,
// or turned unfit before its answer's headers came; the query is read-only,
// so it can go elsewhere. If in turns unfit (or fails) while its answer's
// body is under way, part of the answer went out and it cannot: the
// response is aborted, so that the client sees an error rather than a wait
// for as long as the replica stays stopped, or a short answer.
func (r *Router) tryReplica(w http.ResponseWriter, req *http.Request, in *instance, fit context.Context, b *body) (answered bool, refusal string) {
	defer in.done()
	ctx, cancel := context.WithCancelCause(req.Context())
	defer cancel(nil)
	stop := context.AfterFunc(fit, func() { cancel(context.Cause(fit)) })
	defer stop()

	resp, _, err := r.send(ctx, req, in.endpoint, b)
	if err != nil {
		if clientGone(req) {
			return true, ""
		}
		if ue := unfitCause(ctx); ue != nil {
			if ok, n := r.limited.allow("unfit " + in.id); ok {
				r.log.Warn("a replica turned unfit with a query under way; sending the query on", "instance", in.id, "endpoint", in.endpoint, "why", ue.why, "suppressed", n)
			}
			return false, fmt.Sprintf("%s (turned unfit with the query under way: %s)", in.id, ue.why)
		}
		r.markFailed(in, err)
		if ok, n := r.limited.allow("replica " + in.id); ok {
			r.log.Warn("a replica failed a query; it takes none until a health poll succeeds", "instance", in.id, "endpoint", in.endpoint, "err", err, "suppressed", n)
		}
		return false, fmt.Sprintf("%s (%v)", in.id, err)
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		code, _ := peekError(resp)
		discard(resp)
		return false, fmt.Sprintf("%s (%s)", in.id, orDash(code))
	}
	if err := relay(w, resp, in.id); err != nil {
		if !clientGone(req) {
			if ue := unfitCause(ctx); ue != nil {
				err = ue
			}
			if ok, n := r.limited.allow("replica body " + in.id); ok {
				r.log.Warn("a replica's answer was cut short; aborting the response", "instance", in.id, "endpoint", in.endpoint, "err", err, "suppressed", n)
			}
		}
		abortResponse()
	}
	return true, ""
}

// unfitCause returns the *unfitError that ended ctx, or nil.
func unfitCause(ctx context.Context) *unfitError {
	var ue *unfitError
	if ctx.Err() != nil && errors.As(context.Cause(ctx), &ue) {
		return ue
	}
	return nil
}

// readQuery reads a query's body whole, of at most Config.MaxBodyBytes. A
// body above ReplayBodyBytes first takes one of bigBodySlots, which release
// gives back. On failure it has answered the request itself.
func (r *Router) readQuery(w http.ResponseWriter, req *http.Request) (buf []byte, release func(), ok bool) {
	limit := r.cfg.MaxBodyBytes
	tooLarge := func() {
		writeError(w, http.StatusRequestEntityTooLarge, CodeBodyTooLarge, "the query body is larger than the router's %d-byte bound", limit)
	}
	if req.ContentLength > limit {
		tooLarge()
		return nil, nil, false
	}
	release = func() {}
	take := func() bool {
		select {
		case r.bigBodies <- struct{}{}:
			release = func() { <-r.bigBodies }
			return true
		case <-req.Context().Done():
			return false
		}
	}
	if req.ContentLength > ReplayBodyBytes && !take() {
		return nil, nil, false
	}
	rd := http.MaxBytesReader(w, req.Body, limit)
	buf, err := io.ReadAll(io.LimitReader(rd, ReplayBodyBytes+1))
	if err == nil && len(buf) > ReplayBodyBytes {
		if req.ContentLength <= ReplayBodyBytes && !take() {
			return nil, nil, false
		}
		var rest []byte
		rest, err = io.ReadAll(rd)
		buf = append(buf, rest...)
	}
	if err != nil {
		release()
		switch {
		case errors.As(err, new(*http.MaxBytesError)):
			tooLarge()
		case !clientGone(req):
			writeError(w, http.StatusBadRequest, CodeBadRequest, "reading the request body: %v", err)
		}
		return nil, nil, false
	}
	return buf, release, true
}
