// Package control is the control plane's library core: the catalog of
// storage nodes, volumes, PG membership, epochs, the writer lease and the
// registry of database instances, kept in etcd; placement of PGs on storage
// nodes; and an embedded single-node etcd.
//
// # Key layout
//
// Every key is under one prefix (DefaultPrefix, "/borealis/v1/"); every value
// is a JSON object with "version": 1.
//
//	nodes/<node-id>                     Node: id, az, addr, capacity_bytes, registered_at
//	alive/<node-id>                     {node, at, ttl_s}, attached to the node's lease: the node is up iff it exists
//	seen/<node-id>                      {node, at}: the last heartbeat, kept after the lease expires
//	counters/volume-id                  the last volume id allocated (a decimal number, not JSON)
//	volumes/<name>                      Volume: name, id, incarnation, page_size, pg_size_bytes, pages_per_pg, geometry_epoch, volume_epoch, pgs
//	volume-ids/<volume-id %020d>        {name}: volume id to name
//	pgs/<volume-id %020d>/<pg %010d>    PG: volume_id, pg, membership_epoch, geometry_epoch, segments [{node, az, addr}]
//	load                                Load: segments per node, updated in the transaction of every change of a PG's segments (load.go)
//	checked/<node-id>                   {node, boot_id, at}: the node's boot under which repair last checked it holds its segments (membership.go)
//	writer/<volume-id %020d>            Writer: holder, epoch, lease, acquired_at; attached to the writer lease
//	failover/<volume-id %020d>          Failover: the volume's current or last failover (failover.go)
//	truncations/<volume-id %020d>/<epoch %020d>
//	                                    Truncation: a recovery's range (after, through] and PG count; kept while the volume exists
//	deleted/<volume-id %020d>           DeletedVolume: id, incarnation, name, pgs, deleted_at; the tombstone of a deleted volume, kept forever
//	instances/<volume-id %020d>/<instance-id>
//	                                    Instance: a database instance (writer or replica) of the volume, attached to a lease of its own (instances.go)
//
// A volume's keys are volumes/<name>, volume-ids/<id>, pgs/<id>/...,
// writer/<id>, truncations/<id>/... and instances/<id>/...; DeleteVolume
// removes them all in one transaction and leaves deleted/<id>, from which
// storage nodes learn (in their heartbeats) that they may drop the volume's
// segments. Volume ids come from the counter and are never reused, so a
// tombstone never names a live volume of this catalog.
//
// # Incarnations
//
// An id is unique in one etcd only: a fresh etcd (the control plane's
// directory lost, or another cluster's) counts from 1 again, while storage
// nodes still hold the segments of the volumes that had those ids before.
// So each volume also has an incarnation, a random 64-bit number drawn when
// it is created, that writers declare with every segment and nodes keep with
// it; a tombstone carries it, and a node drops a segment only when the
// tombstone's incarnation is the segment's own (DeletedVolumes). Volumes
// created before incarnations have none (0), and neither do the segments
// their writers declared; a tombstone never matches 0, so deleting such a
// volume removes it from the catalog but leaves its segments on the storage
// nodes: nothing tells them from another cluster's volume of the same id, and
// leaking disk space is better than dropping another volume's data.
//
// Every change is an etcd Txn guarded by revisions (CreateRevision == 0 for a
// new key, ModRevision == the one read for an update), so two racing calls
// never both win.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

const (
	// DefaultPrefix is the key prefix of the catalog.
	DefaultPrefix = "/borealis/v1/"
	// RecordVersion is the "version" of every record written.
	RecordVersion = 1

	// DefaultPageSize is the page size of a volume created with page size 0.
	DefaultPageSize = 4096
	// DefaultPGSizeBytes is the PG size of a volume created with PG size 0.
	DefaultPGSizeBytes uint64 = 10 << 30
	// MaxVolumeBytes caps a volume: it grows a PG at a time up to this size.
	MaxVolumeBytes uint64 = 128 << 40
	// MinPageSize and MaxPageSize bound a volume's page size (a power of two).
	MinPageSize = 512
	MaxPageSize = 65536

	// SegmentsPerAZ and AZs shape a PG: 2 segments in each of 3 AZs.
	SegmentsPerAZ = 2
	AZs           = 3

	// DefaultHeartbeatTTL is how long a node stays up after its last
	// heartbeat unless told otherwise (etcd lease TTLs are whole seconds).
	DefaultHeartbeatTTL = 3 * time.Second

	// maxAttempts bounds the retries of a transaction that lost a race.
	maxAttempts = 100
)

// Node is a registered storage node.
type Node struct {
	Version       int       `json:"version"`
	ID            string    `json:"id"`
	AZ            string    `json:"az"`
	Addr          string    `json:"addr"`
	CapacityBytes uint64    `json:"capacity_bytes"`
	RegisteredAt  time.Time `json:"registered_at"`
	// Admin is what an operator made of the node: "" (in service),
	// AdminDraining (node drain: its segments move off it) or AdminRemoved
	// (node remove). Placement and repair put nothing on a node that has
	// one; registering the node again keeps it.
	Admin string `json:"admin,omitempty"`
}

// Admin states of a node (Node.Admin).
const (
	AdminDraining = "draining"
	AdminRemoved  = "removed"
)

// Node states.
const (
	StateUp   = "up"
	StateDown = "down"
)

// NodeState is a node with its liveness: up iff its lease-bound alive key
// exists.
type NodeState struct {
	Node
	State string `json:"state"`
	// LastHeartbeat is the time of the node's last heartbeat; zero if it
	// never heartbeat.
	LastHeartbeat time.Time `json:"last_heartbeat"`
	// ReportsHosted says the node's last heartbeat listed the volumes it
	// holds segments of (Hosted, by id); a node whose agent does not report
	// them leaves it false.
	ReportsHosted bool     `json:"reports_hosted,omitempty"`
	Hosted        []uint64 `json:"hosted,omitempty"`
	// BootID is what the node's last heartbeat said of its start: a new
	// one means it restarted ("" if it does not say).
	BootID string `json:"boot_id,omitempty"`
}

// Volume is a volume's catalog record.
type Volume struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
	ID      uint64 `json:"id"`
	// Incarnation is drawn at random when the volume is created (never 0;
	// 0 for a volume created before incarnations): see "Incarnations".
	Incarnation uint64 `json:"incarnation,omitempty"`
	PageSize    int    `json:"page_size"`
	PGSizeBytes uint64 `json:"pg_size_bytes"`
	PagesPerPG  uint64 `json:"pages_per_pg"`
	// GeometryEpoch goes up by one with each PG added (1 with PG 0).
	GeometryEpoch uint64 `json:"geometry_epoch"`
	// VolumeEpoch goes up by one with each writer lease granted and each
	// BumpEpoch (0: no writer yet).
	VolumeEpoch uint64    `json:"volume_epoch"`
	PGs         uint32    `json:"pgs"`
	CreatedAt   time.Time `json:"created_at"`
}

// MaxPGs is the number of PGs the volume may grow to: MaxVolumeBytes worth,
// and no more than a uint32 counts.
func (v Volume) MaxPGs() uint64 { return maxPGs(v.PGSizeBytes) }

// SizeBytes is the volume's current size: its PGs times the PG size.
func (v Volume) SizeBytes() uint64 { return uint64(v.PGs) * v.PGSizeBytes }

// PGOf is the PG holding page (pages are numbered from 1): PG i holds pages
// [i*N+1, (i+1)*N] with N = PagesPerPG.
func (v Volume) PGOf(page uint64) uint32 { return uint32((page - 1) / v.PagesPerPG) }

