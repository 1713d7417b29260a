package storage

import (
	"testing"
	"time"
)

func TestMaterializeTarget(t *testing.T) {
	const backlog, delay = 100, time.Second
	for _, c := range []struct {
		name      string
		h         horizons
		sinceLast time.Duration
		want      uint64
		ok        bool
	}{
		{"nothing synced past the horizon", horizons{DurableSCL: 50, ReadPoint: 80, Materialized: 50}, 2 * delay, 0, false},
		{"no read point past the horizon", horizons{DurableSCL: 500, ReadPoint: 50, Materialized: 50}, 2 * delay, 0, false},
		{"small backlog, too soon", horizons{DurableSCL: 60, ReadPoint: 60, Materialized: 50}, delay / 2, 0, false},
		{"small backlog, after the delay", horizons{DurableSCL: 60, ReadPoint: 60, Materialized: 50}, delay, 60, true},
		{"large backlog folds at once", horizons{DurableSCL: 400, ReadPoint: 400, Materialized: 50}, 0, 400, true},
		{"bounded by the read point", horizons{DurableSCL: 400, ReadPoint: 300, Materialized: 50}, 0, 300, true},
		{"bounded by the synced log", horizons{DurableSCL: 300, ReadPoint: 400, Materialized: 50}, 0, 300, true},
		{"backlog counted from the read point, not the log", horizons{DurableSCL: 400, ReadPoint: 60, Materialized: 50}, 0, 0, false},
	} {
		got, ok := materializeTarget(c.h, c.sinceLast, backlog, delay)
		if got != c.want || ok != c.ok {
			t.Errorf("%s: materializeTarget(%+v, %v) = %d, %v; want %d, %v", c.name, c.h, c.sinceLast, got, ok, c.want, c.ok)
		}
	}
}

func TestCollectFloor(t *testing.T) {
	for _, c := range []struct {
		name string
		h    horizons
		want uint64
		ok   bool
	}{
		{"all folded and held by every member", horizons{Materialized: 100, Retain: 100, LogFloor: 10}, 100, true},
		{"a member lacks records", horizons{Materialized: 100, Retain: 40, LogFloor: 10}, 40, true},
		{"not yet folded", horizons{Materialized: 30, Retain: 100, LogFloor: 10}, 30, true},
		{"nothing new to collect", horizons{Materialized: 100, Retain: 10, LogFloor: 10}, 0, false},
		{"no member reported", horizons{Materialized: 100, LogFloor: 0}, 0, false},
		{"floor never goes down", horizons{Materialized: 100, Retain: 100, LogFloor: 120}, 0, false},
	} {
		got, ok := collectFloor(c.h)
		if got != c.want || ok != c.ok {
			t.Errorf("%s: collectFloor(%+v) = %d, %v; want %d, %v", c.name, c.h, got, ok, c.want, c.ok)
		}
	}
}

func TestIdleFlushDue(t *testing.T) {
	const idle, minLog = 5 * time.Second, 1 << 20
	for _, c := range []struct {
		name         string
		sinceAppend  time.Duration
		flushedSince bool
		logBytes     uint64
		want         bool
	}{
		{"appends going on", time.Second, false, 64 << 20, false},
		{"idle, with logs to free", idle, false, 8 << 20, true},
		{"idle, flushed already", 10 * idle, true, 8 << 20, false},
		{"idle, logs too small to matter", idle, false, minLog, false},
	} {
		if got := idleFlushDue(c.sinceAppend, idle, c.flushedSince, c.logBytes, minLog); got != c.want {
			t.Errorf("%s: idleFlushDue = %v, want %v", c.name, got, c.want)
		}
	}
}
