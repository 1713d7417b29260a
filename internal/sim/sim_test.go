package sim

import (
	"flag"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	flagSeeds = flag.Int("seeds", 10000, "number of seeds TestRandomSchedules runs")
	flagSeed  = flag.Int64("seed", -1, "replay only this seed, logging every step")
)

func TestRandomSchedules(t *testing.T) {
	if *flagSeed >= 0 {
		seed := uint64(*flagSeed)
		res, err := Run(seed, t.Logf)
		if err != nil {
			t.Fatalf("seed %d: %v\nreplay with: go test ./internal/sim -run TestRandomSchedules -seed %d", seed, err, seed)
		}
		t.Logf("seed %d: %+v", seed, res)
		return
	}
	n := *flagSeeds
	if testing.Short() {
		n = min(n, 500)
	}
	// Seeds are independent, so spread them over the CPUs; each Run is
	// single-threaded and deterministic.
	start := time.Now()
	var (
		next              atomic.Int64
		steps, records    atomic.Int64
		changes, failures atomic.Int64
		crashes           atomic.Int64
		wg                sync.WaitGroup
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) || failures.Load() >= 5 {
					return
				}
				seed := uint64(i)
				res, err := Run(seed, nil)
				if err != nil {
					failures.Add(1)
					t.Errorf("seed %d: %v\nreplay with: go test ./internal/sim -run TestRandomSchedules -seed %d", seed, err, seed)
					continue
				}
				steps.Add(int64(res.Steps))
				records.Add(int64(res.Records))
				changes.Add(int64(res.Changes))
				crashes.Add(int64(res.Crashes))
			}
		}()
	}
	wg.Wait()
	t.Logf("%d seeds, %d steps, %d records, %d membership changes, %d segment crashes in %v",
		n, steps.Load(), records.Load(), changes.Load(), crashes.Load(), time.Since(start).Round(time.Millisecond))
}

// A run must be a function of its seed alone, or replays would lie.
func TestDeterministic(t *testing.T) {
	var a, b []string
	if _, err := Run(42, func(f string, args ...any) { a = append(a, f) }); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(42, func(f string, args ...any) { b = append(b, f) }); err != nil {
		t.Fatal(err)
	}
	if len(a) != len(b) {
		t.Fatalf("two runs of one seed took %d and %d steps", len(a), len(b))
	}
	r1, _ := Run(7, nil)
	r2, _ := Run(7, nil)
	if r1 != r2 {
		t.Fatalf("results differ: %+v vs %+v", r1, r2)
	}
}
