package control

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// failoverBase is the transcript's time 0: times in testdata/failover.txt
// are offsets from it, so that the expected output does not depend on the
// day the test runs.
var failoverBase = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// failoverSim is what a transcript acts on: the stored record and the view
// the leader would read, and the holder it saw last, kept as failoverPass
// keeps it.
type failoverSim struct {
	rec    *Failover
	view   FailoverView
	last   string
	timing FailoverTiming
}

// TestFailoverTranscript runs testdata/failover.txt. Each block is one or
// more commands, "----", and what the printing ones (decide, switchover)
// print; the state carries from block to block until the next "new". The
// runner checks on every decide what the leader's loop relies on: the
// decision does not change the record it was given, gives the same answer
// twice, never returns a record equal to the stored one, and is a fixed
// point (deciding again on its own result with the same view changes
// nothing; the loop decides a few times a second and would otherwise
// rewrite the record every time).
func TestFailoverTranscript(t *testing.T) {
	const file = "testdata/failover.txt"
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var sim *failoverSim
	cases, line := 0, 1
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
		cases++
		sep := slices.Index(lines, "----")
		if sep < 1 {
			t.Fatalf("%s:%d: %q: want commands, ----, then their output", file, at, lines[0])
		}
		var out []string
		for _, cmd := range lines[:sep] {
			if strings.Fields(cmd)[0] == "new" {
				sim = &failoverSim{}
			} else if sim == nil {
				t.Fatalf("%s:%d: %q before any new", file, at, cmd)
			}
			got, err := sim.run(cmd)
			if err != nil {
				t.Fatalf("%s:%d: %q: %v", file, at, cmd, err)
			}
			if got != "" {
				out = append(out, got)
			}
		}
		got, want := strings.Join(out, "\n"), strings.Join(lines[sep+1:], "\n")
		if got != want {
			t.Errorf("%s:%d: %s\ngot\n  %s\nwant\n  %s", file, at, strings.Join(lines[:sep], "; "),
				strings.ReplaceAll(got, "\n", "\n  "), strings.ReplaceAll(want, "\n", "\n  "))
		}
	}
	if cases == 0 {
		t.Fatalf("no cases in %s", file)
	}
}

