package router

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/wait"
)

// within bounds every wait of these tests: long next to the 20 ms refresh
// they run the router with.
const within = 10 * time.Second

// fakeControl is a real gRPC Control server whose ListInstances answers
// with the records the test set.
type fakeControl struct {
	pb.UnimplementedControlServer
	mu    sync.Mutex
	recs  map[string]*pb.InstanceInfo
	addr  string
	lists atomic.Int64

	// watch, when set (startWatchControl), makes WatchWriter stream
	// wstate, again each time setWriter changes it; otherwise it is
	// Unimplemented, as an older control plane's.
	watch   bool
	wstate  *pb.WriterState
	wnotify chan struct{} // closed and replaced by each change
	cut     chan struct{} // closed and replaced by cutStreams
	streams atomic.Int64  // WatchWriter calls served
}

func startControl(t *testing.T) *fakeControl {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeControl{recs: map[string]*pb.InstanceInfo{}, addr: lis.Addr().String(),
		wstate: &pb.WriterState{Volume: DefaultVolume}, wnotify: make(chan struct{}), cut: make(chan struct{})}
	gs := grpc.NewServer()
	pb.RegisterControlServer(gs, f)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return f
}

// startWatchControl is startControl with WatchWriter served.
func startWatchControl(t *testing.T) *fakeControl {
	t.Helper()
	f := startControl(t)
	f.mu.Lock()
	f.watch = true
	f.mu.Unlock()
	return f
}

func (f *fakeControl) WatchWriter(req *pb.WatchWriterRequest, stream grpc.ServerStreamingServer[pb.WriterState]) error {
	f.mu.Lock()
	watch, cut := f.watch, f.cut
	f.mu.Unlock()
	if !watch {
		return f.UnimplementedControlServer.WatchWriter(req, stream)
	}
	f.streams.Add(1)
	for {
		f.mu.Lock()
		st, changed := proto.Clone(f.wstate).(*pb.WriterState), f.wnotify
		f.mu.Unlock()
		if err := stream.Send(st); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-cut:
			return status.Error(codes.Unavailable, "the test cut the stream")
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

// setWriter changes the writer state WatchWriter streams.
func (f *fakeControl) setWriter(mod func(st *pb.WriterState)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	mod(f.wstate)
	f.wstate.Revision++
	close(f.wnotify)
	f.wnotify = make(chan struct{})
}

// serving makes fi, registered at epoch, the ready writer of the watched
// state, the failover (if any) done.
func (f *fakeControl) serving(fi *fakeInstance, epoch uint64) {
	f.setWriter(func(st *pb.WriterState) {
		rec := fi.record(epoch)
		rec.Role = RoleWriter
		st.Holder, st.Epoch, st.Writer = fi.id, epoch, rec
		if st.Failover != nil {
			st.Failover.State = "done"
		}
	})
}

// failingOver starts a failover from the watched state's writer: with
// state "draining" it stays registered (a planned switchover); otherwise
// its lease and registration are gone.
func (f *fakeControl) failingOver(state, target, why string) {
	f.setWriter(func(st *pb.WriterState) {
		round := st.GetFailover().GetRound() + 1
		st.Failover = &pb.FailoverInfo{Round: round, Kind: "unplanned", From: st.Holder, FromEpoch: st.Epoch, State: state, Target: target, Why: why}
		if state == "draining" {
			st.Failover.Kind = "planned"
			return
		}
		st.Holder, st.Writer = target, nil
	})
}

// cutStreams breaks every open WatchWriter stream.
func (f *fakeControl) cutStreams() {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.cut)
	f.cut = make(chan struct{})
}

func (f *fakeControl) ListInstances(_ context.Context, req *pb.ListInstancesRequest) (*pb.ListInstancesResponse, error) {
	f.lists.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &pb.ListInstancesResponse{}
	for _, r := range f.recs {
		if req.GetVolume() == "" || r.Volume == req.GetVolume() {
			resp.Instances = append(resp.Instances, r)
		}
	}
	slices.SortFunc(resp.Instances, func(a, b *pb.InstanceInfo) int { return strings.Compare(a.Id, b.Id) })
	return resp, nil
}

// set registers (or replaces) records.
func (f *fakeControl) set(recs ...*pb.InstanceInfo) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range recs {
		f.recs[r.Id] = r
	}
}

