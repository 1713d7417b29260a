//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package control

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// lockDir takes an exclusive flock on path. A lock held elsewhere is waited
// for up to a second (a server that just stopped releases its lock a moment
// after Close returns), then refused.
func lockDir(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("control: cannot open the etcd lock file %s: %w", path, err)
	}
	deadline := time.Now().Add(time.Second)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("control: cannot lock %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("control: the etcd data directory of %s is in use by another running control plane (it holds %s); stop that one first, or use another --dir", path[:len(path)-len(embeddedLockFile)-1], path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func unlockDir(f *os.File) {
	if f != nil {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}
}
