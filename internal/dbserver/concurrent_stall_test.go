package dbserver

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/sqlvfs"
)

// TestConcurrentWritesFailWithinOneWriteTimeout: writes that arrive while
// storage has lost its write quorum, more at once than the pool has open
// connections, each fail after one write timeout. A write that needed a new
// connection waited out the timeout twice: once for the newest state the
// connection's setup read (its pragmas), once for its own commit.
func TestConcurrentWritesFailWithinOneWriteTimeout(t *testing.T) {
	const writeTimeout = 2 * time.Second
	ti := startTestInstance(t, Config{WriteTimeout: writeTimeout}, sqlvfs.Options{})
	ti.ok(t, "/v1/execute", exec(`CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)`, `INSERT INTO t(v) VALUES ('acked')`), nil)
	for _, i := range []int{0, 2, 4} {
		ti.nodes[i].stop()
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			st, b, _ := ti.call(t, "POST", "/v1/execute", exec(fmt.Sprintf(`INSERT INTO t(v) VALUES ('w%d')`, i)))
			took := time.Since(start)
			if st != 503 || !strings.Contains(string(b), "storage_unavailable") {
				t.Errorf("w%d with no write quorum: HTTP %d %s", i, st, b)
			}
			// One write timeout and the writer's rechecks, never two.
			if took >= 2*writeTimeout-writeTimeout/4 {
				t.Errorf("w%d failed after %s, about twice the write timeout %s", i, took.Round(time.Millisecond), writeTimeout)
			}
		}()
	}
	wg.Wait()
}
