package testenv

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
)

// ChildEnv is the variable that makes a re-executed test binary run its
// program's main instead of the tests (see [ChildMain], [StartChild]).
const ChildEnv = "ORCHESTRIX_TEST_CHILD"

// ChildMain runs main and exits when the test binary was started by
// [StartChild]; otherwise it returns at once. Call it first in TestMain:
//
//	func TestMain(m *testing.M) {
//		testenv.ChildMain(main)
//		os.Exit(m.Run())
//	}
func ChildMain(main func()) {
	if os.Getenv(ChildEnv) != "1" {
		return
	}
	main()
	os.Exit(0)
}

// OwnProcessGroup makes the child cmd starts the leader of a process
// group of its own. Use it for every child a test stops with SIGSTOP.
// When the process group of the test binary becomes orphaned while one
// of its members is stopped — the shell or job runner that started `go
// test` exits, as when a flake hunt is started in the background — the
// kernel sends SIGHUP and SIGCONT to every process of that group (POSIX
// job control): a "hung" leader in a failover test was resumed 1.85 s
// into its lease that way. A child in a group of its own, whose parent
// (the test binary) is in another group of the same session, is not
// orphaned while the test runs.
func OwnProcessGroup(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
}

// SyncBuffer is an io.Writer that several goroutines may write at once,
// read back with String.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Await waits until what was written holds n occurrences of substr,
// failing the test after within.
func (s *SyncBuffer) Await(t testing.TB, substr string, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for strings.Count(s.String(), substr) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %q not written within %s:\n%s", n, substr, within, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Child is a program run as a child process: the test binary re-executed
// with [ChildEnv] set, so that its TestMain runs main (see [ChildMain])
// with the arguments given. Tests stop it the way an orchestrator does
// (SIGTERM, [Child.Stop]) or kill it (SIGKILL, [Child.Kill]); a child
// still running when the test ends is killed.
type Child struct {
	// Cmd is the child's command, started.
	Cmd *exec.Cmd
	// Out holds what the child wrote, stdout and stderr together.
	Out *SyncBuffer

	stdout *SyncBuffer // stdout alone, for Line and Find
	done   chan struct{}
	err    error // the exit, once done is closed
}

// StartChild starts the test binary as a child running main with args
// (as os.Args[1:]). env is added to the test's environment (KEY=value;
// "KAFKA_BROKERS=" keeps the real services out of a child meant to run
// on its own).
func StartChild(t testing.TB, env []string, args ...string) *Child {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), ChildEnv+"=1"), env...)
	c := &Child{Cmd: cmd, Out: &SyncBuffer{}, stdout: &SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = multiWriter{c.stdout, c.Out}, c.Out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the child: %v", err)
	}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-c.done
	})
	return c
}

// multiWriter writes to each of its writers; unlike io.MultiWriter it
// needs no error handling, as its writers are buffers.
type multiWriter []*SyncBuffer

func (m multiWriter) Write(p []byte) (int, error) {
	for _, w := range m {
		_, _ = w.Write(p)
	}
	return len(p), nil
}

// Server is a child that serves: it printed the address of its health
// endpoints and, when it started one, of its embedded broker.
type Server struct {
	*Child
	// Listen is the host:port of its health endpoints (/livez, /readyz).
	Listen string
	// Brokers is its embedded broker's address; empty when it printed
	// none.
	Brokers string
}

// ServerLines tell a serving child's status lines: the first submatch of
// Listen is the host:port it listens on, that of Brokers (optional) the
// address of the embedded broker it started.
type ServerLines struct {
	Listen, Brokers *regexp.Regexp
}

// StartServer starts a child (as [StartChild]) and waits, at most
// within, until it prints the line with its address.
func StartServer(t testing.TB, lines ServerLines, within time.Duration, env []string, args ...string) *Server {
	t.Helper()
	c := StartChild(t, env, args...)
	s := &Server{Child: c, Listen: c.Line(t, lines.Listen, within)[1]}
	if lines.Brokers != nil {
		if m := c.Find(lines.Brokers); m != nil {
			s.Brokers = m[1]
		}
	}
	return s
}