func maxPGs(pgSize uint64) uint64 {
	if pgSize == 0 {
		return 0
	}
	return min(MaxVolumeBytes/pgSize, 1<<32)
}

// Segment is one of a PG's segments: the node that hosts it. Addr is the
// node's address when the PG was placed; the node record is authoritative.
type Segment struct {
	Node string `json:"node"`
	AZ   string `json:"az"`
	Addr string `json:"addr"`
}

// PG is one protection group's membership.
type PG struct {
	Version         int    `json:"version"`
	VolumeID        uint64 `json:"volume_id"`
	PG              uint32 `json:"pg"`
	MembershipEpoch uint64 `json:"membership_epoch"`
	// GeometryEpoch is the volume's geometry epoch that added this PG.
	GeometryEpoch uint64 `json:"geometry_epoch"`
	// Segments is the PG's quorum set; during a membership change, the set
	// being left.
	Segments []Segment `json:"segments"`
	// Next is, during a membership change, the set the PG moves to:
	// Segments with Change.Leaving replaced by Change.Joining, in the same
	// position. A write needs a write quorum of both. Empty otherwise.
	Next []Segment `json:"next,omitempty"`
	// Change is the membership change under way, if any.
	Change *MembershipChange `json:"change,omitempty"`
}

// MembershipChange is one member of a PG being replaced (membership.go).
type MembershipChange struct {
	Leaving string `json:"leaving"`
	Joining string `json:"joining"`
	// Reason is one of the Reason* constants.
	Reason    string    `json:"reason"`
	StartedAt time.Time `json:"started_at"`
}

// hosts is every segment the PG has on a node: its set and, during a
// change, the joining one. The load record counts these.
func (p PG) hosts() []Segment {
	out := p.Segments
	if p.Change != nil {
		for _, s := range p.Next {
			if s.Node == p.Change.Joining {
				out = append(slices.Clip(out), s)
			}
		}
	}
	return out
}

// Writer is the holder of a volume's writer lease.
type Writer struct {
	Version    int              `json:"version"`
	VolumeID   uint64           `json:"volume_id"`
	Holder     string           `json:"holder"`
	Epoch      uint64           `json:"epoch"`
	Lease      clientv3.LeaseID `json:"lease"`
	TTLSeconds int64            `json:"ttl_s"`
	AcquiredAt time.Time        `json:"acquired_at"`
}

// Truncation is a recovery's truncation range: the new writer of Epoch
// dropped the records of older epochs with LSN in (After, Through] from PGs
// 0..PGs-1.
type Truncation struct {
	Version    int       `json:"version"`
	VolumeID   uint64    `json:"volume_id"`
	Epoch      uint64    `json:"epoch"`
	After      uint64    `json:"after"`
	Through    uint64    `json:"through"`
	PGs        uint32    `json:"pgs"`
	RecordedAt time.Time `json:"recorded_at"`
}

// DeletedVolume is the tombstone of a deleted volume. It is kept for good:
// a storage node that was down when the volume was deleted learns of it at
// its next heartbeat, however late, and drops the volume's segments then.
type DeletedVolume struct {
	Version int    `json:"version"`
	ID      uint64 `json:"id"`
	// Incarnation is the deleted volume's: nodes drop only segments of it.
	Incarnation uint64    `json:"incarnation,omitempty"`
	Name        string    `json:"name"`
	PGs         uint32    `json:"pgs"`
	DeletedAt   time.Time `json:"deleted_at"`
}

type aliveRecord struct {
	Version    int       `json:"version"`
	Node       string    `json:"node"`
	At         time.Time `json:"at"`
	TTLSeconds int64     `json:"ttl_s,omitempty"`
	// The volumes the node said it holds segments of, when it said
	// (reports): what the leader's repair compares with the catalog to find
	// a node that came back without its data.
	Reports bool     `json:"reports,omitempty"`
	Hosted  []uint64 `json:"hosted,omitempty"`
	BootID  string   `json:"boot_id,omitempty"`
}

type volumeIDRecord struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
}

// Catalog is the control plane's catalog in etcd. It is safe for concurrent
// use; every method is one or a few etcd transactions, so several Catalogs
// (processes) may share one etcd.
type Catalog struct {
	cli    *clientv3.Client
	prefix string
	owned  bool

	mu     sync.Mutex
	leases map[string]*nodeLease
}

type nodeLease struct {
	mu  sync.Mutex
	id  clientv3.LeaseID
	ttl int64
}

// New returns a Catalog over cli with its keys under prefix (DefaultPrefix
// when empty). Close does not close cli.
func New(cli *clientv3.Client, prefix string) *Catalog {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &Catalog{cli: cli, prefix: prefix, leases: map[string]*nodeLease{}}
}

// Open connects to etcd at endpoints (URLs such as http://127.0.0.1:2379, or
// host:port), checks that it answers, and returns a Catalog that owns the
// client (Close closes it).
func Open(ctx context.Context, endpoints []string, prefix string) (*Catalog, error) {
	if len(endpoints) == 0 {
		return nil, fmt.Errorf("control: no etcd endpoints given; pass its client URLs (--etcd http://HOST:PORT,...)")
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("control: cannot connect to etcd at %s: %w; check the URLs (--etcd)", strings.Join(endpoints, ","), err)
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := cli.Get(pctx, "health-check", clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, fmt.Errorf("control: etcd at %s does not answer: %w; check that it runs and that --etcd lists its client URLs", strings.Join(endpoints, ","), err)
	}
	c := New(cli, prefix)
	c.owned = true
	return c, nil
}

// Close closes the etcd client if Open made it.
func (c *Catalog) Close() error {
	if c.owned {
		return c.cli.Close()
	}
	return nil
}

// Client is the etcd client the catalog uses.
func (c *Catalog) Client() *clientv3.Client { return c.cli }

// Prefix is the catalog's key prefix.
func (c *Catalog) Prefix() string { return c.prefix }

// ---- keys ----

func (c *Catalog) nodeKey(id string) string  { return c.prefix + "nodes/" + id }
func (c *Catalog) aliveKey(id string) string { return c.prefix + "alive/" + id }
func (c *Catalog) seenKey(id string) string  { return c.prefix + "seen/" + id }
func (c *Catalog) volKey(name string) string { return c.prefix + "volumes/" + name }
func (c *Catalog) volIDKey(id uint64) string { return fmt.Sprintf("%svolume-ids/%020d", c.prefix, id) }
func (c *Catalog) counterKey() string        { return c.prefix + "counters/volume-id" }
func (c *Catalog) pgsPrefix() string         { return c.prefix + "pgs/" }
func (c *Catalog) pgPrefix(vol uint64) string {
	return fmt.Sprintf("%spgs/%020d/", c.prefix, vol)
}
func (c *Catalog) pgKey(vol uint64, pg uint32) string {
	return fmt.Sprintf("%s%010d", c.pgPrefix(vol), pg)
}
func (c *Catalog) writerKey(vol uint64) string { return fmt.Sprintf("%swriter/%020d", c.prefix, vol) }
func (c *Catalog) failoverKey(vol uint64) string {
	return fmt.Sprintf("%sfailover/%020d", c.prefix, vol)
}
func (c *Catalog) truncsPrefix(vol uint64) string {
	return fmt.Sprintf("%struncations/%020d/", c.prefix, vol)
}
func (c *Catalog) truncKey(vol, epoch uint64) string {
	return fmt.Sprintf("%s%020d", c.truncsPrefix(vol), epoch)
}
func (c *Catalog) deletedKey(vol uint64) string { return fmt.Sprintf("%sdeleted/%020d", c.prefix, vol) }

// ---- validation ----

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func checkName(what, s string) error {
	if !nameRE.MatchString(s) {
		return fmt.Errorf("%w: %s %q is not valid; use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalid, what, s)
	}
	return nil
}

func ttlSeconds(ttl time.Duration) int64 {
	s := int64((ttl + time.Second - 1) / time.Second)
	return max(s, 1)
}

func encode(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // our records always marshal
	}
	return string(b)
}

func decode[T any](kv *mvccpb.KeyValue) (T, error) {
	var v T
	if err := json.Unmarshal(kv.Value, &v); err != nil {
		return v, fmt.Errorf("control: the catalog record %s is corrupt (%v); inspect it with etcdctl get %s", kv.Key, err, kv.Key)
	}
	var ver struct {
		Version int `json:"version"`
	}
	_ = json.Unmarshal(kv.Value, &ver)
	if ver.Version != RecordVersion {
		return v, fmt.Errorf("control: the catalog record %s has version %d, and this binary reads version %d; run a matching borealis", kv.Key, ver.Version, RecordVersion)
	}
	return v, nil
}

func etcdErr(what string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("control: %s: %w", what, err)
	}
	return fmt.Errorf("control: %s: %w: %w; check that etcd is reachable", what, ErrUnavailable, err)
}

