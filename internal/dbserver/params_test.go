package dbserver

import (
	"encoding/json"
	"math"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

func raw(vals ...string) []json.RawMessage {
	out := make([]json.RawMessage, len(vals))
	for i, v := range vals {
		out[i] = json.RawMessage(v)
	}
	return out
}

// decodedParams decodes a /v1/query body with these parameters as the
// server does (decodeBody, then args).
func decodedParams(t *testing.T, vals ...string) ([]any, *APIError) {
	t.Helper()
	var q queryBody
	body := `{"sql": "SELECT 1", "params": [` + strings.Join(vals, ", ") + `]}`
	if err := decodeBody([]byte(body), &q); err != nil {
		t.Fatalf("decodeBody(%s): %v", body, err)
	}
	return q.args()
}

// JSON parameters become the SQLite values the API promises, and anything
// else is refused as bad_parameter naming the parameter: an integer beyond
// 64 bits too, which as a REAL would lose its low digits.
func TestParams(t *testing.T) {
	got, e := decodedParams(t, `1`, `-9223372036854775808`, `9223372036854775807`, `2.5`, `1e3`, `9.3e18`, `"x"`, `"a\"b"`, `true`, `null`, `{"base64":"AAE="}`, `{"real": "-Infinity"}`)
	if e != nil {
		t.Fatal(e)
	}
	want := []any{int64(1), int64(math.MinInt64), int64(math.MaxInt64), 2.5, 1000.0, 9.3e18, "x", `a"b`, true, nil, []byte{0, 1}, math.Inf(-1)}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("params: %#v, want %#v", got, want)
	}
	for _, bad := range []string{`[1]`, `{"x":1}`, `{"base64":"%%"}`, `{"base64":"AA==","y":1}`, `{"real": "NaN"}`, `1e999`,
		`9223372036854775808`, `-9223372036854775809`, `123456789012345678901234567890`} {
		_, e := decodedParams(t, `1`, bad)
		if e == nil || e.Code != CodeBadParameter || e.Status != http.StatusBadRequest {
			t.Fatalf("parameter %s: %+v, want bad_parameter", bad, e)
		}
		if !strings.HasPrefix(e.Message, "parameter 2") {
			t.Fatalf("parameter %s: message %q does not name parameter 2", bad, e.Message)
		}
		if strings.Trim(bad, "-0123456789") == "" && !strings.Contains(e.Message, "64-bit range") {
			t.Fatalf("integer parameter %s: message %q does not say it is beyond 64 bits", bad, e.Message)
		}
	}
	// A body that is not JSON never reaches the parameters.
	var q queryBody
	if err := decodeBody([]byte(`{"sql": "SELECT ?", "params": [nope]}`), &q); err == nil {
		t.Fatal("decodeBody took a parameter that is not JSON")
	}
}