// run carries out one command and returns what it prints.
//
//	new [take=D] [drain=D]    a fresh volume (id 7): no record, epoch 0, no
//	                          lease, no replica, time 0; the timing
//	                          (DefaultFailoverTiming unless given)
//	time D                    the leader's clock, D after time 0
//	epoch N                   the volume epoch
//	lease ID@E [ready]        ID holds the writer lease at epoch E (which
//	                          the volume epoch becomes at least: taking the
//	                          lease bumps it); ready: it registered as the
//	                          writer at E and serves
//	lease none                nobody holds it (expired or released)
//	replica ID k=v...         a registered replica (added or replaced):
//	                          tier, epoch, applied, az, up (its AZ's storage
//	                          nodes up)
//	gone ID                   the replica's registration went away
//	new-leader                another control plane leads: it never saw a
//	                          holder (LastHolder is unknown until it sees one)
//	switchover to=ID          store the record Catalog.Switchover stores
//	                          (the catalog test checks Switchover itself)
//	decide                    DecideFailover on the stored record and the
//	                          view; prints the record it returns, which is
//	                          then stored, or "no change"
func (s *failoverSim) run(cmd string) (string, error) {
	f := strings.Fields(cmd)
	switch f[0] {
	case "new":
		s.timing = DefaultFailoverTiming
		s.view = FailoverView{Now: failoverBase, VolumeID: 7}
		for _, kv := range f[1:] {
			k, v, _ := strings.Cut(kv, "=")
			d, err := time.ParseDuration(v)
			if err != nil {
				return "", err
			}
			switch k {
			case "take":
				s.timing.TakeLease = d
			case "drain":
				s.timing.Drain = d
			default:
				return "", fmt.Errorf("unknown key %q", k)
			}
		}
		return "", nil
	case "time":
		if len(f) != 2 {
			return "", errors.New("want time D")
		}
		d, err := time.ParseDuration(f[1])
		if err != nil {
			return "", err
		}
		if now := failoverBase.Add(d); !now.Before(s.view.Now) {
			s.view.Now = now
			return "", nil
		}
		return "", errors.New("time goes backwards")
	case "epoch":
		if len(f) != 2 {
			return "", errors.New("want epoch N")
		}
		n, err := strconv.ParseUint(f[1], 10, 64)
		s.view.Epoch = n
		return "", err
	case "lease":
		if len(f) == 2 && f[1] == "none" {
			s.view.Holder, s.view.HolderEpoch, s.view.Ready = "", 0, false
			return "", nil
		}
		if len(f) < 2 || len(f) > 3 || (len(f) == 3 && f[2] != "ready") {
			return "", errors.New("want lease ID@E [ready] or lease none")
		}
		id, e, ok := strings.Cut(f[1], "@")
		n, err := strconv.ParseUint(e, 10, 64)
		if !ok || id == "" || err != nil {
			return "", errors.New("want lease ID@E [ready]")
		}
		s.view.Holder, s.view.HolderEpoch, s.view.Ready = id, n, len(f) == 3
		s.view.Epoch = max(s.view.Epoch, n)
		// The holder is no replica now (failoverView leaves it out).
		s.drop(id)
		return "", nil
	case "replica":
		if len(f) < 2 {
			return "", errors.New("want replica ID k=v...")
		}
		c := PromotionCandidate{ID: f[1], Live: true}
		for _, kv := range f[2:] {
			k, v, _ := strings.Cut(kv, "=")
			var err error
			var n uint64
			if k != "az" {
				if n, err = strconv.ParseUint(v, 10, 32); err != nil {
					return "", fmt.Errorf("%s: %w", k, err)
				}
			}
			switch k {
			case "tier":
				c.Tier = uint32(n)
			case "epoch":
				c.Epoch = n
			case "applied":
				c.Applied = n
			case "az":
				c.AZ = v
			case "up":
				c.AZNodesUp = int(n)
			default:
				return "", fmt.Errorf("unknown key %q", k)
			}
		}
		s.drop(c.ID)
		s.view.Candidates = append(s.view.Candidates, c)
		return "", nil
	case "gone":
		if len(f) != 2 || !s.drop(f[1]) {
			return "", errors.New("want gone ID of a replica")
		}
		return "", nil
	case "new-leader":
		s.last = ""
		return "", nil
	case "switchover":
		to, ok := strings.CutPrefix(strings.Join(f[1:], " "), "to=")
		if !ok || to == "" || s.view.Holder == "" || !s.view.Ready || s.rec.Pending() {
			return "", errors.New("want switchover to=ID, with a serving writer and no failover under way")
		}
		now := s.view.Now.UnixMilli()
		var round uint64
		if s.rec != nil {
			round = s.rec.Round
		}
		// As Catalog.Switchover stores it.
		s.rec = &Failover{
			Version: RecordVersion, VolumeID: s.view.VolumeID, Round: round + 1, Kind: FailoverPlanned,
			Reason: "switchover requested", From: s.view.Holder, FromEpoch: s.view.HolderEpoch,
			State: FailoverDraining, Target: to, DetectedMs: now, DecidedMs: now,
			DeadlineMs: now + s.timing.Drain.Milliseconds(),
		}
		return failoverString(s.rec), nil
	case "decide":
		if len(f) != 1 {
			return "", errors.New("want decide")
		}
		return s.decide()
	}
	return "", fmt.Errorf("unknown command %q", f[0])
}

func (s *failoverSim) drop(id string) bool {
	n := len(s.view.Candidates)
	s.view.Candidates = slices.DeleteFunc(s.view.Candidates, func(c PromotionCandidate) bool { return c.ID == id })
	return len(s.view.Candidates) < n
}