// ---- nodes ----

// RegisterNode registers a storage node or updates its address and
// capacity. It is idempotent. A node's AZ is fixed: registering an existing
// id in another AZ is refused.
func (c *Catalog) RegisterNode(ctx context.Context, n Node) error {
	if err := checkName("node id", n.ID); err != nil {
		return err
	}
	if err := checkName("AZ", n.AZ); err != nil {
		return fmt.Errorf("node %s: %w", n.ID, err)
	}
	if n.Addr == "" {
		return fmt.Errorf("%w: node %s has no address; give the host:port its Storage service listens on", ErrInvalid, n.ID)
	}
	key := c.nodeKey(n.ID)
	for range maxAttempts {
		resp, err := c.cli.Get(ctx, key)
		if err != nil {
			return etcdErr("register node "+n.ID, err)
		}
		rec := n
		rec.Version = RecordVersion
		rec.Admin = ""
		cmp := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
		if len(resp.Kvs) > 0 {
			old, err := decode[Node](resp.Kvs[0])
			if err != nil {
				return err
			}
			if old.AZ != n.AZ {
				return fmt.Errorf("%w: node %s is registered in AZ %s and cannot move to AZ %s; a node in another AZ needs a new id and a fresh data directory", ErrInvalid, n.ID, old.AZ, n.AZ)
			}
			if old.Addr == n.Addr && old.CapacityBytes == n.CapacityBytes {
				return nil
			}
			rec.RegisteredAt = old.RegisteredAt
			rec.Admin = old.Admin
			cmp = clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)
		} else if rec.RegisteredAt.IsZero() {
			rec.RegisteredAt = time.Now().UTC()
		}
		tr, err := c.cli.Txn(ctx).If(cmp).Then(clientv3.OpPut(key, encode(rec))).Commit()
		if err != nil {
			return etcdErr("register node "+n.ID, err)
		}
		if tr.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("%w: registering node %s raced with other changes %d times; retry", ErrConflict, n.ID, maxAttempts)
}

// Nodes lists the registered nodes, ordered by id.
func (c *Catalog) Nodes(ctx context.Context) ([]Node, error) {
	resp, err := c.cli.Get(ctx, c.prefix+"nodes/", clientv3.WithPrefix())
	if err != nil {
		return nil, etcdErr("list nodes", err)
	}
	return decodeAll[Node](resp.Kvs)
}

func decodeAll[T any](kvs []*mvccpb.KeyValue) ([]T, error) {
	out := make([]T, 0, len(kvs))
	for _, kv := range kvs {
		v, err := decode[T](kv)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func (c *Catalog) lease(nodeID string) *nodeLease {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.leases[nodeID]
	if l == nil {
		l = &nodeLease{}
		c.leases[nodeID] = l
	}
	return l
}

// Heartbeat records that a registered node is alive. The node's key
// alive/<id> is bound to an etcd lease of the given TTL (rounded up to whole
// seconds; etcd may raise a very short TTL to its minimum): the first call
// grants it, later calls renew it (KeepAliveOnce) and re-grant it if it has
// expired. A node that does not heartbeat within the TTL is down, and up
// again at its next heartbeat.
func (c *Catalog) Heartbeat(ctx context.Context, nodeID string, ttl time.Duration) error {
	return c.HeartbeatWith(ctx, nodeID, ttl, HeartbeatReport{})
}

// HeartbeatReport is what a heartbeat says of the node besides that it is
// alive, recorded with its liveness for the leader's repair.
type HeartbeatReport struct {
	// ReportsHosted: Hosted lists every volume the node holds segments of.
	ReportsHosted bool
	Hosted        []uint64
	// BootID is drawn by the node each time it starts ("" if it does not
	// say): a new one means it restarted.
	BootID string
}

// HeartbeatWith is Heartbeat that also records what the node reports.
func (c *Catalog) HeartbeatWith(ctx context.Context, nodeID string, ttl time.Duration, rep HeartbeatReport) error {
	secs := ttlSeconds(ttl)
	nl := c.lease(nodeID)
	nl.mu.Lock()
	defer nl.mu.Unlock()
	for range 3 {
		if nl.id == 0 || nl.ttl != secs {
			g, err := c.cli.Grant(ctx, secs)
			if err != nil {
				return etcdErr("heartbeat of node "+nodeID+": grant a lease", err)
			}
			nl.id, nl.ttl = g.ID, secs
		} else if _, err := c.cli.KeepAliveOnce(ctx, nl.id); err != nil {
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				nl.id = 0 // expired: the node was down; grant a new one
				continue
			}
			return etcdErr("heartbeat of node "+nodeID+": renew its lease", err)
		}
		rec := aliveRecord{Version: RecordVersion, Node: nodeID, At: time.Now().UTC(), TTLSeconds: secs, Reports: rep.ReportsHosted, Hosted: rep.Hosted, BootID: rep.BootID}
		v := encode(rec)
		tr, err := c.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(c.nodeKey(nodeID)), ">", 0)).
			Then(clientv3.OpPut(c.aliveKey(nodeID), v, clientv3.WithLease(nl.id)), clientv3.OpPut(c.seenKey(nodeID), v)).
			Commit()
		if err != nil {
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				nl.id = 0
				continue
			}
			return etcdErr("heartbeat of node "+nodeID, err)
		}
		if !tr.Succeeded {
			return fmt.Errorf("%w: node %s is not registered; register it before it heartbeats", ErrNotFound, nodeID)
		}
		return nil
	}
	return fmt.Errorf("%w: the lease of node %s kept expiring while it heartbeat; is the TTL (%ds) too short for etcd's latency?", ErrConflict, nodeID, secs)
}

