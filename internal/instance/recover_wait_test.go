package instance

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/quorum"
	"github.com/borealis-db/borealis/internal/recovery"
	"github.com/borealis-db/borealis/internal/volume"
)

// noControl is the control plane of a writer that never calls it.
type noControl struct{ pb.ControlClient }

func waitingWriter(t *testing.T) *Writer {
	t.Helper()
	w, err := NewWriter(WriterConfig{Volume: "main", Ctl: noControl{}, Control: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

var testMembers = func() []volume.Member {
	var ms []volume.Member
	for i := 1; i <= 6; i++ {
		ms = append(ms, volume.Member{NodeID: fmt.Sprintf("s%d", i), Addr: fmt.Sprintf("127.0.0.1:710%d", i)})
	}
	return ms
}()

// TestHealthSaysWhatRecoveryWaitsFor: while recovery waits for segments,
// /v1/health's status names the PG and each missing segment; when the wait
// is over it says recovery goes on.
func TestHealthSaysWhatRecoveryWaitsFor(t *testing.T) {
	w := waitingWriter(t)
	waits := w.recoveryWaits(3)
	refused := errors.New(`connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:7103: connect: connection refused"`)
	waits(&volume.RecoverWait{PG: 0, Step: "Truncate", Have: 3, Need: 4, Segments: 6,
		Causes: []volume.SegmentError{{Member: testMembers[2], Err: refused}, {Member: testMembers[3], Err: errors.New("deadline exceeded")}}})
	want := "recovering at epoch 3: waiting for a write quorum of PG 0 to acknowledge the truncation: 3 of its 6 segments did, 4 must: " +
		"s3 (127.0.0.1:7103): unreachable (dial tcp 127.0.0.1:7103: connect: connection refused); s4 (127.0.0.1:7104): deadline exceeded"
	if w.Ready() || w.Status() != want {
		t.Fatalf("health while recovery waits: ready %v, status\n%q\nwant\n%q", w.Ready(), w.Status(), want)
	}
	waits(nil)
	if st := w.Status(); st != "recovering at epoch 3" {
		t.Fatalf("health once the wait is over: %q", st)
	}
}

// TestHealthSaysWhatARetriedRecoveryWaitsFor: without a read quorum of a
// PG recovery fails, and the writer tries again every second. The status
// says what it waits for, and keeps saying it through the next attempt's
// quick steps, so that a poll does not see "taking the writer lease".
func TestHealthSaysWhatARetriedRecoveryWaitsFor(t *testing.T) {
	ids := make([]quorum.SegmentID, 6)
	for i, m := range testMembers {
		ids[i] = quorum.SegmentID(m.NodeID)
	}
	cfg := quorum.Config{Epoch: 1, Sets: []quorum.Set{quorum.Default(ids)}}
	nq := &recovery.NoReadQuorumError{PG: 2, Config: cfg, Answered: ids[:2], Missing: ids[2:]}
	re := &volume.RecoverError{Volume: 1, PG: 2, Step: "SegmentInfo", Err: nq}
	for _, m := range testMembers[2:] {
		re.Causes = append(re.Causes, volume.SegmentError{Member: m, Err: errors.New("connection refused")})
	}
	err := fmt.Errorf("instance: recovery of volume main at epoch 9: %w", re)
	why := readQuorumWait(err)
	want := "waiting for a read quorum of PG 2: 2 of its 6 segments answered, 3 must: s3 (127.0.0.1:7103): connection refused; s4 (127.0.0.1:7104): connection refused; s5 (127.0.0.1:7105): connection refused; s6 (127.0.0.1:7106): connection refused"
	if why != want {
		t.Fatalf("got  %q\nwant %q", why, want)
	}
	if readQuorumWait(errors.New("volume main: not found")) != "" {
		t.Fatal("another failure read as a wait for a read quorum")
	}

	w := waitingWriter(t)
	w.setRetry("recovering: %s; trying again every second", why)
	w.setStep("taking the writer lease")
	w.setStep("recovering at epoch 10")
	if st := w.Status(); !strings.HasPrefix(st, "recovering: waiting for a read quorum of PG 2") {
		t.Fatalf("status during a retry: %q", st)
	}
	// A real wait of the new attempt replaces it.
	w.setStatus("waiting for the writer lease: held by w2")
	w.setStep("recovering at epoch 11")
	if st := w.Status(); st != "recovering at epoch 11" {
		t.Fatalf("status after a new wait and a step: %q", st)
	}
}
