package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync/atomic"
	"syscall"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/storage"
)

// runStorageNode runs the storage node until ctx ends or it fails. A
// damaged record or page version is repaired from peers while the node
// serves. A damaged store is not: the node is closed and opened again on
// the same directory and address, which moves the store aside, and its
// segments are copied again from peers (its agent starts again too, with a
// new boot id, so that the control plane's leader checks what it holds).
// Only a store whose Pebble gave up inside a call that never returns ends
// the process, as closing it could wait for that call.
func runStorageNode(ctx context.Context, cfg storage.Config, listen, metrics, controlAddr string, log *slog.Logger) error {
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", listen, err)
	}
	// current is the node that serves now, for the metrics handler.
	var current atomic.Pointer[http.Handler]
	if metrics != "" {
		mlis, err := net.Listen("tcp", metrics)
		if err != nil {
			lis.Close()
			return fmt.Errorf("metrics listen on %s: %w", metrics, err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
			if h := current.Load(); h != nil {
				(*h).ServeHTTP(w, r)
				return
			}
			http.Error(w, "the storage node is opening its store", http.StatusServiceUnavailable)
		})
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		go http.Serve(mlis, mux)
	}
	for {
		reopen, err := serveStorageOnce(ctx, cfg, lis, controlAddr, &current, log)
		if !reopen || ctx.Err() != nil {
			return err
		}
		log.Warn("opening the node again on its directory: the damaged store moves aside and the node's segments are copied again from peers", "dir", cfg.Dir)
		if lis, err = net.Listen("tcp", listen); err != nil {
			return fmt.Errorf("listen again on %s after closing the damaged store: %w", listen, err)
		}
	}
}

// serveStorageOnce opens the node, serves it on lis until ctx ends, Serve
// fails or the store is found damaged, and closes it; reopen says the
// store was damaged and the node is to be opened again.
func serveStorageOnce(ctx context.Context, cfg storage.Config, lis net.Listener, controlAddr string, current *atomic.Pointer[http.Handler], log *slog.Logger) (reopen bool, err error) {
	damaged := make(chan storage.CorruptionInfo, 1)
	cfg.OnCorruption = func(info storage.CorruptionInfo) {
		if info.StoreDamaged {
			select {
			case damaged <- info:
			default:
			}
		}
	}
	node, err := storage.Open(cfg)
	if err != nil {
		lis.Close()
		return false, err
	}
	defer node.Close()
	h := node.MetricsHandler()
	current.Store(&h)
	defer current.Store(nil)
	nodeCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		<-nodeCtx.Done()
		if ctx.Err() != nil {
			log.Info("stopping on signal")
		}
		node.Close()
	}()
	if controlAddr != "" {
		var st syscall.Statfs_t
		var capacity uint64
		if err := syscall.Statfs(cfg.Dir, &st); err == nil {
			capacity = uint64(st.Blocks) * uint64(st.Bsize)
		}
		go control.RunNodeAgent(nodeCtx, controlAddr, control.AgentNode{
			ID: cfg.ID, AZ: cfg.AZ, Addr: lis.Addr().String(), CapacityBytes: capacity,
			OnEpochs: func(epochs map[uint64]uint64) {
				if err := node.ObserveEpochs(epochs); err != nil {
					log.Error("cannot record volume epochs from the control plane", "err", err)
				}
			},
			Hosted: node.HostedVolumes,
			OnDeleted: func(vols []*pb.VolumeIncarnation) {
				if err := node.DropVolumes(vols); err != nil {
					log.Error("cannot drop the segments of deleted volumes; once the node restarts, its first heartbeat drops them", "volumes", vols, "err", err)
				}
			},
		}, log)
	}
	log.Info("storage node serving", "id", cfg.ID, "az", cfg.AZ, "addr", lis.Addr().String(), "dir", cfg.Dir)
	served := make(chan error, 1)
	go func() { served <- node.Serve(lis) }()
	for {
		select {
		case err := <-served:
			if ctx.Err() != nil {
				return false, nil
			}
			return false, err
		case info := <-damaged:
			// Told while Open moved a damaged store aside: the store in
			// use is the new one.
			if !node.StoreDamaged() {
				continue
			}
			log.Error("the store is damaged; the node closes it and opens again", "item", info.Item.String(), "file", info.Path, "err", info.Err)
			if info.Item == storage.StoreStopped {
				fmt.Fprintf(os.Stderr, "borealis: storage node %s: Pebble stopped on a damaged store in %s (%v); start the node again to move it aside and rebuild its segments from peers\n", cfg.ID, cfg.Dir, info.Err)
				os.Exit(1)
			}
			stop()
			<-served
			return true, nil
		}
	}
}
