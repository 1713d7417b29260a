package main

import (
	"os"
	"path/filepath"
	"strings"
)

// invocation is how to run this binary again, for the commands that hints
// print: the path it was started as ("./borealis", or "borealis" when the
// shell found it on PATH), or "go run ./cmd/borealis" under `go run`, whose
// binary is in a temporary build directory that is gone once it exits.
func invocation() string {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	return invocationOf(os.Args[0], exe)
}

func invocationOf(arg0, exe string) string {
	if goRunBinary(exe) || goRunBinary(arg0) {
		return "go run ./cmd/borealis"
	}
	if arg0 == "" {
		return "borealis"
	}
	return shellQuote(arg0)
}

// goRunBinary reports whether path is where `go run` puts the binary it
// builds: $GOTMPDIR/go-build.../b001/exe/NAME.
func goRunBinary(path string) bool {
	dir := filepath.Dir(path)
	if filepath.Base(dir) != "exe" {
		return false
	}
	work := filepath.Base(filepath.Dir(filepath.Dir(dir)))
	return strings.HasPrefix(work, "go-build")
}

// shellQuote quotes s for a POSIX shell when it needs it, so that a printed
// command can be pasted as it is.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./:=@%+,-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