// NodeStates returns every registered node with its state, by id.
func (c *Catalog) NodeStates(ctx context.Context) (map[string]NodeState, error) {
	tr, err := c.cli.Txn(ctx).Then(
		clientv3.OpGet(c.prefix+"nodes/", clientv3.WithPrefix()),
		clientv3.OpGet(c.prefix+"alive/", clientv3.WithPrefix()),
		clientv3.OpGet(c.prefix+"seen/", clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, etcdErr("read node states", err)
	}
	nodes, err := decodeAll[Node](tr.Responses[0].GetResponseRange().Kvs)
	if err != nil {
		return nil, err
	}
	alive, err := decodeAll[aliveRecord](tr.Responses[1].GetResponseRange().Kvs)
	if err != nil {
		return nil, err
	}
	seen, err := decodeAll[aliveRecord](tr.Responses[2].GetResponseRange().Kvs)
	if err != nil {
		return nil, err
	}
	out := make(map[string]NodeState, len(nodes))
	for _, n := range nodes {
		out[n.ID] = NodeState{Node: n, State: StateDown}
	}
	for _, s := range seen {
		if ns, ok := out[s.Node]; ok {
			ns.LastHeartbeat = s.At
			out[s.Node] = ns
		}
	}
	for _, a := range alive {
		if ns, ok := out[a.Node]; ok {
			ns.State = StateUp
			if a.At.After(ns.LastHeartbeat) {
				ns.LastHeartbeat = a.At
			}
			ns.ReportsHosted, ns.Hosted, ns.BootID = a.Reports, a.Hosted, a.BootID
			out[a.Node] = ns
		}
	}
	return out, nil
}

// ---- placement input ----

// snapshotOps are the reads placement needs, first in a read Txn: the
// nodes, which are up, and the segments each hosts (the load record, not
// the PGs, so the read does not grow with the volumes).
func (c *Catalog) snapshotOps() []clientv3.Op {
	return []clientv3.Op{
		clientv3.OpGet(c.prefix+"nodes/", clientv3.WithPrefix()),
		clientv3.OpGet(c.prefix+"alive/", clientv3.WithPrefix()),
		clientv3.OpGet(c.loadKey()),
	}
}

// nodeInfos builds placement's view from the responses of snapshotOps:
// every registered node, up iff alive, loaded with the segments it hosts.
// ok is false when the catalog has no load record yet (ensureLoad makes it).
func nodeInfos(rs []*etcdserverpb.ResponseOp) (infos []NodeInfo, lr loadRead, ok bool, err error) {
	nodes, err := decodeAll[Node](rs[0].GetResponseRange().Kvs)
	if err != nil {
		return nil, loadRead{}, false, err
	}
	alive, err := decodeAll[aliveRecord](rs[1].GetResponseRange().Kvs)
	if err != nil {
		return nil, loadRead{}, false, err
	}
	lr, ok, err = decodeLoad((*clientv3.GetResponse)(rs[2].GetResponseRange()))
	if err != nil || !ok {
		return nil, loadRead{}, false, err
	}
	up := map[string]bool{}
	for _, a := range alive {
		up[a.Node] = true
	}
	infos = make([]NodeInfo, 0, len(nodes))
	for _, n := range nodes {
		// A draining or removed node takes no new segment: placement sees
		// it as down.
		infos = append(infos, NodeInfo{ID: n.ID, AZ: n.AZ, Addr: n.Addr, Up: up[n.ID] && n.Admin == "", Segments: lr.load.Segments[n.ID]})
	}
	return infos, lr, true, nil
}

func segmentsOf(chosen []NodeInfo) []Segment {
	segs := make([]Segment, len(chosen))
	for i, n := range chosen {
		segs[i] = Segment{Node: n.ID, AZ: n.AZ, Addr: n.Addr}
	}
	return segs
}

// ---- volumes ----

// CreateVolume creates a volume and places its PG 0 on 2 live nodes in each
// of 3 AZs, least-loaded first. pageSize 0 means DefaultPageSize; pgSizeBytes
// 0 means DefaultPGSizeBytes. The volume id comes from a counter; the
// counter, the volume and PG 0 are written in one transaction, so of
// concurrent creates of one name exactly one wins and the others get
// ErrExists.
func (c *Catalog) CreateVolume(ctx context.Context, name string, pageSize int, pgSizeBytes uint64) (Volume, error) {
	if err := checkName("volume name", name); err != nil {
		return Volume{}, err
	}
	if pageSize == 0 {
		pageSize = DefaultPageSize
	}
	if pgSizeBytes == 0 {
		pgSizeBytes = DefaultPGSizeBytes
	}
	if pageSize < MinPageSize || pageSize > MaxPageSize || pageSize&(pageSize-1) != 0 {
		return Volume{}, fmt.Errorf("%w: page size %d of volume %s is not valid; use a power of two from %d to %d (default %d)", ErrInvalid, pageSize, name, MinPageSize, MaxPageSize, DefaultPageSize)
	}
	if pgSizeBytes < uint64(pageSize) || pgSizeBytes%uint64(pageSize) != 0 {
		return Volume{}, fmt.Errorf("%w: PG size %d of volume %s is not valid; use a whole number of %d-byte pages, at least one (such as 1MiB or 10GiB)", ErrInvalid, pgSizeBytes, name, pageSize)
	}
	if pgSizeBytes > MaxVolumeBytes {
		return Volume{}, fmt.Errorf("%w: PG size %d of volume %s is larger than the 128 TiB a volume may hold; use a smaller PG size", ErrInvalid, pgSizeBytes, name)
	}
	vk, ck := c.volKey(name), c.counterKey()
	for range maxAttempts {
		ops := append([]clientv3.Op{clientv3.OpGet(vk), clientv3.OpGet(ck)}, c.snapshotOps()...)
		tr, err := c.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return Volume{}, etcdErr("create volume "+name, err)
		}
		if kvs := tr.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			return Volume{}, existsErr(name, kvs[0])
		}
		var last uint64
		var counterRev int64
		if kvs := tr.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
			last, err = strconv.ParseUint(string(kvs[0].Value), 10, 64)
			if err != nil {
				return Volume{}, fmt.Errorf("control: the volume id counter %s is corrupt (%q); fix it with etcdctl", ck, kvs[0].Value)
			}
			counterRev = kvs[0].ModRevision
		}
		infos, lr, ok, err := nodeInfos(tr.Responses[2:])
		if err != nil {
			return Volume{}, err
		}
		if !ok {
			if err := c.ensureLoad(ctx); err != nil {
				return Volume{}, err
			}
			continue
		}
		chosen, err := Place(infos, SegmentsPerAZ, AZs)
		if err != nil {
			return Volume{}, fmt.Errorf("cannot create volume %s: %w", name, err)
		}
		vol := Volume{
			Version: RecordVersion, Name: name, ID: last + 1, Incarnation: newIncarnation(),
			PageSize: pageSize, PGSizeBytes: pgSizeBytes, PagesPerPG: pgSizeBytes / uint64(pageSize),
			GeometryEpoch: 1, PGs: 1, CreatedAt: time.Now().UTC(),
		}
		pg := PG{Version: RecordVersion, VolumeID: vol.ID, PG: 0, MembershipEpoch: 1, GeometryEpoch: 1, Segments: segmentsOf(chosen)}
		wr, err := c.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(vk), "=", 0),
				clientv3.Compare(clientv3.ModRevision(ck), "=", counterRev),
				lr.guard(c.loadKey())).
			Then(clientv3.OpPut(ck, strconv.FormatUint(vol.ID, 10)),
				clientv3.OpPut(c.loadKey(), encode(lr.load.with(pg.Segments, 1))),
				clientv3.OpPut(vk, encode(vol)),
				clientv3.OpPut(c.volIDKey(vol.ID), encode(volumeIDRecord{Version: RecordVersion, Name: name})),
				clientv3.OpPut(c.pgKey(vol.ID, 0), encode(pg))).
			Else(clientv3.OpGet(vk)).
			Commit()
		if err != nil {
			return Volume{}, etcdErr("create volume "+name, err)
		}
		if wr.Succeeded {
			return vol, nil
		}
		if kvs := wr.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			return Volume{}, existsErr(name, kvs[0])
		}
		// Another volume took the id, or a placement changed the load: look
		// again.
	}
	return Volume{}, fmt.Errorf("%w: creating volume %s raced with other creates %d times; retry", ErrConflict, name, maxAttempts)
}

