package control

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The instance registry: each database instance (a volume's writer or one of
// its replicas) keeps a record at instances/<volume-id %020d>/<instance-id>,
// attached to an etcd lease of its own. The record is there while the
// instance renews its lease, and goes when the lease expires or is revoked
// (DeregisterInstance), when the id registers again (the newer lease takes
// the key and the older one is revoked), or with the volume (DeleteVolume).

// Instance roles.
const (
	RoleWriter  = "writer"
	RoleReplica = "replica"
)

// Instance is a database instance's record in the registry. Its fields
// from Volume to PromotionTier are the instance's own (InstanceInfo); the
// catalog adds VolumeID, Lease and TTLSeconds.
type Instance struct {
	Version  int    `json:"version"`
	VolumeID uint64 `json:"volume_id"`
	Volume   string `json:"volume"`
	ID       string `json:"id"`
	// Role is RoleWriter or RoleReplica.
	Role                string `json:"role"`
	AZ                  string `json:"az,omitempty"`
	SQLEndpoint         string `json:"sql_endpoint"`
	ReplicationEndpoint string `json:"replication_endpoint,omitempty"`
	Epoch               uint64 `json:"epoch"`
	VDL                 uint64 `json:"vdl"`
	ReadPoint           uint64 `json:"read_point"`
	State               string `json:"state,omitempty"`
	// UpdatedUnixMs is when the instance wrote the record, by its clock.
	UpdatedUnixMs int64  `json:"updated_unix_ms"`
	PromotionTier uint32 `json:"promotion_tier"`
	// Lease is the etcd lease the record is attached to; TTLSeconds its TTL.
	Lease      clientv3.LeaseID `json:"lease"`
	TTLSeconds int64            `json:"ttl_s"`
}

func (c *Catalog) instancesPrefix() string { return c.prefix + "instances/" }
func (c *Catalog) volInstancesPrefix(vol uint64) string {
	return fmt.Sprintf("%s%020d/", c.instancesPrefix(), vol)
}
func (c *Catalog) instanceKey(vol uint64, id string) string { return c.volInstancesPrefix(vol) + id }

// parseInstanceKey splits a key of the registry into its volume id and
// instance id; ok is false for any other key.
func (c *Catalog) parseInstanceKey(key string) (vol uint64, id string, ok bool) {
	rest, found := strings.CutPrefix(key, c.instancesPrefix())
	if !found {
		return 0, "", false
	}
	v, id, found := strings.Cut(rest, "/")
	if !found || id == "" || strings.Contains(id, "/") {
		return 0, "", false
	}
	vol, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, "", false
	}
	return vol, id, true
}

// checkInstance checks the fields an instance must give: a volume name, an
// id that is a short safe token, a role, and its SQL endpoint.
func checkInstance(in Instance) error {
	if in.ID == "" {
		return fmt.Errorf("%w: the instance record has no id; give the instance's id (such as db-1)", ErrInvalid)
	}
	if err := checkName("instance id", in.ID); err != nil {
		return err
	}
	if err := checkName("volume name", in.Volume); err != nil {
		return fmt.Errorf("instance %s: %w", in.ID, err)
	}
	if in.Role != RoleWriter && in.Role != RoleReplica {
		return fmt.Errorf("%w: instance %s of volume %s has role %q; use %q or %q", ErrInvalid, in.ID, in.Volume, in.Role, RoleWriter, RoleReplica)
	}
	if in.SQLEndpoint == "" {
		return fmt.Errorf("%w: instance %s of volume %s has no SQL endpoint; give the host:port its SQL API listens on", ErrInvalid, in.ID, in.Volume)
	}
	return nil
}

