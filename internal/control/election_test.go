package control

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/wait"
)

// candidates runs n control planes' elections, each with its own etcd
// client on one catalog prefix, as n processes over one etcd would.
type candidates struct {
	t     *testing.T
	srvs  []*Server
	cats  []*Catalog
	stops []func()
}

func newCandidates(t *testing.T, n int) *candidates {
	t.Helper()
	prefix := fmt.Sprintf("/test/%s/%d/", t.Name(), prefixSeq.Add(1))
	cs := &candidates{t: t}
	for i := range n {
		cat, err := Open(ctxT(t), testURLs, prefix)
		if err != nil {
			t.Fatal(err)
		}
		srv := NewServer(cat, time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
		stop := srv.campaign(context.Background(), Candidate{Name: fmt.Sprintf("c%d", i+1), Addr: fmt.Sprintf("127.0.0.1:%d", 7200+i), AZ: string(rune('a' + i))})
		cs.srvs, cs.cats, cs.stops = append(cs.srvs, srv), append(cs.cats, cat), append(cs.stops, stop)
	}
	t.Cleanup(func() {
		for i := range cs.srvs {
			cs.stops[i]()
			cs.cats[i].Close()
		}
	})
	return cs
}

// leaders lists the indexes of the control planes that say they lead,
// among those in alive.
func (cs *candidates) leaders(alive map[int]bool) []int {
	var out []int
	for i, s := range cs.srvs {
		if alive[i] && s.Leading() {
			out = append(out, i)
		}
	}
	return out
}

// waitOneLeader waits until exactly one of alive leads and the catalog
// names it as the leader, and returns it.
func (cs *candidates) waitOneLeader(alive map[int]bool, what string) int {
	cs.t.Helper()
	leader := -1
	wait.For(cs.t, 15*time.Second, what, func() bool {
		l := cs.leaders(alive)
		if len(l) != 1 {
			return false
		}
		for i := range cs.srvs {
			if !alive[i] {
				continue
			}
			got, ok, err := cs.cats[i].Leader(context.Background())
			if err != nil || !ok || got.Name != fmt.Sprintf("c%d", l[0]+1) || got.Addr != fmt.Sprintf("127.0.0.1:%d", 7200+l[0]) {
				return false
			}
		}
		leader = l[0]
		return true
	})
	return leader
}

// TestElection: of three control planes, exactly one leads. Stopped (it
// resigns), another takes over; cut off without resigning (its etcd client
// closed, so its session is neither renewed nor revoked), another takes
// over once the session expires. Never two at once in what we observe.
func TestElection(t *testing.T) {
	t.Parallel()
	cs := newCandidates(t, 3)
	alive := map[int]bool{0: true, 1: true, 2: true}
	first := cs.waitOneLeader(alive, "one of three control planes to lead")
	t.Logf("c%d leads", first+1)

	cs.stops[first]()
	if cs.srvs[first].Leading() {
		t.Fatalf("c%d still leads after it stopped", first+1)
	}
	delete(alive, first)
	second := cs.waitOneLeader(alive, "another control plane to lead once the leader resigned")
	t.Logf("c%d leads after c%d resigned", second+1, first+1)

	// Watch for two leaders at once while the lead passes by expiry.
	var mu sync.Mutex
	var overlap []int
	done := make(chan struct{})
	stopWatch := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if l := cs.leaders(map[int]bool{0: true, 1: true, 2: true}); len(l) > 1 {
				mu.Lock()
				overlap = l
				mu.Unlock()
			}
		}
	}()
	cs.cats[second].Close()
	delete(alive, second)
	third := cs.waitOneLeader(alive, "the last control plane to lead once the leader's session expired")
	wait.For(t, 10*time.Second, fmt.Sprintf("c%d, cut off, to stop leading", second+1), func() bool { return !cs.srvs[second].Leading() })
	close(stopWatch)
	<-done
	t.Logf("c%d leads after c%d was cut off", third+1, second+1)
	mu.Lock()
	defer mu.Unlock()
	// Closing its client ends the cut-off leader's session at once on its
	// side, while etcd keeps its key until the TTL: it stops before anyone
	// else can start.
	if len(overlap) > 1 {
		t.Fatalf("control planes %v led at once", overlap)
	}
}

