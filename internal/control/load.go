package control

import (
	"context"
	"fmt"
	"maps"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Load is how many segments each node hosts: the input placement weighs.
// A PG in a membership change counts on its joining node too (PG.hosts).
// It is kept as one record (key "load") that every change of a PG's
// segments updates in the same transaction, guarded by its revision, so
// placing a PG reads the nodes and this record, never every PG: its cost
// does not grow with the volumes' size.
type Load struct {
	Version int `json:"version"`
	// Segments is node id -> segments hosted; a node with none is absent.
	Segments map[string]int `json:"segments"`
}

func (c *Catalog) loadKey() string { return c.prefix + "load" }

// loadRead is the load record as read in a transaction, with the revision
// its update must be guarded by.
type loadRead struct {
	load Load
	rev  int64 // ModRevision; 0: absent
}

// decodeLoad reads the response of an OpGet(loadKey).
func decodeLoad(r *clientv3.GetResponse) (loadRead, bool, error) {
	if len(r.Kvs) == 0 {
		return loadRead{}, false, nil
	}
	l, err := decode[Load](r.Kvs[0])
	if err != nil {
		return loadRead{}, false, err
	}
	if l.Segments == nil {
		l.Segments = map[string]int{}
	}
	return loadRead{load: l, rev: r.Kvs[0].ModRevision}, true, nil
}

// guard is the comparison an update of the load read must carry.
func (lr loadRead) guard(key string) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(key), "=", lr.rev)
}

// with returns a copy of the load with delta added for each segment's node.
func (l Load) with(segs []Segment, delta int) Load {
	out := Load{Version: RecordVersion, Segments: maps.Clone(l.Segments)}
	if out.Segments == nil {
		out.Segments = map[string]int{}
	}
	for _, s := range segs {
		out.Segments[s.Node] += delta
		if out.Segments[s.Node] <= 0 {
			delete(out.Segments, s.Node)
		}
	}
	return out
}

// ensureLoad builds the load record from every PG when the catalog has none
// (one written before the record existed). It scans once: the write is
// guarded on no PG key having changed since the scan and on the record still
// being absent, so a racing builder or placement makes it look again.
func (c *Catalog) ensureLoad(ctx context.Context) error {
	key := c.loadKey()
	for range maxAttempts {
		tr, err := c.cli.Txn(ctx).Then(
			clientv3.OpGet(key),
			clientv3.OpGet(c.pgsPrefix(), clientv3.WithPrefix()),
		).Commit()
		if err != nil {
			return etcdErr("read the segments per node", err)
		}
		if len(tr.Responses[0].GetResponseRange().Kvs) > 0 {
			return nil
		}
		pgs, err := decodeAll[PG](tr.Responses[1].GetResponseRange().Kvs)
		if err != nil {
			return err
		}
		l := Load{Version: RecordVersion, Segments: map[string]int{}}
		for _, pg := range pgs {
			l = l.with(pg.hosts(), 1)
		}
		wr, err := c.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
				clientv3.Compare(clientv3.ModRevision(c.pgsPrefix()), "<", tr.Header.Revision+1).WithPrefix()).
			Then(clientv3.OpPut(key, encode(l))).
			Commit()
		if err != nil {
			return etcdErr("record the segments per node", err)
		}
		if wr.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("%w: counting the segments per node raced with other changes %d times; retry", ErrConflict, maxAttempts)
}

// Load returns the segments each node hosts.
func (c *Catalog) Load(ctx context.Context) (Load, error) {
	if err := c.ensureLoad(ctx); err != nil {
		return Load{}, err
	}
	resp, err := c.cli.Get(ctx, c.loadKey())
	if err != nil {
		return Load{}, etcdErr("read the segments per node", err)
	}
	lr, ok, err := decodeLoad((*clientv3.GetResponse)(resp))
	if err != nil {
		return Load{}, err
	}
	if !ok {
		return Load{}, fmt.Errorf("%w: the segments per node record %s vanished; retry", ErrConflict, c.loadKey())
	}
	return lr.load, nil
}
