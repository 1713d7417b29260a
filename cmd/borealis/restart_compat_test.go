package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// TestRestartTalksToAnEarlierUp: an `up` started from an earlier build
// (still running after a rebuild) answers a restart with one line, "ok PID"
// or "error: ...", not JSON events; restart reports that as it is.
func TestRestartTalksToAnEarlierUp(t *testing.T) {
	for _, tc := range []struct{ reply, want string }{
		{"ok 4242\n", "s3 restarted, pid 4242"},
		{"error: s3 is running; stop it before restarting it\n", "s3 is running; stop it before restarting it"},
	} {
		dir := t.TempDir()
		lis, err := net.Listen("unix", filepath.Join(dir, upSocketName))
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			if line, _ := bufio.NewReader(c).ReadString('\n'); line != "restart s3\n" {
				fmt.Fprintf(c, "error: unexpected request %q\n", line)
				return
			}
			fmt.Fprint(c, tc.reply)
		}()
		cmd := restartCmd()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetArgs([]string{"s3", "--dir", dir})
		err = cmd.Execute()
		lis.Close()
		got := out.String()
		if err != nil {
			got = err.Error()
		}
		if !strings.Contains(got, tc.want) {
			t.Errorf("reply %q: restart said %q (err %v), want %q", tc.reply, out.String(), err, tc.want)
		}
	}
}
