package storage

import (
	"math"
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

func TestRetainFloor(t *testing.T) {
	const max = math.MaxUint64
	known := func(scl uint64) peerHorizon { return peerHorizon{SCL: scl, Known: true} }
	for _, c := range []struct {
		name   string
		writer uint64
		peers  []peerHorizon
		pins   []uint64
		want   uint64
	}{
		{"no peer: nobody pulls this log", 5, nil, nil, max},
		{"every member heard from, above the writer's", 5, []peerHorizon{known(9), known(12)}, nil, 9},
		{"every member heard from, below the writer's", 10, []peerHorizon{known(9), known(12)}, nil, 10},
		{"a member not heard from: the writer's alone", 5, []peerHorizon{known(9), {}}, nil, 5},
		{"a joining member does not hold the floor", 5, []peerHorizon{known(9), {SCL: 0, Known: true, Joining: true}}, nil, 9},
		{"a joining member not heard from neither", 5, []peerHorizon{known(9), {Joining: true}}, nil, 9},
		{"only joining members", 5, []peerHorizon{{Joining: true}}, nil, max},
		{"a copy served holds it at its tail", 5, []peerHorizon{known(9)}, []uint64{7}, 7},
		{"below the writer's too", 5, []peerHorizon{known(9)}, []uint64{3, 8}, 3},
		{"a pin on a segment without peers", 0, nil, []uint64{4}, 4},
	} {
		if got := retainFloor(c.writer, c.peers, c.pins); got != c.want {
			t.Errorf("%s: retainFloor(%d, %+v, %v) = %d, want %d", c.name, c.writer, c.peers, c.pins, got, c.want)
		}
	}
}
