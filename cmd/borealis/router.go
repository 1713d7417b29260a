package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/borealis-db/borealis/internal/router"
)

func routerCmd() *cobra.Command {
	var cfg router.Config
	var listen, readerListen string
	cmd := &cobra.Command{
		Use:   "router --control ADDR --listen ADDR [--reader-listen ADDR]",
		Short: "Run the stateless router: the cluster endpoint (to the writer) and the reader endpoint (balanced over replicas)",
		Long: `router serves two HTTP endpoints of one volume's SQL API:

  --listen         the cluster endpoint: every request goes to the current
                   writer, which the control plane's WatchWriter stream names
                   as it changes (the catalog's listings, every --refresh,
                   while the stream is down). During a failover a request
                   waits for the new writer up to --failover-wait; a write
                   that reached a writer which died is 502 outcome_unknown
                   and never sent again;
  --reader-listen  the reader endpoint: POST /v1/query is balanced across the
                   healthy replicas by least outstanding requests. It honours
                   min_lsn, skips replicas lagging more than --max-lag, and
                   falls back to the writer when no replica fits.

Both answer GET /v1/health with the router's view and GET /metrics with its
Prometheus metrics. It keeps no state: run as many as you like.`,
		Args: noArgs(""),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfg.Control == "" || listen == "" {
				return errors.New("router needs --control and --listen")
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			cfg.Logger = log
			clis, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", listen, err)
			}
			if readerListen == "" {
				host, port, _ := net.SplitHostPort(clis.Addr().String())
				var p int
				fmt.Sscan(port, &p)
				readerListen = net.JoinHostPort(host, fmt.Sprint(p+1))
			}
			rlis, err := net.Listen("tcp", readerListen)
			if err != nil {
				clis.Close()
				return fmt.Errorf("reader endpoint: listen on %s: %w", readerListen, err)
			}
			cfg.ClusterAddr = advertised(listen, clis.Addr())
			r, err := router.New(cfg)
			if err != nil {
				clis.Close()
				rlis.Close()
				return err
			}
			defer r.Close()
			csrv := &http.Server{Handler: r.ClusterHandler(), ReadHeaderTimeout: 10 * time.Second}
			rsrv := &http.Server{Handler: r.ReaderHandler(), ReadHeaderTimeout: 10 * time.Second}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			go r.Run(ctx)
			errs := make(chan error, 2)
			go func() { errs <- csrv.Serve(clis) }()
			go func() { errs <- rsrv.Serve(rlis) }()
			log.Info("router listening", "volume", cfg.Volume, "cluster_endpoint", clis.Addr().String(), "reader_endpoint", rlis.Addr().String())
			var failed error
			select {
			case <-cmd.Context().Done():
			case err := <-errs:
				failed = err
			}
			sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer scancel()
			_ = csrv.Shutdown(sctx)
			_ = rsrv.Shutdown(sctx)
			if failed != nil && !errors.Is(failed, http.ErrServerClosed) {
				return failed
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Control, "control", "", "control plane gRPC address, or several separated by commas")
	f.StringVar(&cfg.Volume, "volume", router.DefaultVolume, "volume whose instances to route to")
	f.StringVar(&listen, "listen", "", "HTTP address of the cluster endpoint (to the writer)")
	f.StringVar(&readerListen, "reader-listen", "", "HTTP address of the reader endpoint (default: the --listen port + 1)")
	f.DurationVar(&cfg.MaxLag, "max-lag", router.DefaultMaxLag, "the reader endpoint skips a replica lagging more than this behind the writer")
	f.DurationVar(&cfg.FailoverWait, "failover-wait", router.DefaultFailoverWait, "how long a request on the cluster endpoint waits for a writer when there is none or it cannot be reached, as during a failover (negative: not at all)")
	f.DurationVar(&cfg.Refresh, "refresh", router.DefaultRefresh, "how often to list the instances and poll their health")
	return cmd
}
