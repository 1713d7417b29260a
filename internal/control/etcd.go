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
	if dir == "" {
		return nil, nil, errors.New("control: the embedded etcd needs a data directory; pass one (--dir)")
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
		e, urls, err := startEmbeddedOnce(dir, clientAddr, peerAddr)
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

func startEmbeddedOnce(dir, clientAddr, peerAddr string) (*embed.Etcd, []string, error) {
	curl, err := listenURL("client", clientAddr)
	if err != nil {
		return nil, nil, err
	}
	purl, err := listenURL("peer", peerAddr)
	if err != nil {
		return nil, nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "borealis-control"
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{*curl}
	cfg.AdvertiseClientUrls = []url.URL{*curl}
	cfg.ListenPeerUrls = []url.URL{*purl}
	cfg.AdvertisePeerUrls = []url.URL{*purl}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
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
