package e2e

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/anishathalye/porcupine"
)

// The register model of TestLinearizable: a few integer registers (rows of
// reg), each starting at 0, written by UPDATE and read by SELECT.

// linInput is an operation on register key: a write of value, or a read.
type linInput struct {
	key   int
	write bool
	value int64
}

// linOutput is what an operation answered: the value a read saw; unknown
// marks a write whose outcome the client never learned (it may or may not
// have been applied).
type linOutput struct {
	value   int64
	unknown bool
}

// linPending is the return time of an operation whose outcome is unknown:
// infinity, porcupine's treatment of a call that never returned (it may
// take effect at any point after its call, or never, which is the same as
// taking effect after every other operation).
const linPending = math.MaxInt64

var linModel = porcupine.Model{
	// Registers are independent: each key is checked on its own, which
	// keeps the search small.
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[int][]porcupine.Operation{}
		var keys []int
		for _, op := range history {
			k := op.Input.(linInput).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return int64(0) },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(int64), input.(linInput), output.(linOutput)
		if in.write {
			// A write always succeeds (an unknown one included: if it
			// linearizes at all, it set the value).
			return true, in.value
		}
		return out.value == st, st
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(linInput), output.(linOutput)
		switch {
		case in.write && out.unknown:
			return fmt.Sprintf("k%d := %d (outcome unknown)", in.key, in.value)
		case in.write:
			return fmt.Sprintf("k%d := %d", in.key, in.value)
		}
		return fmt.Sprintf("k%d -> %d", in.key, out.value)
	},
	DescribeState: func(state any) string { return fmt.Sprint(state.(int64)) },
}

// linW and linR build the operations of hand-made histories.
func linW(client, key int, value, call, ret int64) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: linInput{key: key, write: true, value: value}, Call: call,
		Output: linOutput{unknown: ret == linPending}, Return: ret}
}

func linR(client, key int, value, call, ret int64) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: linInput{key: key}, Call: call, Output: linOutput{value: value}, Return: ret}
}

// TestLinearizableModel checks the model and the modelling of unknown
// outcomes on tiny hand-made histories, so that TestLinearizable's checker
// is known to reject what it must (and to accept what it must).
func TestLinearizableModel(t *testing.T) {
	for _, c := range []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"a read after an acknowledged write sees it", []porcupine.Operation{
			linW(0, 0, 7, 0, 10), linR(1, 0, 7, 20, 30),
		}, porcupine.Ok},
		{"a stale read after an acknowledged write", []porcupine.Operation{
			linW(0, 0, 7, 0, 10), linR(1, 0, 0, 20, 30),
		}, porcupine.Illegal},
		{"a read concurrent with a write sees either value", []porcupine.Operation{
			linW(0, 0, 7, 0, 30), linR(1, 0, 0, 10, 20), linR(2, 0, 7, 15, 25),
		}, porcupine.Ok},
		{"reads go back to the old value", []porcupine.Operation{
			linW(0, 0, 7, 0, 100), linR(1, 0, 7, 10, 20), linR(1, 0, 0, 30, 40),
		}, porcupine.Illegal},
		{"a value never written", []porcupine.Operation{
			linW(0, 0, 7, 0, 10), linR(1, 0, 8, 20, 30),
		}, porcupine.Illegal},
		{"registers are independent", []porcupine.Operation{
			linW(0, 0, 7, 0, 10), linR(1, 1, 0, 20, 30), linR(1, 0, 7, 40, 50),
		}, porcupine.Ok},
		{"a write to another register does not leak", []porcupine.Operation{
			linW(0, 1, 7, 0, 10), linR(1, 0, 7, 20, 30),
		}, porcupine.Illegal},
		{"an unknown write may never apply", []porcupine.Operation{
			linW(0, 0, 7, 0, linPending), linR(1, 0, 0, 10, 20), linR(1, 0, 0, 1000, 1010),
		}, porcupine.Ok},
		{"an unknown write may apply long after its call", []porcupine.Operation{
			linW(0, 0, 7, 0, linPending), linR(1, 0, 0, 10, 20), linR(1, 0, 7, 1000, 1010),
		}, porcupine.Ok},
		{"an unknown write seen applied cannot be undone", []porcupine.Operation{
			linW(0, 0, 7, 0, linPending), linR(1, 0, 7, 10, 20), linR(1, 0, 0, 30, 40),
		}, porcupine.Illegal},
		{"an unknown write cannot apply before its call", []porcupine.Operation{
			linR(1, 0, 7, 0, 10), linW(0, 0, 7, 20, linPending),
		}, porcupine.Illegal},
		{"an unknown write is overwritten by a later acknowledged one, or applies after it", []porcupine.Operation{
			linW(0, 0, 7, 0, linPending), linW(1, 0, 8, 10, 20), linR(1, 0, 8, 30, 40), linR(1, 0, 7, 50, 60),
		}, porcupine.Ok},
		{"two acknowledged writes seen in both orders", []porcupine.Operation{
			linW(0, 0, 7, 0, 10), linW(1, 0, 8, 0, 10), linR(2, 0, 7, 20, 30), linR(2, 0, 8, 40, 50), linR(2, 0, 7, 60, 70),
		}, porcupine.Illegal},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := porcupine.CheckOperationsTimeout(linModel, c.ops, 0); got != c.want {
				t.Fatalf("porcupine says %s, want %s", got, c.want)
			}
		})
	}
}

// TestLinearizableModelVisualization: the failure path of TestLinearizable
// writes porcupine's visualization of a rejected history, operations that
// never return and fault annotations included.
func TestLinearizableModelVisualization(t *testing.T) {
	ops := []porcupine.Operation{
		linW(0, 0, 7, 0, linPending), linR(1, 0, 7, 10, 20), linW(2, 1, 9, 15, 25), linR(1, 0, 0, 30, 40),
	}
	res, info := porcupine.CheckOperationsVerbose(linModel, ops, 0)
	if res != porcupine.Illegal {
		t.Fatalf("porcupine says %s, want Illegal", res)
	}
	info.AddAnnotations([]porcupine.Annotation{{Tag: "kill", Start: 5, End: 12, Description: "SIGKILL writer"}})
	path := filepath.Join(t.TempDir(), "history.html")
	if err := porcupine.VisualizePath(linModel, info, path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Fatalf("the visualization at %s: %v %v", path, fi, err)
	}
}