// Ready waits until the server's /readyz answers 200, failing the test
// after within.
func (s *Server) Ready(t testing.TB, within time.Duration) {
	t.Helper()
	s.AwaitOK(t, "http://"+s.Listen+"/readyz", within)
}

// Get fetches path (such as /livez) from the server and returns the
// status code and body, failing the test when it cannot.
func (s *Server) Get(t testing.TB, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + s.Listen + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(body)
}

// Done is closed when the child has exited; [Child.Err] then says how.
func (c *Child) Done() <-chan struct{} { return c.done }

// Err is the child's exit (nil: status 0), once [Child.Done] is closed.
func (c *Child) Err() error {
	<-c.done
	return c.err
}

// Find returns the submatches of the first line the child printed on
// stdout that re matches, or nil if none so far.
func (c *Child) Find(re *regexp.Regexp) []string {
	for _, l := range strings.Split(c.stdout.String(), "\n") {
		if m := re.FindStringSubmatch(l); m != nil {
			return m
		}
	}
	return nil
}

// Line waits until the child prints a line on stdout that re matches and
// returns its submatches. It fails the test when the child exits first or
// within passes.
func (c *Child) Line(t testing.TB, re *regexp.Regexp, within time.Duration) []string {
	t.Helper()
	deadline := time.After(within)
	for {
		if m := c.Find(re); m != nil {
			return m
		}
		select {
		case <-c.done:
			if m := c.Find(re); m != nil {
				return m
			}
			t.Fatalf("the child exited (%v) before printing a line matching %s:\n%s", c.err, re, c.Out)
		case <-deadline:
			t.Fatalf("the child printed no line matching %s within %s:\n%s", re, within, c.Out)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// AwaitOK waits until a GET of url answers 200 (a /readyz), failing the
// test after within.
func (c *Child) AwaitOK(t testing.TB, url string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-c.done:
			t.Fatalf("the child exited (%v) before %s answered 200:\n%s", c.err, url, c.Out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not 200 within %s (%v):\n%s", url, within, err, c.Out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop sends SIGTERM and returns the child's exit (nil: status 0). It
// fails the test when the child is still running after within.
func (c *Child) Stop(t testing.TB, within time.Duration) error {
	t.Helper()
	if err := c.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		select {
		case <-c.done:
			return c.err
		default:
			t.Fatalf("SIGTERM: %v", err)
		}
	}
	select {
	case <-c.done:
		return c.err
	case <-time.After(within):
		t.Fatalf("the child still runs %s after SIGTERM:\n%s", within, c.Out)
		return nil
	}
}

// StopClean sends SIGTERM and fails the test unless the child exits with
// status 0 within the bound and, when want is not empty, has printed want.
func (c *Child) StopClean(t testing.TB, within time.Duration, want string) {
	t.Helper()
	if err := c.Stop(t, within); err != nil || !strings.Contains(c.Out.String(), want) {
		t.Fatalf("the child after SIGTERM: exit %v (want 0 and output with %q):\n%s", err, want, c.Out)
	}
}

// Kill kills the child with SIGKILL (kill -9) and waits until it is gone.
func (c *Child) Kill(t testing.TB) {
	t.Helper()
	if err := c.Cmd.Process.Kill(); err != nil {
		select {
		case <-c.done:
			return
		default:
			t.Fatalf("SIGKILL: %v", err)
		}
	}
	<-c.done
}

// DropTopicsAtEnd deletes, when the test ends, every topic whose name
// starts with prefix+"." — the topics a child made for its context (serve
// --init, a self-check run). Errors are ignored: the broker may be gone.
func DropTopicsAtEnd(t testing.TB, seeds []string, prefix string) {
	t.Cleanup(func() {
		adm := kadm.NewClient(Client(t, seeds))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		list, err := adm.ListTopics(ctx)
		if err != nil {
			return
		}
		var mine []string
		for _, n := range list.Names() {
			if strings.HasPrefix(n, prefix+".") {
				mine = append(mine, n)
			}
		}
		_, _ = adm.DeleteTopics(ctx, mine...)
	})
}
