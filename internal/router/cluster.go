package router

import (
	"fmt"
	"net/http"
	"strings"
)

// ClusterHandler returns the cluster endpoint: every request but
// GET /v1/health (the router's status) goes, unchanged, to the volume's
// current writer (Config.Writers), whose answer comes back with
// InstanceHeader naming it.
//
// With no writer it answers 503 no_writer. When the writer refuses the
// request as not_writer (409), or cannot be reached, the router refreshes
// its writer and sends the request once more, if it can: the body must have
// been buffered (at most ReplayBodyBytes; a larger one is streamed and
// never sent twice), and a write is sent again only if it never fully
// reached the first writer (a refused connection, say), since one that did
// may have committed. A failure it does not retry is 502 unavailable.
func (r *Router) ClusterHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
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
		r.toWriter(w, req, b, readOnly(req), "")
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

// toWriter forwards req to the writer, refreshing it and retrying once as
// ClusterHandler says. why, when set, says why a query came to the writer,
// for the refusals the router writes itself.
func (r *Router) toWriter(w http.ResponseWriter, req *http.Request, b *body, readOnly bool, why string) {
	r.awaitFirstListing(req.Context())
	for attempt := 0; ; attempt++ {
		t, ok := r.writers.Writer()
		if !ok {
			r.noWriter(w, why)
			return
		}
		done := r.begin(t.ID)
		resp, wrote, err := r.send(req.Context(), req, t.Endpoint, b)
		if err != nil {
			done()
			if clientGone(req) {
				return
			}
			retry := attempt == 0 && b.replayable() && (!wrote || readOnly)
			if ok, n := r.limited.allow("writer " + t.ID); ok {
				r.log.Warn("the writer failed a request", "instance", t.ID, "endpoint", t.Endpoint, "path", req.URL.Path, "sent", wrote, "retry", retry, "err", err, "suppressed", n)
			}
			if retry {
				_ = r.writers.Refresh(req.Context())
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
		if resp.StatusCode == http.StatusConflict && attempt == 0 && b.replayable() && peek(resp) == CodeNotWriter {
			// A writer that was fenced, or demoted: the catalog will name
			// the new one.
			discard(resp)
			done()
			if ok, n := r.limited.allow("not_writer " + t.ID); ok {
				r.log.Info("the writer refused a request as not_writer; refreshing", "instance", t.ID, "endpoint", t.Endpoint, "epoch", t.Epoch, "suppressed", n)
			}
			_ = r.writers.Refresh(req.Context())
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

func (r *Router) noWriter(w http.ResponseWriter, why string) {
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
	msg.WriteString("; retry once a writer has started or a failover is done")
	writeError(w, http.StatusServiceUnavailable, CodeNoWriter, "%s", msg.String())
}