// RegisterInstance records an instance of a volume under a new etcd lease
// of the given TTL (rounded up to whole seconds, at least one; etcd may
// raise a very short TTL to its minimum), and returns the record as stored,
// with the lease. If the id was already registered for the volume, the new
// record replaces the older one in the same transaction that checks the
// volume, and the older lease is revoked after it: the older record is
// returned as replaced (nil if there was none). An unknown volume is
// ErrNotFound; a record without a valid id, role or SQL endpoint ErrInvalid.
func (c *Catalog) RegisterInstance(ctx context.Context, in Instance, ttl time.Duration) (Instance, *Instance, error) {
	if err := checkInstance(in); err != nil {
		return Instance{}, nil, err
	}
	secs := ttlSeconds(ttl)
	var lease clientv3.LeaseID
	var granted int64
	revoke := func() {
		if lease != 0 {
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, _ = c.cli.Revoke(rctx, lease)
		}
	}
	vk := c.volKey(in.Volume)
	what := fmt.Sprintf("register instance %s of volume %s", in.ID, in.Volume)
	for range maxAttempts {
		resp, err := c.cli.Get(ctx, vk)
		if err != nil {
			revoke()
			return Instance{}, nil, etcdErr(what, err)
		}
		if len(resp.Kvs) == 0 {
			revoke()
			return Instance{}, nil, notFoundVolume(in.Volume)
		}
		vol, err := decode[Volume](resp.Kvs[0])
		if err != nil {
			revoke()
			return Instance{}, nil, err
		}
		volCreated := resp.Kvs[0].CreateRevision
		ik := c.instanceKey(vol.ID, in.ID)
		old, err := c.cli.Get(ctx, ik)
		if err != nil {
			revoke()
			return Instance{}, nil, etcdErr(what, err)
		}
		var oldRev int64
		var replaced *Instance
		if len(old.Kvs) > 0 {
			oldRev = old.Kvs[0].ModRevision
			r, err := decode[Instance](old.Kvs[0])
			if err != nil {
				// A damaged record is replaced all the same.
				r = Instance{VolumeID: vol.ID, Volume: in.Volume, ID: in.ID}
			}
			r.Lease = clientv3.LeaseID(old.Kvs[0].Lease)
			replaced = &r
		}
		if lease == 0 {
			g, err := c.cli.Grant(ctx, secs)
			if err != nil {
				return Instance{}, nil, etcdErr(what+": grant a lease", err)
			}
			// etcd may have raised the TTL to its minimum: record the real one.
			lease, granted = g.ID, g.TTL
		}
		rec := in
		rec.Version, rec.VolumeID, rec.Lease, rec.TTLSeconds = RecordVersion, vol.ID, lease, granted
		// The volume is the one read (not deleted, not created again), and
		// the id's record the one read (absent: ModRevision 0).
		tr, err := c.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(vk), "=", volCreated),
				clientv3.Compare(clientv3.ModRevision(ik), "=", oldRev)).
			Then(clientv3.OpPut(ik, encode(rec), clientv3.WithLease(lease))).
			Commit()
		if err != nil {
			revoke()
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				return Instance{}, nil, fmt.Errorf("%w: the new lease of instance %s of volume %s expired before it was stored; is the TTL (%ds) too short?", ErrLeaseExpired, in.ID, in.Volume, secs)
			}
			return Instance{}, nil, etcdErr(what, err)
		}
		if !tr.Succeeded {
			continue // the volume or the id's record changed: look again
		}
		if replaced != nil && replaced.Lease != 0 && replaced.Lease != lease {
			// The older lease holds no key any more (the put moved it to
			// the new one), so its renewals already fail; revoking it
			// makes that plain at once. If this fails, it expires.
			_, _ = c.cli.Revoke(ctx, replaced.Lease)
		}
		return rec, replaced, nil
	}
	revoke()
	return Instance{}, nil, fmt.Errorf("%w: registering instance %s of volume %s raced with other changes %d times; retry", ErrConflict, in.ID, in.Volume, maxAttempts)
}

// instanceOfLease finds the instance record a lease holds: its key, volume
// id and instance id, and the lease's granted TTL. A lease that has expired
// or was revoked, or that holds no record any more (the id registered again,
// the volume was deleted), is ErrLeaseExpired; a live lease that holds
// other keys than an instance's (a writer's or a node's lease) is
// ErrInvalid, so that it is never renewed or revoked here.
func (c *Catalog) instanceOfLease(ctx context.Context, lease clientv3.LeaseID, what string) (key string, vol uint64, id string, ttl int64, err error) {
	resp, err := c.cli.TimeToLive(ctx, lease, clientv3.WithAttachedKeys())
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return "", 0, "", 0, instanceLeaseGone(lease)
		}
		return "", 0, "", 0, etcdErr(what, err)
	}
	if resp.TTL < 0 {
		return "", 0, "", 0, instanceLeaseGone(lease)
	}
	var others []string
	for _, k := range resp.Keys {
		if v, i, ok := c.parseInstanceKey(string(k)); ok {
			if key != "" {
				return "", 0, "", 0, fmt.Errorf("control: lease %x holds two instance records, %s and %s; the registry grants one lease per record: inspect them with etcdctl", int64(lease), key, k)
			}
			key, vol, id = string(k), v, i
		} else {
			others = append(others, string(k))
		}
	}
	if len(others) > 0 {
		return "", 0, "", 0, fmt.Errorf("%w: lease %x is not an instance's lease (it holds %s); pass the lease RegisterInstance returned", ErrInvalid, int64(lease), strings.Join(others, ", "))
	}
	if key == "" {
		return "", 0, "", 0, fmt.Errorf("%w: instance lease %x holds no record any more: the instance's id was registered again under another lease, or its volume was deleted; register the instance again", ErrLeaseExpired, int64(lease))
	}
	return key, vol, id, resp.GrantedTTL, nil
}

