package sqlclient

import (
	"bytes"
	"errors"
	"math"
	"strconv"
)

// AppendReal appends the JSON text of the finite REAL x, as the API writes
// it, so that it reads back as a REAL and never as an INTEGER: the shortest
// decimal that reads back as x, laid out as encoding/json lays out a
// float64 (with an exponent from 1e21 up and below 1e-6), and with ".0"
// when that has neither a point nor an exponent. 2.0 is 2.0, -0.0 is -0.0,
// 0.1 is 0.1, 1e300 is 1e+300.
func AppendReal(b []byte, x float64) []byte {
	return appendReal(b, x, 64)
}

// appendReal is AppendReal of a float64 (bits 64) or of a float32 (bits
// 32: its own shortest digits, 0.1 for float32(0.1)).
func appendReal(b []byte, x float64, bits int) []byte {
	abs := math.Abs(x)
	format := byte('f')
	if abs != 0 {
		if bits == 64 && (abs < 1e-6 || abs >= 1e21) ||
			bits == 32 && (float32(abs) < 1e-6 || float32(abs) >= 1e21) {
			format = 'e'
		}
	}
	start := len(b)
	b = strconv.AppendFloat(b, x, format, -1, bits)
	if format == 'e' {
		// 1e-07 becomes 1e-7, as in encoding/json.
		if n := len(b); n-start >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
		return b
	}
	if bytes.IndexByte(b[start:], '.') < 0 {
		b = append(b, '.', '0')
	}
	return b
}

// Real is a REAL in the API's JSON form, a parameter or a value of a row:
// a number with a point or an exponent (AppendReal), and the infinities,
// which JSON numbers cannot carry, as {"real":"Infinity"} and
// {"real":"-Infinity"}. NaN is no SQL value: MarshalJSON refuses it.
type Real float64

// MarshalJSON writes r in the API's form.
func (r Real) MarshalJSON() ([]byte, error) {
	return marshalReal(float64(r), 64)
}

// real32 is a float32 parameter: Real with the float32's own digits.
type real32 float32

func (r real32) MarshalJSON() ([]byte, error) {
	return marshalReal(float64(r), 32)
}

var errNaN = errors.New("NaN is not a SQL value")

func marshalReal(x float64, bits int) ([]byte, error) {
	switch {
	case math.IsInf(x, 1):
		return []byte(`{"real":"Infinity"}`), nil
	case math.IsInf(x, -1):
		return []byte(`{"real":"-Infinity"}`), nil
	case math.IsNaN(x):
		return nil, errNaN
	}
	return appendReal(make([]byte, 0, 24), x, bits), nil
}
