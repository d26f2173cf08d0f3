// Command containers runs a command against Kafka and PostgreSQL started in
// Docker containers by testcontainers-go, for machines that have Docker and
// not scripts/services.sh's Java, Maven and Debian PostgreSQL.
//
// It is a module of its own so that the orchestrix module does not require
// testcontainers-go or Docker's client (moby): importing orchestrix must not
// download them.
//
//	go -C scripts/containers run . -- go test ./...
//	go -C scripts/containers run . -- scripts/test.sh -run Conformance
//	ORCHESTRIX_SERVICES=docker scripts/test.sh    # the same, through the test script
//
// It starts a single-node Kafka (KRaft, image apache/kafka:4.1.0, on a free
// port of 127.0.0.1) and a PostgreSQL 15 (postgres:15-alpine), exports
// KAFKA_BROKERS and DATABASE_URL to the command, runs it from the repository
// root (the nearest directory above the working directory whose go.mod is the
// orchestrix module; -dir overrides it), removes both containers, and exits
// with the command's status. SIGINT and SIGTERM are passed on to the command;
// the containers are removed after it ends (and by testcontainers' reaper if
// this program is killed).
//
// Exit status: the command's; 2 with one line on stderr when no Docker
// daemon answers or the arguments are wrong; 1 when a container does not
// start.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/testcontainers/testcontainers-go"
)

// Images started by default; -kafka-image and -postgres-image override them.
const (
	defaultKafkaImage    = "apache/kafka:4.1.0"
	defaultPostgresImage = "postgres:15-alpine"
	rootModule           = "github.com/orchestrix/orchestrix"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stderr))
}

// config is what the flags set.
type config struct {
	dir           string
	kafkaImage    string
	postgresImage string
	dockerTimeout time.Duration
	command       []string
}

// errUsage marks a bad command line (exit 2).
var errUsage = errors.New("containers: usage")

func parse(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("containers", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.dir, "dir", "", "directory the command runs in (default: the orchestrix repository root above the working directory)")
	fs.StringVar(&c.kafkaImage, "kafka-image", defaultKafkaImage, "Kafka image (KRaft, the apache/kafka layout)")
	fs.StringVar(&c.postgresImage, "postgres-image", defaultPostgresImage, "PostgreSQL image")
	fs.DurationVar(&c.dockerTimeout, "docker-timeout", 10*time.Second, "how long to wait for the Docker daemon to answer")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: go -C scripts/containers run . [flags] -- command [args...]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, fmt.Errorf("%w: %w", errUsage, err)
	}
	c.command = fs.Args()
	if len(c.command) > 0 && c.command[0] == "--" {
		c.command = c.command[1:]
	}
	if len(c.command) == 0 {
		return c, fmt.Errorf("%w: no command given (go -C scripts/containers run . -- go test ./...)", errUsage)
	}
	if c.dockerTimeout <= 0 {
		return c, fmt.Errorf("%w: -docker-timeout must be positive, got %s", errUsage, c.dockerTimeout)
	}
	return c, nil
}

// run is main without os.Exit, so tests can call it.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	c, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	dir := c.dir
	if dir == "" {
		if dir, err = repoRoot(); err != nil {
			fmt.Fprintln(stderr, "containers:", err)
			return 2
		}
	}
	if err := dockerAnswers(ctx, c.dockerTimeout); err != nil {
		fmt.Fprintf(stderr, "containers: no Docker daemon answers (%v); use `eval \"$(scripts/services.sh start)\"` instead\n", oneLine(err))
		return 2
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	env, cleanup, err := start(ctx, c, stderr)
	defer cleanup()
	if err != nil {
		fmt.Fprintln(stderr, "containers:", oneLine(err))
		return 1
	}
	stop() // from here on a signal goes to the command; we wait for it
	return runCommand(c.command, dir, env, stderr)
}

// dockerAnswers reports whether a Docker daemon answers within timeout.
// testcontainers may panic when it cannot find a host; that is a no too.
func dockerAnswers(ctx context.Context, timeout time.Duration) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("%v", r)
			}
		}()
		p, err := testcontainers.NewDockerProvider()
		if err == nil {
			err = p.Health(ctx) // closes p
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("no answer within %s", timeout)
	}
}

// start starts both containers and returns the command's environment and a
// function that removes whatever was started.
func start(ctx context.Context, c config, stderr io.Writer) ([]string, func(), error) {
	var started []testcontainers.Container
	cleanup := func() {
		for i := len(started) - 1; i >= 0; i-- {
			if err := testcontainers.TerminateContainer(started[i]); err != nil {
				fmt.Fprintln(stderr, "containers: remove:", oneLine(err))
			}
		}
	}
	fmt.Fprintln(stderr, "containers: starting", c.postgresImage, "and", c.kafkaImage)
	pg, dbURL, err := startPostgres(ctx, c.postgresImage)
	if pg != nil {
		started = append(started, pg)
	}
	if err != nil {
		return nil, cleanup, fmt.Errorf("postgres: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, cleanup, fmt.Errorf("kafka: %w", err)
	}
	kafka, brokers, err := startKafka(ctx, c.kafkaImage, port)
	if kafka != nil {
		started = append(started, kafka)
	}
	if err != nil {
		return nil, cleanup, fmt.Errorf("kafka: %w", err)
	}
	fmt.Fprintf(stderr, "containers: KAFKA_BROKERS=%s DATABASE_URL=%s\n", brokers, redactURL(dbURL))
	env := append(os.Environ(), "KAFKA_BROKERS="+brokers, "DATABASE_URL="+dbURL)
	return env, cleanup, nil
}

// freePort returns a TCP port of 127.0.0.1 free a moment ago. Kafka must
// advertise the host port it is reached on, so the port is chosen before
// the container starts rather than mapped at random by Docker.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// runCommand runs command in dir with env and returns its exit status.
func runCommand(command []string, dir string, env []string, stderr io.Writer) int {
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(stderr, "containers:", err)
		return 2
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case err := <-done:
			var exit *exec.ExitError
			switch {
			case err == nil:
				return 0
			case errors.As(err, &exit) && exit.ExitCode() >= 0:
				return exit.ExitCode()
			default:
				fmt.Fprintln(stderr, "containers:", err)
				return 1
			}
		}
	}
}

// repoRoot is the nearest directory at or above the working directory whose
// go.mod declares the orchestrix module.
func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && modulePath(b) == rootModule {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("no go.mod of %s at or above %s; pass -dir", rootModule, wd)
		}
	}
}

// modulePath returns the module path a go.mod declares.
func modulePath(gomod []byte) string {
	for line := range strings.Lines(string(gomod)) {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}

// oneLine keeps an error to its first line.
func oneLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// redactURL hides the password of a URL for printing.
func redactURL(u string) string {
	at := strings.LastIndex(u, "@")
	scheme := strings.Index(u, "://")
	if at < 0 || scheme < 0 || scheme > at {
		return u
	}
	userinfo := u[scheme+3 : at]
	if user, _, ok := strings.Cut(userinfo, ":"); ok {
		return u[:scheme+3] + user + ":xxxxx" + u[at:]
	}
	return u
}