func instanceLeaseGone(lease clientv3.LeaseID) error {
	return fmt.Errorf("%w: instance lease %x has expired or was released, and its record is gone; register the instance again", ErrLeaseExpired, int64(lease))
}

// RenewInstance renews an instance's lease once and, if in is not nil,
// replaces its record with in under the same lease. The lease must still
// hold the instance's record: one that expired, was revoked or was replaced
// by a newer registration of the id is ErrLeaseExpired (the instance
// registers again). in must name the volume and id of the lease's record
// (ErrInvalid otherwise), and is checked like a registration. The new record
// is put only if the key is still attached to lease (an etcd compare on its
// lease), so a renewal never brings back a record that was replaced or
// removed meanwhile.
func (c *Catalog) RenewInstance(ctx context.Context, lease clientv3.LeaseID, in *Instance) error {
	if in != nil {
		if err := checkInstance(*in); err != nil {
			return err
		}
	}
	what := fmt.Sprintf("renew instance lease %x", int64(lease))
	key, vol, id, ttl, err := c.instanceOfLease(ctx, lease, what)
	if err != nil {
		return err
	}
	if in != nil {
		v, err := c.Volume(ctx, in.Volume)
		if err != nil {
			return err
		}
		if v.ID != vol || in.ID != id {
			return fmt.Errorf("%w: instance lease %x is that of instance %s of volume id %d, not of instance %s of volume %s (id %d); renew each record with its own lease", ErrInvalid, int64(lease), id, vol, in.ID, in.Volume, v.ID)
		}
	}
	if _, err := c.cli.KeepAliveOnce(ctx, lease); err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return instanceLeaseGone(lease)
		}
		return etcdErr(what, err)
	}
	if in == nil {
		return nil
	}
	rec := *in
	rec.Version, rec.VolumeID, rec.Lease, rec.TTLSeconds = RecordVersion, vol, lease, ttl
	tr, err := c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(key), "=", lease)).
		Then(clientv3.OpPut(key, encode(rec), clientv3.WithLease(lease))).
		Commit()
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return instanceLeaseGone(lease)
		}
		return etcdErr(what, err)
	}
	if !tr.Succeeded {
		return fmt.Errorf("%w: the record of instance %s of volume %s was replaced or removed while lease %x was renewed; register the instance again", ErrLeaseExpired, id, in.Volume, int64(lease))
	}
	return nil
}

// DeregisterInstance revokes an instance's lease, which removes its record,
// and returns the record as it was. A lease that has already expired or was
// revoked, or that holds no record any more, is not an error: the record is
// gone either way, and the result is nil (such a lease, if still live, is
// left to expire). A live lease that is not an instance's (a writer's, a
// node's) is refused with ErrInvalid and left alone.
func (c *Catalog) DeregisterInstance(ctx context.Context, lease clientv3.LeaseID) (*Instance, error) {
	what := fmt.Sprintf("deregister instance lease %x", int64(lease))
	key, _, _, _, err := c.instanceOfLease(ctx, lease, what)
	if errors.Is(err, ErrLeaseExpired) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var rec *Instance
	if resp, err := c.cli.Get(ctx, key); err == nil && len(resp.Kvs) > 0 && resp.Kvs[0].Lease == int64(lease) {
		if r, err := decode[Instance](resp.Kvs[0]); err == nil {
			rec = &r
		}
	}
	if _, err := c.cli.Revoke(ctx, lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return nil, etcdErr(what, err)
	}
	return rec, nil
}

// Instances lists the registered instances of a volume, or of every volume
// if volName is "", ordered by volume name and then id. Only records of
// live leases are in etcd; an unknown volume is ErrNotFound.
func (c *Catalog) Instances(ctx context.Context, volName string) ([]Instance, error) {
	prefix := c.instancesPrefix()
	what := "list the instances of every volume"
	if volName != "" {
		vol, err := c.Volume(ctx, volName)
		if err != nil {
			return nil, err
		}
		prefix = c.volInstancesPrefix(vol.ID)
		what = "list the instances of volume " + volName
	}
	resp, err := c.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, etcdErr(what, err)
	}
	out, err := decodeAll[Instance](resp.Kvs)
	if err != nil {
		return nil, err
	}
	for i, kv := range resp.Kvs {
		out[i].Lease = clientv3.LeaseID(kv.Lease)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Volume != out[j].Volume {
			return out[i].Volume < out[j].Volume
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}
