// Package procstat reads what a process has cost the machine so far, from
// Linux's /proc: its CPU time (user and system, all threads). Benchmarks
// sample it before and after a level and divide the difference by the work
// done. (Not the bytes written: /proc/PID/io write_bytes charges a whole
// large folio of the page cache each time a page of it is dirtied, so on
// current kernels it overstates an fsync'd log's writes many times over.)
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Usage is a process's cumulative cost since it started.
type Usage struct {
	// CPU is user plus system time of every thread of the process, at the
	// kernel's clock-tick resolution.
	CPU time.Duration
}

// Sub is u minus an earlier sample.
func (u Usage) Sub(earlier Usage) Usage {
	return Usage{CPU: u.CPU - earlier.CPU}
}

// clockTick is the unit of /proc/PID/stat's times: USER_HZ, which Linux
// fixes at 100 on every architecture it exposes to user space.
const clockTick = 10 * time.Millisecond

// Read samples process pid (0: this process).
func Read(pid int) (Usage, error) {
	dir := "/proc/self"
	if pid != 0 {
		dir = filepath.Join("/proc", strconv.Itoa(pid))
	}
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return Usage{}, err
	}
	cpu, err := parseStat(stat)
	if err != nil {
		return Usage{}, fmt.Errorf("%s/stat: %w", dir, err)
	}
	return Usage{CPU: cpu}, nil
}

// parseStat returns utime+stime of a /proc/PID/stat line. The command name
// (field 2) is in parentheses and may hold spaces and parentheses, so the
// fields are counted from the last ')'.
func parseStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("no command name in %q", b)
	}
	// After ") ": state (field 3), ... utime is field 14, stime field 15.
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields after the command name, want at least 13", len(f))
	}
	utime, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("utime: %w", err)
	}
	stime, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stime: %w", err)
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// MachineBusy is the time every CPU of the machine has spent not idle
// since boot (user, nice, system, irq, softirq and steal: /proc/stat's first
// line), so that a benchmark can tell how much of the machine others took.
func MachineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseMachineBusy(b)
}

func parseMachineBusy(b []byte) (time.Duration, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("no cpu line in /proc/stat")
	}
	var busy uint64
	// user nice system idle iowait irq softirq steal: all but idle, iowait.
	for i, v := range f[1:9] {
		if i == 3 || i == 4 {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, err
		}
		busy += n
	}
	return time.Duration(busy) * clockTick, nil
}

// ContextSwitches is the number of context switches every CPU of the machine
// has made since boot (/proc/stat's ctxt line). On a virtual machine each
// costs microseconds of CPU, so how many a transaction causes, across every
// process it involves, is worth knowing beside its CPU time.
func ContextSwitches() (uint64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseContextSwitches(b)
}

func parseContextSwitches(b []byte) (uint64, error) {
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "ctxt "); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no ctxt line in /proc/stat")
}

// DeviceWritten is the bytes written to the machine's block devices since
// boot, by every process and the file systems themselves (journal, metadata):
// the sectors /proc/diskstats counts for each whole device (those in
// /sys/block, not their partitions; loop and zram devices left out, as they
// store nothing on a disk).
func DeviceWritten() (uint64, error) {
	b, err := os.ReadFile("/proc/diskstats")
	if err != nil {
		return 0, err
	}
	return parseDiskstats(b, func(name string) bool {
		if strings.HasPrefix(name, "loop") || strings.HasPrefix(name, "zram") || strings.HasPrefix(name, "ram") {
			return false
		}
		_, err := os.Stat(filepath.Join("/sys/block", name))
		return err == nil
	})
}

func parseDiskstats(b []byte, whole func(string) bool) (uint64, error) {
	var total uint64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 || !whole(f[2]) {
			continue
		}
		// Field 10 (f[9]) is sectors written, always of 512 bytes.
		n, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/diskstats: %s: %w", f[2], err)
		}
		total += n * 512
	}
	return total, nil
}

// DirBytes is the space the files under dir take on disk (allocated
// blocks, as du counts them), so that preallocated and sparse files count
// for what they hold.
func DirBytes(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil // removed while walking: a compacted table, say
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		total += allocated(info)
		return nil
	})
	return total, err
}
