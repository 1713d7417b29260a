package storage

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MetricsHandler serves the node's Prometheus metrics.
func (n *Node) MetricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	counter := func(name, help string, f func() uint64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "borealis", Subsystem: "storage", Name: name, Help: help,
			ConstLabels: prometheus.Labels{"node": n.cfg.ID, "az": n.cfg.AZ},
		}, func() float64 { return float64(f()) }))
	}
	counter("fsyncs_total", "File syncs issued by the store.", n.stats.fsyncs.Load)
	counter("file_written_bytes_total", "Bytes the store wrote to its files (logs, tables, manifests, and the zeros kept ahead of its logs).", n.stats.fileBytes.Load)
	counter("group_commits_total", "Synced group commits.", n.stats.groupCommits.Load)
	counter("append_requests_total", "Append requests accepted.", n.stats.appendRequests.Load)
	counter("records_appended_total", "Records accepted from the writer.", n.stats.recordsAppended.Load)
	counter("records_pulled_total", "Records accepted from peers by gossip.", n.stats.recordsPulled.Load)
	counter("pages_materialized_total", "Page versions written by the materializer.", n.stats.pagesMaterialized.Load)
	counter("repairs_started_total", "Hydrations begun: segments that copy their PG from a peer.", n.stats.repairsStarted.Load)
	counter("repairs_completed_total", "Hydrations completed.", n.stats.repairsCompleted.Load)
	counter("hydrated_bytes_total", "Page bytes copied from peers by hydrations.", n.stats.hydratedBytes.Load)
	counter("hydrate_bad_chunks_total", "Hydration chunks refused for a CRC32C mismatch and fetched again.", n.stats.hydrateBadChunks.Load)
	counter("hydrate_disk_waits_total", "Times a hydration waited for disk space before storing a chunk (it keeps twice the append reserve free).", n.stats.hydrateDiskWaits.Load)
	counter("scrubbed_items_total", "Stored records and page versions the scrub checked against their CRC32C.", n.stats.scrubbedItems.Load)
	counter("scrubbed_bytes_total", "Bytes of stored records and page versions the scrub read.", n.stats.scrubbedBytes.Load)
	counter("corruptions_found_total", "Damaged stored items (records, page versions) and store files met by the scrub or by reads.", n.stats.corruptionsFound.Load)
	counter("corruptions_repaired_total", "Damaged stored items replaced from a peer: a record fetched again, or a segment copied again.", n.stats.corruptionsFixed.Load)
	reg.MustRegister(n.stats.commitLatency, n.stats.groupSize)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "borealis", Subsystem: "storage", Name: "disk_bytes", Help: "Bytes the store occupies on disk.",
		ConstLabels: prometheus.Labels{"node": n.cfg.ID, "az": n.cfg.AZ},
	}, func() float64 { return float64(n.DiskUsage()) }))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
