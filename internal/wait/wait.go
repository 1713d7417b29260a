// Package wait is the tests' one way to wait for a condition: poll it until
// it holds or a deadline passes, never sleep a fixed time and hope.
package wait

import (
	"testing"
	"time"
)

// pollEvery is short next to every wait the tests make (a heartbeat, a
// gossip round, a write timeout) and long next to one condition's check.
const pollEvery = 20 * time.Millisecond

// For polls cond until it returns true, failing t with what it waited for
// if within passes first.
func For(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %s waiting for %s", within, what)
		}
		time.Sleep(pollEvery)
	}
}
