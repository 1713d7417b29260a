package dbserver

import (
	"encoding/json"
	"math"
	"net/http"
	"reflect"
	"testing"
)

func raw(vals ...string) []json.RawMessage {
	out := make([]json.RawMessage, len(vals))
	for i, v := range vals {
		out[i] = json.RawMessage(v)
	}
	return out
}

// JSON parameters become the SQLite values the API promises, and anything
// else is refused as bad_parameter naming the parameter.
func TestParams(t *testing.T) {
	got, e := params(raw(`1`, `-9223372036854775808`, `9223372036854775807`, `2.5`, `1e3`, `"x"`, `true`, `null`, `{"base64":"AAE="}`))
	if e != nil {
		t.Fatal(e)
	}
	want := []any{int64(1), int64(math.MinInt64), int64(math.MaxInt64), 2.5, 1000.0, "x", true, nil, []byte{0, 1}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("params: %#v, want %#v", got, want)
	}
	for _, bad := range []string{`[1]`, `{"x":1}`, `{"base64":"%%"}`, `{"base64":"AA==","y":1}`, `1e999`, `nope`} {
		_, e := params(raw(`1`, bad))
		if e == nil || e.Code != CodeBadParameter || e.Status != http.StatusBadRequest {
			t.Fatalf("parameter %s: %+v, want bad_parameter", bad, e)
		}
		if want := "parameter 2"; len(e.Message) < len(want) || e.Message[:len(want)] != want {
			t.Fatalf("parameter %s: message %q does not name parameter 2", bad, e.Message)
		}
	}
}
