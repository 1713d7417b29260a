package replica

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPGMRPL(t *testing.T) {
	// An op happens at its offset from the aggregate's start. report: id
	// reports floor n. forget: id deregisters. value: Value(own=n) must
	// give want and held, and Live the reports in live ("a=50 b=70").
	type op struct {
		at   time.Duration
		do   string
		id   string
		n    uint64
		want uint64
		held bool
		live string
	}
	const ttl = 10 * time.Second
	for _, c := range []struct {
		name   string
		expect []string
		ops    []op
	}{
		{"min over live reports", nil, []op{
			{at: 0, do: "value", n: 100, want: 100, live: ""},
			{at: 0, do: "report", id: "a", n: 50},
			{at: time.Second, do: "report", id: "b", n: 70},
			{at: 2 * time.Second, do: "value", n: 100, want: 50, live: "a=50 b=70"},
			// The writer's own read point counts too.
			{at: 2 * time.Second, do: "value", n: 40, want: 40, live: "a=50 b=70"},
			// A newer report replaces the older, upwards too.
			{at: 3 * time.Second, do: "report", id: "a", n: 80},
			{at: 3 * time.Second, do: "value", n: 100, want: 70, live: "a=80 b=70"},
		}},
		{"a report expires once older than the TTL", nil, []op{
			{at: 0, do: "report", id: "a", n: 50},
			{at: 5 * time.Second, do: "report", id: "b", n: 60},
			{at: ttl, do: "value", n: 100, want: 50, live: "a=50 b=60"},
			{at: ttl + time.Nanosecond, do: "value", n: 100, want: 60, live: "b=60"},
			{at: 5*time.Second + ttl + time.Nanosecond, do: "value", n: 100, want: 100, live: ""},
			// A replica that reports again counts again.
			{at: 20 * time.Second, do: "report", id: "a", n: 90},
			{at: 20 * time.Second, do: "value", n: 100, want: 90, live: "a=90"},
		}},
		{"held during the first TTL until every expected replica reported", []string{"a", "b"}, []op{
			{at: 0, do: "value", n: 100, want: 100, held: true, live: ""},
			{at: time.Second, do: "report", id: "a", n: 50},
			{at: 2 * time.Second, do: "value", n: 100, want: 50, held: true, live: "a=50"},
			// A replica that was not expected does not end the hold.
			{at: 2 * time.Second, do: "report", id: "c", n: 30},
			{at: 2 * time.Second, do: "value", n: 100, want: 30, held: true, live: "a=50 c=30"},
			{at: 3 * time.Second, do: "report", id: "b", n: 70},
			{at: 3 * time.Second, do: "value", n: 100, want: 30, live: "a=50 b=70 c=30"},
		}},
		{"the hold ends after the first TTL even if an expected replica never reported", []string{"a", "b"}, []op{
			{at: time.Second, do: "report", id: "a", n: 50},
			{at: ttl - time.Nanosecond, do: "value", n: 100, want: 50, held: true, live: "a=50"},
			{at: ttl, do: "value", n: 100, want: 50, live: "a=50"},
		}},
		{"forget", []string{"a", "b"}, []op{
			{at: 0, do: "report", id: "a", n: 50},
			{at: time.Second, do: "value", n: 100, want: 50, held: true, live: "a=50"},
			// b deregistered before it ever reported: it is no longer
			// waited for.
			{at: 2 * time.Second, do: "forget", id: "b"},
			{at: 2 * time.Second, do: "value", n: 100, want: 50, live: "a=50"},
			// a's floor stops counting at once, well within its TTL.
			{at: 3 * time.Second, do: "forget", id: "a"},
			{at: 3 * time.Second, do: "value", n: 100, want: 100, live: ""},
		}},
	} {
		t0 := time.Unix(1700000000, 0)
		a := NewPGMRPL(ttl, t0, c.expect)
		for i, o := range c.ops {
			now := t0.Add(o.at)
			switch o.do {
			case "report":
				a.Report(o.id, o.n, now)
			case "forget":
				a.Forget(o.id)
			case "value":
				v, held := a.Value(o.n, now)
				if v != o.want || held != o.held {
					t.Errorf("%s: op %d: Value(%d) at +%v = %d, held %v; want %d, held %v", c.name, i, o.n, o.at, v, held, o.want, o.held)
				}
				if got := liveString(a.Live(now)); got != o.live {
					t.Errorf("%s: op %d: Live at +%v = %q, want %q", c.name, i, o.at, got, o.live)
				}
			default:
				t.Fatalf("%s: op %d: unknown %q", c.name, i, o.do)
			}
		}
	}
}

func liveString(m map[string]uint64) string {
	var s []string
	for _, id := range slices.Sorted(maps.Keys(m)) {
		s = append(s, fmt.Sprintf("%s=%d", id, m[id]))
	}
	return strings.Join(s, " ")
}
