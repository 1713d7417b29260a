package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"
)

// floorRounds is how many samples each floor takes, before and after the
// levels of a benchmark.
const floorRounds = 200

// diskFloor is what durability alone costs on the benchmark's disk, sampled
// before and after the levels, since the disk is shared and its latency
// drifts during a run.
type diskFloor struct {
	// single: one fdatasync'd 4 KiB append, the floor the targets name.
	singleBefore, singleAfter []time.Duration
	// quorum: six such appends at once, on six files, until the 4th is
	// done. A commit waits for exactly this when the six nodes of a local
	// cluster share one disk: the disk does not sync six files as fast as
	// one, so this, not the single floor, bounds a commit's latency here.
	quorumBefore, quorumAfter []time.Duration
}

// sample takes the before (first call) or after (second call) samples.
func (f *diskFloor) sample(dir string) error {
	single, err := fsyncSamples(dir, floorRounds)
	if err != nil {
		return fmt.Errorf("measure the fsync floor: %w", err)
	}
	quorum, err := quorumFsyncSamples(dir, floorRounds)
	if err != nil {
		return fmt.Errorf("measure the quorum fsync floor: %w", err)
	}
	if f.singleBefore == nil {
		f.singleBefore, f.quorumBefore = single, quorum
	} else {
		f.singleAfter, f.quorumAfter = single, quorum
	}
	return nil
}

func (f *diskFloor) singleP50() time.Duration {
	return median(append(slices.Clone(f.singleBefore), f.singleAfter...))
}

func (f *diskFloor) quorumP50() time.Duration {
	return median(append(slices.Clone(f.quorumBefore), f.quorumAfter...))
}

// benchDirs says where a benchmark samples the disk floors: --dir, else
// beside the --cluster file; without --cluster, in the temporary directory
// it makes (tmp, for the benchmark's own cluster; done removes it).
func benchDirs(dir, clusterFile, prefix string) (floorDir, tmp string, done func(), err error) {
	if clusterFile != "" {
		if dir == "" {
			dir = filepath.Dir(clusterFile)
		}
		return dir, "", func() {}, nil
	}
	tmp, err = os.MkdirTemp(dir, prefix)
	if err != nil {
		return "", "", nil, err
	}
	return tmp, tmp, func() { os.RemoveAll(tmp) }, nil
}

// fsyncSamples times n appends of 4 KiB to a file, each fdatasynced: what one
// durable log write costs on this disk.
func fsyncSamples(dir string, n int) ([]time.Duration, error) {
	f, err := os.CreateTemp(dir, "fsync-floor-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	lat := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		buf[0] = byte(i)
		start := time.Now()
		if err := appendSynced(f, buf); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(start))
	}
	return lat, nil
}

// quorumFsyncSamples times n rounds of six concurrent fdatasync'd 4 KiB
// appends, one per file, up to the 4th one done: the write quorum of a PG.
func quorumFsyncSamples(dir string, n int) ([]time.Duration, error) {
	const segments, writeQuorum = 6, 4
	files := make([]*os.File, segments)
	for i := range files {
		f, err := os.CreateTemp(dir, "fsync-quorum-floor-")
		if err != nil {
			return nil, err
		}
		defer os.Remove(f.Name())
		defer f.Close()
		files[i] = f
	}
	buf := make([]byte, 4096)
	lat := make([]time.Duration, 0, n)
	done := make([]time.Duration, segments)
	errs := make([]error, segments)
	for range n {
		var wg sync.WaitGroup
		start := time.Now()
		for i, f := range files {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = appendSynced(f, buf)
				done[i] = time.Since(start)
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return nil, err
			}
		}
		slices.Sort(done)
		lat = append(lat, done[writeQuorum-1])
	}
	return lat, nil
}

func appendSynced(f *os.File, buf []byte) error {
	if _, err := f.Write(buf); err != nil {
		return err
	}
	return syscall.Fdatasync(int(f.Fd()))
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func printQuorumFloor(out io.Writer, quorumMs, singleMs float64) {
	fmt.Fprintf(out, "quorum floor: 6 such appends at once on 6 files, until the 4th is done (a commit's wait when the 6 nodes share this disk), p50 %.3f ms = %.2fx the floor\n",
		quorumMs, quorumMs/singleMs)
}
