package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func writeLog(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "x.log")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestTailLinesQuotesWholeLines: a log's tail is its last whole lines,
// never one that starts in the middle of a record, wherever the window
// TailLines reads happens to start.
func TestTailLinesQuotesWholeLines(t *testing.T) {
	var b strings.Builder
	var all []string
	for i := 0; b.Len() < 3*tailWindow; i++ {
		l := fmt.Sprintf("time=T level=INFO msg=\"record %d\" pad=%s", i, strings.Repeat("x", i%300))
		all = append(all, l)
		b.WriteString(l + "\n")
	}
	// A first line of k bytes moves the window's start through the lines.
	for k := 0; k < 320; k += 7 {
		content := strings.Repeat("p", k) + "\n" + b.String()
		got, err := TailLines(writeLog(t, content), 0, 20)
		if err != nil {
			t.Fatal(err)
		}
		if want := all[len(all)-20:]; !slices.Equal(got, want) {
			t.Fatalf("k %d: got %q\nwant %q", k, got, want)
		}
		got, err = TailLines(writeLog(t, content), 0, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 || !slices.Equal(got, all[len(all)-len(got):]) {
			t.Fatalf("k %d: the window's lines are not the file's last whole lines; first %q", k, got[0])
		}
	}
	// A window that starts exactly at a line keeps that line.
	line := strings.Repeat("z", 63)
	content := strings.Repeat(line+"\n", tailWindow/64+10)
	got, err := TailLines(writeLog(t, content), 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != tailWindow/64 {
		t.Fatalf("a window of exactly %d lines gave %d", tailWindow/64, len(got))
	}
}

func TestTailLinesShortLogs(t *testing.T) {
	for _, tc := range []struct {
		content string
		want    []string
	}{
		{"", nil},
		{"\n", nil},
		{"one", []string{"one"}},
		{"one\ntwo\n", []string{"one", "two"}},
		{"one\ntwo\nthree\n", []string{"two", "three"}},
	} {
		got, err := TailLines(writeLog(t, tc.content), 0, 2)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, tc.want) {
			t.Fatalf("%q: got %q, want %q", tc.content, got, tc.want)
		}
	}
	if _, err := TailLines(filepath.Join(t.TempDir(), "none"), 0, 2); !os.IsNotExist(err) {
		t.Fatalf("no log: %v", err)
	}
}

// TestTailLinesOfOneProcess: a component's log is appended to by each of
// its processes; the tail quoted for one is what it wrote.
func TestTailLinesOfOneProcess(t *testing.T) {
	before := "old 1\nold 2\nold 3\n"
	path := writeLog(t, before+"new 1\nnew 2\n")
	got, err := TailLines(path, int64(len(before)), 5)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"new 1", "new 2"}; !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got, _ := TailLines(writeLog(t, before), int64(len(before)), 5); got != nil {
		t.Fatalf("a process that wrote nothing: %q", got)
	}
}
