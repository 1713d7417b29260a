//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package control

import "os"

// lockDir is a no-op here; etcd's own lock on its database still keeps a
// second server out (by blocking).
func lockDir(path string) (*os.File, error) { return nil, nil }

func unlockDir(f *os.File) {}