// decide runs one step of failoverPass: the view carries the holder seen
// last, and a holder seen now is remembered.
func (s *failoverSim) decide() (string, error) {
	v := s.view
	v.Candidates = slices.Clone(s.view.Candidates)
	v.LastHolder = s.last
	if v.Holder != "" {
		s.last = v.Holder
	}
	var before string
	if s.rec != nil {
		before = encode(s.rec)
	}
	next := DecideFailover(s.rec, v, s.timing)
	if s.rec != nil && encode(s.rec) != before {
		return "", fmt.Errorf("DecideFailover changed the record it was given: %s, was %s", encode(s.rec), before)
	}
	if again := DecideFailover(s.rec, v, s.timing); (again == nil) != (next == nil) || (next != nil && encode(again) != encode(next)) {
		return "", fmt.Errorf("DecideFailover gave two answers to one question: %v and %v", next, again)
	}
	if next == nil {
		return "no change", nil
	}
	if s.rec != nil && encode(next) == before {
		return "", fmt.Errorf("DecideFailover returned the stored record unchanged instead of nil: %s", before)
	}
	if again := DecideFailover(next, v, s.timing); again != nil {
		return "", fmt.Errorf("DecideFailover is not a fixed point: it stored\n  %s\nand deciding again on the same view stores\n  %s",
			strings.ReplaceAll(failoverString(next), "\n", "\n  "), strings.ReplaceAll(failoverString(again), "\n", "\n  "))
	}
	if next.VolumeID != v.VolumeID || next.Version != RecordVersion {
		return "", fmt.Errorf("the record is of volume %d version %d, want %d version %d", next.VolumeID, next.Version, v.VolumeID, RecordVersion)
	}
	s.rec = next
	return failoverString(next), nil
}

// failoverString prints the fields of a record that the decision sets:
// round, kind, state, the old writer and its epoch ("?" when unknown), the
// target, the new epoch and the replicas tried; then its times as offsets
// from time 0 ("-": unset); then the reason and, if any, the why.
func failoverString(f *Failover) string {
	from := f.From
	if from == "" {
		from = "?"
	}
	head := fmt.Sprintf("round=%d %s %s from=%s@%d", f.Round, f.Kind, f.State, from, f.FromEpoch)
	if f.Target != "" {
		head += " target=" + f.Target
	}
	if f.Epoch != 0 {
		head += fmt.Sprintf(" epoch=%d", f.Epoch)
	}
	if len(f.Tried) > 0 {
		head += " tried=" + strings.Join(f.Tried, ",")
	}
	at := func(ms int64) string {
		if ms == 0 {
			return "-"
		}
		return (time.Duration(ms-failoverBase.UnixMilli()) * time.Millisecond).String()
	}
	out := []string{head,
		fmt.Sprintf("detected=%s decided=%s deadline=%s done=%s", at(f.DetectedMs), at(f.DecidedMs), at(f.DeadlineMs), at(f.DoneMs)),
		"reason: " + f.Reason}
	if f.Why != "" {
		out = append(out, "why: "+f.Why)
	}
	return strings.Join(out, "\n")
}

