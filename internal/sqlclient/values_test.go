package sqlclient

import (
	"context"
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
)

func TestAppendReal(t *testing.T) {
	for _, tc := range []struct {
		x    float64
		want string
	}{
		{2, "2.0"},
		{3, "3.0"},
		{0, "0.0"},
		{math.Copysign(0, -1), "-0.0"},
		{-2.5, "-2.5"},
		{0.1, "0.1"},
		{0.30000000000000004, "0.30000000000000004"},
		{1e300, "1e+300"},
		{1e21, "1e+21"},
		{1e20, "100000000000000000000.0"},
		{123456.75, "123456.75"},
		{1e-6, "0.000001"},
		{1.5e-7, "1.5e-7"},
		{9007199254740993, "9007199254740992.0"},
		{math.MaxFloat64, "1.7976931348623157e+308"},
		{math.SmallestNonzeroFloat64, "5e-324"},
	} {
		if got := string(AppendReal([]byte("x"), tc.x)); got != "x"+tc.want {
			t.Errorf("AppendReal(%v) = %q; want %q", tc.x, got[1:], tc.want)
		}
	}
}

// Float parameters go out as REALs, 2.0 as 2.0 (encoding/json would send 2,
// an INTEGER to the server), float32s with their own digits; integers as
// they are, every digit kept.
func TestRealParamsKeepTheirPoint(t *testing.T) {
	s := newServer(t, 200, `{"columns":["1"],"types":["INTEGER"],"rows":[[1]]}`)
	params := []any{2.0, math.Copysign(0, -1), 0.1, float32(0.1), float32(2), 1e300, math.Inf(1), math.Inf(-1), float32(math.Inf(-1)),
		int64(2), int64(9007199254740993), uint64(math.MaxUint64), json.Number("2")}
	if _, err := s.client().Query(context.Background(), "SELECT 1", params...); err != nil {
		t.Fatal(err)
	}
	want := `"params":[2.0,-0.0,0.1,0.1,2.0,1e+300,{"real":"Infinity"},{"real":"-Infinity"},{"real":"-Infinity"},2,9007199254740993,18446744073709551615,2]`
	if !strings.Contains(string(s.body), want) {
		t.Fatalf("sent %s\nwant %s", s.body, want)
	}
	for _, nan := range []any{math.NaN(), float32(math.NaN())} {
		if _, err := s.client().Query(context.Background(), "SELECT ?", nan); err == nil || !strings.Contains(err.Error(), "parameter 1: NaN is not a SQL value") {
			t.Fatalf("NaN (%T): %v", nan, err)
		}
	}
}

// A number with a point or an exponent is a REAL (float64), whole or not,
// -0.0 with its sign; one without is an INTEGER (int64), exact beyond
// 2^53.
func TestRealValuesDecodeAsFloats(t *testing.T) {
	s := newServer(t, 200, `{"columns":["a","b","c","d","e","f","g","h","i"],"types":["REAL","REAL","INTEGER","INTEGER","REAL","INTEGER","REAL","ANY","ANY"],
		"rows":[[2.0,-0.0,2,9007199254740993,1e+300,-9223372036854775808,{"real":"-Infinity"},1E2,-0]]}`)
	rows, err := s.client().Query(context.Background(), "SELECT 1")
	if err != nil {
		t.Fatal(err)
	}
	want := []any{2.0, math.Copysign(0, -1), int64(2), int64(9007199254740993), 1e300, int64(math.MinInt64), math.Inf(-1), 100.0, int64(0)}
	if len(rows.Rows) != 1 || !reflect.DeepEqual(rows.Rows[0], want) {
		t.Fatalf("rows %#v\nwant %#v", rows.Rows, want)
	}
	if !math.Signbit(rows.Rows[0][1].(float64)) {
		t.Fatal("-0.0 lost its sign")
	}
	// Real writes what it reads.
	b, err := json.Marshal([]any{Real(2), Real(math.Copysign(0, -1)), Real(math.Inf(1))})
	if err != nil || string(b) != `[2.0,-0.0,{"real":"Infinity"}]` {
		t.Fatalf("Real: %s, %v", b, err)
	}
	if _, err := json.Marshal(Real(math.NaN())); err == nil {
		t.Fatal("Real(NaN) marshalled")
	}
}
