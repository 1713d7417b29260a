package quorum

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestJudgeTranscript runs testdata/stall.txt: each case is a "judge" line
// (config, lsn, stuck), one line per member, "----", and the verdict.
func TestJudgeTranscript(t *testing.T) {
	data, err := os.ReadFile("testdata/stall.txt")
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
		name := lines[0]
		got, want, err := runJudgeCase(lines)
		if err != nil {
			t.Fatalf("case %q: %v", name, err)
		}
		if got != want {
			t.Errorf("case %q with members\n  %s\ngot  %s\nwant %s", name, strings.Join(lines[1:], "\n  "), got, want)
		}
	}
	if cases == 0 {
		t.Fatal("no cases in testdata/stall.txt")
	}
}

func runJudgeCase(lines []string) (got, want string, err error) {
	head := strings.Fields(lines[0])
	if head[0] != "judge" {
		return "", "", fmt.Errorf("want a judge line, got %q", lines[0])
	}
	var cfg Config
	var lsn uint64
	var stuck, fresh time.Duration
	for _, kv := range head[1:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "config":
			cfg.Epoch = 1
			for _, s := range strings.Split(v, ",") {
				cfg.Sets = append(cfg.Sets, Default(ids(s)))
			}
		case "lsn":
			lsn, err = strconv.ParseUint(v, 10, 64)
		case "stuck":
			stuck, err = time.ParseDuration(v)
		case "fresh":
			fresh, err = time.ParseDuration(v)
		default:
			err = fmt.Errorf("unknown key %q", k)
		}
		if err != nil {
			return "", "", err
		}
	}
	segs := map[SegmentID]Progress{}
	i := 1
	for ; i < len(lines) && lines[i] != "----"; i++ {
		f := strings.Fields(lines[i])
		p := Progress{Reachable: f[1] == "up", Received: true}
		for _, kv := range f[2:] {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "scl":
				p.SCL, err = strconv.ParseUint(v, 10, 64)
			case "unchanged":
				p.Unchanged, err = time.ParseDuration(v)
			case "reported":
				p.Reported, err = time.ParseDuration(v)
			case "received":
				p.Received = v == "yes"
			default:
				err = fmt.Errorf("unknown key %q", k)
			}
			if err != nil {
				return "", "", err
			}
		}
		segs[SegmentID(f[0])] = p
	}
	if i+1 >= len(lines) {
		return "", "", fmt.Errorf("no verdict after ----")
	}
	for _, id := range cfg.Members() {
		if _, ok := segs[id]; !ok {
			return "", "", fmt.Errorf("member %s has no line", id)
		}
	}
	st := cfg.Judge(lsn, stuck, fresh, func(id SegmentID) Progress { return segs[id] })
	got = "waiting"
	if st.Stalled {
		got = "stalled"
	}
	if st.Stalled || len(st.Unreachable) > 0 || len(st.Behind) > 0 {
		got += " unreachable=" + joinIDs(st.Unreachable) + " behind=" + joinIDs(st.Behind)
	}
	if len(st.Ask) > 0 {
		got += " ask=" + joinIDs(st.Ask)
	}
	return got, lines[i+1], nil
}

func joinIDs(s []SegmentID) string {
	if len(s) == 0 {
		return "-"
	}
	out := make([]string, len(s))
	for i, id := range s {
		out[i] = string(id)
	}
	return strings.Join(out, ",")
}
