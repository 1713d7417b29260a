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
	descVDL      = prometheus.NewDesc("borealis_db_vdl", "The VDL: the writer's, or the one a replica applied.", []string{"role", "volume"}, nil)
	descReadPt   = prometheus.NewDesc("borealis_db_read_point", "The oldest read point the instance pins; on the writer, the volume's PGMRPL sent to storage (0 while held).", []string{"role", "volume"}, nil)

	descLagLSN    = prometheus.NewDesc("borealis_replica_lag_lsn", "LSNs between the writer's VDL and the one the replica applied.", []string{"volume"}, nil)
	descLag       = prometheus.NewDesc("borealis_replica_lag_seconds", "How far behind the writer the replica is (see /v1/health lag_ms).", []string{"volume"}, nil)
	descStreaming = prometheus.NewDesc("borealis_replica_streaming", "1 while the replica is attached to the writer's redo stream.", []string{"volume"}, nil)
	descResyncs   = prometheus.NewDesc("borealis_replica_resyncs_total", "Times the replica dropped its cache to resume at a newer VDL.", []string{"volume"}, nil)

	descSubApplied = prometheus.NewDesc("borealis_writer_replica_applied", "The VDL each subscribed replica reported applied.", []string{"volume", "replica"}, nil)
	descSubBytes   = prometheus.NewDesc("borealis_writer_replica_stream_bytes_total", "Record bytes sent to each replica on its current subscription.", []string{"volume", "replica"}, nil)

	descPromotions = prometheus.NewDesc("borealis_db_promotions_total", "Failovers that promoted this instance to writer.", []string{"volume"}, nil)
	descStepDowns  = prometheus.NewDesc("borealis_db_step_downs_total", "Times this instance stopped being the writer (lease lost, fenced or handed over).", []string{"volume"}, nil)
	descPromoStep  = prometheus.NewDesc("borealis_db_last_promotion_step_seconds", "What each step of this instance's last promotion took.", []string{"volume", "step"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReady, descEpoch, descCommits, descFull, descExecutes, descQueries, descVDL, descReadPt,
		descLagLSN, descLag, descStreaming, descResyncs, descSubApplied, descSubBytes, descPromotions, descStepDowns, descPromoStep} {
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
	ch <- prometheus.MustNewConstMetric(descVDL, prometheus.GaugeValue, float64(h.VDL), labels...)
	ch <- prometheus.MustNewConstMetric(descReadPt, prometheus.GaugeValue, float64(h.ReadPoint), labels...)
	if r := h.Replica; r != nil {
		streaming := 0.0
		if r.Stream == "streaming" {
			streaming = 1
		}
		ch <- prometheus.MustNewConstMetric(descLagLSN, prometheus.GaugeValue, float64(r.LagLSN), h.Volume)
		ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, r.LagMS/1000, h.Volume)
		ch <- prometheus.MustNewConstMetric(descStreaming, prometheus.GaugeValue, streaming, h.Volume)
		ch <- prometheus.MustNewConstMetric(descResyncs, prometheus.CounterValue, float64(r.Resyncs), h.Volume)
	}
	seen := map[string]bool{}
	for _, sub := range h.Replicas {
		if seen[sub.ID] {
			continue // a replica subscribed again before its old stream ended
		}
		seen[sub.ID] = true
		ch <- prometheus.MustNewConstMetric(descSubApplied, prometheus.GaugeValue, float64(sub.Applied), h.Volume, sub.ID)
		ch <- prometheus.MustNewConstMetric(descSubBytes, prometheus.CounterValue, float64(sub.BytesSent), h.Volume, sub.ID)
	}
	if r := h.Roles; r != nil {
		ch <- prometheus.MustNewConstMetric(descPromotions, prometheus.CounterValue, float64(r.Promotions), h.Volume)
		ch <- prometheus.MustNewConstMetric(descStepDowns, prometheus.CounterValue, float64(r.StepDowns), h.Volume)
		if p := r.LastPromotion; p != nil {
			for step, ms := range map[string]float64{"lease": p.LeaseMS, "epoch": p.EpochMS, "recovery": p.RecoveryMS, "open": p.OpenMS} {
				ch <- prometheus.MustNewConstMetric(descPromoStep, prometheus.GaugeValue, ms/1000, h.Volume, step)
			}
		}
	}
	if vol := s.writerVolume(); vol != nil {
		vol.Collector().Collect(ch)
	}
}