// freePort is a loopback address whose port was free just now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestThreeMemberEtcd: three embedded members form one cluster; a write
// through one is read through another; with one member stopped the other
// two go on; restarted on its data directory, the member rejoins and has
// what was written while it was away.
func TestThreeMemberEtcd(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	type member struct{ name, dir, client, peer string }
	var ms []member
	var ic []string
	for i := 1; i <= 3; i++ {
		m := member{name: fmt.Sprintf("c%d", i), dir: filepath.Join(base, fmt.Sprintf("c%d", i)), client: freePort(t), peer: freePort(t)}
		ms = append(ms, m)
		ic = append(ic, m.name+"=http://"+m.peer)
	}
	initial := strings.Join(ic, ",")
	start := func(m member) (stop func(), urls []string, err error) {
		e, urls, err := StartEmbeddedMember(m.dir, m.client, m.peer, Member{Name: m.name, InitialCluster: initial})
		if err != nil {
			return nil, nil, err
		}
		return func() { e.Close(); <-e.Server.StopNotify() }, urls, nil
	}
	// A member is ready only with a majority running: start all at once.
	stops := make([]func(), 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() { defer wg.Done(); stops[i], _, errs[i] = start(m) }()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("member %s: %v", ms[i].name, err)
		}
	}
	defer func() {
		for _, s := range stops {
			if s != nil {
				s()
			}
		}
	}()
	all := []string{"http://" + ms[0].client, "http://" + ms[1].client, "http://" + ms[2].client}
	ctx := ctxT(t)
	c1, err := Open(ctx, all[:1], "/three/")
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	ml, err := c1.cli.MemberList(ctx)
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("member list: %v, %v", ml, err)
	}
	if _, err := c1.cli.Put(ctx, "/three/k", "v1"); err != nil {
		t.Fatal(err)
	}
	c3, err := Open(ctx, all[2:], "/three/")
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if r, err := c3.cli.Get(ctx, "/three/k"); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v1" {
		t.Fatalf("read through c3: %v %v", r, err)
	}

	// c1's member stops: a client given every member's URL goes on
	// through the others.
	stops[0]()
	stops[0] = nil
	cAll, err := Open(ctx, all, "/three/")
	if err != nil {
		t.Fatal(err)
	}
	defer cAll.Close()
	wait.For(t, 10*time.Second, "a write with two of three members", func() bool {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := cAll.cli.Put(pctx, "/three/k", "v2")
		return err == nil
	})

	// Restarted on its data directory, c1 rejoins and catches up.
	stops[0], _, err = start(ms[0])
	if err != nil {
		t.Fatalf("restart c1: %v", err)
	}
	c1b, err := Open(ctx, all[:1], "/three/")
	if err != nil {
		t.Fatal(err)
	}
	defer c1b.Close()
	if r, err := c1b.cli.Get(ctx, "/three/k"); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v2" {
		t.Fatalf("read through the restarted c1: %v %v", r, err)
	}
}

func TestParseInitialCluster(t *testing.T) {
	t.Parallel()
	good := "c1=http://127.0.0.1:1,c2=http://127.0.0.1:2,c3=http://127.0.0.1:3"
	if m, err := ParseInitialCluster(good, "c2", "127.0.0.1:2"); err != nil || len(m) != 3 || m["c3"] != "http://127.0.0.1:3" {
		t.Fatalf("%v %v", m, err)
	}
	for _, tc := range []struct{ ic, self, peer, want string }{
		{"", "", "", "empty initial cluster"},
		{"c1", "", "", "is not NAME=http://HOST:PORT"},
		{"c1=127.0.0.1:1", "", "", "is not http://HOST:PORT"},
		{"c1=http://127.0.0.1:1,c1=http://127.0.0.1:2", "", "", "names c1 twice"},
		{good, "c4", "", "does not name this member, c4"},
		{good, "c1", "127.0.0.1:9", "but it listens on http://127.0.0.1:9"},
	} {
		if _, err := ParseInitialCluster(tc.ic, tc.self, tc.peer); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q self %q peer %q: %v, want %q", tc.ic, tc.self, tc.peer, err, tc.want)
		}
	}
}
