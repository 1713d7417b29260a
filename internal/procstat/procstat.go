// Package procstat reads what a process has cost the machine so far, from
// Linux's /proc: its CPU time (user and system, all threads) and the bytes
// it caused to be written to disk. Benchmarks sample it before and after a
// level and divide the difference by the work done.
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
	// WriteBytes is what the process caused to be sent to the storage
	// layer (/proc/PID/io write_bytes): page-cache writeback and direct
	// writes, not what it merely copied into the page cache and removed
	// before writeback.
	WriteBytes uint64
}

// Sub is u minus an earlier sample.
func (u Usage) Sub(earlier Usage) Usage {
	return Usage{CPU: u.CPU - earlier.CPU, WriteBytes: u.WriteBytes - earlier.WriteBytes}
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
	io, err := os.ReadFile(filepath.Join(dir, "io"))
	if err != nil {
		return Usage{}, err
	}
	wb, err := parseIO(io)
	if err != nil {
		return Usage{}, fmt.Errorf("%s/io: %w", dir, err)
	}
	return Usage{CPU: cpu, WriteBytes: wb}, nil
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

func parseIO(b []byte) (uint64, error) {
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "write_bytes:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no write_bytes line")
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
