package storage

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Recycled write-ahead logs. Pebble keeps up to MemTableStopWritesThreshold+1
// obsolete logs to reuse rather than delete them, each as long as it ever
// grew: up to about a memtable apiece. On a store smaller than a few
// memtables they are most of its footprint, and they hold nothing. So once
// the store is idle and flushed, the node empties them (truncates them to
// zero bytes). The next reuse of such a log zeroes it ahead of its appends
// as a new log is (see zeroAheadFile), which is what reuse was to spare, but
// only on the first burst after an idle spell.
//
// Which logs are obsolete only Pebble knows, and it tells only how many logs
// are live: live logs are the newest ones (logs become obsolete oldest
// first, as their memtables are flushed). A log can only become live by
// being created, so logFiles holds a lock that creating or reusing a log
// takes too: under it, the live count is read first and the directory
// listed second, and every live log is among the newest that many listed.
type logFiles struct {
	mu sync.Mutex
	// emptied is each log this node truncated and Pebble has not reused or
	// removed since, with the size Pebble still counts for it.
	emptied map[string]int64
	// truncate empties a file that exists, and fails if it does not (Pebble
	// may be deleting it meanwhile): vfs.FS has no truncate, and os.Create
	// semantics would bring a deleted log back.
	truncate func(path string, size int64) error
}

func newLogFiles() *logFiles {
	return &logFiles{emptied: map[string]int64{}, truncate: os.Truncate}
}

// forget is called, under mu, when Pebble reuses or removes a log: it counts
// the log's size anew from then on.
func (l *logFiles) forget(name string) {
	delete(l.emptied, name)
}

// emptiedBytes is how much less the obsolete logs hold than Pebble counts.
func (l *logFiles) emptiedBytes() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n int64
	for _, sz := range l.emptied {
		n += sz
	}
	return uint64(n)
}

// logNumber is the number in a log's name (NNNNNN.log, or NNNNNN-KKK.log for
// a later segment of the same log).
func logNumber(name string) (uint64, bool) {
	base, ok := strings.CutSuffix(name, ".log")
	if !ok {
		return 0, false
	}
	base, _, _ = strings.Cut(base, "-")
	n, err := strconv.ParseUint(base, 10, 64)
	return n, err == nil
}

// emptyObsolete truncates every log in dir but the newest live() ones, and
// returns the bytes it freed. live is called under the lock.
func (fs syncCountingFS) emptyObsolete(dir string, live func() int) (uint64, error) {
	l := fs.logs
	l.mu.Lock()
	defer l.mu.Unlock()
	keep := live()
	names, err := fs.FS.List(dir)
	if err != nil {
		return 0, err
	}
	type log struct {
		name string
		num  uint64
	}
	var logs []log
	for _, name := range names {
		if num, ok := logNumber(name); ok {
			logs = append(logs, log{name, num})
		}
	}
	if len(logs) <= keep {
		return 0, nil
	}
	slices.SortFunc(logs, func(a, b log) int {
		if a.num != b.num {
			return compareU64(a.num, b.num)
		}
		return strings.Compare(a.name, b.name)
	})
	// A log with several segments has them all kept: its number decides.
	cut := len(logs) - keep
	for cut > 0 && logs[cut-1].num == logs[cut].num {
		cut--
	}
	var freed uint64
	for _, lg := range logs[:cut] {
		path := fs.FS.PathJoin(dir, lg.name)
		st, err := fs.FS.Stat(path)
		if err != nil || st.Size() == 0 {
			continue // removed meanwhile, or empty already
		}
		if err := l.truncate(path, 0); err != nil {
			continue
		}
		if _, seen := l.emptied[path]; !seen {
			l.emptied[path] = st.Size()
		}
		freed += uint64(st.Size())
	}
	return freed, nil
}

func compareU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

var _ vfs.FS = syncCountingFS{}
