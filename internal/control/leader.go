package control

import (
	"context"
	"sync"
)

// leaderWork is what the leading control plane does besides serving calls,
// until ctx ends: it logs the storage nodes' changes of state, runs the
// volumes' failovers and repairs the PGs of failed, removed and drained
// nodes.
func (s *Server) leaderWork(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		runFailovers(ctx, s.cat, s.failoverTiming, s.log, s.leaderCmp)
	}()
	go func() {
		defer wg.Done()
		r := newRepairer(s.cat, s.repair, s.log, s.repairMetrics)
		r.guard = s.leaderCmp
		r.run(ctx)
	}()
	watchNodes(ctx, s.cat, s.timeout, s.log)
	wg.Wait()
}
