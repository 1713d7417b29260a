package router

import (
	"net/http"
	"slices"
	"strings"
)

// Status is the router's view of its volume, which GET /v1/health on
// either endpoint answers with.
type Status struct {
	Volume string `json:"volume"`
	// ClusterEndpoint is Config.ClusterAddr.
	ClusterEndpoint string `json:"cluster_endpoint,omitempty"`
	// Writer is where the cluster endpoint sends requests; nil when the
	// volume has no writer.
	Writer *InstanceStatus `json:"writer,omitempty"`
	// Replicas are the volume's replica records, by id.
	Replicas []InstanceStatus `json:"replicas"`
	// Others are the catalog's other records, such as an older writer's
	// that has not expired yet.
	Others []InstanceStatus `json:"others,omitempty"`
	// MaxLagMS is Config.MaxLag.
	MaxLagMS float64 `json:"max_lag_ms"`
	// ListedUnixMS is when the catalog was last listed (0: never);
	// ListError is the latest listing's failure, if it failed.
	ListedUnixMS int64  `json:"listed_unix_ms"`
	ListError    string `json:"list_error,omitempty"`
	// Following is how the cluster endpoint follows the writer.
	Following FollowStatus `json:"following"`
}

// FollowStatus is how the cluster endpoint follows the volume's writer.
type FollowStatus struct {
	// Source is SourceWatch while a WatchWriter stream is open, else
	// SourceCatalog (or "custom": a Config.Writers of the caller's).
	Source string `json:"source"`
	// WatchUnimplemented: the control plane does not serve WatchWriter;
	// WatchError is why the stream last failed, if it is not open.
	WatchUnimplemented bool   `json:"watch_unimplemented,omitempty"`
	WatchError         string `json:"watch_error,omitempty"`
	// The writer followed last (it may be gone since: Status.Writer is the
	// current one), its epoch, and since when.
	WriterID      string `json:"writer_id,omitempty"`
	WriterEpoch   uint64 `json:"writer_epoch,omitempty"`
	SinceUnixMS   int64  `json:"since_unix_ms,omitempty"`
	WriterChanges uint64 `json:"writer_changes"`
	// From the last WriterState the stream sent: the lease's holder, its
	// epoch, the catalog revision, and the current or last failover.
	Holder     string          `json:"holder,omitempty"`
	LeaseEpoch uint64          `json:"lease_epoch,omitempty"`
	Revision   int64           `json:"revision,omitempty"`
	Failover   *FailoverStatus `json:"failover,omitempty"`
}

// FailoverStatus is the current (or last) failover, as WatchWriter tells.
type FailoverStatus struct {
	Round  uint64 `json:"round"`
	Kind   string `json:"kind"`
	State  string `json:"state"`
	From   string `json:"from,omitempty"`
	Target string `json:"target,omitempty"`
	Why    string `json:"why,omitempty"`
}

// InstanceStatus is one instance as the router last saw it: its catalog
// record, then what its latest health poll said.
type InstanceStatus struct {
	ID       string `json:"id"`
	Role     string `json:"role"`
	AZ       string `json:"az,omitempty"`
	Endpoint string `json:"endpoint"`
	Epoch    uint64 `json:"epoch"`
	// Outstanding is how many requests the router has under way on it;
	// Served how many it forwarded there and are done.
	Outstanding int64  `json:"outstanding"`
	Served      uint64 `json:"served"`
	// Candidate: a replica the reader endpoint sends queries to; Why says
	// why not, when not.
	Candidate bool   `json:"candidate"`
	Why       string `json:"why,omitempty"`

	// From the last successful health poll (PolledUnixMS; 0: none yet).
	PolledUnixMS int64   `json:"polled_unix_ms"`
	Ready        bool    `json:"ready"`
	VDL          uint64  `json:"vdl"`
	Stream       string  `json:"stream,omitempty"`
	LagMS        float64 `json:"lag_ms"`
	// PollError is the latest poll's failure, if it failed.
	PollError string `json:"poll_error,omitempty"`
}

// Status reports the router's view of its volume.
func (r *Router) Status() Status {
	w, hasWriter := r.writers.Writer()
	fs := FollowStatus{Source: "custom"}
	if r.watch != nil {
		r.watch.followStatus(&fs)
	}
	r.fmu.Lock()
	if r.followed.ID != "" {
		fs.WriterID, fs.WriterEpoch, fs.SinceUnixMS = r.followed.ID, r.followed.Epoch, r.since.UnixMilli()
	}
	fs.WriterChanges = r.changes
	r.fmu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	st := Status{
		Volume:          r.cfg.Volume,
		ClusterEndpoint: r.cfg.ClusterAddr,
		Replicas:        []InstanceStatus{},
		MaxLagMS:        r.maxLagMS,
		Following:       fs,
	}
	if !r.listed.IsZero() {
		st.ListedUnixMS = r.listed.UnixMilli()
	}
	if r.listErr != nil {
		st.ListError = r.listErr.Error()
	}
	for _, in := range r.insts {
		s := InstanceStatus{
			ID:          in.id,
			Role:        in.info.GetRole(),
			AZ:          in.info.GetAz(),
			Endpoint:    in.endpoint,
			Epoch:       in.info.GetEpoch(),
			Outstanding: in.outstanding.Load(),
			Served:      in.served.Load(),
		}
		if h := in.health; h != nil {
			s.PolledUnixMS, s.Ready, s.VDL = in.polled.UnixMilli(), h.Ready, h.VDL
			if h.Replica != nil {
				s.Stream, s.LagMS = h.Replica.Stream, h.Replica.LagMS
			}
		}
		if in.pollErr != nil {
			s.PollError = in.pollErr.Error()
		}
		switch {
		case hasWriter && in.id == w.ID:
			s := s
			st.Writer = &s
		case s.Role == RoleReplica:
			s.Why = r.unfit(in)
			s.Candidate = s.Why == ""
			st.Replicas = append(st.Replicas, s)
		default:
			st.Others = append(st.Others, s)
		}
	}
	if hasWriter && st.Writer == nil {
		// A writer from a WriterSource other than the catalog.
		st.Writer = &InstanceStatus{ID: w.ID, Role: RoleWriter, Endpoint: w.Endpoint, Epoch: w.Epoch}
	}
	byID := func(a, b InstanceStatus) int { return strings.Compare(a.ID, b.ID) }
	slices.SortFunc(st.Replicas, byID)
	slices.SortFunc(st.Others, byID)
	return st
}

func (r *Router) serveHealth(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, r.Status())
}
