package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/embed"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// LeaderSessionTTL is the TTL of a control plane's election session: a
// leader that stops renewing it (killed, paused, cut off from a majority
// of etcd) loses the lead within about this long, and another one takes
// over. It must be at least MinLeaseTTL.
var LeaderSessionTTL = 2 * time.Second

// Candidate is what a control plane campaigns with: the election key's
// value, and what status shows of it.
type Candidate struct {
	Name string `json:"name"`
	Addr string `json:"addr"`
	AZ   string `json:"az,omitempty"`
}

// election is a Server's part in the leader election.
type election struct {
	self    Candidate
	leading atomic.Bool
	// key and rev are the election key this control plane holds while it
	// leads, for txns that must apply only under its lead (leaderCmp).
	mu  sync.Mutex
	key string
	rev int64
	// etcd is the embedded etcd member, if any (ControlPlaneStatus lists
	// the members).
	etcd *embed.Etcd
}

// electionPrefix is where the control planes campaign.
func (c *Catalog) electionPrefix() string { return c.prefix + "leader/" }

// Leading reports whether this control plane leads now: it holds the
// election and runs leaderWork.
func (s *Server) Leading() bool { return s.ha.leading.Load() }

// leaderCmp is a txn comparison that holds only while this control plane's
// election key is the one it won with, so that a decision written by a
// leader whose session just ended is refused. ok is false when it does not
// lead.
func (s *Server) leaderCmp() (cmp clientv3.Cmp, ok bool) {
	s.ha.mu.Lock()
	defer s.ha.mu.Unlock()
	if s.ha.key == "" {
		return clientv3.Cmp{}, false
	}
	return clientv3.Compare(clientv3.CreateRevision(s.ha.key), "=", s.ha.rev), true
}

// Leader returns the control plane that leads now, read from the catalog:
// the election key with the lowest create revision. ok is false when none
// campaigns.
func (c *Catalog) Leader(ctx context.Context) (Candidate, bool, error) {
	resp, err := c.cli.Get(ctx, c.electionPrefix(), clientv3.WithFirstCreate()...)
	if err != nil {
		return Candidate{}, false, unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return Candidate{}, false, nil
	}
	var cand Candidate
	if err := json.Unmarshal(resp.Kvs[0].Value, &cand); err != nil {
		// A value not written by this code: show it as the name.
		cand = Candidate{Name: string(resp.Kvs[0].Value)}
	}
	return cand, true, nil
}

// unavailable marks an etcd error as the catalog being unreachable.
func unavailable(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

// campaign runs for the lead until ctx ends: it waits to win the election
// on the catalog's leader/ prefix, runs leaderWork while it leads, and when
// its session ends (its lease expired or could not be renewed) stops the
// work and campaigns again. On ctx's end it resigns, so another control
// plane takes over at once instead of after the session's TTL. The
// returned function cancels and waits for that.
func (s *Server) campaign(ctx context.Context, self Candidate) (stop func()) {
	s.ha.self = self
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.campaignLoop(ctx, self)
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
}

func (s *Server) campaignLoop(ctx context.Context, self Candidate) {
	val, _ := json.Marshal(self)
	ttl := ttlSeconds(max(LeaderSessionTTL, MinLeaseTTL))
	delay := 100 * time.Millisecond
	failing := false
	for ctx.Err() == nil {
		sess, err := concurrency.NewSession(s.cat.cli, concurrency.WithTTL(int(ttl)), concurrency.WithContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !failing {
				s.log.Warn("cannot open a leader-election session; retrying", "err", err)
				failing = true
			}
			if !sleepCtx(ctx, delay) {
				return
			}
			delay = min(delay*2, 2*time.Second)
			continue
		}
		failing, delay = false, 100*time.Millisecond
		s.leadOnce(ctx, sess, string(val))
		sess.Close() // revokes the lease if it is still there
	}
}

// leadOnce campaigns in one session and leads until the session or ctx
// ends.
func (s *Server) leadOnce(ctx context.Context, sess *concurrency.Session, val string) {
	// A session that ends while Campaign waits must end the wait: Campaign
	// does not notice its own key going away.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-sctx.Done():
		}
	}()
	e := concurrency.NewElection(sess, s.cat.electionPrefix())
	if err := e.Campaign(sctx, val); err != nil {
		if ctx.Err() == nil && sctx.Err() == nil {
			s.log.Warn("leader campaign failed; campaigning again", "err", err)
			sleepCtx(ctx, 200*time.Millisecond)
		}
		return
	}
	if sctx.Err() != nil {
		// Won just as the session ended or we were stopped.
		s.resign(e)
		return
	}
	s.ha.mu.Lock()
	s.ha.key, s.ha.rev = e.Key(), e.Rev()
	s.ha.mu.Unlock()
	s.ha.leading.Store(true)
	s.log.Info("leading the control plane", "name", s.ha.self.Name, "addr", s.ha.self.Addr)
	// leaderWork returns once sctx ends: the session was lost or we stop.
	s.leaderWork(sctx)
	s.ha.leading.Store(false)
	s.ha.mu.Lock()
	s.ha.key, s.ha.rev = "", 0
	s.ha.mu.Unlock()
	if ctx.Err() != nil {
		s.resign(e)
		s.log.Info("resigned the lead", "name", s.ha.self.Name)
		return
	}
	s.log.Warn("lost the lead: the election session ended; campaigning again", "name", s.ha.self.Name)
}