// TestFailoverAdmits: who may take the writer lease under a failover
// record. Only a pending failover with a target refuses anyone, and never
// its target; a failover that is over, or one still choosing without a
// target, admits anyone (a restarted writer, when no replica is left).
func TestFailoverAdmits(t *testing.T) {
	now := failoverBase.Add(10 * time.Second)
	ms := func(d time.Duration) int64 { return failoverBase.Add(d).UnixMilli() }
	rec := func(state, target string, deadline int64) *Failover {
		return &Failover{Version: RecordVersion, VolumeID: 7, Round: 4, Kind: FailoverUnplanned, From: "db-1", FromEpoch: 3,
			State: state, Target: target, DeadlineMs: deadline}
	}
	planned := rec(FailoverDraining, "r1", ms(20*time.Second))
	planned.Kind = FailoverPlanned
	plannedFailed := rec(FailoverFailed, "r1", ms(5*time.Second))
	plannedFailed.Kind = FailoverPlanned
	for _, tc := range []struct {
		name   string
		f      *Failover
		holder string
		// want is "" for admitted, or words the refusal must contain.
		want []string
	}{
		{"no failover ever", nil, "db-1", nil},
		{"the last failover is done", rec(FailoverDone, "r1", 0), "db-1", nil},
		{"the last failover failed", rec(FailoverFailed, "r1", 0), "r2", nil},
		{"a planned one failed: the old writer keeps the role", plannedFailed, "db-1", nil},
		{"choosing without a target: a restarted writer", rec(FailoverChoosing, "", 0), "db-1", nil},
		{"promoting: the target", rec(FailoverPromoting, "r1", ms(13*time.Second)), "r1", nil},
		{"promoting: the old writer, restarted", rec(FailoverPromoting, "r1", ms(13*time.Second)), "db-1", []string{"round 4", "promotes r1", "db-1 may not"}},
		{"promoting: another replica", rec(FailoverPromoting, "r1", ms(13*time.Second)), "r2", []string{"promotes r1", "r2 may not"}},
		{"promoting at its deadline: still the target's", rec(FailoverPromoting, "r1", now.UnixMilli()), "r2", []string{"promotes r1"}},
		{"promoting past its deadline: the target", rec(FailoverPromoting, "r1", ms(9*time.Second)), "r1", nil},
		{"promoting past its deadline: nobody else before the leader chooses", rec(FailoverPromoting, "r1", ms(9*time.Second)), "r2", []string{"round 4", "choosing a new target", "r1 did not take the lease in time"}},
		{"the target holds the lease (no deadline): nobody else", rec(FailoverPromoting, "r1", 0), "r2", []string{"promotes r1"}},
		{"draining: the target", planned, "r1", nil},
		{"draining: the old writer may not take it back once released", planned, "db-1", []string{"promotes r1", "draining", "db-1 may not"}},
	} {
		err := tc.f.Admits(tc.holder, now)
		switch {
		case tc.want == nil && err != nil:
			t.Errorf("%s: %s refused: %v", tc.name, tc.holder, err)
		case tc.want != nil && err == nil:
			t.Errorf("%s: %s admitted, want refused", tc.name, tc.holder)
		case tc.want != nil && !errors.Is(err, ErrFailingOver):
			t.Errorf("%s: %v does not wrap ErrFailingOver", tc.name, err)
		case tc.want != nil:
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s: %q does not say %q", tc.name, err, w)
				}
			}
		}
	}
}

func TestFailoverAdmitsWriter(t *testing.T) {
	now := time.UnixMilli(10_000)
	promoting := &Failover{State: FailoverPromoting, Target: "r1", DeadlineMs: 20_000}
	choosing := &Failover{State: FailoverChoosing}
	done := &Failover{State: FailoverDone, Target: "r1"}
	for _, c := range []struct {
		name     string
		f        *Failover
		holder   string
		epoch    uint64
		replicas []string
		ok       bool
	}{
		{"the first writer, replicas already registered", nil, "writer", 0, []string{"r1"}, true},
		{"a writer with no replica", done, "writer", 3, nil, true},
		{"a restarted writer while replicas live", done, "writer", 3, []string{"r1", "r2"}, false},
		{"the only replica is the holder itself", done, "r1", 3, []string{"r1"}, true},
		{"a failover with no candidate admits anyone", choosing, "writer", 3, []string{"r1"}, true},
		{"the target", promoting, "r1", 3, []string{"r1", "r2"}, true},
		{"not the target", promoting, "writer", 3, nil, false},
	} {
		err := c.f.AdmitsWriter(c.holder, c.epoch, c.replicas, now)
		if (err == nil) != c.ok {
			t.Errorf("%s: AdmitsWriter = %v, want admitted %v", c.name, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrFailingOver) {
			t.Errorf("%s: %v is not ErrFailingOver", c.name, err)
		}
	}
}
