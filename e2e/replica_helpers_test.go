package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/wait"
)

// replicaCluster is a control plane, six storage nodes, a writer, read
// replicas and (optionally) the router, each a process of its own, on a
// volume "main".
type replicaCluster struct {
	cl       *cluster.Cluster
	writer   string            // the writer's SQL address (host:port)
	replicas map[string]string // replica id -> SQL address
	ids      []string          // replica ids in start order
	// The router's endpoints, when started.
	clusterEP, readerEP string
}

// replicaSpec is one replica to start.
type replicaSpec struct {
	id, az string
	extra  []string
}

type replicaClusterOpts struct {
	pgSize     uint64 // bytes; default 256 KiB (64 pages a PG)
	writerArgs []string
	replicas   []replicaSpec
	router     bool
	routerArgs []string
}

// startReplicaCluster starts the processes of o and waits until each is
// ready: the replicas attached to the writer's redo stream.
func startReplicaCluster(t *testing.T, o replicaClusterOpts) *replicaCluster {
	t.Helper()
	start := time.Now()
	cl := cluster.New(binary, t.TempDir())
	t.Cleanup(func() {
		cl.Stop(5 * time.Second)
		logTailsOnFailure(t, cl)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl.ControlAddr = freeAddr(t)
	if err := cl.StartControl(ctx, cl.ControlAddr); err != nil {
		t.Fatal(err)
	}
	if err := cl.StartStorageNodes(ctx, 6); err != nil {
		t.Fatal(err)
	}
	ctl := cpDial(t, cl.ControlAddr)
	cpWaitNodes(t, ctl, 20*time.Second, "all six nodes up", func(m map[string]string) bool { return cpUp(m) == 6 })
	if o.pgSize == 0 {
		o.pgSize = 256 << 10
	}
	if _, err := ctl.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "main", PageSize: pageSize, PgSizeBytes: o.pgSize}); err != nil {
		t.Fatal(err)
	}
	rc := &replicaCluster{cl: cl, writer: freeAddr(t), replicas: map[string]string{}}
	if err := cl.StartDB(ctx, "writer", "writer", "main", rc.writer, o.writerArgs...); err != nil {
		t.Fatal(err)
	}
	for _, r := range o.replicas {
		addr := freeAddr(t)
		if err := cl.StartReplica(ctx, r.id, r.az, "main", addr, r.extra...); err != nil {
			t.Fatal(err)
		}
		rc.replicas[r.id] = addr
		rc.ids = append(rc.ids, r.id)
	}
	if o.router {
		rc.clusterEP, rc.readerEP = freeAddr(t), freeAddr(t)
		if err := cl.StartRouter(ctx, "router", "main", rc.clusterEP, rc.readerEP, o.routerArgs...); err != nil {
			t.Fatal(err)
		}
	}
	// Every replica is subscribed to the writer's stream.
	wait.For(t, 20*time.Second, "every replica subscribed to the writer's redo stream", func() bool {
		h, err := health(rc.writer)
		if err != nil {
			return false
		}
		subs := map[string]bool{}
		for _, s := range h.Replicas {
			subs[s.ID] = true
		}
		for _, id := range rc.ids {
			if !subs[id] {
				return false
			}
		}
		return true
	})
	t.Logf("cluster of %d replicas ready in %s", len(rc.ids), time.Since(start).Round(time.Millisecond))
	return rc
}

