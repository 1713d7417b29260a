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

// replicaRole is a replica's HTTP face: how the instance answers while
// its member is a replica (the member runs the replica itself).
type replicaRole struct {
	cfg Config
	rep *instance.Replica
}

// Replica is the instance's replica while its member is one (nil
// otherwise).
func (s *Instance) Replica() *instance.Replica {
	if s.m == nil {
		return nil
	}
	return s.m.Replica()
}

func (r *replicaRole) readable() (*sqlvfs.DB, *APIError) {
	if !r.rep.Ready() {
		return nil, apiErr(http.StatusServiceUnavailable, CodeNotReady, "replica %s of volume %s has not attached to the writer's redo stream yet (writer: %s)", r.cfg.ID, r.cfg.Volume, orUnknown(r.rep.Writer()))
	}
	return r.rep.DB(), nil
}

// writable is a replica's answer to a write: not_writer, naming the
// writer.
func (r *replicaRole) writable(context.Context) (*sqlvfs.DB, *APIError) {
	w := r.rep.Writer()
	e := apiErr(http.StatusConflict, CodeNotWriter, "instance %s is a read replica of volume %s and never writes; send writes to the writer at %s", r.cfg.ID, r.cfg.Volume, orUnknown(w))
	e.Writer = w
	return nil, e
}

func orUnknown(s string) string {
	if s == "" {
		return "(not known yet)"
	}
	return s
}

// health fills in the replica's state and its replication.
func (r *replicaRole) health(h *Health) {
	rep := r.rep
	h.Status, h.Ready = "ready", rep.Ready()
	if !h.Ready {
		h.Status = "a replica: waiting for its first attachment to the writer's redo stream (writer: " + orUnknown(rep.Writer()) + ")"
	}
	st := rep.Status()
	h.VDL, h.VolumeID, h.Epoch, h.ReadPoint = st.Applied, rep.VolumeID(), st.Epoch, st.ReadFloor
	h.Replica = &sqlclient.ReplicaHealth{
		Stream: st.State.String(), WriterVDL: st.WriterVDL, LagLSN: st.LagLSN,
		LagMS: float64(st.Lag.Microseconds()) / 1000, Writer: st.Writer, Epoch: st.Epoch, Resyncs: st.Resyncs,
	}
	if db := rep.DB(); db != nil {
		ds := db.Stats()
		h.Stats.CacheHits, h.Stats.CacheMisses = ds.CacheHits, ds.VolumeReads
	}
	if st.State != replica.Streaming && h.Status == "ready" {
		h.Status = "ready: serving reads at applied VDL; " + st.State.String()
	}
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
		vol := s.writerVolume()
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

// durableLSN is an LSN at or above every commit acknowledged so far: the
// VDL, read after a commit returns. A replica answers a query with it as
// min_lsn once it has applied the commit.
func (s *Instance) durableLSN() uint64 {
	vol := s.writerVolume()
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
	vol := s.writerVolume()
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
