package procstat

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestParseStatCountsFieldsFromTheLastParenthesis(t *testing.T) {
	// A command name with a space and a parenthesis, as a process may set.
	line := []byte("4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 1234 0 0 0 150 25 3 4 20 0 8 0 100 0 0\n")
	got, err := parseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if want := 175 * clockTick; got != want {
		t.Fatalf("cpu = %v, want %v (utime 150 + stime 25 ticks)", got, want)
	}
	if _, err := parseStat([]byte("4242 (short) S 1 2")); err == nil {
		t.Fatal("a truncated line parsed")
	}
}

func TestReadSeesThisProcessSpendCPU(t *testing.T) {
	before, err := Read(0)
	if err != nil {
		t.Fatal(err)
	}
	// Spin until the kernel has charged at least two ticks.
	deadline := time.Now().Add(10 * time.Second)
	for {
		x := 0
		for i := 0; i < 1e6; i++ {
			x += i
		}
		_ = x
		now, err := Read(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if now.Sub(before).CPU >= 2*clockTick {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no CPU charged after 10 s of spinning: %v then %v", before, now)
		}
	}
}

func TestDirBytesCountsAllocatedBlocks(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sub", "f"), make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	// A sparse file: large, but holding nothing.
	f, err := os.Create(filepath.Join(dir, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, err := DirBytes(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got < 64<<10 || got > 1<<20 {
		t.Fatalf("DirBytes = %d, want the 64 KiB written (and not the sparse file's 1 GiB)", got)
	}
}

func TestParseMachineBusyLeavesIdleAndIOWaitOut(t *testing.T) {
	busy, err := parseMachineBusy([]byte("cpu  10 1 5 1000 7 2 3 4 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"))
	if want := (10 + 1 + 5 + 2 + 3 + 4) * clockTick; err != nil || busy != want {
		t.Errorf("parseMachineBusy = %v, %v; want %v", busy, err, want)
	}
	if _, err := MachineBusy(); err != nil {
		t.Errorf("this machine's /proc/stat: %v", err)
	}
}

func TestParseDiskstatsCountsWholeDevices(t *testing.T) {
	const stats = `   7       0 loop0 10 0 20 0 0 0 999 0 0 0 0
 254       0 vda 100 5 2000 30 40 6 800 50 0 60 70
 254       1 vda1 90 5 1900 30 40 6 790 50 0 60 70
`
	got, err := parseDiskstats([]byte(stats), func(name string) bool { return name == "vda" })
	if err != nil || got != 800*512 {
		t.Fatalf("parseDiskstats = %d, %v; want %d (vda's sectors written, not loop0's or the partition's)", got, err, 800*512)
	}
	if _, err := DeviceWritten(); err != nil {
		t.Errorf("this machine's /proc/diskstats: %v", err)
	}
}

func TestParseContextSwitches(t *testing.T) {
	stat := "cpu  27368 0 7472 18469 383 0 625 3045 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 12 3\nctxt 438645\nbtime 1764688000\n"
	n, err := parseContextSwitches([]byte(stat))
	if err != nil || n != 438645 {
		t.Fatalf("parseContextSwitches = %d, %v; want 438645", n, err)
	}
	if _, err := parseContextSwitches([]byte("cpu 1 2 3\n")); err == nil {
		t.Fatal("a /proc/stat without ctxt parsed")
	}
	if a, err := ContextSwitches(); err != nil || a == 0 {
		t.Fatalf("ContextSwitches() = %d, %v", a, err)
	}
}
