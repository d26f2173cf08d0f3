package esdbtest_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/stores/esdb/esdbtest"
)

const pipHint = "python3 -m pip install -r stores/esdb/esdbtest/pyclient/requirements.txt"

// TestOfficialPythonClient runs pyclient/session.py, a scripted session of
// the official EventSourcingDB Python client, against the double: a client
// nobody here wrote proves the double speaks the documented protocol, the
// v2 API (the client settles on it) and, on a double made WithV1Only, the
// v1 API. It
// skips without python3 or the eventsourcingdb module, and fails instead
// when testenv.Required() is true.
func TestOfficialPythonClient(t *testing.T) {
	missing := func(format string, args ...any) {
		t.Helper()
		if testenv.Required() {
			t.Fatalf(format+" (and %s=1)", append(args, testenv.RequireEnv)...)
		}
		t.Skipf(format, args...)
	}
	python, err := exec.LookPath("python3")
	if err != nil {
		missing("python3 not found: install Python 3.11+ and run %s", pipHint)
	}
	out, err := exec.Command(python, "-c", "import importlib.metadata as m, eventsourcingdb; print(m.version('eventsourcingdb'))").CombinedOutput()
	if err != nil {
		missing("the eventsourcingdb Python module is missing (%v: %s); run %s", err, strings.TrimSpace(string(out)), pipHint)
	}
	installed := strings.TrimSpace(string(out))
	if req, err := os.ReadFile(filepath.Join("pyclient", "requirements.txt")); err == nil && !strings.Contains(string(req), "eventsourcingdb=="+installed) {
		t.Logf("installed eventsourcingdb %s is not the version pinned in pyclient/requirements.txt", installed)
	}

	const token = "session-token"
	for _, tc := range []struct {
		api  string
		opts []esdbtest.Option
	}{
		{"v2", nil},
		{"v1", []esdbtest.Option{esdbtest.WithV1Only()}},
	} {
		t.Run(tc.api, func(t *testing.T) {
			srv := esdbtest.NewServer(token, tc.opts...)
			defer srv.Close()
			if !strings.HasPrefix(srv.URL, "http://127.0.0.1:") {
				t.Fatalf("double listens on %s, want 127.0.0.1", srv.URL)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, python, filepath.Join("pyclient", "session.py"), srv.URL, token, tc.api)
			out, err := cmd.CombinedOutput()
			t.Logf("eventsourcingdb %s session on the %s API:\n%s", installed, tc.api, out)
			if err != nil {
				t.Fatalf("session failed: %v", err)
			}
			if !strings.Contains(string(out), "PASS: all") {
				t.Fatal("session did not report PASS")
			}
		})
	}
}
