package router

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Outcomes of a request that waited for a writer (the outcome label of
// borealis_router_failover_wait_seconds).
const (
	// WaitSent: a writer came (or answered again) and the request was sent.
	WaitSent = "sent"
	// WaitExpired: Config.FailoverWait ran out; it was answered no_writer.
	WaitExpired = "expired"
	// WaitCanceled: its client went away first.
	WaitCanceled = "canceled"
)

// metrics are the router's Prometheus metrics, on a registry of its own
// (several routers may run in one process).
type metrics struct {
	reg            *prometheus.Registry
	failoverWait   *prometheus.HistogramVec
	outcomeUnknown atomic.Uint64
	resent         atomic.Uint64
	waiting        atomic.Int64
}

func newMetrics(r *Router) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	labels := prometheus.Labels{"volume": r.cfg.Volume}
	m.failoverWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "borealis", Subsystem: "router", Name: "failover_wait_seconds",
		Help: "How long requests on the cluster endpoint waited for a writer (none, unreachable, or not ready yet), by outcome: sent, expired (no_writer), canceled. Requests that did not wait are not counted.",
		// From a writer that comes back at once to the whole default
		// --failover-wait.
		Buckets:     []float64{.005, .01, .025, .05, .1, .25, .5, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 30},
		ConstLabels: labels,
	}, []string{"outcome"})
	m.reg.MustRegister(m.failoverWait)
	counter := func(name, help string, f func() uint64) {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "borealis", Subsystem: "router", Name: name, Help: help, ConstLabels: labels,
		}, func() float64 { return float64(f()) }))
	}
	gauge := func(name, help string, f func() float64) {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "borealis", Subsystem: "router", Name: name, Help: help, ConstLabels: labels,
		}, f))
	}
	counter("writer_changes_total", "Times the cluster endpoint began following another writer than the one before (a failover or switchover; the first writer found is not a change).", func() uint64 {
		r.fmu.Lock()
		defer r.fmu.Unlock()
		return r.changes
	})
	counter("outcome_unknown_total", "Writes answered 502 outcome_unknown: they reached a writer that failed or stepped down before answering, and were not sent again.", m.outcomeUnknown.Load)
	counter("resent_total", "Requests sent again to a writer after the one tried could not be reached, or refused them before running them (not_ready, not_writer).", m.resent.Load)
	gauge("writer_epoch", "The epoch of the writer the cluster endpoint follows (0: none).", func() float64 {
		t, _ := r.writers.Writer()
		return float64(t.Epoch)
	})
	gauge("failover_waiting", "Requests on the cluster endpoint waiting for a writer now.", func() float64 {
		return float64(m.waiting.Load())
	})
	gauge("writer_watch_live", "1 while the router follows the writer through an open WatchWriter stream, 0 while it relies on the catalog's listings.", func() float64 {
		if r.watch != nil && r.watch.isLive() {
			return 1
		}
		return 0
	})
	return m
}

// Collector exposes the router's metrics, for a caller that serves them on
// a registry of its own.
func (r *Router) Collector() prometheus.Collector { return r.metrics.reg }

// MetricsHandler serves the router's metrics; both endpoints answer
// GET /metrics with it.
func (r *Router) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(r.metrics.reg, promhttp.HandlerOpts{})
}

func isMetrics(req *http.Request) bool {
	return req.URL.Path == "/metrics" && (req.Method == http.MethodGet || req.Method == http.MethodHead)
}

// noteWriter records the writer the cluster endpoint follows now (ok:
// there is one), counting a change when it is another than the last one.
func (r *Router) noteWriter(t Target, ok bool) {
	if !ok {
		return
	}
	r.fmu.Lock()
	prev := r.followed
	if prev == t {
		r.fmu.Unlock()
		return
	}
	r.followed, r.since = t, time.Now()
	if prev.ID != "" {
		r.changes++
	}
	r.fmu.Unlock()
	if prev.ID == "" {
		r.log.Info("the cluster endpoint follows the writer", "instance", t.ID, "endpoint", t.Endpoint, "epoch", t.Epoch)
	} else {
		r.log.Info("the cluster endpoint follows a new writer", "instance", t.ID, "endpoint", t.Endpoint, "epoch", t.Epoch, "was", prev.ID, "was_endpoint", prev.Endpoint, "was_epoch", prev.Epoch)
	}
}

// followedWriter is the writer the cluster endpoint followed last (zero
// before the first).
func (r *Router) followedWriter() Target {
	r.fmu.Lock()
	defer r.fmu.Unlock()
	return r.followed
}

// kick lists the catalog and polls every instance now, in the background.
func (r *Router) kick() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	for _, in := range r.insts {
		select {
		case in.pollNow <- struct{}{}:
		default:
		}
	}
	r.mu.Unlock()
	// Not counted in r.wg: a listing after Close fails at once on the
	// closed connection, and applies nothing (apply checks r.closed).
	go func() { _ = r.refreshSince(r.base, time.Now()) }()
}

// writerChanged is the channel closed at the writer's next change, if the
// WriterSource tells; nil (never) otherwise.
func (r *Router) writerChanged() <-chan struct{} {
	if n, ok := r.writers.(writerNotifier); ok {
		return n.Changed()
	}
	return nil
}

func (ws *watchWriters) isLive() bool {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.live
}