// newIncarnation draws a volume's incarnation: random (math/rand/v2's
// generator is seeded from the system's entropy), never 0.
func newIncarnation() uint64 {
	for {
		if v := rand.Uint64(); v != 0 {
			return v
		}
	}
}

func existsErr(name string, kv *mvccpb.KeyValue) error {
	if v, err := decode[Volume](kv); err == nil {
		return fmt.Errorf("%w: volume %s already exists (id %d); use it, or choose another name", ErrExists, name, v.ID)
	}
	return fmt.Errorf("%w: volume %s already exists; use it, or choose another name", ErrExists, name)
}

func notFoundVolume(name string) error {
	return fmt.Errorf("%w: volume %s does not exist; create it first (or check the name)", ErrNotFound, name)
}

// getVolume reads a volume and its key's ModRevision.
func (c *Catalog) getVolume(ctx context.Context, name string) (Volume, int64, error) {
	if err := checkName("volume name", name); err != nil {
		return Volume{}, 0, err
	}
	resp, err := c.cli.Get(ctx, c.volKey(name))
	if err != nil {
		return Volume{}, 0, etcdErr("read volume "+name, err)
	}
	if len(resp.Kvs) == 0 {
		return Volume{}, 0, notFoundVolume(name)
	}
	v, err := decode[Volume](resp.Kvs[0])
	return v, resp.Kvs[0].ModRevision, err
}

// Volume returns the volume named name.
func (c *Catalog) Volume(ctx context.Context, name string) (Volume, error) {
	v, _, err := c.getVolume(ctx, name)
	return v, err
}

// VolumeByID returns the volume with id id.
func (c *Catalog) VolumeByID(ctx context.Context, id uint64) (Volume, error) {
	resp, err := c.cli.Get(ctx, c.volIDKey(id))
	if err != nil {
		return Volume{}, etcdErr(fmt.Sprintf("read volume id %d", id), err)
	}
	if len(resp.Kvs) == 0 {
		return Volume{}, fmt.Errorf("%w: no volume has id %d", ErrNotFound, id)
	}
	r, err := decode[volumeIDRecord](resp.Kvs[0])
	if err != nil {
		return Volume{}, err
	}
	return c.Volume(ctx, r.Name)
}

// Volumes lists every volume, ordered by name.
func (c *Catalog) Volumes(ctx context.Context) ([]Volume, error) {
	resp, err := c.cli.Get(ctx, c.prefix+"volumes/", clientv3.WithPrefix())
	if err != nil {
		return nil, etcdErr("list volumes", err)
	}
	return decodeAll[Volume](resp.Kvs)
}

// DeleteVolume removes a volume from the catalog: its record, its id's
// record, its PGs, its truncations and its instances' records go, and its
// tombstone deleted/<id> is written, in one transaction guarded by the
// volume's revision and by the absence of a writer lease. So a writer that
// takes the lease (or grows the volume) meanwhile makes the delete look
// again, and a volume with a writer is refused with ErrWriterHeld, naming
// the holder. The instances' leases are revoked after it (best effort: their
// renewals fail from the delete on all the same, since the leases hold no
// record any more). It returns the volume and its PGs as they were. Storage nodes drop the volume's segments once their
// heartbeat tells them of the tombstone (DeletedVolumes), those of its
// incarnation only: a volume created before incarnations leaves its segments
// on the nodes.
func (c *Catalog) DeleteVolume(ctx context.Context, name string) (Volume, []PG, error) {
	if err := checkName("volume name", name); err != nil {
		return Volume{}, nil, err
	}
	vk := c.volKey(name)
	for range maxAttempts {
		resp, err := c.cli.Get(ctx, vk)
		if err != nil {
			return Volume{}, nil, etcdErr("delete volume "+name, err)
		}
		if len(resp.Kvs) == 0 {
			return Volume{}, nil, fmt.Errorf("%w: volume %s does not exist (never created, or already deleted); borealis volume list shows the volumes", ErrNotFound, name)
		}
		vol, err := decode[Volume](resp.Kvs[0])
		if err != nil {
			return Volume{}, nil, err
		}
		// The load record loses the volume's segments in the same
		// transaction; it is read first, with the PGs, and the delete is
		// guarded on neither having changed since.
		rd, err := c.cli.Txn(ctx).Then(
			clientv3.OpGet(c.pgPrefix(vol.ID), clientv3.WithPrefix()),
			clientv3.OpGet(c.loadKey()),
		).Commit()
		if err != nil {
			return Volume{}, nil, etcdErr("delete volume "+name, err)
		}
		lr, ok, err := decodeLoad((*clientv3.GetResponse)(rd.Responses[1].GetResponseRange()))
		if err != nil {
			return Volume{}, nil, err
		}
		if !ok {
			if err := c.ensureLoad(ctx); err != nil {
				return Volume{}, nil, err
			}
			continue
		}
		held, err := decodeAll[PG](rd.Responses[0].GetResponseRange().Kvs)
		if err != nil {
			return Volume{}, nil, err
		}
		load := lr.load
		for _, pg := range held {
			load = load.with(pg.hosts(), -1)
		}
		wk := c.writerKey(vol.ID)
		tomb := DeletedVolume{Version: RecordVersion, ID: vol.ID, Incarnation: vol.Incarnation, Name: vol.Name, PGs: vol.PGs, DeletedAt: time.Now().UTC()}
		tr, err := c.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(vk), "=", resp.Kvs[0].ModRevision),
				clientv3.Compare(clientv3.CreateRevision(wk), "=", 0),
				lr.guard(c.loadKey()),
				clientv3.Compare(clientv3.ModRevision(c.pgPrefix(vol.ID)), "<", rd.Header.Revision+1).WithPrefix()).
			Then(clientv3.OpGet(c.pgPrefix(vol.ID), clientv3.WithPrefix()),
				clientv3.OpDelete(vk),
				clientv3.OpDelete(c.volIDKey(vol.ID)),
				clientv3.OpDelete(c.pgPrefix(vol.ID), clientv3.WithPrefix()),
				clientv3.OpDelete(c.truncsPrefix(vol.ID), clientv3.WithPrefix()),
				clientv3.OpDelete(c.volInstancesPrefix(vol.ID), clientv3.WithPrefix(), clientv3.WithPrevKV()),
				clientv3.OpDelete(c.failoverKey(vol.ID)),
				clientv3.OpPut(c.deletedKey(vol.ID), encode(tomb)),
				clientv3.OpPut(c.loadKey(), encode(load))).
			Else(clientv3.OpGet(wk)).
			Commit()
		if err != nil {
			return Volume{}, nil, etcdErr("delete volume "+name, err)
		}
		if tr.Succeeded {
			for _, kv := range tr.Responses[5].GetResponseDeleteRange().PrevKvs {
				if kv.Lease != 0 {
					// Best effort: a lease left behind holds nothing and expires.
					_, _ = c.cli.Revoke(ctx, clientv3.LeaseID(kv.Lease))
				}
			}
			pgs, err := decodeAll[PG](tr.Responses[0].GetResponseRange().Kvs)
			if err != nil {
				// Deleted all the same; only the reply lacks them.
				pgs = nil
			}
			sort.Slice(pgs, func(i, j int) bool { return pgs[i].PG < pgs[j].PG })
			return vol, pgs, nil
		}
		if kvs := tr.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			w, err := decode[Writer](kvs[0])
			if err != nil {
				return Volume{}, nil, err
			}
			return Volume{}, nil, fmt.Errorf("%w: volume %s has a writer: its lease is held by %s (epoch %d, since %s); stop that writer (its lease then goes, or expires within %ds) before deleting the volume",
				ErrWriterHeld, name, w.Holder, w.Epoch, w.AcquiredAt.Format(time.RFC3339), w.TTLSeconds)
		}
		// The volume changed (a writer came and went, a PG was added), or
		// a placement changed the load: look again.
	}
	return Volume{}, nil, fmt.Errorf("%w: deleting volume %s raced with other changes %d times; retry", ErrConflict, name, maxAttempts)
}