func (s *Server) resign(e *concurrency.Election) {
	rctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := e.Resign(rctx); err != nil {
		s.log.Warn("could not resign the lead; it passes on when the session expires", "err", err)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// controlPlaneService is the ControlPlane gRPC service of a Server.
type controlPlaneService struct {
	pb.UnimplementedControlPlaneServer
	s *Server
}

func (c controlPlaneService) ControlPlaneStatus(ctx context.Context, _ *pb.ControlPlaneStatusRequest) (*pb.ControlPlaneStatusResponse, error) {
	s := c.s
	self := s.ha.self
	out := &pb.ControlPlaneStatusResponse{
		Self:     &pb.ControlPlaneInfo{Name: self.Name, Addr: self.Addr, Az: self.AZ},
		Leading:  s.Leading(),
		Embedded: s.ha.etcd != nil,
	}
	// Short: status asks every control plane, and one cut off from the
	// etcd majority should say so promptly.
	rctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	if l, ok, err := s.cat.Leader(rctx); err != nil {
		out.LeaderError = err.Error()
	} else if !ok {
		out.LeaderError = "no control plane is campaigning"
	} else {
		out.Leader = &pb.ControlPlaneInfo{Name: l.Name, Addr: l.Addr, Az: l.AZ}
	}
	if ml, err := s.cat.cli.MemberList(rctx); err == nil {
		var raftLeader uint64
		if s.ha.etcd != nil {
			raftLeader = uint64(s.ha.etcd.Server.Leader())
		}
		for _, m := range ml.Members {
			out.Members = append(out.Members, &pb.EtcdMember{Name: m.Name, ClientUrls: m.ClientURLs, PeerUrls: m.PeerURLs, RaftLeader: raftLeader != 0 && m.ID == raftLeader})
		}
	}
	return out, nil
}

// syncMembers points the catalog's etcd client at the client URLs of every
// member of the embedded etcd cluster, not only its own member's, so that
// it keeps working through the others when its own member cannot serve
// (cut off from the majority, say); and keeps them in sync with the
// membership (a member that was not ready at the first sync has not
// published its URLs yet), until ctx ends.
func syncMembers(ctx context.Context, cat *Catalog, every time.Duration) {
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		cat.cli.Sync(rctx) // on failure it keeps the endpoints it has
		cancel()
		if !sleepCtx(ctx, every) {
			return
		}
	}
}

// candidate is what Run campaigns with.
func candidate(cfg Config, addr string) Candidate {
	name := cfg.Name
	if name == "" {
		name = "control"
	}
	return Candidate{Name: name, Addr: addr, AZ: cfg.AZ}
}

// startMember starts the embedded etcd of Run: a single member, or one
// member of cfg.InitialCluster.
func startMember(cfg Config) (*embed.Etcd, []string, error) {
	if cfg.InitialCluster == "" {
		return StartEmbedded(cfg.Dir, cfg.ClientListen, cfg.PeerListen)
	}
	if cfg.Name == "" {
		return nil, nil, errors.New("control: a member of a multi-member etcd needs a name (--name), one of those --initial-cluster lists")
	}
	return StartEmbeddedMember(cfg.Dir, cfg.ClientListen, cfg.PeerListen, Member{Name: cfg.Name, InitialCluster: cfg.InitialCluster, Existing: cfg.JoinExisting})
}
