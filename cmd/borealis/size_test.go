package main

import "testing"

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{
		"4096": 4096, "1MiB": 1 << 20, "64MiB": 64 << 20, "10GiB": 10 << 30, "10gib": 10 << 30,
		"2 MiB": 2 << 20, "512K": 512 << 10, "1TiB": 1 << 40, "8B": 8,
	} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "-1MiB", "1.5GiB", "ten", "MiB", "99999999999TiB"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
	if got := formatSize(64 << 20); got != "64MiB" {
		t.Errorf("formatSize = %s", got)
	}
}
