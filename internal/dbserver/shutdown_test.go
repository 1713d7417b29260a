package dbserver

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/sqlvfs"
)

// Queries racing with the instance's shutdown (as after a lost lease) get
// either an answer or not_ready: never a crash or an internal error. Run
// with -race.
func TestRequestsDuringShutdown(t *testing.T) {
	ti := startTestInstance(t, Config{}, sqlvfs.Options{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				resp, err := http.Post(ti.URL+"/v1/query", "application/json", strings.NewReader(`{"sql":"SELECT 1"}`))
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				mu.Lock()
				statuses[resp.StatusCode]++
				mu.Unlock()
			}
		}()
	}
	time.Sleep(5 * time.Millisecond)
	ti.w.Close()
	wg.Wait()
	t.Logf("replies by HTTP status: %v", statuses)
	for st := range statuses {
		if st != http.StatusOK && st != http.StatusServiceUnavailable {
			t.Fatalf("a query during shutdown got HTTP %d (all: %v)", st, statuses)
		}
	}
}