// deletedBatch bounds the reads of one DeletedVolumes transaction: etcd
// refuses a transaction of more than 128 operations by default.
const deletedBatch = 100

// VolumeRef names a volume beyond one catalog: its id and incarnation.
type VolumeRef struct {
	ID          uint64
	Incarnation uint64
}

// DeletedVolumes says which of the volumes a storage node reported were
// deleted, each with its tombstone's incarnation, in the order given: those
// of hosted (the volumes the node holds segments of, with the incarnation
// the segments carry) whose tombstone carries that very incarnation, never 0;
// then those of epochOnly (ids the node holds only an epoch of) that have a
// tombstone. A volume the catalog knows nothing of is not in it, nor one
// whose tombstone has another incarnation: a node never drops a segment on
// the catalog's silence, nor on an id alone, since another catalog (an etcd
// emptied or replaced by mistake, another cluster's) may give the same id to
// another volume.
func (c *Catalog) DeletedVolumes(ctx context.Context, hosted []VolumeRef, epochOnly []uint64) ([]VolumeRef, error) {
	ids := make([]uint64, 0, len(hosted)+len(epochOnly))
	for _, h := range hosted {
		ids = append(ids, h.ID)
	}
	ids = append(ids, epochOnly...)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	tombs := map[uint64]DeletedVolume{}
	for len(ids) > 0 {
		n := min(len(ids), deletedBatch)
		ops := make([]clientv3.Op, n)
		for i, id := range ids[:n] {
			ops[i] = clientv3.OpGet(c.deletedKey(id))
		}
		tr, err := c.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, etcdErr("read the tombstones of deleted volumes", err)
		}
		for _, r := range tr.Responses {
			for _, kv := range r.GetResponseRange().Kvs {
				d, err := decode[DeletedVolume](kv)
				if err != nil {
					return nil, err
				}
				tombs[d.ID] = d
			}
		}
		ids = ids[n:]
	}
	var out []VolumeRef
	for _, h := range hosted {
		if d, ok := tombs[h.ID]; ok && d.Incarnation != 0 && d.Incarnation == h.Incarnation {
			out = append(out, h)
		}
	}
	for _, id := range epochOnly {
		if d, ok := tombs[id]; ok {
			out = append(out, VolumeRef{ID: id, Incarnation: d.Incarnation})
		}
	}
	return out, nil
}

// DeletedVolume returns the tombstone of the deleted volume id, or nil if
// the catalog has none.
func (c *Catalog) DeletedVolume(ctx context.Context, id uint64) (*DeletedVolume, error) {
	resp, err := c.cli.Get(ctx, c.deletedKey(id))
	if err != nil {
		return nil, etcdErr(fmt.Sprintf("read the tombstone of volume id %d", id), err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	d, err := decode[DeletedVolume](resp.Kvs[0])
	return &d, err
}

// ---- PGs ----

// PG returns one PG's membership.
func (c *Catalog) PG(ctx context.Context, volID uint64, pg uint32) (PG, error) {
	resp, err := c.cli.Get(ctx, c.pgKey(volID, pg))
	if err != nil {
		return PG{}, etcdErr(fmt.Sprintf("read PG %d of volume id %d", pg, volID), err)
	}
	if len(resp.Kvs) == 0 {
		return PG{}, fmt.Errorf("%w: volume id %d has no PG %d; a PG exists once the volume has grown to it (AddPG)", ErrNotFound, volID, pg)
	}
	return decode[PG](resp.Kvs[0])
}

// PGs returns every PG of a volume, in order.
func (c *Catalog) PGs(ctx context.Context, volID uint64) ([]PG, error) {
	resp, err := c.cli.Get(ctx, c.pgPrefix(volID), clientv3.WithPrefix())
	if err != nil {
		return nil, etcdErr(fmt.Sprintf("list the PGs of volume id %d", volID), err)
	}
	pgs, err := decodeAll[PG](resp.Kvs)
	if err != nil {
		return nil, err
	}
	sort.Slice(pgs, func(i, j int) bool { return pgs[i].PG < pgs[j].PG })
	return pgs, nil
}

// AddPG grows a volume by its next PG: pg must be exactly the volume's PG
// count. It places the PG on 2 live nodes in each of 3 AZs, least-loaded
// first, and bumps the geometry epoch, in one transaction guarded by the
// volume's revision. It is idempotent: a PG that already exists is returned
// as it is, so of racing calls one places the PG and all get it.
func (c *Catalog) AddPG(ctx context.Context, volName string, pg uint32) (PG, error) {
	if err := checkName("volume name", volName); err != nil {
		return PG{}, err
	}
	vk := c.volKey(volName)
	for range maxAttempts {
		ops := append([]clientv3.Op{clientv3.OpGet(vk)}, c.snapshotOps()...)
		tr, err := c.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return PG{}, etcdErr(fmt.Sprintf("add PG %d to volume %s", pg, volName), err)
		}
		kvs := tr.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return PG{}, notFoundVolume(volName)
		}
		vol, err := decode[Volume](kvs[0])
		if err != nil {
			return PG{}, err
		}
		rev := kvs[0].ModRevision
		pk := c.pgKey(vol.ID, pg)
		if pg < vol.PGs {
			return c.PG(ctx, vol.ID, pg)
		}
		infos, lr, ok, err := nodeInfos(tr.Responses[1:])
		if err != nil {
			return PG{}, err
		}
		if !ok {
			if err := c.ensureLoad(ctx); err != nil {
				return PG{}, err
			}
			continue
		}
		if uint64(pg) >= vol.MaxPGs() {
			return PG{}, fmt.Errorf("%w: volume %s cannot grow to PG %d: it is at its maximum of %d PGs of %d bytes (128 TiB); no page beyond it can be written", ErrVolumeFull, volName, pg, vol.MaxPGs(), vol.PGSizeBytes)
		}
		if pg > vol.PGs {
			return PG{}, fmt.Errorf("%w: volume %s has %d PGs (0..%d), so the next one is PG %d, not %d; volumes grow one PG at a time", ErrInvalid, volName, vol.PGs, vol.PGs-1, vol.PGs, pg)
		}
		chosen, err := Place(infos, SegmentsPerAZ, AZs)
		if err != nil {
			return PG{}, fmt.Errorf("cannot add PG %d to volume %s: %w", pg, volName, err)
		}
		nv := vol
		nv.PGs++
		nv.GeometryEpoch++
		rec := PG{Version: RecordVersion, VolumeID: vol.ID, PG: pg, MembershipEpoch: 1, GeometryEpoch: nv.GeometryEpoch, Segments: segmentsOf(chosen)}
		wr, err := c.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(vk), "=", rev),
				clientv3.Compare(clientv3.CreateRevision(pk), "=", 0),
				lr.guard(c.loadKey())).
			Then(clientv3.OpPut(vk, encode(nv)), clientv3.OpPut(pk, encode(rec)),
				clientv3.OpPut(c.loadKey(), encode(lr.load.with(rec.Segments, 1)))).
			Commit()
		if err != nil {
			return PG{}, etcdErr(fmt.Sprintf("add PG %d to volume %s", pg, volName), err)
		}
		if wr.Succeeded {
			return rec, nil
		}
		// The volume changed (another PG, an epoch bump), or a placement
		// changed the load: look again.
	}
	return PG{}, fmt.Errorf("%w: adding PG %d to volume %s raced with other changes %d times; retry", ErrConflict, pg, volName, maxAttempts)
}

