package dbserver

import (
	"context"
	"errors"
	"net/http"

	"github.com/borealis-db/borealis/internal/instance"
	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/sqlvfs"
)

// writerRole is a writer instance's lifecycle: an instance.Writer's.
type writerRole struct{ w *instance.Writer }

func (r writerRole) start(ctx context.Context) error { return r.w.Start(ctx) }
func (r writerRole) run(ctx context.Context) error   { return r.w.Run(ctx) }
func (r writerRole) close() error                    { return r.w.Close() }

func (r writerRole) readable() (*sqlvfs.DB, *APIError) {
	db, err := r.w.Readable()
	if err != nil {
		return nil, writerRefusal(err)
	}
	return db, nil
}

func (r writerRole) writable(ctx context.Context) (*sqlvfs.DB, *APIError) {
	db, err := r.w.Writable(ctx)
	if err != nil {
		return nil, writerRefusal(err)
	}
	return db, nil
}

// writerRefusal is the API error of a writer's refusal to serve (see
// instance.Writer.Writable).
func writerRefusal(err error) *APIError {
	switch {
	case errors.As(err, new(*instance.NotReadyError)):
		return apiErr(http.StatusServiceUnavailable, CodeNotReady, "%s", err)
	case errors.As(err, new(*instance.NotWriterError)):
		return apiErr(http.StatusConflict, CodeNotWriter, "%s", err)
	case errors.As(err, new(*instance.PendingCommitError)):
		return apiErr(http.StatusServiceUnavailable, CodeStorageUnavailable, "%s", err)
	}
	return apiErr(http.StatusInternalServerError, CodeInternal, "%s", err)
}

func (r writerRole) health(h *Health) {
	w := r.w
	h.Status, h.VolumeID, h.Epoch = w.Status(), w.VolumeID(), w.Epoch()
	h.Ready = w.Ready()
	if vol := w.Volume(); vol != nil {
		h.VDL = vol.VDL()
		vs := vol.Stats()
		h.Stats.RedoBytes, h.Stats.RedoRecords = vs.RecordBytes, vs.Records
		h.ReadPoint = vol.MinReadPoint()
	}
	if db := w.DB(); db != nil {
		st := db.Stats()
		h.Stats.Commits, h.Stats.FullPageBytes = st.Commits, st.FullPageBytes
		h.Stats.CacheHits, h.Stats.CacheMisses = st.CacheHits, st.VolumeReads
		h.Stats.PageSize = db.PageSize()
	}
	if stream := w.Stream(); stream != nil {
		for _, sub := range stream.Subscriptions() {
			h.Replicas = append(h.Replicas, sqlclient.StreamHealth{ID: sub.ID, Applied: sub.Applied, ReadFloor: sub.Floor, BytesSent: sub.Bytes, MTRsSent: sub.MTRs})
		}
	}
}
