package testenv

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Roles of the re-executed test binary in TestOwnProcessGroup.
const (
	pgrpRoleEnv = "ORCHESTRIX_TESTENV_PGRP_ROLE"
	pgrpOwnEnv  = "ORCHESTRIX_TESTENV_PGRP_OWN"
)

func TestMain(m *testing.M) {
	switch os.Getenv(pgrpRoleEnv) {
	case "launcher":
		os.Exit(pgrpLauncher())
	case "holder":
		os.Exit(pgrpHolder())
	}
	os.Exit(m.Run())
}

// pgrpLauncher plays the shell that starts `go test` in the background:
// it starts the holder in its own process group, passes on the holder's
// line, and exits, which orphans the group.
func pgrpLauncher() int {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), pgrpRoleEnv+"=holder")
	out, err := cmd.StdoutPipe()
	if err != nil || cmd.Start() != nil {
		return 1
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return 1
	}
	fmt.Print(line)
	return 0
}

// pgrpHolder plays a test binary under nohup: SIGHUP ignored, it starts
// a child (in its own group when pgrpOwnEnv is set), stops it with
// SIGSTOP, prints both PIDs and waits to be killed.
func pgrpHolder() int {
	signal.Ignore(syscall.SIGHUP)
	cmd := exec.Command("sleep", "60")
	if os.Getenv(pgrpOwnEnv) == "1" {
		OwnProcessGroup(cmd)
	}
	if err := cmd.Start(); err != nil {
		return 1
	}
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		return 1
	}
	// The kernel counts a process as stopped once it has taken the
	// signal, not when the signal is sent.
	for procState(cmd.Process.Pid) != "T" {
		time.Sleep(time.Millisecond)
	}
	fmt.Printf("%d %d\n", os.Getpid(), cmd.Process.Pid)
	time.Sleep(time.Minute)
	return 0
}

// procState returns the state letter of /proc/<pid>/stat ("T": stopped),
// or "" when there is no such process.
func procState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return f[0]
}

// TestOwnProcessGroup: a stopped child stays stopped when the process
// group of the process that started it becomes orphaned, if it was
// started with OwnProcessGroup; in its parent's group it is resumed by
// the kernel's SIGCONT. (A flake hunt started in the background saw its
// SIGSTOPped relay leader resumed when the launching shell exited.)
func TestOwnProcessGroup(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	if _, err := exec.LookPath("sleep"); err != nil {
		t.Skip("no sleep program")
	}
	for _, tc := range []struct {
		name, own, want string
	}{
		{"own group", "1", "T"},
		{"parent's group", "0", "S"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			launcher := exec.Command(os.Args[0], "-test.run=^$")
			launcher.Env = append(os.Environ(), pgrpRoleEnv+"=launcher", pgrpOwnEnv+"="+tc.own)
			OwnProcessGroup(launcher) // the background job's group
			out, err := launcher.Output()
			if err != nil {
				t.Fatalf("launcher: %v", err)
			}
			var holder, child int
			if _, err := fmt.Sscan(string(out), &holder, &child); err != nil {
				t.Fatalf("launcher printed %q: %v", out, err)
			}
			t.Cleanup(func() {
				_ = syscall.Kill(child, syscall.SIGKILL)
				_ = syscall.Kill(holder, syscall.SIGKILL)
			})
			// The launcher has exited: the kernel has signalled the
			// orphaned group, if it does, by now.
			time.Sleep(200 * time.Millisecond)
			if got := procState(child); got != tc.want {
				t.Errorf("child state %q after its launcher exited, want %q", got, tc.want)
			}
		})
	}
}
