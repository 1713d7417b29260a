package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/borealis-db/borealis/internal/cluster"
)

// startUpCluster runs `borealis up --dir dir args...` (bin is this binary)
// and waits until it has written cluster.json, whose path it returns
// (every component is ready then). stop ends up, and with it the cluster;
// it is returned even with an error, for what started.
func startUpCluster(ctx context.Context, bin string, progress io.Writer, dir string, args ...string) (clusterFile string, stop func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	logPath := filepath.Join(dir, "up.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return "", nil, err
	}
	fmt.Fprintf(progress, "starting a cluster with `up %s` in %s (its output: %s)\n", strings.Join(args, " "), dir, logPath)
	cmd := exec.Command(bin, append([]string{"up", "--dir", dir}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C reaches the benchmark, which stops up
	// (and so the cluster) in order. If the benchmark dies, up stops too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return "", nil, err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	stop = func() {
		fmt.Fprintln(progress, "stopping the cluster")
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	clusterFile = filepath.Join(dir, clusterFileName)
	start := time.Now()
	err = pollFor(ctx, 3*time.Minute, "the cluster to come up", func(context.Context) error {
		select {
		case <-exited:
			tail, _ := cluster.TailLines(logPath, 0, 20)
			return fmt.Errorf("`up` exited before the cluster was up; the end of %s:\n  %s", logPath, strings.Join(tail, "\n  "))
		default:
		}
		_, err := cluster.ReadFile(clusterFile)
		return err
	})
	if err != nil {
		return clusterFile, stop, err
	}
	fmt.Fprintf(progress, "cluster up in %s\n", since(start))
	return clusterFile, stop, nil
}
