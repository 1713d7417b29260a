package control

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// EmbeddedReadyTimeout bounds how long StartEmbedded waits for the etcd
// server to become ready.
var EmbeddedReadyTimeout = 20 * time.Second

// Files StartEmbedded keeps in its data directory besides etcd's own.
const (
	embeddedLockFile = "borealis-etcd.lock"
	embeddedLogFile  = "etcd.log"
)

// Raft timing of the embedded etcd. etcd's shortest lease TTL is
// ceil(1.5 x the election timeout): with 500 ms that is 1 s, so a writer
// lease of TTL 1 s is granted as asked. With etcd's default of 1000 ms it
// would be raised to 2 s without a word, and a writer would keep its lease
// twice as long after it stops renewing. The heartbeat is a fifth of the
// election timeout (etcd advises at most a tenth to a fifth) so that a
// member on a loaded machine is not taken for dead.
const (
	EmbeddedTickMs     = 100
	EmbeddedElectionMs = 500
	// MinLeaseTTL is the shortest lease the embedded etcd grants.
	MinLeaseTTL = time.Second
)

// Member describes one member of a multi-member embedded etcd cluster
// (EmbeddedConfig.Member). The zero Member is a single-member cluster.
type Member struct {
	// Name of this member, as in InitialCluster (c1, c2, ...).
	Name string
	// InitialCluster is every member's peer URL, etcd's syntax:
	// "c1=http://10.0.0.1:2380,c2=http://10.0.0.2:2380,c3=...". It must
	// name this member with this member's peer address.
	InitialCluster string
	// Existing joins a running cluster (etcd's initial-cluster-state
	// existing) instead of bootstrapping a new one. Either way a member
	// whose data directory already holds etcd data restarts from it and
	// rejoins its cluster; the initial cluster is used once.
	Existing bool
	// Token tells clusters apart (etcd's initial-cluster-token); empty:
	// "borealis".
	Token string
}

// singleMemberName is the member name of the single-member default.
const singleMemberName = "borealis-control"

// StartEmbedded starts a single-node etcd server with its data in dir and
// waits until it is ready. It returns the server and its client URLs (to
// pass to clientv3).
//
// clientAddr and peerAddr are "host:port" or "http://host:port"; an empty
// one picks a free port on 127.0.0.1. The server listens only on the
// addresses given. etcd's own log goes to dir/etcd.log at level warn, so it
// stays off the console.
//
// A data directory serves one server at a time: StartEmbedded holds a lock
// on dir/borealis-etcd.lock while the server runs, and a second
// StartEmbedded on the same dir, in this process or another, is refused with
// an error saying so (etcd itself would block on its database's lock). The
// lock is released when the server stops (Close).
//
// Restarting on the same dir resumes the catalog, even on other ports.
// Auto-compaction keeps 10 minutes of history, so the revision history of
// heartbeats does not grow without bound.
func StartEmbedded(dir string, clientAddr, peerAddr string) (*embed.Etcd, []string, error) {
	return StartEmbeddedMember(dir, clientAddr, peerAddr, Member{})
}

