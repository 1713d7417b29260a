package main

import (
	"testing"

	"github.com/borealis-db/borealis/internal/dbserver"
)

// borealis db warns of a --max-body that refuses the largest value: one
// below the smallest request that stores it, JSON and statement included,
// not only below the value in base64 (44,739,244 bytes fit the base64 but
// not the request).
func TestMaxBodyWarning(t *testing.T) {
	need := dbserver.LargestValueBody()
	for _, tc := range []struct {
		maxBody int64
		warn    bool
	}{
		{44_739_244, true},
		{need - 1, true},
		{need, false},
		{dbserver.DefaultMaxBodyBytes, false},
		{1 << 20, true},
	} {
		if got, small := maxBodyTooSmall(tc.maxBody); small != tc.warn || got != need {
			t.Errorf("maxBodyTooSmall(%d) = %d, %v; want %d, %v", tc.maxBody, got, small, need, tc.warn)
		}
	}
}