// remove drops records, as an expired lease would.
func (f *fakeControl) remove(ids ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		delete(f.recs, id)
	}
}

// fakeInstance is a database instance's SQL API on a real HTTP server.
type fakeInstance struct {
	id   string
	role string
	srv  *httptest.Server

	mu           sync.Mutex
	health       sqlclient.Health
	healthStatus int // 0: 200 with health; otherwise that status and no JSON
	lastBody     []byte
	// stalled, while not nil, holds every request until it is closed: the
	// instance is SIGSTOPped (its kernel takes connections and requests,
	// nothing answers).
	stalled chan struct{}
	// onQuery and onExecute, when set, answer instead of the defaults
	// (which echo the body's length).
	onQuery, onExecute func(w http.ResponseWriter, r *http.Request, body []byte)

	polls, queries, executes atomic.Int64
}

func newInstance(t *testing.T, id, role string) *fakeInstance {
	t.Helper()
	fi := &fakeInstance{id: id, role: role, health: sqlclient.Health{Role: role, Volume: DefaultVolume, ID: id, Ready: true, Status: "ready"}}
	if role == RoleReplica {
		fi.health.Replica = &sqlclient.ReplicaHealth{Stream: StreamStreaming}
	}
	fi.srv = httptest.NewServer(http.HandlerFunc(fi.serve))
	t.Cleanup(fi.srv.Close)
	return fi
}

func (fi *fakeInstance) endpoint() string { return strings.TrimPrefix(fi.srv.URL, "http://") }

// record is the instance's catalog record.
func (fi *fakeInstance) record(epoch uint64) *pb.InstanceInfo {
	return &pb.InstanceInfo{Volume: DefaultVolume, Id: fi.id, Role: fi.role, Az: "a", SqlEndpoint: fi.endpoint(), Epoch: epoch, State: "ready", UpdatedUnixMs: time.Now().UnixMilli()}
}

// setHealth changes what GET /v1/health answers.
func (fi *fakeInstance) setHealth(f func(h *sqlclient.Health)) {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	f(&fi.health)
}

func (fi *fakeInstance) setHealthStatus(status int) {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	fi.healthStatus = status
}

func (fi *fakeInstance) setOnQuery(f func(w http.ResponseWriter, r *http.Request, body []byte)) {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	fi.onQuery = f
}

func (fi *fakeInstance) setOnExecute(f func(w http.ResponseWriter, r *http.Request, body []byte)) {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	fi.onExecute = f
}

// stall holds every request the instance gets from now on, health polls
// too, until the test ends.
func (fi *fakeInstance) stall(t *testing.T) {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	if fi.stalled == nil {
		fi.stalled = make(chan struct{})
		t.Cleanup(func() { close(fi.stalled) })
	}
}

func (fi *fakeInstance) body() []byte {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	return fi.lastBody
}

