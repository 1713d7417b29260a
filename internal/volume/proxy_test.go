package volume

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// pauser is a TCP proxy in front of a storage node that can stop forwarding
// bytes in both directions, like a SIGSTOPped process: connections stay
// open, nothing is answered.
type pauser struct {
	lis    net.Listener
	target string
	mu     sync.Mutex
	cond   *sync.Cond
	paused bool
	conns  []net.Conn
}

func newPauser(t *testing.T, target string) *pauser {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &pauser{lis: lis, target: target}
	p.cond = sync.NewCond(&p.mu)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			d, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, d)
			p.mu.Unlock()
			go p.pipe(d, c)
			go p.pipe(c, d)
		}
	}()
	t.Cleanup(func() {
		p.set(false)
		lis.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	return p
}

func (p *pauser) pipe(dst, src net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.paused {
				p.cond.Wait()
			}
			p.mu.Unlock()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				src.Close()
			}
			dst.Close()
			return
		}
	}
}

func (p *pauser) set(paused bool) {
	p.mu.Lock()
	p.paused = paused
	p.cond.Broadcast()
	p.mu.Unlock()
}

// TestSlowNodes: two hung nodes do not slow commits; with three hung, a
// commit fails with *UnavailableError (the nodes count as unreachable once
// a request has gone unanswered for staleAfter) while reads, hedged past the
// hung nodes, keep working; when they resume everything completes.
func TestSlowNodes(t *testing.T) {
	cl := startCluster(t)
	var ps []*pauser
	for i := range cl.members {
		p := newPauser(t, cl.members[i].Addr)
		ps = append(ps, p)
		cl.members[i].Addr = p.lis.Addr().String()
	}
	c := cl.open(t, func(cfg *Config) { cfg.WriteTimeout = time.Second })
	ctx := ctxT(t, 60*time.Second)

	var old []byte
	commit := func(i int) error {
		nw := pageImage(5, i)
		_, err := c.Commit(ctx, []PageWrite{{Page: 5, Old: old, New: nw}})
		if err == nil {
			old = nw
		}
		return err
	}
	for i := range 10 {
		if err := commit(i); err != nil {
			t.Fatal(err)
		}
	}
	// Prime read latencies so that the hung nodes are preferred candidates
	// for some reads.
	for range 20 {
		mustRead(t, c, 5, c.VDL(), old)
	}

	ps[1].set(true)
	ps[3].set(true)
	start := time.Now()
	for i := 10; i < 60; i++ {
		if err := commit(i); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("50 commits with 2 hung nodes took %s", d)
	}

	ps[5].set(true)
	vdl := c.VDL()
	readStart := time.Now()
	for range 10 {
		mustRead(t, c, 5, vdl, old)
	}
	t.Logf("10 reads with 3 hung nodes: %s (hedged %d)", time.Since(readStart), c.Stats().HedgedReads)
	err := commit(60)
	var ue *UnavailableError
	if !errors.As(err, &ue) || len(ue.Unreachable) != 3 {
		t.Fatalf("commit with 3 hung nodes: %v", err)
	}
	t.Log(err)

	for _, p := range ps {
		p.set(false)
	}
	if err := c.WaitDurable(context.Background(), ue.LSN); err != nil {
		t.Fatalf("after resume: %v", err)
	}
	mustRead(t, c, 5, c.VDL(), pageImage(5, 60))
}
