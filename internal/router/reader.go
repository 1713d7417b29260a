package router

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// ReaderHandler returns the reader endpoint. It serves POST /v1/query, and
// GET /v1/health (the router's status); it refuses anything else with 409
// not_writer naming the cluster endpoint, since it never writes.
//
// A query goes to a replica that can take it: its last health poll
// succeeded and says it is ready, streaming from the writer, no more than
// Config.MaxLag behind, and, if the query asks for min_lsn, that it has
// applied that LSN. Among those it picks the one with the fewest
// outstanding requests, in turn when several have as few. The body goes
// unchanged. If the replica answers 503 (lagging, not_ready, ...) or cannot
// be reached, the query goes to another (at most maxReplicaTries replicas
// in all), then to the writer, which also honours min_lsn; so does a query
// no replica can take. The answer carries InstanceHeader naming who gave
// it.
func (r *Router) ReaderHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch {
		case isHealth(req):
			r.serveHealth(w, req)
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
	b := &body{buf: buf}
	tried := map[string]bool{}
	var refusals []string
	for range maxReplicaTries {
		in := r.pick(q.MinLSN, tried)
		if in == nil {
			break
		}
		tried[in.id] = true
		resp, _, err := r.send(req, in.endpoint, b)
		if err != nil {
			in.done()
			if clientGone(req) {
				return
			}
			r.markFailed(in, err)
			if ok, n := r.limited.allow("replica " + in.id); ok {
				r.log.Warn("a replica failed a query; it takes none until a health poll succeeds", "instance", in.id, "endpoint", in.endpoint, "err", err, "suppressed", n)
			}
			refusals = append(refusals, fmt.Sprintf("%s (%v)", in.id, err))
			continue
		}
		if resp.StatusCode == http.StatusServiceUnavailable {
			code := peek(resp)
			discard(resp)
			in.done()
			refusals = append(refusals, fmt.Sprintf("%s (%s)", in.id, orDash(code)))
			continue
		}
		relay(w, resp, in.id)
		in.done()
		return
	}
	var why string
	if len(refusals) > 0 {
		why = "no replica answered the query: " + strings.Join(refusals, ", ")
	} else if healthy, _ := r.candidates(q.MinLSN); healthy == 0 {
		why = "no replica can take queries"
	} else {
		why = fmt.Sprintf("no replica has applied min_lsn %d", q.MinLSN)
	}
	r.toWriter(w, req, b, true, why)
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
