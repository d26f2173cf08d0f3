package redact

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os/exec"
	"strings"
	"testing"
)

var cases = []struct{ name, in, want string }{
	{"postgres url", "postgres://orchestrix:orchestrix@127.0.0.1:5432/orchestrix?sslmode=disable",
		"postgres://orchestrix:xxxxx@127.0.0.1:5432/orchestrix?sslmode=disable"},
	{"postgresql url in a sentence", "services: KAFKA_BROKERS=127.0.0.1:19092 DATABASE_URL=postgresql://u:p4ss@db/x ok",
		"services: KAFKA_BROKERS=127.0.0.1:19092 DATABASE_URL=postgresql://u:xxxxx@db/x ok"},
	{"password with @ and :", "postgres://u:a:b@c@host/db", "postgres://u:xxxxx@host/db"},
	{"user without password", "postgres://orchestrix@host/db", "postgres://orchestrix@host/db"},
	{"http userinfo", `base URL "http://admin:s3cret@esdb:3000": bad`, `base URL "http://admin:xxxxx@esdb:3000": bad`},
	{"query password", "postgres://host/db?user=u&password=secret&sslmode=disable", "postgres://host/db?user=u&password=xxxxx&sslmode=disable"},
	{"keyword dsn", "host=db user=u password=secret dbname=x", "host=db user=u password=xxxxx dbname=x"},
	{"quoted keyword", "host=db password='it is secret' dbname=x", "host=db password=xxxxx dbname=x"},
	{"sslpassword and token", "sslpassword=k1 api_token=t0k ESDB_API_TOKEN=abc", "sslpassword=xxxxx api_token=xxxxx ESDB_API_TOKEN=xxxxx"},
	{"host:port untouched", "connect to PostgreSQL at 127.0.0.1:5432: refused", "connect to PostgreSQL at 127.0.0.1:5432: refused"},
	{"brokers untouched", "Kafka at 127.0.0.1:19092,10.0.0.2:9092", "Kafka at 127.0.0.1:19092,10.0.0.2:9092"},
	{"two urls", "a://x:1@h b://y:2@k", "a://x:xxxxx@h b://y:xxxxx@k"},
}

func TestText(t *testing.T) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := Text(tc.in); got != tc.want {
				t.Fatalf("Text(%q)\n = %q\nwant %q", tc.in, got, tc.want)
			}
			if got := URL(tc.in); got != tc.want {
				t.Fatalf("URL(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// TestShell runs scripts/redact.sh (what scripts/test.sh prints its
// DATABASE_URL through) on the same cases.
func TestShell(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.CommandContext(t.Context(), bash, "-c", "source ../../scripts/redact.sh && redact")
			cmd.Stdin = strings.NewReader(tc.in + "\n")
			out, err := cmd.Output()
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSuffix(string(out), "\n"); got != tc.want {
				t.Fatalf("redact.sh on %q\n = %q\nwant %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestError(t *testing.T) {
	if Error(nil) != nil {
		t.Fatal("Error(nil) != nil")
	}
	err := Error(fmt.Errorf("open postgres://u:secret@h/db: %w", fs.ErrNotExist))
	if strings.Contains(err.Error(), "secret") || !strings.Contains(err.Error(), "u:xxxxx@h") {
		t.Fatalf("Error() = %q", err)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("redacted error does not unwrap")
	}
}

func TestFlagValue(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	var out strings.Builder
	fs.SetOutput(&out)
	url := "postgres://u:secret@h/db"
	fs.Var(FlagValue(&url), "database-url", "PostgreSQL URL")
	fs.PrintDefaults()
	if strings.Contains(out.String(), "secret") || !strings.Contains(out.String(), `(default postgres://u:xxxxx@h/db)`) {
		t.Fatalf("defaults:\n%s", out.String())
	}
	if err := fs.Parse([]string{"--database-url", "postgres://v:other@k/db"}); err != nil || url != "postgres://v:other@k/db" {
		t.Fatalf("parse: %v, url %q", err, url)
	}
}
