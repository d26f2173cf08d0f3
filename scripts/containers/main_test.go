package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// noDocker points testcontainers at a socket that does not exist and skips
// when a Docker daemon answers anyway (it falls back to the default socket).
func noDocker(t *testing.T) {
	t.Helper()
	t.Setenv("HOME", t.TempDir()) // no ~/.testcontainers.properties
	t.Setenv("DOCKER_HOST", "unix://"+filepath.Join(t.TempDir(), "no-docker.sock"))
	t.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
	if dockerAnswers(t.Context(), 5*time.Second) == nil {
		t.Skip("a Docker daemon answers on this machine")
	}
}

func TestNoDockerExits2WithOneLine(t *testing.T) {
	noDocker(t)
	var stderr bytes.Buffer
	marker := filepath.Join(t.TempDir(), "ran")
	code := run(t.Context(), []string{"--", "touch", marker}, &stderr)
	if code != 2 {
		t.Fatalf("exit %d, want 2; stderr:\n%s", code, stderr.String())
	}
	out := stderr.String()
	if strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "containers: no Docker daemon answers") || !strings.Contains(out, "scripts/services.sh") {
		t.Fatalf("stderr is not one line naming the problem and the way out:\n%s", out)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran without services")
	}
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "no command given"},
		{"only the separator", []string{"--"}, "no command given"},
		{"unknown flag", []string{"-nope", "--", "true"}, "flag provided but not defined"},
		{"bad timeout", []string{"-docker-timeout", "0s", "--", "true"}, "-docker-timeout must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := run(context.Background(), tc.args, &stderr); code != 2 {
				t.Fatalf("exit %d, want 2", code)
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("stderr %q does not say %q", stderr.String(), tc.want)
			}
		})
	}
}

func TestParseKeepsTheCommandsOwnFlags(t *testing.T) {
	c, err := parse([]string{"-dir", "/x", "--", "go", "test", "-run", "X", "./..."}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.command, " "); got != "go test -run X ./..." || c.dir != "/x" {
		t.Fatalf("command %q dir %q", got, c.dir)
	}
}

func TestRepoRootIsTheOrchestrixModule(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || modulePath(b) != rootModule {
		t.Fatalf("root %s: module %q, %v", root, modulePath(b), err)
	}
}

func TestRunCommandPassesEnvAndStatus(t *testing.T) {
	dir := t.TempDir()
	env := append(os.Environ(), "KAFKA_BROKERS=127.0.0.1:1")
	script := `test "$KAFKA_BROKERS" = 127.0.0.1:1 && test "$(pwd -P)" = "$(cd "$1" && pwd -P)" && exit 3`
	if code := runCommand([]string{"sh", "-c", script, "sh", dir}, dir, env, &bytes.Buffer{}); code != 3 {
		t.Fatalf("exit %d, want the command's 3", code)
	}
	var stderr bytes.Buffer
	if code := runCommand([]string{filepath.Join(dir, "missing")}, dir, env, &stderr); code != 2 || stderr.Len() == 0 {
		t.Fatalf("missing command: exit %d, stderr %q", code, stderr.String())
	}
}

func TestRedactURL(t *testing.T) {
	got := redactURL("postgres://orchestrix:secret@127.0.0.1:5432/orchestrix?sslmode=disable")
	if strings.Contains(got, "secret") || !strings.Contains(got, "orchestrix:xxxxx@127.0.0.1") {
		t.Fatal(got)
	}
}
