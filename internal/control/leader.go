package control

import (
	"context"
	"sync"
)

// leaderWork is what the leading control plane does besides serving calls,
// until ctx ends: it logs the storage nodes' changes of state and runs the
// volumes' failovers.
func (s *Server) leaderWork(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		runFailovers(ctx, s.cat, s.failoverTiming, s.log, s.leaderCmp)
	}()
	watchNodes(ctx, s.cat, s.timeout, s.log)
	wg.Wait()
}
