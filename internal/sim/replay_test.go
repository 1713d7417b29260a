package sim

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestReplaySeeds runs every seed of testdata/seeds.txt: each once exposed a
// bug, and the random range of TestRandomSchedules need not include it.
func TestReplaySeeds(t *testing.T) {
	f, err := os.Open("testdata/seeds.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(text)
		if len(fields) == 0 {
			continue
		}
		seed, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			t.Fatalf("seeds.txt:%d: %v", line, err)
		}
		var opt Options
		for _, kv := range fields[1:] {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "interrupt":
				if opt.Interrupt, err = strconv.ParseBool(v); err != nil {
					t.Fatalf("seeds.txt:%d: %v", line, err)
				}
			default:
				t.Fatalf("seeds.txt:%d: unknown option %q", line, k)
			}
		}
		if _, err := RunWith(seed, opt, nil); err != nil {
			t.Errorf("seeds.txt:%d: seed %d %+v: %v\nreplay with: go test ./internal/sim -run TestRandomSchedules -interrupt=%v -seed %d",
				line, seed, opt, err, opt.Interrupt, seed)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}
