package control

import "errors"

// Sentinel errors. Every error the catalog returns wraps at most one of them
// (test with errors.Is) and carries a message saying what was wrong and what
// to do; a gRPC layer can map them to status codes.
var (
	// ErrNotFound: a node, volume or PG that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: a volume of that name already exists.
	ErrExists = errors.New("already exists")
	// ErrInvalid: bad input (a page size, a PG size, a name, a PG out of order).
	ErrInvalid = errors.New("invalid argument")
	// ErrPlacement: not enough live storage nodes to place a PG.
	ErrPlacement = errors.New("not enough live storage nodes")
	// ErrVolumeFull: the volume cannot grow past its maximum size.
	ErrVolumeFull = errors.New("volume at maximum size")
	// ErrWriterHeld: another holder has the volume's writer lease.
	ErrWriterHeld = errors.New("writer lease held")
	// ErrFailingOver: a failover promotes another instance; only it may
	// take the writer lease.
	ErrFailingOver = errors.New("failing over")
	// ErrInvalidState: the request does not fit the volume's state now
	// (a switchover without a serving writer, or during another failover).
	ErrInvalidState = errors.New("switchover refused")
	// ErrStaleEpoch: a compare-and-swap on the volume epoch found another value.
	ErrStaleEpoch = errors.New("stale volume epoch")
	// ErrLeaseExpired: a writer lease that no longer exists, or an
	// instance lease that no longer holds its record (expired, released,
	// replaced by a newer registration of the id).
	ErrLeaseExpired = errors.New("lease expired")
	// ErrNotLeader: a change only the leading control plane makes was
	// refused because this one no longer leads.
	ErrNotLeader = errors.New("not the leader")
	// ErrConflict: too many concurrent changes to one record; retry later.
	ErrConflict = errors.New("too many concurrent changes")
	// ErrUnavailable: etcd did not answer (or failed) a catalog request. Its
	// text is "etcd", so that a message reads "...: etcd: <cause>".
	ErrUnavailable = errors.New("etcd")
)
