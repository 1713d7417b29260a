package main

import "testing"

// The hints `up` prints name the binary as it was run, so they work when
// pasted: `go run`'s temporary binary is named by the command that builds
// it again, and a path with spaces is quoted for the shell.
func TestInvocationOf(t *testing.T) {
	for _, tc := range []struct{ arg0, exe, want string }{
		{"/tmp/go-build2795511123/b001/exe/borealis", "/tmp/go-build2795511123/b001/exe/borealis", "go run ./cmd/borealis"},
		{"/home/u/.cache/tmp/go-build1/b001/exe/borealis", "/home/u/.cache/tmp/go-build1/b001/exe/borealis", "go run ./cmd/borealis"},
		{"./borealis", "/home/u/borealis/borealis", "./borealis"},
		{"borealis", "/usr/local/bin/borealis", "borealis"},
		{"/opt/my tools/borealis", "/opt/my tools/borealis", "'/opt/my tools/borealis'"},
		{"/tmp/exe/borealis", "/tmp/exe/borealis", "/tmp/exe/borealis"},
	} {
		if got := invocationOf(tc.arg0, tc.exe); got != tc.want {
			t.Errorf("invocationOf(%q, %q) = %q, want %q", tc.arg0, tc.exe, got, tc.want)
		}
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"./borealis-data":  "./borealis-data",
		"/tmp/a b":         "'/tmp/a b'",
		"it's":             `'it'\''s'`,
		"":                 "''",
		"/tmp/x$HOME":      "'/tmp/x$HOME'",
		"127.0.0.1:7107":   "127.0.0.1:7107",
		"SELECT 1":         "'SELECT 1'",
		"--dir=/tmp/bup/1": "--dir=/tmp/bup/1",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %q, want %q", in, got, want)
		}
	}
}
