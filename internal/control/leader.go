package control

import "context"

// leaderWork is what the leading control plane does besides serving calls,
// until ctx ends: it logs the storage nodes' changes of state and runs the
// volumes' failovers.
func (s *Server) leaderWork(ctx context.Context) {
	watchNodes(ctx, s.cat, s.timeout, s.log)
}