func freeAddr(t *testing.T) string {
	t.Helper()
	a, err := cluster.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// httpc is the tests' HTTP client: enough idle connections per host that
// concurrent loops reuse theirs.
var httpc = &http.Client{Transport: &http.Transport{
	MaxIdleConns:        256,
	MaxIdleConnsPerHost: 64,
	IdleConnTimeout:     30 * time.Second,
}}

// apiCall posts body to addr+path and decodes a 2xx reply into reply; a
// non-2xx reply is a *sqlclient.Error (sqlclient.Code tells its code). It
// returns the Borealis-Instance header of the reply.
func apiCall(ctx context.Context, addr, method, path string, body, reply any) (string, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return "", err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, rd)
	if err != nil {
		return "", err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := httpc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	inst := resp.Header.Get("Borealis-Instance")
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return inst, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
				Writer  string `json:"writer"`
			} `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error.Code != "" {
			msg := e.Error.Message
			if e.Error.Writer != "" {
				msg += " [writer " + e.Error.Writer + "]"
			}
			return inst, &sqlclient.Error{Status: resp.StatusCode, Code: e.Error.Code, Message: msg}
		}
		return inst, &sqlclient.Error{Status: resp.StatusCode, Message: strings.TrimSpace(string(b))}
	}
	if reply == nil {
		return inst, nil
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	return inst, d.Decode(reply)
}

// st is a statement with parameters.
func st(sql string, params ...any) sqlclient.Statement {
	return sqlclient.Statement{SQL: sql, Params: params}
}

type execReply struct {
	Results []struct {
		RowsAffected json.Number `json:"rows_affected"`
		LastInsertID json.Number `json:"last_insert_id"`
	} `json:"results"`
	LSN uint64 `json:"lsn"`
}

// execLSN runs statements on the instance at addr (the writer, or the
// router's cluster endpoint) and returns the reply's LSN.
func execLSN(ctx context.Context, addr string, tx bool, stmts ...sqlclient.Statement) (uint64, error) {
	body := map[string]any{"statements": stmts, "transaction": tx}
	var r execReply
	if _, err := apiCall(ctx, addr, http.MethodPost, "/v1/execute", body, &r); err != nil {
		return 0, err
	}
	if len(r.Results) != len(stmts) {
		return 0, fmt.Errorf("%d results for %d statements", len(r.Results), len(stmts))
	}
	if r.LSN == 0 {
		return 0, fmt.Errorf("the execute reply carries no lsn")
	}
	return r.LSN, nil
}

// mustExec is execLSN that fails t on error.
func mustExec(t *testing.T, addr string, tx bool, stmts ...sqlclient.Statement) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lsn, err := execLSN(ctx, addr, tx, stmts...)
	if err != nil {
		t.Fatalf("execute %q: %v", stmts[0].SQL, err)
	}
	return lsn
}

// queryRows runs a query on the instance at addr with min_lsn (0: none)
// and returns its rows (integers as int64, other numbers as float64) and
// who answered (the router's Borealis-Instance header; "" from an
// instance).
func queryRows(ctx context.Context, addr string, minLSN uint64, sql string, params ...any) ([][]any, string, error) {
	body := map[string]any{"sql": sql}
	if len(params) > 0 {
		body["params"] = params
	}
	if minLSN > 0 {
		body["min_lsn"] = minLSN
	}
	var r struct {
		Rows [][]any `json:"rows"`
	}
	inst, err := apiCall(ctx, addr, http.MethodPost, "/v1/query", body, &r)
	if err != nil {
		return nil, inst, err
	}
	for _, row := range r.Rows {
		for j, v := range row {
			if n, ok := v.(json.Number); ok {
				if i, err := n.Int64(); err == nil {
					row[j] = i
				} else if f, err := n.Float64(); err == nil {
					row[j] = f
				}
			}
		}
	}
	return r.Rows, inst, nil
}

// mustQuery is queryRows that fails t on error.
func mustQuery(t *testing.T, addr string, minLSN uint64, sql string, params ...any) [][]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, _, err := queryRows(ctx, addr, minLSN, sql, params...)
	if err != nil {
		t.Fatalf("query %q (min_lsn %d) at %s: %v", sql, minLSN, addr, err)
	}
	return rows
}

// ints returns a row of integers; ok false if any value is not one.
func ints(row []any) ([]int64, bool) {
	out := make([]int64, len(row))
	for i, v := range row {
		n, ok := v.(int64)
		if !ok {
			return nil, false
		}
		out[i] = n
	}
	return out, true
}

// oneRowInts runs a query that answers one row of integers.
func oneRowInts(t *testing.T, addr string, minLSN uint64, sql string, params ...any) []int64 {
	t.Helper()
	rows := mustQuery(t, addr, minLSN, sql, params...)
	if len(rows) != 1 {
		t.Fatalf("%q answered %d rows: %v", sql, len(rows), rows)
	}
	r, ok := ints(rows[0])
	if !ok {
		t.Fatalf("%q answered %v, not integers", sql, rows[0])
	}
	return r
}

// waitApplied is POST /v1/wait: the VDL the instance reached once it
// reached lsn.
func waitApplied(ctx context.Context, addr string, lsn uint64, timeout time.Duration) (uint64, error) {
	var r struct {
		VDL uint64 `json:"vdl"`
	}
	_, err := apiCall(ctx, addr, http.MethodPost, "/v1/wait", map[string]any{"lsn": lsn, "timeout_ms": timeout.Milliseconds()}, &r)
	return r.VDL, err
}

// health is GET /v1/health of the instance at addr.
func health(addr string) (*sqlclient.Health, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c := sqlclient.Client{Endpoint: "http://" + addr, HTTP: httpc}
	return c.Health(ctx)
}

func mustHealth(t *testing.T, addr string) *sqlclient.Health {
	t.Helper()
	h, err := health(addr)
	if err != nil {
		t.Fatalf("health of %s: %v", addr, err)
	}
	return h
}

// routerStatus is what the router's GET /v1/health answers (the part the
// tests read).
type routerStatus struct {
	Writer *struct {
		ID string `json:"id"`
	} `json:"writer"`
	Replicas []struct {
		ID        string  `json:"id"`
		Candidate bool    `json:"candidate"`
		Why       string  `json:"why"`
		VDL       uint64  `json:"vdl"`
		Served    uint64  `json:"served"`
		LagMS     float64 `json:"lag_ms"`
	} `json:"replicas"`
}

func routerHealth(addr string) (*routerStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var st routerStatus
	_, err := apiCall(ctx, addr, http.MethodGet, "/v1/health", nil, &st)
	return &st, err
}

// candidate says whether the router sends queries to replica id now.
func (s *routerStatus) candidate(id string) (bool, string) {
	for _, r := range s.Replicas {
		if r.ID == id {
			return r.Candidate, r.Why
		}
	}
	return false, "not listed"
}

// catchUp waits until every replica has applied lsn.
func (rc *replicaCluster) catchUp(t *testing.T, lsn uint64, within time.Duration, ids ...string) {
	t.Helper()
	if len(ids) == 0 {
		ids = rc.ids
	}
	for _, id := range ids {
		addr := rc.replicas[id]
		wait.For(t, within, fmt.Sprintf("replica %s to apply LSN %d", id, lsn), func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_, err := waitApplied(ctx, addr, lsn, time.Second)
			return err == nil
		})
	}
}

// waitMaterialized waits until every storage node has materialized PG 0
// of volume "main" above lsn: page versions at or below lsn may be
// collected, and reads below its horizon are refused.
func (rc *replicaCluster) waitMaterialized(t *testing.T, lsn uint64, within time.Duration) {
	t.Helper()
	ctl := cpDial(t, rc.cl.ControlAddr)
	v, err := ctl.GetVolume(context.Background(), &pb.GetVolumeRequest{Name: "main"})
	if err != nil {
		t.Fatal(err)
	}
	vol := v.Id
	for _, c := range rc.cl.Components() {
		if c.Role != "storage" {
			continue
		}
		s := storageAt(t, c.Addr)
		wait.For(t, within, fmt.Sprintf("%s to materialize PG 0 above LSN %d", c.ID, lsn), func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			info, err := s.SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: vol, Pg: 0})
			return err == nil && info.MaterializedLsn > lsn
		})
	}
}

// integrityOKAt runs PRAGMA integrity_check on the instance at addr, at
// min_lsn minLSN.
func integrityOKAt(t *testing.T, addr string, minLSN uint64) {
	t.Helper()
	rows := mustQuery(t, addr, minLSN, "PRAGMA integrity_check")
	if len(rows) != 1 || rows[0][0] != "ok" {
		t.Fatalf("integrity_check at %s: %v", addr, rows)
	}
}
