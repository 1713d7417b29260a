package cluster

import (
	"bytes"
	"io"
	"os"
	"strings"
)

// tailWindow bounds how much of a log TailLines reads: a component's log
// can be large, and a few lines are wanted.
const tailWindow = 64 << 10

// TailLines returns the last n whole lines of the file at path (fewer if it
// has fewer), written at or after byte offset from, which must start a line
// (such as the file's size when a process began appending to it). It never
// starts in the middle of a line: a quoted log line is a record as its
// process wrote it, not whatever a byte offset cut off. A line longer than
// the window it reads is left out rather than cut.
func TailLines(path string, from int64, n int) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	from = min(max(from, 0), st.Size())
	// The window starts one byte early: that byte says whether the
	// window's first line is whole (it follows a newline) or a cut one to
	// drop.
	off := max(st.Size()-tailWindow-1, from)
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
		return nil, err
	}
	if off > from {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return nil, nil
		}
		b = b[i+1:]
	}
	text := strings.TrimRight(string(b), "\n")
	if text == "" {
		return nil, nil
	}
	lines := strings.Split(text, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines, nil
}
