package cli

import (
	"strings"
	"testing"

	"github.com/orchestrix/orchestrix/internal/testenv"
)

// TestSecureBrokerIntegration: topics, dlq and demo reach a broker over
// SASL_SSL with the --kafka-* flags and KAFKA_SASL_PASSWORD, and over
// mTLS; a wrong password, an unknown CA and a plaintext client on the TLS
// listener each end the command at once with one line that says which,
// without the password.
func TestSecureBrokerIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a broker of its own")
	}
	sb := testenv.OwnSecureBroker(t)
	t.Setenv("DATABASE_URL", testenv.DatabaseURL(t))
	t.Setenv("ORCHESTRIX_SCHEMA", testenv.Schema(t, testenv.Pool(t)))
	bc := strings.ReplaceAll(testenv.Name("sec"), "_", "-")
	scram := []string{"--brokers", sb.SASLSSL, "--kafka-tls-ca", sb.CAFile, "--kafka-sasl-mechanism", "SCRAM-SHA-512", "--kafka-sasl-username", sb.User}
	t.Setenv("KAFKA_SASL_PASSWORD", sb.Password)
	if code, out, errOut := run(t, append([]string{"topics", "create", "--context", bc, "--partitions", "2"}, scram...)...); code != 0 {
		t.Fatalf("topics create over SASL_SSL: exit %d\n%s\n%s", code, out, errOut)
	}
	mtls := []string{"--brokers", sb.MTLS, "--kafka-tls-ca", sb.CAFile, "--kafka-tls-cert", sb.ClientCertFile, "--kafka-tls-key", sb.ClientKeyFile}
	if code, out, errOut := run(t, append([]string{"topics", "describe", "--context", bc}, mtls...)...); code != 0 || !strings.Contains(out, bc+".events") {
		t.Fatalf("topics describe over mTLS: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, out, errOut := run(t, append([]string{"demo", "--context", bc, "--partitions", "2", "--commands", "300", "--accounts", "10", "--quiet"}, scram...)...); code != 0 || !strings.Contains(out, "consistent") {
		t.Fatalf("demo over SASL_SSL: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, out, errOut := run(t, append([]string{"dlq", "list", "--topic", bc + ".commands", "--group", bc + "-aggregates"}, scram...)...); code != 0 {
		t.Fatalf("dlq list over SASL_SSL: exit %d\n%s\n%s", code, out, errOut)
	}

	for _, tc := range []struct {
		name, password string
		args           []string
		want           string
	}{
		{"wrong password", "wrong-password-42", scram, "authentication failed"},
		{"unknown CA", sb.Password, []string{"--brokers", sb.SASLSSL, "--kafka-tls-ca", sb.OtherCAFile, "--kafka-sasl-mechanism", "PLAIN", "--kafka-sasl-username", sb.User}, "not signed by a trusted CA"},
		{"plaintext on TLS", sb.Password, []string{"--brokers", sb.SASLSSL}, "speaks TLS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KAFKA_SASL_PASSWORD", tc.password)
			code, out, errOut := run(t, append([]string{"topics", "describe", "--context", bc}, tc.args...)...)
			if code == 0 || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stderr %q; want a failure naming %q\n%s", code, errOut, tc.want, out)
			}
			if strings.Contains(errOut, tc.password) || strings.Count(strings.TrimSpace(errOut), "\n") > 0 {
				t.Fatalf("stderr shows the password or has more than one line: %q", errOut)
			}
		})
	}
	if code, _, errOut := run(t, "topics", "describe", "--context", bc, "--brokers", sb.SASLSSL, "--kafka-sasl-mechanism", "GSSAPI"); code != 2 || !strings.Contains(errOut, "GSSAPI") {
		t.Fatalf("an unknown mechanism: exit %d, %q; want a usage error naming it", code, errOut)
	}
}
