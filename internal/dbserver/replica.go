package dbserver

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/borealis-db/borealis/internal/instance"
	"github.com/borealis-db/borealis/internal/replica"
	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/sqlvfs"
)

// Codes of a replica's refusals.
const (
	// CodeLagging: the instance did not reach the query's min_lsn within
	// its bound; the writer (or another replica) has it.
	CodeLagging = "lagging"
	// CodeSnapshotTooOld: the read transaction was pinned longer than the
	// maximum read age, or storage collected the versions it needed.
	CodeSnapshotTooOld = "snapshot_too_old"
)

// startReplica starts the replica once: the volume, the registration and
// the stream.
func (s *Instance) startReplica(ctx context.Context) error {
	s.setStep("opening volume %s read-only", s.cfg.Volume)
	rep, err := instance.StartReplica(ctx, instance.ReplicaConfig{
		Volume: s.cfg.Volume, Ctl: s.ctl, ID: s.cfg.ID, AZ: s.cfg.AZ, Endpoint: s.cfg.Endpoint,
		Options:  withPolicy(sqlvfs.Options{CacheMiB: s.cfg.CacheMiB, MaxReadAge: s.cfg.MaxReadAge}),
		LeaseTTL: s.cfg.LeaseTTL, PromotionTier: s.cfg.PromotionTier, MaxConns: s.cfg.MaxWriters, Logger: s.cfg.Logger,
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.rep, s.volID = rep, rep.VolumeID()
	s.status, s.retryWhy = "ready", ""
	s.ready.Store(true)
	s.mu.Unlock()
	return nil
}

// runReplica starts the replica, retrying while the control plane or the
// volume cannot be reached, and serves until ctx ends.
func (s *Instance) runReplica(ctx context.Context) error {
	for {
		err := s.startReplica(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.setRetry("start failed: %v; retrying", err)
		s.log.Warn("replica start failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	<-ctx.Done()
	s.mu.Lock()
	rep := s.rep
	s.rep = nil
	s.ready.Store(false)
	s.status = "stopped"
	s.mu.Unlock()
	if rep != nil {
		rep.Close()
	}
	return nil
}

// Replica is the running replica of a replica instance (nil before it
// started, and on a writer).
func (s *Instance) Replica() *instance.Replica {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rep
}

func (s *Instance) replicaReadable() (*sqlvfs.DB, *APIError) {
	s.mu.Lock()
	rep, st := s.rep, s.status
	s.mu.Unlock()
	if rep == nil || !s.ready.Load() {
		return nil, apiErr(http.StatusServiceUnavailable, CodeNotReady, "replica %s of volume %s is not ready: %s", s.cfg.ID, s.cfg.Volume, st)
	}
	if !rep.Ready() {
		return nil, apiErr(http.StatusServiceUnavailable, CodeNotReady, "replica %s of volume %s has not attached to the writer's redo stream yet (writer: %s)", s.cfg.ID, s.cfg.Volume, orUnknown(rep.Writer()))
	}
	return rep.DB(), nil
}

// notWriter is a replica's answer to a write.
func (s *Instance) notWriter() *APIError {
	w := ""
	if rep := s.Replica(); rep != nil {
		w = rep.Writer()
	}
	e := apiErr(http.StatusConflict, CodeNotWriter, "instance %s is a read replica of volume %s and never writes; send writes to the writer at %s", s.cfg.ID, s.cfg.Volume, orUnknown(w))
	e.Writer = w
	return e
}

func orUnknown(s string) string {
	if s == "" {
		return "(not known yet)"
	}
	return s
}

// reach waits, up to MinLSNWait, until the instance has applied (a
// replica) or made durable (the writer) minLSN.
func (s *Instance) reach(ctx context.Context, minLSN uint64) *APIError {
	if minLSN == 0 {
		return nil
	}
	var wait func(context.Context, uint64) error
	var at func() uint64
	if rep := s.Replica(); rep != nil {
		wait, at = rep.WaitApplied, rep.Applied
	} else {
		s.mu.Lock()
		vol := s.vol
		s.mu.Unlock()
		if vol == nil {
			return apiErr(http.StatusServiceUnavailable, CodeNotReady, "the writer of volume %s is not ready", s.cfg.Volume)
		}
		wait, at = vol.WaitDurable, vol.VDL
	}
	if at() >= minLSN {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, s.cfg.MinLSNWait)
	defer cancel()
	if err := wait(wctx, minLSN); err != nil {
		if ctx.Err() != nil && !errors.Is(wctx.Err(), context.DeadlineExceeded) {
			return apiErr(http.StatusServiceUnavailable, CodeTimeout, "the request ended while waiting for LSN %d", minLSN)
		}
		e := apiErr(http.StatusServiceUnavailable, CodeLagging, "instance %s has reached LSN %d, not min_lsn %d, after waiting %s; the writer has it", s.cfg.ID, at(), minLSN, s.cfg.MinLSNWait)
		if rep := s.Replica(); rep != nil {
			e.Writer = rep.Writer()
		}
		return e
	}
	return nil
}

// replicationHealth fills the replication part of the health report.
func (s *Instance) replicationHealth(h *Health) {
	s.mu.Lock()
	rep, stream, vol := s.rep, s.stream, s.vol
	s.mu.Unlock()
	if rep != nil {
		st := rep.Status()
		h.Ready = h.Ready && rep.Ready()
		h.VDL, h.VolumeID, h.Epoch, h.ReadPoint = st.Applied, rep.VolumeID(), st.Epoch, st.ReadFloor
		h.Replica = &sqlclient.ReplicaHealth{
			Stream: st.State.String(), WriterVDL: st.WriterVDL, LagLSN: st.LagLSN,
			LagMS: float64(st.Lag.Microseconds()) / 1000, Writer: st.Writer, Epoch: st.Epoch, Resyncs: st.Resyncs,
		}
		if st.State != replica.Streaming && h.Status == "ready" {
			h.Status = "ready: serving reads at applied VDL; " + st.State.String()
		}
		return
	}
	if vol != nil {
		h.ReadPoint = vol.MinReadPoint()
	}
	if stream != nil {
		for _, sub := range stream.Subscriptions() {
			h.Replicas = append(h.Replicas, sqlclient.StreamHealth{ID: sub.ID, Applied: sub.Applied, ReadFloor: sub.Floor, BytesSent: sub.Bytes, MTRsSent: sub.MTRs})
		}
	}
}

// durableLSN is an LSN at or above every commit acknowledged so far: the
// VDL, read after a commit returns. A replica answers a query with it as
// min_lsn once it has applied the commit.
func (s *Instance) durableLSN() uint64 {
	s.mu.Lock()
	vol := s.vol
	s.mu.Unlock()
	if vol == nil {
		return 0
	}
	return vol.VDL()
}

// WaitRequest is the body of POST /v1/wait.
type WaitRequest struct {
	LSN       uint64 `json:"lsn"`
	TimeoutMS int64  `json:"timeout_ms"`
}

// WaitResponse is its reply: the VDL the instance has applied (a replica)
// or made durable (the writer) now, and, on a replica, when it applied the
// first VDL at or above the LSN asked for (0 if it does not remember).
type WaitResponse struct {
	VDL             uint64 `json:"vdl"`
	AppliedAtUnixUS int64  `json:"applied_at_unix_us,omitempty"`
}

// handleWait answers once the instance has reached an LSN, or with lagging
// after timeout_ms (default and at most MinLSNWait's 10 times): a cheap way
// to learn when a commit became visible here.
func (s *Instance) handleWait(w http.ResponseWriter, r *http.Request) {
	var req WaitRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
		writeErr(w, apiErr(http.StatusBadRequest, CodeBadRequest, "the body must be {\"lsn\": N, \"timeout_ms\": T}: %v", err))
		return
	}
	if _, e := s.readable(); e != nil {
		writeErr(w, e)
		return
	}
	limit := 10 * s.cfg.MinLSNWait
	timeout := min(time.Duration(req.TimeoutMS)*time.Millisecond, limit)
	if timeout <= 0 {
		timeout = s.cfg.MinLSNWait
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	resp := WaitResponse{}
	if rep := s.Replica(); rep != nil {
		if err := rep.WaitApplied(ctx, req.LSN); err != nil {
			writeErr(w, apiErr(http.StatusServiceUnavailable, CodeLagging, "replica %s has applied LSN %d, not %d, after %s", s.cfg.ID, rep.Applied(), req.LSN, timeout))
			return
		}
		resp.VDL = rep.Applied()
		if at, ok := rep.AppliedAt(req.LSN); ok {
			resp.AppliedAtUnixUS = at.UnixMicro()
		}
		writeJSON(w, http.StatusOK, resp)
		return
	}
	s.mu.Lock()
	vol := s.vol
	s.mu.Unlock()
	if vol == nil {
		writeErr(w, apiErr(http.StatusServiceUnavailable, CodeNotReady, "the writer of volume %s is not ready", s.cfg.Volume))
		return
	}
	if err := vol.WaitDurable(ctx, req.LSN); err != nil {
		writeErr(w, apiErr(http.StatusServiceUnavailable, CodeLagging, "the writer has made LSN %d durable, not %d, after %s: %v", vol.VDL(), req.LSN, timeout, err))
		return
	}
	resp.VDL = vol.VDL()
	writeJSON(w, http.StatusOK, resp)
}
