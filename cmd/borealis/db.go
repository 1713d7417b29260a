package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/borealis-db/borealis/internal/dbserver"
	"github.com/borealis-db/borealis/internal/instance"
)

// maxBodyTooSmall reports whether a body cap of maxBody refuses every
// request that stores the largest value, and the smallest cap that does
// not.
func maxBodyTooSmall(maxBody int64) (need int64, small bool) {
	need = dbserver.LargestValueBody()
	return need, maxBody < need
}

func dbCmd() *cobra.Command {
	var cfg dbserver.Config
	var listen, metrics, maxBody string
	cmd := &cobra.Command{
		Use:   "db --role writer --volume NAME --control ADDR --listen ADDR",
		Short: "Run a database instance: SQLite on a volume, served over HTTP",
		Long: `Run a database instance. The writer takes the volume's writer lease and a
new volume epoch from the control plane, runs crash recovery (a read quorum of
every PG gives the VDL; everything above it is truncated), and then serves SQL
over HTTP with JSON on --listen:

  POST /v1/execute  {"statements":[{"sql":"...","params":[...]}],"transaction":true}
  POST /v1/query    {"sql":"...","params":[...]}
  GET  /v1/health

It answers /v1/health (ready: false) while it starts.

Failover: when the writer's lease is gone (it died, or was paused past its
--lease-ttl), the control plane chooses a replica (lowest --promotion-tier,
then the most caught up, then one whose AZ's storage nodes are up), which takes
the lease, fences the old writer with a new epoch, recovers and serves writes
with its page cache kept. A writer that loses its lease stops serving at once
and comes back as a replica of the new writer; it never acknowledges a commit
after that (storage refuses its epoch). With no replica, a writer that starts
(up restarts it) takes the lease back.

A string or blob is at most 32 MiB (a row, 32 MiB + 64 KiB). A request body
is at most --max-body, 48 MiB by default: enough for the largest blob as a
parameter, which travels in base64 (4/3 of its size), with its statement.
The bodies being read and run at once add up to at most 4 times --max-body;
a request beyond waits for room, and fails with busy if it finds none within
--request-timeout.`,
		Args: noArgs(""),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfg.WriteTimeout <= 0 {
				return fmt.Errorf("--write-timeout %s: want a positive duration", cfg.WriteTimeout)
			}
			if cfg.RequestTimeout < 0 || (cfg.RequestTimeout > 0 && cfg.RequestTimeout <= cfg.WriteTimeout) {
				return fmt.Errorf("--request-timeout %s: want more than --write-timeout (%s), or 0 for the default", cfg.RequestTimeout, cfg.WriteTimeout)
			}
			if cfg.Volume == "" || cfg.Control == "" || listen == "" {
				return errors.New("db needs --volume, --control and --listen")
			}
			n, err := parseSize(maxBody)
			if err != nil {
				return fmt.Errorf("--max-body: %w", err)
			}
			if n > math.MaxInt64 {
				return fmt.Errorf("--max-body %s is too large", maxBody)
			}
			cfg.MaxBodyBytes = int64(n)
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			cfg.Logger = log
			if need, small := maxBodyTooSmall(cfg.MaxBodyBytes); small {
				// Allowed (an operator may want small requests), but then
				// the API stores a large value only if SQL builds it.
				log.Warn("--max-body is below the smallest request that stores the largest value the API takes (a base64 blob parameter with its statement)", "max_body", maxBody, "needs", need, "max_value_bytes", dbserver.MaxValueBytes)
			}
			lis, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", listen, err)
			}
			cfg.Endpoint = advertised(listen, lis.Addr())
			if cfg.ReplicationListen == "" {
				// The redo stream on the same host as the SQL endpoint, on a
				// port the system picks; replicas find it in the catalog.
				host, _, _ := net.SplitHostPort(cfg.Endpoint)
				cfg.ReplicationListen = net.JoinHostPort(host, "0")
			}
			inst, err := dbserver.New(cfg)
			if err != nil {
				lis.Close()
				return err
			}
			if metrics != "" {
				mlis, err := net.Listen("tcp", metrics)
				if err != nil {
					lis.Close()
					return fmt.Errorf("metrics listen on %s: %w", metrics, err)
				}
				reg := prometheus.NewRegistry()
				reg.MustRegister(inst.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
				mux := http.NewServeMux()
				mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
				mux.HandleFunc("/debug/pprof/", pprof.Index)
				mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
				go http.Serve(mlis, mux)
			}
			srv := &http.Server{Handler: inst.Handler(), ReadHeaderTimeout: 10 * time.Second}
			// The instance outlives the signal until the HTTP server has
			// drained: requests in flight finish their commits.
			runCtx, stopRun := context.WithCancel(context.Background())
			defer stopRun()
			runErr := make(chan error, 1)
			go func() { runErr <- inst.Run(runCtx) }()
			serveErr := make(chan error, 1)
			go func() { serveErr <- srv.Serve(lis) }()
			log.Info("database instance listening", "role", cfg.Role, "volume", cfg.Volume, "addr", lis.Addr().String())
			var failed error
			select {
			case <-cmd.Context().Done():
				log.Info("stopping on signal: finishing the requests in flight")
			case err := <-serveErr:
				failed = fmt.Errorf("serve HTTP: %w", err)
			case err := <-runErr:
				failed = err
				runErr <- err
			}
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
			stopRun()
			<-runErr
			inst.Close()
			if failed != nil && !errors.Is(failed, context.Canceled) {
				return failed
			}
			log.Info("stopped")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Role, "role", dbserver.RoleWriter, "the role to start in: writer (takes the writer lease, recovers the volume and serves writes; if another instance is the writer already, or a failover is promoting one, it starts as a replica instead) or replica (reads the volume's pages from storage and follows the writer's redo stream; keeps no data on local disk). Failovers change the role: a replica the control plane chooses promotes itself, and a writer that loses the lease comes back as a replica")
	f.StringVar(&cfg.AZ, "az", "", "availability zone of the instance, registered in the catalog")
	f.DurationVar(&cfg.MaxReadAge, "max-read-age", 5*time.Minute, "how long a read transaction may stay pinned at its read point; beyond it its reads fail with snapshot_too_old, and it no longer holds storage's garbage collection back")
	f.DurationVar(&cfg.MinLSNWait, "min-lsn-wait", time.Second, "how long a query with min_lsn waits for the instance to reach that LSN before it fails with lagging")
	f.StringVar(&cfg.ReplicationListen, "replication-listen", "", "writer: gRPC address to serve the redo stream to replicas on (default: the --listen host, on a port the system picks; replicas find it in the catalog)")
	f.Uint32Var(&cfg.PromotionTier, "promotion-tier", 1, "replica: failover promotes a replica of the lowest tier first")
	f.StringVar(&cfg.Volume, "volume", "", "volume name")
	f.StringVar(&cfg.Control, "control", "", "control plane gRPC address: one, or several separated by commas")
	f.StringVar(&listen, "listen", "", "HTTP address to serve SQL on")
	f.StringVar(&metrics, "metrics", "", "address to serve Prometheus /metrics and pprof on (off when empty)")
	f.StringVar(&cfg.ID, "id", "", "instance id, registered in the catalog; the holder name of the writer lease (default: the role)")
	f.IntVar(&cfg.CacheMiB, "cache-mib", 64, "page cache size in MiB")
	f.DurationVar(&cfg.WriteTimeout, "write-timeout", 10*time.Second, "how long a commit waits for a write quorum of segments that can make it durable (answering, and holding or catching up to it) before failing with storage_unavailable")
	f.DurationVar(&cfg.RequestTimeout, "request-timeout", 0, "how long one request may take, from waiting for room to read its body to the end of its SQL, which is then interrupted and fails with timeout (0: 2m, or a minute more than --write-timeout if that is longer)")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", instance.DefaultLeaseTTL, "writer lease time to live, whole seconds (etcd's leases are; the embedded etcd grants 1s and up). A writer that cannot renew it stops serving a tenth of it before it can expire, and a dead writer's replica is promoted about this long after its death; the instance's registration in the catalog has the same TTL")
	f.IntVar(&cfg.MaxReaders, "max-readers", 64, "read connections: queries that run at once (writes share one connection and pipeline their commits)")
	f.IntVar(&cfg.MaxReaders, "max-writers", 64, "")
	_ = f.MarkDeprecated("max-writers", "writes share one connection now; --max-readers sets the read connections")
	f.StringVar(&maxBody, "max-body", formatSize(dbserver.DefaultMaxBodyBytes), "largest request body, such as 48MiB; larger ones fail with body_too_large. The default admits the largest string or blob (32 MiB) as a base64 parameter, with its statement")
	return cmd
}

// advertised is the SQL endpoint to register for a listener asked for at
// listen: the address it got, with a wildcard host replaced by loopback.
func advertised(listen string, got net.Addr) string {
	host, port, err := net.SplitHostPort(got.String())
	if err != nil {
		return got.String()
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
