package main

import (
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/borealis-db/borealis/internal/timerslack"
)

// timerSlackEnv carries --timer-slack to the processes up and bench start.
const timerSlackEnv = "BOREALIS_TIMER_SLACK"

// slackCommands are the commands that run long and busy: the daemons, and
// the commands that start them (whose children inherit the slack) or drive
// them with load.
var slackCommands = map[string]bool{"up": true, "storage": true, "control": true, "db": true, "router": true, "bench": true}

// addTimerSlack gives root the --timer-slack flag, applied to slackCommands
// before they start anything (see timerslack).
func addTimerSlack(root *cobra.Command) {
	var slack time.Duration
	def := timerslack.Default
	if v := os.Getenv(timerSlackEnv); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			def = d
		} else {
			slog.Warn("ignoring "+timerSlackEnv+": not a duration", "value", v)
		}
	}
	root.PersistentFlags().DurationVar(&slack, "timer-slack", def,
		"how late the kernel may fire this process's timers, so that the Go runtime's short polling sleeps wake it less often (Linux; the daemons, up and bench re-execute themselves once to get it, and the processes up and bench start get the same value; 0 keeps what the process inherited)")
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		top := cmd
		for top.HasParent() && top.Parent() != root {
			top = top.Parent()
		}
		if !slackCommands[top.Name()] {
			return nil
		}
		// The processes this one starts (up's and bench's) take the same
		// value as their default.
		os.Setenv(timerSlackEnv, slack.String())
		if err := timerslack.Ensure(slack); err != nil {
			// Only a cost: the process runs as it would have.
			slog.Warn("running without the timer slack", "want", slack, "err", err)
		}
		return nil
	}
}
