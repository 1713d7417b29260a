package dbserver

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exposes the instance's state and counters, and its volume
// client's, as Prometheus metrics. The volume client changes when the
// instance starts again after losing the lease, so this one asks for the
// current one at every scrape.
func (s *Instance) Collector() prometheus.Collector { return &collector{s: s} }

type collector struct{ s *Instance }

var (
	descReady    = prometheus.NewDesc("borealis_db_ready", "1 when the instance serves SQL.", []string{"role", "volume"}, nil)
	descEpoch    = prometheus.NewDesc("borealis_db_epoch", "The volume epoch the instance writes under.", []string{"role", "volume"}, nil)
	descCommits  = prometheus.NewDesc("borealis_db_commits_total", "Transactions that reached storage as an MTR, since the volume was opened.", []string{"role", "volume"}, nil)
	descFull     = prometheus.NewDesc("borealis_db_full_page_bytes_total", "What shipping the whole dirty pages of those transactions would have taken.", []string{"role", "volume"}, nil)
	descExecutes = prometheus.NewDesc("borealis_db_executes_total", "POST /v1/execute requests.", []string{"role", "volume"}, nil)
	descQueries  = prometheus.NewDesc("borealis_db_queries_total", "POST /v1/query requests.", []string{"role", "volume"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReady, descEpoch, descCommits, descFull, descExecutes, descQueries} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	h := s.Health()
	labels := []string{h.Role, h.Volume}
	ready := 0.0
	if h.Ready {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, ready, labels...)
	ch <- prometheus.MustNewConstMetric(descEpoch, prometheus.GaugeValue, float64(h.Epoch), labels...)
	ch <- prometheus.MustNewConstMetric(descCommits, prometheus.CounterValue, float64(h.Stats.Commits), labels...)
	ch <- prometheus.MustNewConstMetric(descFull, prometheus.CounterValue, float64(h.Stats.FullPageBytes), labels...)
	ch <- prometheus.MustNewConstMetric(descExecutes, prometheus.CounterValue, float64(h.Stats.Executes), labels...)
	ch <- prometheus.MustNewConstMetric(descQueries, prometheus.CounterValue, float64(h.Stats.Queries), labels...)
	s.mu.Lock()
	vol := s.vol
	s.mu.Unlock()
	if vol != nil {
		vol.Collector().Collect(ch)
	}
}
