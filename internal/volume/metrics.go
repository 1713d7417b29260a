package volume

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exposes the client's counters and LSNs as Prometheus metrics,
// labelled with the volume id; register it with the process's registry.
func (c *Client) Collector() prometheus.Collector { return &collector{c: c} }

type collector struct{ c *Client }

type metric struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(Stats) uint64
}

var volumeMetrics = func() []metric {
	labels := []string{"volume"}
	m := func(name, help string, kind prometheus.ValueType, v func(Stats) uint64) metric {
		return metric{prometheus.NewDesc("borealis_volume_"+name, help, labels, nil), kind, v}
	}
	counter, gauge := prometheus.CounterValue, prometheus.GaugeValue
	return []metric{
		m("commits_total", "MTRs submitted.", counter, func(s Stats) uint64 { return s.Commits }),
		m("append_requests_total", "Append requests sent, keepalives included.", counter, func(s Stats) uint64 { return s.Requests }),
		m("records_sent_total", "Record copies sent to segments.", counter, func(s Stats) uint64 { return s.RecordsSent }),
		m("records_resent_total", "Records sent again after a reconnect.", counter, func(s Stats) uint64 { return s.ResentRecords }),
		m("records_dropped_total", "Records dropped from a node's queue as already durable elsewhere.", counter, func(s Stats) uint64 { return s.DroppedRecords }),
		m("reconnects_total", "Append stream retries.", counter, func(s Stats) uint64 { return s.Reconnects }),
		m("membership_changes_total", "PG memberships replaced by a newer one.", counter, func(s Stats) uint64 { return s.MembershipChanges }),
		m("stale_membership_refusals_total", "Refusals by storage nodes that held a newer PG membership than the client.", counter, func(s Stats) uint64 { return s.StaleMemberships }),
		m("reads_total", "Page reads.", counter, func(s Stats) uint64 { return s.Reads }),
		m("hedged_reads_total", "Extra GetPage requests sent to a second segment.", counter, func(s Stats) uint64 { return s.HedgedReads }),
		m("wire_bytes_sent_total", "gRPC wire bytes sent.", counter, func(s Stats) uint64 { return s.BytesSent }),
		m("wire_bytes_received_total", "gRPC wire bytes received.", counter, func(s Stats) uint64 { return s.BytesReceived }),
		m("vdl", "Volume durable LSN.", gauge, func(s Stats) uint64 { return s.VDL }),
		m("last_allocated_lsn", "Last LSN allocated.", gauge, func(s Stats) uint64 { return s.LastAllocated }),
	}
}()

func (*collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range volumeMetrics {
		ch <- m.desc
	}
}

func (k *collector) Collect(ch chan<- prometheus.Metric) {
	st := k.c.Stats()
	vol := strconv.FormatUint(k.c.cfg.VolumeID, 10)
	for _, m := range volumeMetrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, float64(m.value(st)), vol)
	}
}
