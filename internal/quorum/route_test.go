package quorum

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestRouteTranscript runs testdata/route.txt. A "route" case gives a read
// (read LSN, known tail, least hedge delay) and one line per candidate
// segment in the order the reader knows them; below "----" are the LSN a
// segment must be complete through, the order to ask them in and the hedge
// delay after each. A "zeros" case gives a membership, whether the reader
// wrote the PG, and what each member answered a read every segment failed;
// below "----" is whether the page reads as zeros.
func TestRouteTranscript(t *testing.T) {
	data, err := os.ReadFile("testdata/route.txt")
	if err != nil {
		t.Fatal(err)
	}
	cases := 0
	for _, block := range strings.Split(string(data), "\n\n") {
		var lines []string
		for _, l := range strings.Split(block, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				lines = append(lines, l)
			}
		}
		if len(lines) == 0 {
			continue
		}
		cases++
		sep := slices.Index(lines, "----")
		if sep < 1 || sep == len(lines)-1 {
			t.Fatalf("case %q: want input lines, ----, and the expected output", lines[0])
		}
		var got string
		switch strings.Fields(lines[0])[0] {
		case "route":
			got, err = runRouteCase(lines[:sep])
		case "zeros":
			got, err = runZerosCase(lines[:sep])
		default:
			err = fmt.Errorf("want a route or zeros line")
		}
		if err != nil {
			t.Fatalf("case %q: %v", lines[0], err)
		}
		if want := strings.Join(lines[sep+1:], "\n"); got != want {
			t.Errorf("case %q with\n  %s\ngot\n  %s\nwant\n  %s", lines[0], strings.Join(lines[1:sep], "\n  "),
				strings.ReplaceAll(got, "\n", "\n  "), strings.ReplaceAll(want, "\n", "\n  "))
		}
	}
	if cases == 0 {
		t.Fatal("no cases in testdata/route.txt")
	}
}

// runRouteCase: "route read=N [tail=N] min=D", then "<id> up|down
// [scl=N] [lat=D]" per candidate.
func runRouteCase(lines []string) (string, error) {
	var readLSN, tail uint64
	var min time.Duration
	var err error
	for _, kv := range strings.Fields(lines[0])[1:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "read":
			readLSN, err = strconv.ParseUint(v, 10, 64)
		case "tail":
			tail, err = strconv.ParseUint(v, 10, 64)
		case "min":
			min, err = time.ParseDuration(v)
		default:
			err = fmt.Errorf("unknown key %q", k)
		}
		if err != nil {
			return "", err
		}
	}
	var cands []ReadCandidate
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 2 || (f[1] != "up" && f[1] != "down") {
			return "", fmt.Errorf("want \"<id> up|down ...\", got %q", l)
		}
		c := ReadCandidate{ID: SegmentID(f[0]), Reachable: f[1] == "up"}
		for _, kv := range f[2:] {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "scl":
				c.SCL, err = strconv.ParseUint(v, 10, 64)
			case "lat":
				c.Latency, err = time.ParseDuration(v)
			default:
				err = fmt.Errorf("unknown key %q", k)
			}
			if err != nil {
				return "", err
			}
		}
		cands = append(cands, c)
	}
	before := slices.Clone(cands)
	need := ReadNeed(readLSN, tail)
	order := ReadOrder(cands, need)
	if !slices.Equal(cands, before) {
		return "", fmt.Errorf("ReadOrder changed its input")
	}
	ids := make([]string, len(order))
	hedges := make([]string, len(order))
	for k, i := range order {
		ids[k] = string(cands[i].ID)
		hedges[k] = fmt.Sprintf("%s=%v", cands[i].ID, HedgeDelay(cands[i].Latency, min))
	}
	return fmt.Sprintf("need %d\norder %s\nhedge %s", need, strings.Join(ids, " "), strings.Join(hedges, " ")), nil
}

// runZerosCase: "zeros config=SET[,SET] wrote=yes|no", then "<id>
// not-hosted|refused|unreachable" per member.
func runZerosCase(lines []string) (string, error) {
	var cfg Config
	var wrote bool
	for _, kv := range strings.Fields(lines[0])[1:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "config":
			cfg.Epoch = 1
			for _, s := range strings.Split(v, ",") {
				cfg.Sets = append(cfg.Sets, Default(ids(s)))
			}
		case "wrote":
			if v != "yes" && v != "no" {
				return "", fmt.Errorf("wrote=%q, want yes or no", v)
			}
			wrote = v == "yes"
		default:
			return "", fmt.Errorf("unknown key %q", k)
		}
	}
	said := map[SegmentID]string{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != 2 || (f[1] != "not-hosted" && f[1] != "refused" && f[1] != "unreachable") {
			return "", fmt.Errorf("want \"<id> not-hosted|refused|unreachable\", got %q", l)
		}
		said[SegmentID(f[0])] = f[1]
	}
	for _, id := range cfg.Members() {
		if said[id] == "" {
			return "", fmt.Errorf("member %s has no line", id)
		}
	}
	if cfg.ReadsAsZeros(func(id SegmentID) bool { return said[id] == "not-hosted" }, wrote) {
		return "zeros", nil
	}
	return "read error", nil
}

func TestReadOrderEmpty(t *testing.T) {
	if got := ReadOrder(nil, 10); len(got) != 0 {
		t.Fatalf("ReadOrder(nil) = %v, want empty", got)
	}
}

func TestReadsAsZerosNoSets(t *testing.T) {
	// A config with no sets has no read quorum to trust.
	if (Config{}).ReadsAsZeros(func(SegmentID) bool { return true }, false) {
		t.Fatal("an empty config read as zeros")
	}
}
