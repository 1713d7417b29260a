package storage

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Recycled write-ahead logs. Pebble keeps up to MemTableStopWritesThreshold+1
// obsolete logs to reuse rather than delete them, each as long as it ever
// grew: up to about a memtable apiece. On a store smaller than a few
// memtables they are most of its footprint, and they hold nothing. So once
// the store is idle, the node empties them (truncates them to zero bytes).
// The next reuse of such a log zeroes it ahead of its appends as a new log
// is (see zeroAheadFile), which is what reuse was to spare, but only on the
// first burst after an idle spell.
//
// Which logs are obsolete only Pebble knows, and it tells only how many logs
// are live (db.Metrics().WAL.Files, its list of logs not yet flushed). Live
// logs are the newest: logs become obsolete oldest first, as their memtables
// are flushed. A log becomes live only by being created or reused, which
// goes through this file system and then ends with Pebble's WALCreated
// event, after Pebble has listed the log. So logFiles counts the logs
// between the two as pending, under a lock that creating, reusing and
// removing a log take too. Under it the live count is read, and the
// directory listed; every live log is among the newest live+pending listed.
// Only logs Pebble created or reused since the store opened are emptied: the
// logs found at Open are Pebble's to replay and delete.
type logFiles struct {
	mu sync.Mutex
	// pending holds the logs created or reused on disk whose WALCreated has
	// not come; ours, the logs Pebble has listed since Open, until they are
	// removed or reused under another name.
	pending, ours map[string]bool
}

func newLogFiles() *logFiles {
	return &logFiles{pending: map[string]bool{}, ours: map[string]bool{}}
}

// creating is called, under mu, before a log is created at name (reusing
// old, if not empty).
func (l *logFiles) creating(name, old string) {
	if old != "" {
		delete(l.ours, old)
	}
	l.pending[name] = true
}

// removing is called, under mu, before Pebble deletes a log.
func (l *logFiles) removing(name string) {
	delete(l.ours, name)
	delete(l.pending, name)
}

// created is Pebble's WALCreated: the log is now on its list (or failed).
func (l *logFiles) created(info pebble.WALCreateInfo) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.pending, info.Path)
	if info.Err == nil {
		l.ours[info.Path] = true
	}
}

type logFile struct {
	path string
	num  uint64
	size int64
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

// listLogs lists the logs in dir, oldest first, with their sizes, and splits
// them into those older than the newest live() plus pending ones, and the
// rest. Called under mu.
func (fs syncCountingFS) listLogs(dir string, live func() int) (old, newest []logFile, err error) {
	keep := live() + len(fs.logs.pending)
	names, err := fs.FS.List(dir)
	if err != nil {
		return nil, nil, err
	}
	var logs []logFile
	for _, name := range names {
		num, ok := logNumber(name)
		if !ok {
			continue
		}
		path := fs.FS.PathJoin(dir, name)
		st, err := fs.FS.Stat(path)
		if err != nil {
			continue // removed meanwhile
		}
		logs = append(logs, logFile{path, num, st.Size()})
	}
	old, newest = splitLogs(logs, keep)
	return old, newest, nil
}

// splitLogs sorts logs oldest first and splits them into the newest keep
// logs and the older ones. keep counts logs, not files: the segments of one
// log (files with the same number) go together.
func splitLogs(logs []logFile, keep int) (old, newest []logFile) {
	slices.SortFunc(logs, func(a, b logFile) int {
		return cmp.Or(cmp.Compare(a.num, b.num), strings.Compare(a.path, b.path))
	})
	cut := len(logs)
	for kept := 0; cut > 0 && kept < keep; kept++ {
		num := logs[cut-1].num
		for cut > 0 && logs[cut-1].num == num {
			cut--
		}
	}
	return logs[:cut], logs[cut:]
}

// emptyObsolete truncates the obsolete logs of dir that Pebble created since
// Open, and returns the bytes it freed.
func (fs syncCountingFS) emptyObsolete(dir string, live func() int) (uint64, error) {
	fs.logs.mu.Lock()
	defer fs.logs.mu.Unlock()
	old, _, err := fs.listLogs(dir, live)
	if err != nil {
		return 0, err
	}
	var freed uint64
	for _, lg := range old {
		if lg.size == 0 || !fs.logs.ours[lg.path] {
			continue
		}
		// vfs.FS has no truncate: Create replaces the file with an empty
		// one. Pebble cannot be removing it meanwhile (Remove takes mu).
		f, err := fs.FS.Create(lg.path, vfs.WriteCategoryUnspecified)
		if err == nil {
			err = f.Close()
		}
		if err != nil {
			return freed, err
		}
		freed += uint64(lg.size)
	}
	return freed, nil
}

// logBytes is the size of dir's logs on disk: all of them, and the obsolete
// ones (as emptyObsolete would tell them, whoever created them).
func (fs syncCountingFS) logBytes(dir string, live func() int) (all, obsolete uint64, err error) {
	fs.logs.mu.Lock()
	defer fs.logs.mu.Unlock()
	old, newest, err := fs.listLogs(dir, live)
	for _, lg := range old {
		obsolete += uint64(lg.size)
	}
	all = obsolete
	for _, lg := range newest {
		all += uint64(lg.size)
	}
	return all, obsolete, err
}