// ---- writer lease and epoch ----

// AcquireWriter grants holder the volume's writer lease, an etcd lease of
// the given TTL, and bumps the volume epoch, in one transaction: the key
// writer/<volume-id> is created only if absent, and the volume only if
// unchanged since read. It returns the lease (keep it with RenewWriter, or
// the client's KeepAlive) and the new epoch. If another holder has the
// lease, it is refused with ErrWriterHeld, naming the holder.
func (c *Catalog) AcquireWriter(ctx context.Context, volName, holder string, ttl time.Duration) (clientv3.LeaseID, uint64, error) {
	if holder == "" {
		return 0, 0, fmt.Errorf("%w: a writer lease needs a holder name (such as the instance id)", ErrInvalid)
	}
	secs := ttlSeconds(ttl)
	var lease clientv3.LeaseID
	revoke := func() {
		if lease != 0 {
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, _ = c.cli.Revoke(rctx, lease)
		}
	}
	vk := c.volKey(volName)
	for range maxAttempts {
		vol, rev, fo, foRev, replicas, err := c.acquireView(ctx, volName)
		if err != nil {
			revoke()
			return 0, 0, err
		}
		wk := c.writerKey(vol.ID)
		if err := fo.AdmitsWriter(holder, vol.VolumeEpoch, replicas, time.Now()); err != nil {
			revoke()
			return 0, 0, fmt.Errorf("volume %s: %w", volName, err)
		}
		if lease == 0 {
			g, err := c.cli.Grant(ctx, secs)
			if err != nil {
				return 0, 0, etcdErr("grant the writer lease of volume "+volName, err)
			}
			lease = g.ID
		}
		nv := vol
		nv.VolumeEpoch++
		w := Writer{Version: RecordVersion, VolumeID: vol.ID, Holder: holder, Epoch: nv.VolumeEpoch, Lease: lease, TTLSeconds: secs, AcquiredAt: time.Now().UTC()}
		tr, err := c.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(wk), "=", 0),
				clientv3.Compare(clientv3.ModRevision(vk), "=", rev),
				clientv3.Compare(clientv3.ModRevision(c.failoverKey(vol.ID)), "=", foRev)).
			Then(clientv3.OpPut(wk, encode(w), clientv3.WithLease(lease)), clientv3.OpPut(vk, encode(nv))).
			Else(clientv3.OpGet(wk)).
			Commit()
		if err != nil {
			revoke()
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				return 0, 0, fmt.Errorf("%w: the new writer lease of volume %s expired before it was stored; is the TTL (%ds) too short?", ErrLeaseExpired, volName, secs)
			}
			return 0, 0, etcdErr("acquire the writer lease of volume "+volName, err)
		}
		if tr.Succeeded {
			return lease, nv.VolumeEpoch, nil
		}
		if kvs := tr.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			revoke()
			cur, err := decode[Writer](kvs[0])
			if err != nil {
				return 0, 0, err
			}
			return 0, 0, fmt.Errorf("%w: the writer lease of volume %s is held by %s (epoch %d, since %s); it must release it, or its lease must expire (TTL %ds), before %s can take over",
				ErrWriterHeld, volName, cur.Holder, cur.Epoch, cur.AcquiredAt.Format(time.RFC3339), cur.TTLSeconds, holder)
		}
		// The volume changed between read and write: look again.
	}
	revoke()
	return 0, 0, fmt.Errorf("%w: acquiring the writer lease of volume %s raced with other changes %d times; retry", ErrConflict, volName, maxAttempts)
}

// acquireView reads what AcquireWriter decides on: the volume, its failover
// record and its registered replicas. The volume's id is in its record, so
// two reads: the volume, then the rest in one transaction.
func (c *Catalog) acquireView(ctx context.Context, volName string) (vol Volume, rev int64, fo *Failover, foRev int64, replicas []string, err error) {
	vol, rev, err = c.getVolume(ctx, volName)
	if err != nil {
		return
	}
	tr, terr := c.cli.Txn(ctx).Then(
		clientv3.OpGet(c.failoverKey(vol.ID)),
		clientv3.OpGet(c.volInstancesPrefix(vol.ID), clientv3.WithPrefix()),
	).Commit()
	if terr != nil {
		err = etcdErr("read the failover and instances of volume "+volName, terr)
		return
	}
	if kvs := tr.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		f, derr := decode[Failover](kvs[0])
		if derr != nil {
			err = derr
			return
		}
		fo, foRev = &f, kvs[0].ModRevision
	}
	ins, derr := decodeAll[Instance](tr.Responses[1].GetResponseRange().Kvs)
	if derr != nil {
		err = derr
		return
	}
	for _, in := range ins {
		if in.Role == RoleReplica {
			replicas = append(replicas, in.ID)
		}
	}
	return
}

// VolumeSnapshot reads a volume with its PGs and truncations at one
// revision.
func (c *Catalog) VolumeSnapshot(ctx context.Context, v Volume) ([]PG, []Truncation, error) {
	tr, err := c.cli.Txn(ctx).Then(
		clientv3.OpGet(c.pgPrefix(v.ID), clientv3.WithPrefix()),
		clientv3.OpGet(c.truncsPrefix(v.ID), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, nil, etcdErr("read the PGs and truncations of volume "+v.Name, err)
	}
	pgs, err := decodeAll[PG](tr.Responses[0].GetResponseRange().Kvs)
	if err != nil {
		return nil, nil, err
	}
	sort.Slice(pgs, func(i, j int) bool { return pgs[i].PG < pgs[j].PG })
	truncs, err := decodeAll[Truncation](tr.Responses[1].GetResponseRange().Kvs)
	return pgs, truncs, err
}

// RenewWriter renews a writer lease once. An expired lease gives
// ErrLeaseExpired: its holder is no longer the writer.
func (c *Catalog) RenewWriter(ctx context.Context, lease clientv3.LeaseID) error {
	if _, err := c.cli.KeepAliveOnce(ctx, lease); err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return fmt.Errorf("%w: writer lease %x has expired; its holder is no longer the writer and must acquire the lease again (under a new epoch)", ErrLeaseExpired, int64(lease))
		}
		return etcdErr(fmt.Sprintf("renew writer lease %x", int64(lease)), err)
	}
	return nil
}

// ReleaseWriter gives a writer lease up (revokes it), so that another
// holder may acquire it at once. Releasing an expired lease is not an error.
func (c *Catalog) ReleaseWriter(ctx context.Context, lease clientv3.LeaseID) error {
	if _, err := c.cli.Revoke(ctx, lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return etcdErr(fmt.Sprintf("release writer lease %x", int64(lease)), err)
	}
	return nil
}