func (fi *fakeInstance) serve(w http.ResponseWriter, r *http.Request) {
	fi.mu.Lock()
	stalled := fi.stalled
	fi.mu.Unlock()
	if stalled != nil {
		<-stalled
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/v1/health":
		fi.polls.Add(1)
		fi.mu.Lock()
		h, status := fi.health, fi.healthStatus
		if h.Replica != nil {
			rh := *h.Replica
			h.Replica = &rh
		}
		fi.mu.Unlock()
		if status != 0 {
			http.Error(w, "health is broken", status)
			return
		}
		writeJSON(w, http.StatusOK, h)
	case r.Method == http.MethodPost && (r.URL.Path == "/v1/query" || r.URL.Path == "/v1/execute"):
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		fi.mu.Lock()
		fi.lastBody = b
		handler := fi.onQuery
		if r.URL.Path == "/v1/execute" {
			handler = fi.onExecute
		}
		fi.mu.Unlock()
		if r.URL.Path == "/v1/query" {
			fi.queries.Add(1)
		} else {
			fi.executes.Add(1)
		}
		if handler != nil {
			handler(w, r, b)
			return
		}
		if r.URL.Path == "/v1/execute" && fi.role != RoleWriter {
			writeError(w, http.StatusConflict, CodeNotWriter, "this is a replica; the writer is elsewhere")
			return
		}
		var q struct {
			MinLSN uint64 `json:"min_lsn"`
		}
		fi.mu.Lock()
		vdl := fi.health.VDL
		fi.mu.Unlock()
		if r.URL.Path == "/v1/query" && fi.role == RoleReplica && json.Unmarshal(b, &q) == nil && q.MinLSN > vdl {
			// As a replica that did not reach min_lsn within its wait.
			writeError(w, http.StatusServiceUnavailable, "lagging", "applied %d, not min_lsn %d", vdl, q.MinLSN)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"answered_by": fi.id, "body_bytes": len(b), "lsn": 7})
	default:
		writeError(w, http.StatusNotFound, "bad_request", "no endpoint %s %s", r.Method, r.URL.Path)
	}
}

// harness is a running router with its two endpoints on real listeners.
type harness struct {
	r       *Router
	ctl     *fakeControl
	cluster *httptest.Server
	reader  *httptest.Server
}

func newHarness(t *testing.T, ctl *fakeControl, mod func(*Config)) *harness {
	t.Helper()
	cfg := Config{
		Control:     ctl.addr,
		Refresh:     20 * time.Millisecond,
		ClusterAddr: "cluster.example:7100",
		Logger:      slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	if mod != nil {
		mod(&cfg)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		r.Run(ctx)
	}()
	h := &harness{r: r, ctl: ctl, cluster: httptest.NewServer(r.ClusterHandler()), reader: httptest.NewServer(r.ReaderHandler())}
	t.Cleanup(func() {
		h.cluster.Close()
		h.reader.Close()
		cancel()
		<-ran
		r.Close()
	})
	return h
}

// candidates returns the ids of the replicas the reader endpoint sends
// queries to.
func (h *harness) candidates() []string {
	var ids []string
	for _, s := range h.r.Status().Replicas {
		if s.Candidate {
			ids = append(ids, s.ID)
		}
	}
	return ids
}

func (h *harness) waitCandidates(t *testing.T, ids ...string) {
	t.Helper()
	wait.For(t, within, "candidate replicas "+strings.Join(ids, ","), func() bool {
		return slices.Equal(h.candidates(), ids)
	})
}

func (h *harness) writerID() string {
	if w := h.r.Status().Writer; w != nil {
		return w.ID
	}
	return ""
}

// reply is an answer through the router.
type reply struct {
	status   int
	instance string // InstanceHeader
	body     []byte
	code     string // the error code, if an error
	message  string
}

func do(t *testing.T, method, url, body string) reply {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	rep := reply{status: resp.StatusCode, instance: resp.Header.Get(InstanceHeader), body: b}
	var e struct {
		Error *apiError `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil && e.Error != nil {
		rep.code, rep.message = e.Error.Code, e.Error.Message
	}
	return rep
}

func query(t *testing.T, h *harness, body string) reply {
	t.Helper()
	return do(t, http.MethodPost, h.reader.URL+"/v1/query", body)
}

func execute(t *testing.T, url string) reply {
	t.Helper()
	return do(t, http.MethodPost, url+"/v1/execute", `{"statements":[{"sql":"INSERT INTO t VALUES (1)"}],"transaction":false}`)
}

// expect fails t unless rep is status from the instance named.
func expect(t *testing.T, rep reply, status int, instance string) {
	t.Helper()
	if rep.status != status || rep.instance != instance {
		t.Fatalf("got HTTP %d from %q (%s), want HTTP %d from %q", rep.status, rep.instance, rep.body, status, instance)
	}
}