// StartEmbeddedMember is StartEmbedded for one member of a multi-member
// cluster (m), or of a single-member one (the zero Member). A member of a
// multi-member cluster needs both addresses, since the others know it by
// its peer URL, and it is ready only once a majority of the members run:
// start them all before waiting for any (the wait is EmbeddedReadyTimeout).
func StartEmbeddedMember(dir string, clientAddr, peerAddr string, m Member) (*embed.Etcd, []string, error) {
	if dir == "" {
		return nil, nil, errors.New("control: the embedded etcd needs a data directory; pass one (--dir)")
	}
	if m.Name != "" {
		if clientAddr == "" || peerAddr == "" {
			return nil, nil, fmt.Errorf("control: etcd member %s needs its client and peer addresses (--client-listen, --peer-listen)", m.Name)
		}
		if _, err := ParseInitialCluster(m.InitialCluster, m.Name, peerAddr); err != nil {
			return nil, nil, err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("control: cannot create the etcd data directory %s: %w", dir, err)
	}
	lock, err := lockDir(filepath.Join(dir, embeddedLockFile))
	if err != nil {
		return nil, nil, err
	}
	release := func() { unlockDir(lock) }

	autoPorts := clientAddr == "" || peerAddr == ""
	attempts := 1
	if autoPorts {
		attempts = 5 // a picked port may be taken before etcd binds it
	}
	var lastErr error
	for range attempts {
		e, urls, err := startEmbeddedOnce(dir, clientAddr, peerAddr, m)
		if err == nil {
			go func() {
				<-e.Server.StopNotify()
				release()
			}()
			return e, urls, nil
		}
		lastErr = err
		if !autoPorts || !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	release()
	return nil, nil, lastErr
}

// ParseInitialCluster checks an initial cluster ("c1=http://h:p,c2=...")
// and returns its members' peer URLs by name. self, if not empty, must be
// one of them, with peer address selfPeer (host:port or a URL).
func ParseInitialCluster(ic, self, selfPeer string) (map[string]string, error) {
	out := map[string]string{}
	for _, part := range strings.Split(ic, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, u, ok := strings.Cut(part, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("control: initial cluster %q: %q is not NAME=http://HOST:PORT", ic, part)
		}
		pu, err := listenURL("peer", u)
		if err != nil || !strings.HasPrefix(u, "http://") {
			return nil, fmt.Errorf("control: initial cluster %q: member %s's peer URL %q is not http://HOST:PORT", ic, name, u)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("control: initial cluster %q names %s twice", ic, name)
		}
		out[name] = pu.String()
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("control: empty initial cluster; give every member's peer URL, such as c1=http://10.0.0.1:2380,c2=http://10.0.0.2:2380,c3=http://10.0.0.3:2380")
	}
	if self != "" {
		u, ok := out[self]
		if !ok {
			return nil, fmt.Errorf("control: the initial cluster %q does not name this member, %s", ic, self)
		}
		if selfPeer != "" {
			pu, err := listenURL("peer", selfPeer)
			if err != nil {
				return nil, err
			}
			if pu.String() != u {
				return nil, fmt.Errorf("control: the initial cluster gives member %s the peer URL %s, but it listens on %s (--peer-listen)", self, u, pu)
			}
		}
	}
	return out, nil
}

func startEmbeddedOnce(dir, clientAddr, peerAddr string, m Member) (*embed.Etcd, []string, error) {
	curl, err := listenURL("client", clientAddr)
	if err != nil {
		return nil, nil, err
	}
	purl, err := listenURL("peer", peerAddr)
	if err != nil {
		return nil, nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = singleMemberName
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{*curl}
	cfg.AdvertiseClientUrls = []url.URL{*curl}
	cfg.ListenPeerUrls = []url.URL{*purl}
	cfg.AdvertisePeerUrls = []url.URL{*purl}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	if m.Name != "" {
		cfg.Name = m.Name
		cfg.InitialCluster = m.InitialCluster
		cfg.InitialClusterToken = m.Token
		if cfg.InitialClusterToken == "" {
			cfg.InitialClusterToken = "borealis"
		}
		if m.Existing {
			cfg.ClusterState = embed.ClusterStateFlagExisting
		}
	}
	cfg.TickMs = EmbeddedTickMs
	cfg.ElectionMs = EmbeddedElectionMs
	cfg.Logger = "zap"
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{filepath.Join(dir, embeddedLogFile)}
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = "10m"

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			which := fmt.Sprintf("client %s or peer %s", curl.Host, purl.Host)
			if strings.Contains(err.Error(), curl.Host) {
				which = "client " + curl.Host
			} else if strings.Contains(err.Error(), purl.Host) {
				which = "peer " + purl.Host
			}
			return nil, nil, fmt.Errorf("control: cannot start the embedded etcd: its %s address is in use by another process; stop that process or choose another address: %w", which, err)
		}
		return nil, nil, fmt.Errorf("control: cannot start the embedded etcd in %s (its log: %s): %w", dir, filepath.Join(dir, embeddedLogFile), err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, nil, fmt.Errorf("control: the embedded etcd in %s failed while starting (its log: %s): %w", dir, filepath.Join(dir, embeddedLogFile), err)
	case <-time.After(EmbeddedReadyTimeout):
		e.Server.Stop()
		e.Close()
		if m.Name != "" {
			return nil, nil, fmt.Errorf("control: etcd member %s in %s was not ready within %s: a member is ready once a majority of the members of %s run and reach each other; see its log %s", m.Name, dir, EmbeddedReadyTimeout, m.InitialCluster, filepath.Join(dir, embeddedLogFile))
		}
		return nil, nil, fmt.Errorf("control: the embedded etcd in %s was not ready within %s; see its log %s", dir, EmbeddedReadyTimeout, filepath.Join(dir, embeddedLogFile))
	}
	urls := make([]string, 0, len(e.Clients))
	for _, l := range e.Clients {
		urls = append(urls, "http://"+l.Addr().String())
	}
	return e, urls, nil
}

// listenURL turns "host:port", "http://host:port" or "" (a free loopback
// port) into an http URL.
func listenURL(what, addr string) (*url.URL, error) {
	if addr == "" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("control: cannot pick a free port for the etcd %s address: %w", what, err)
		}
		addr = l.Addr().String()
		l.Close()
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || u.Scheme != "http" || u.Port() == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("control: bad etcd %s address %q; give host:port, such as 127.0.0.1:2379", what, addr)
	}
	return u, nil
}