// Writer returns the current holder of a volume's writer lease, or nil.
func (c *Catalog) Writer(ctx context.Context, volName string) (*Writer, error) {
	vol, _, err := c.getVolume(ctx, volName)
	if err != nil {
		return nil, err
	}
	resp, err := c.cli.Get(ctx, c.writerKey(vol.ID))
	if err != nil {
		return nil, etcdErr("read the writer of volume "+volName, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	w, err := decode[Writer](resp.Kvs[0])
	return &w, err
}

// BumpEpoch raises the volume epoch from expect to expect+1, a
// compare-and-swap: if the epoch is not expect, it fails with ErrStaleEpoch.
func (c *Catalog) BumpEpoch(ctx context.Context, volName string, expect uint64) (uint64, error) {
	vk := c.volKey(volName)
	for range maxAttempts {
		vol, rev, err := c.getVolume(ctx, volName)
		if err != nil {
			return 0, err
		}
		if vol.VolumeEpoch != expect {
			return 0, fmt.Errorf("%w: the volume epoch of %s is %d, not %d as expected; another writer has moved it: re-read the volume before taking over", ErrStaleEpoch, volName, vol.VolumeEpoch, expect)
		}
		nv := vol
		nv.VolumeEpoch++
		tr, err := c.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(vk), "=", rev)).
			Then(clientv3.OpPut(vk, encode(nv))).
			Commit()
		if err != nil {
			return 0, etcdErr("bump the epoch of volume "+volName, err)
		}
		if tr.Succeeded {
			return nv.VolumeEpoch, nil
		}
	}
	return 0, fmt.Errorf("%w: bumping the epoch of volume %s raced with other changes %d times; retry", ErrConflict, volName, maxAttempts)
}

// ---- recovery ----

// RecordTruncation records a recovery's truncation range under the
// volume, kept with every earlier one, and returns them all, oldest epoch
// first. The writer records it before it truncates any segment, so that a
// later recovery knows of it even if this one stops midway.
//
// t.Epoch must be the volume's current epoch: an older one means a newer
// writer has taken over (ErrStaleEpoch), a newer one was never granted
// (ErrInvalid). The check and the write are one transaction guarded by the
// volume's revision. Recording the same range again returns the history
// unchanged; another range for an epoch already recorded is refused
// (ErrExists): the writer must recover again under a new epoch.
func (c *Catalog) RecordTruncation(ctx context.Context, volName string, t Truncation) ([]Truncation, error) {
	if t.Through < t.After {
		return nil, fmt.Errorf("%w: truncation range (%d, %d] of volume %s ends before it starts", ErrInvalid, t.After, t.Through, volName)
	}
	vk := c.volKey(volName)
	for range maxAttempts {
		vol, rev, err := c.getVolume(ctx, volName)
		if err != nil {
			return nil, err
		}
		if t.Epoch < vol.VolumeEpoch {
			return nil, fmt.Errorf("%w: volume %s is at epoch %d; a recovery under epoch %d is stale (a newer writer has taken over)", ErrStaleEpoch, volName, vol.VolumeEpoch, t.Epoch)
		}
		if t.Epoch > vol.VolumeEpoch {
			return nil, fmt.Errorf("%w: volume %s is at epoch %d; epoch %d was never granted (acquire the writer lease first)", ErrInvalid, volName, vol.VolumeEpoch, t.Epoch)
		}
		tk := c.truncKey(vol.ID, t.Epoch)
		rec := t
		rec.Version, rec.VolumeID, rec.RecordedAt = RecordVersion, vol.ID, time.Now().UTC()
		tr, err := c.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(vk), "=", rev), clientv3.Compare(clientv3.CreateRevision(tk), "=", 0)).
			Then(clientv3.OpPut(tk, encode(rec))).
			Else(clientv3.OpGet(tk)).
			Commit()
		if err != nil {
			return nil, etcdErr(fmt.Sprintf("record the truncation of volume %s for epoch %d", volName, t.Epoch), err)
		}
		if !tr.Succeeded {
			kvs := tr.Responses[0].GetResponseRange().Kvs
			if len(kvs) == 0 {
				continue // the volume changed: look again
			}
			cur, err := decode[Truncation](kvs[0])
			if err != nil {
				return nil, err
			}
			if cur.After != t.After || cur.Through != t.Through {
				return nil, fmt.Errorf("%w: volume %s already has the truncation (%d, %d] recorded for epoch %d, not (%d, %d]; recover again under a new epoch", ErrExists, volName, cur.After, cur.Through, t.Epoch, t.After, t.Through)
			}
		}
		return c.Truncations(ctx, vol.ID)
	}
	return nil, fmt.Errorf("%w: recording the truncation of volume %s raced with other changes %d times; retry", ErrConflict, volName, maxAttempts)
}

// Truncations returns every truncation recorded for a volume, oldest epoch
// first.
func (c *Catalog) Truncations(ctx context.Context, volID uint64) ([]Truncation, error) {
	resp, err := c.cli.Get(ctx, c.truncsPrefix(volID), clientv3.WithPrefix())
	if err != nil {
		return nil, etcdErr(fmt.Sprintf("read the truncations of volume id %d", volID), err)
	}
	// Keys sort by the zero-padded epoch.
	return decodeAll[Truncation](resp.Kvs)
}

// ---- watch ----

// Event kinds.
const (
	// EventExisting: a PG that existed when the watch began.
	EventExisting = "existing"
	// EventAdded: a new PG (growth).
	EventAdded = "added"
	// EventChanged: a PG whose membership changed.
	EventChanged = "changed"
)

// Event reports a PG of a watched volume.
type Event struct {
	Type     string
	PG       PG
	Revision int64 // the etcd revision of the PG record
}

// Watch reports a volume's geometry: first every PG it has (EventExisting),
// then each PG added or changed (EventAdded, EventChanged), in order, from an
// etcd watch on the volume's PG keys that starts right after the initial
// read, so nothing falls between them. If etcd compacts past the watch or
// the watch breaks, it reads the PGs again and reports what changed since.
// The channel is closed when ctx is done.
func (c *Catalog) Watch(ctx context.Context, volID uint64) <-chan Event {
	ch := make(chan Event, 64)
	prefix := c.pgPrefix(volID)
	go func() {
		defer close(ch)
		send := func(ev Event) bool {
			select {
			case ch <- ev:
				return true
			case <-ctx.Done():
				return false
			}
		}
		var last int64 // the revision reported up to; 0 before the first read
		for ctx.Err() == nil {
			resp, err := c.cli.Get(ctx, prefix, clientv3.WithPrefix())
			if err != nil {
				select {
				case <-time.After(200 * time.Millisecond):
				case <-ctx.Done():
				}
				continue
			}
			for _, kv := range resp.Kvs {
				typ := EventExisting
				if last != 0 {
					if kv.ModRevision <= last {
						continue
					}
					typ = EventChanged
					if kv.CreateRevision > last {
						typ = EventAdded
					}
				}
				pg, err := decode[PG](kv)
				if err != nil {
					continue
				}
				if !send(Event{Type: typ, PG: pg, Revision: kv.ModRevision}) {
					return
				}
			}
			last = resp.Header.Revision
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			wch := c.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(last+1))
			for wr := range wch {
				if wr.Canceled || wr.CompactRevision != 0 || wr.Err() != nil {
					break
				}
				for _, ev := range wr.Events {
					if ev.Type != clientv3.EventTypePut {
						continue
					}
					pg, err := decode[PG](ev.Kv)
					if err != nil {
						continue
					}
					typ := EventChanged
					if ev.IsCreate() {
						typ = EventAdded
					}
					if !send(Event{Type: typ, PG: pg, Revision: ev.Kv.ModRevision}) {
						cancel()
						return
					}
					last = ev.Kv.ModRevision
				}
			}
			cancel()
		}
	}()
	return ch
}
