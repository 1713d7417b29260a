// Package timerslack sets how late the kernel may fire a process's timers.
//
// A Go process that is busy in short bursts pays for the runtime's sysmon
// thread: whenever the process wakes from idle, sysmon polls with 20 µs
// sleeps until the process has been busy for a while, and every one of those
// sleeps is a context switch. A storage node wakes for every Append request,
// so it never gets past that phase. On a virtual machine, where a sleep and a
// context switch cost several microseconds of CPU each, that polling is a
// large share of a node's CPU. With a timer slack of a millisecond the kernel
// lets those sleeps run long, so the polling wakes the process about fifty
// times less often. No wakeup that I/O causes is delayed: only timers fire
// up to the slack late.
//
// The slack of a thread is inherited by the threads and processes it
// creates, and kept across exec, but the runtime starts its threads before
// main runs. So Ensure re-executes the program once with the slack set on
// its first thread, from which every later thread inherits it.
package timerslack

import "time"

// Default is the slack the daemons run with.
const Default = time.Millisecond

// reexecEnv marks a process that has already re-executed itself to get its
// slack, with its PID, so that it never does it twice even if the kernel did
// not keep the value.
const reexecEnv = "BOREALIS_TIMER_SLACK_REEXEC"
