package cli

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/orchestrix/orchestrix/kafkaconn"
	"github.com/twmb/franz-go/pkg/kgo"
)

// kafkaSecurity is the TLS and SASL settings of a command that reaches
// Kafka (kafkaconn.Config), from flags with environment fallbacks. The
// SASL password comes from KAFKA_SASL_PASSWORD or a file, never from a
// flag's value, which other users of the machine could read in the
// process list.
type kafkaSecurity struct {
	conn         kafkaconn.Config
	passwordFile string
}

// kafkaFlags registers the TLS and SASL flags on fs.
func kafkaFlags(fs *flag.FlagSet) *kafkaSecurity {
	k := &kafkaSecurity{conn: kafkaconn.FromEnv(os.Getenv)}
	c := &k.conn
	fs.BoolVar(&c.TLS, "kafka-tls", c.TLS, "TLS to the brokers (env KAFKA_TLS; implied by the other --kafka-tls-* flags)")
	fs.StringVar(&c.CAFile, "kafka-tls-ca", c.CAFile, "PEM `file` of the CAs that sign the brokers' certificates (env KAFKA_TLS_CA_FILE; default: the system's)")
	fs.StringVar(&c.CertFile, "kafka-tls-cert", c.CertFile, "client certificate PEM `file`, for mTLS (env KAFKA_TLS_CERT_FILE)")
	fs.StringVar(&c.KeyFile, "kafka-tls-key", c.KeyFile, "client key PEM `file`, for mTLS (env KAFKA_TLS_KEY_FILE)")
	fs.StringVar(&c.ServerName, "kafka-tls-server-name", c.ServerName, "name to check in the brokers' certificates (env KAFKA_TLS_SERVER_NAME)")
	fs.StringVar(&c.SASL, "kafka-sasl-mechanism", c.SASL, "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER (env KAFKA_SASL_MECHANISM)")
	fs.StringVar(&c.User, "kafka-sasl-username", c.User, "SASL user (env KAFKA_SASL_USERNAME); the password from KAFKA_SASL_PASSWORD or --kafka-sasl-password-file")
	fs.StringVar(&k.passwordFile, "kafka-sasl-password-file", "", "`file` holding the SASL password (instead of KAFKA_SASL_PASSWORD)")
	fs.StringVar(&c.TokenFile, "kafka-sasl-token-file", c.TokenFile, "`file` holding the OAUTHBEARER token, read at each authentication (env KAFKA_SASL_TOKEN_FILE)")
	fs.StringVar(&c.TokenCommand, "kafka-sasl-token-command", c.TokenCommand, "command printing the OAUTHBEARER token (env KAFKA_SASL_TOKEN_COMMAND)")
	return k
}

// options returns the client options, or a usage error.
func (k *kafkaSecurity) options() ([]kgo.Opt, error) {
	k.conn.SASL = strings.ToUpper(k.conn.SASL)
	if k.passwordFile != "" {
		b, err := os.ReadFile(k.passwordFile)
		if err != nil {
			return nil, fmt.Errorf("%w: --kafka-sasl-password-file: %w", errUsage, err)
		}
		k.conn.Password = strings.TrimRight(string(b), "\r\n")
	}
	opts, err := k.conn.Options()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errUsage, err)
	}
	return opts, nil
}

// secured reports whether TLS or SASL is configured.
func (k *kafkaSecurity) secured() bool {
	return k.conn.TLS || k.conn.CAFile != "" || k.conn.CertFile != "" || k.conn.ServerName != "" || k.conn.SASL != ""
}

// check dials the brokers once: a wrong password, an unknown CA or a
// TLS/plaintext mix-up is one clear error before the command starts, not
// retries until its timeout.
func (k *kafkaSecurity) check(ctx context.Context, seeds []string) error {
	return kafkaconn.Check(ctx, seeds, k.conn, 15*time.Second)
}
