package replica

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestFollowerTranscript runs testdata/follower.txt: each block is one
// command ("new" starts a fresh Follower, the others are Steps of the
// current one), "----", and what it prints: the Ready and the state after.
func TestFollowerTranscript(t *testing.T) {
	data, err := os.ReadFile("testdata/follower.txt")
	if err != nil {
		t.Fatal(err)
	}
	var f *Follower
	steps, line := 0, 1
	for _, block := range strings.Split(string(data), "\n\n") {
		at := line
		line += strings.Count(block, "\n") + 2
		var lines []string
		for _, l := range strings.Split(block, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				lines = append(lines, l)
			}
		}
		if len(lines) == 0 {
			continue
		}
		steps++
		cmd := lines[0]
		if len(lines) < 2 || lines[1] != "----" {
			t.Fatalf("testdata/follower.txt:%d: %q: want the command, ----, then its output", at, cmd)
		}
		want := strings.Join(lines[2:], "\n")
		var got string
		if cmd == "new" {
			f = NewFollower()
			got = stateLine(f)
		} else {
			if f == nil {
				t.Fatalf("testdata/follower.txt:%d: %q before any new", at, cmd)
			}
			m, err := parseMessage(cmd)
			if err != nil {
				t.Fatalf("testdata/follower.txt:%d: %q: %v", at, cmd, err)
			}
			got = readyLine(f.Step(m)) + "\n" + stateLine(f)
		}
		if got != want {
			t.Errorf("testdata/follower.txt:%d: %s\ngot\n  %s\nwant\n  %s", at, cmd,
				strings.ReplaceAll(got, "\n", "\n  "), strings.ReplaceAll(want, "\n", "\n  "))
		}
	}
	if steps == 0 {
		t.Fatal("no steps in testdata/follower.txt")
	}
}

func parseMessage(cmd string) (Message, error) {
	f := strings.Fields(cmd)
	num := func(s string) (uint64, error) { return strconv.ParseUint(s, 10, 64) }
	switch f[0] {
	case "start":
		m := Message{Kind: Start}
		for _, kv := range f[1:] {
			k, v, _ := strings.Cut(kv, "=")
			n, err := num(v)
			if err != nil {
				return m, err
			}
			switch k {
			case "epoch":
				m.Epoch = n
			case "from":
				m.From = n
			case "vdl":
				m.VDL = n
			default:
				return m, fmt.Errorf("unknown key %q", k)
			}
		}
		return m, nil
	case "mtr":
		partial := len(f) == 3 && f[2] == "partial"
		if len(f) != 2 && !partial {
			return Message{}, fmt.Errorf("want mtr A..B [partial]")
		}
		a, b, ok := strings.Cut(f[1], "..")
		if !ok {
			return Message{}, fmt.Errorf("want mtr A..B")
		}
		first, err := num(a)
		if err != nil {
			return Message{}, err
		}
		last, err := num(b)
		if err != nil {
			return Message{}, err
		}
		m := Message{Kind: Received, MTR: MTR{First: first, Last: last}, Partial: partial}
		for l := first; l <= last; l++ {
			m.MTR.Records = append(m.MTR.Records, []byte(fmt.Sprintf("record %d", l)))
		}
		return m, nil
	case "vdl":
		if len(f) != 2 {
			return Message{}, fmt.Errorf("want vdl V")
		}
		v, err := num(f[1])
		return Message{Kind: VDL, VDL: v}, err
	case "lost":
		return Message{Kind: Lost}, nil
	}
	return Message{}, fmt.Errorf("unknown command %q", f[0])
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func readyLine(rd Ready) string {
	return fmt.Sprintf("ready: resync=%s apply=%s applied=%d resubscribe=%s",
		yesNo(rd.Resync), applyString(rd.Apply), rd.Applied, yesNo(rd.Resubscribe))
}

func stateLine(f *Follower) string {
	return fmt.Sprintf("state: %s epoch=%d applied=%d writer-vdl=%d pending=%d resyncs=%d",
		f.State(), f.Epoch(), f.Applied(), f.WriterVDL(), f.Pending(), f.Resyncs())
}
