// Package kafkaconn turns how to reach a Kafka cluster securely — TLS
// (a CA, a client certificate for mTLS, the server name) and SASL (PLAIN,
// SCRAM-SHA-256/512, OAUTHBEARER with a token from a file or a command) —
// into franz-go client options, for every runtime and CLI command:
//
//	conn := kafkaconn.FromEnv(os.Getenv) // or flags, or a literal Config
//	opts, err := conn.Options()
//	group, err := consumers.New(seeds, "billing", topics, h, consumers.WithClientOpts(opts...))
//	relay, err := outbox.NewRelay(store, seeds, outbox.ToTopic(t), outbox.WithClientOpts(opts...))
//	client, err := producers.NewClient(seeds, opts...)
//
// Check dials once and turns the usual mistakes (a wrong password, a CA
// that did not sign the broker's certificate, a plaintext client on a TLS
// listener or the other way round) into one error that says which, so a
// command fails at once instead of retrying until its timeout.
// Credentials never appear in errors or in Config's String.
package kafkaconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/kafkaerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/oauth"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// SASL mechanisms.
const (
	PLAIN       = "PLAIN"
	ScramSHA256 = "SCRAM-SHA-256"
	ScramSHA512 = "SCRAM-SHA-512"
	OAuthBearer = "OAUTHBEARER"
)

// Config says how to reach the brokers. The zero value is plaintext
// without authentication.
type Config struct {
	// TLS turns TLS on; CAFile, CertFile and ServerName imply it.
	TLS bool
	// CAFile is a PEM bundle of the CAs that sign the brokers'
	// certificates (empty: the system's roots).
	CAFile string
	// CertFile and KeyFile are the client's PEM certificate and key, for
	// brokers that require client certificates (mTLS).
	CertFile, KeyFile string
	// ServerName is the name checked in the brokers' certificates (empty:
	// the host of the address dialed).
	ServerName string
	// SASL is the mechanism: "", PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or
	// OAUTHBEARER.
	SASL string
	// User and Password authenticate PLAIN and SCRAM.
	User, Password string
	// TokenFile holds an OAUTHBEARER token, read again at every
	// authentication (a sidecar may rotate it); TokenCommand is a command
	// whose standard output is the token, run at every authentication.
	TokenFile, TokenCommand string
}

// FromEnv reads a Config from the environment: KAFKA_TLS (true/1),
// KAFKA_TLS_CA_FILE, KAFKA_TLS_CERT_FILE, KAFKA_TLS_KEY_FILE,
// KAFKA_TLS_SERVER_NAME, KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME,
// KAFKA_SASL_PASSWORD, KAFKA_SASL_TOKEN_FILE, KAFKA_SASL_TOKEN_COMMAND.
func FromEnv(getenv func(string) string) Config {
	tlsOn := strings.ToLower(getenv("KAFKA_TLS"))
	return Config{
		TLS:    tlsOn == "true" || tlsOn == "1" || tlsOn == "yes",
		CAFile: getenv("KAFKA_TLS_CA_FILE"), CertFile: getenv("KAFKA_TLS_CERT_FILE"), KeyFile: getenv("KAFKA_TLS_KEY_FILE"),
		ServerName: getenv("KAFKA_TLS_SERVER_NAME"),
		SASL:       strings.ToUpper(getenv("KAFKA_SASL_MECHANISM")),
		User:       getenv("KAFKA_SASL_USERNAME"), Password: getenv("KAFKA_SASL_PASSWORD"),
		TokenFile: getenv("KAFKA_SASL_TOKEN_FILE"), TokenCommand: getenv("KAFKA_SASL_TOKEN_COMMAND"),
	}
}

// usesTLS reports whether c asks for TLS.
func (c Config) usesTLS() bool {
	return c.TLS || c.CAFile != "" || c.CertFile != "" || c.ServerName != ""
}

// String describes c without its secrets.
func (c Config) String() string {
	var parts []string
	if c.usesTLS() {
		t := "tls"
		if c.CAFile != "" {
			t += " ca=" + c.CAFile
		}
		if c.CertFile != "" {
			t += " cert=" + c.CertFile
		}
		if c.ServerName != "" {
			t += " server-name=" + c.ServerName
		}
		parts = append(parts, t)
	} else {
		parts = append(parts, "plaintext")
	}
	switch {
	case c.SASL == OAuthBearer:
		parts = append(parts, "sasl "+c.SASL)
	case c.SASL != "":
		parts = append(parts, fmt.Sprintf("sasl %s user=%s", c.SASL, c.User))
	}
	return strings.Join(parts, ", ")
}

// Options validates c and returns the client options that implement it;
// every problem is reported at once, matching orchestrix.ErrInvalid.
func (c Config) Options() ([]kgo.Opt, error) {
	var errs []error
	var opts []kgo.Opt
	if c.usesTLS() {
		cfg, err := c.tlsConfig()
		if err != nil {
			errs = append(errs, err)
		} else {
			opts = append(opts, kgo.DialTLSConfig(cfg))
		}
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		errs = append(errs, errors.New("a client certificate needs both a cert file and a key file"))
	}
	if m, err := c.mechanism(); err != nil {
		errs = append(errs, err)
	} else if m != nil {
		opts = append(opts, kgo.SASL(m))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("kafkaconn: %w: %w", orchestrix.ErrInvalid, err)
	}
	return opts, nil
}

func (c Config) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca %s: no PEM certificate in it", c.CAFile)
		}
		cfg.RootCAs = pool
	}
	if c.CertFile != "" && c.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func (c Config) mechanism() (sasl.Mechanism, error) {
	needUser := func() error {
		if c.User == "" || c.Password == "" {
			return fmt.Errorf("sasl %s needs a username and a password", c.SASL)
		}
		return nil
	}
	switch c.SASL {
	case "":
		if c.User != "" || c.TokenFile != "" || c.TokenCommand != "" {
			return nil, errors.New("sasl credentials given without a mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER)")
		}
		return nil, nil
	case PLAIN:
		if err := needUser(); err != nil {
			return nil, err
		}
		return plain.Auth{User: c.User, Pass: c.Password}.AsMechanism(), nil
	case ScramSHA256, ScramSHA512:
		if err := needUser(); err != nil {
			return nil, err
		}
		a := scram.Auth{User: c.User, Pass: c.Password}
		if c.SASL == ScramSHA256 {
			return a.AsSha256Mechanism(), nil
		}
		return a.AsSha512Mechanism(), nil
	case OAuthBearer:
		if (c.TokenFile == "") == (c.TokenCommand == "") {
			return nil, errors.New("sasl OAUTHBEARER needs a token file or a token command (one of them)")
		}
		return oauth.Oauth(func(ctx context.Context) (oauth.Auth, error) {
			tok, err := c.token(ctx)
			return oauth.Auth{Token: tok}, err
		}), nil
	}
	return nil, fmt.Errorf("sasl mechanism %q: want PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER", c.SASL)
}

// token reads the OAUTHBEARER token.
func (c Config) token(ctx context.Context) (string, error) {
	if c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return "", fmt.Errorf("kafkaconn: oauth token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", c.TokenCommand)
	cmd.Stderr = io.Discard
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("kafkaconn: oauth token command: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Errors of Check, by what went wrong. Match them with errors.Is.
var (
	// ErrAuthentication: the broker refused the SASL credentials.
	ErrAuthentication = errors.New("kafkaconn: authentication failed")
	// ErrTLS: the TLS handshake failed (an unknown CA, a name mismatch,
	// a plaintext listener).
	ErrTLS = errors.New("kafkaconn: TLS handshake failed")
	// ErrUnreachable: no broker answered.
	ErrUnreachable = errors.New("kafkaconn: no broker reachable")
)

// Check dials the brokers once with c and returns nil when one answers
// a metadata request, or one error that says what is wrong (see
// ErrAuthentication, ErrTLS, ErrUnreachable) within timeout.
func Check(ctx context.Context, seeds []string, c Config, timeout time.Duration) error {
	opts, err := c.Options()
	if err != nil {
		return err
	}
	hooks := &dialHook{}
	cl, err := kgo.NewClient(append(opts, kgo.SeedBrokers(seeds...), kgo.WithHooks(hooks), kgo.RetryTimeout(timeout))...)
	if err != nil {
		return fmt.Errorf("kafkaconn: %w", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err = cl.Ping(ctx)
	if err == nil {
		return nil
	}
	if last := hooks.err(); last != nil {
		err = last
	}
	return classify(c, seeds, err)
}

// dialHook keeps the last connection error, which Ping may hide behind
// its context's deadline.
type dialHook struct {
	mu   sync.Mutex
	last error
}

func (h *dialHook) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err != nil {
		h.mu.Lock()
		h.last = err
		h.mu.Unlock()
	}
}

func (h *dialHook) err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

func classify(c Config, seeds []string, err error) error {
	where := strings.Join(seeds, ",")
	switch {
	case kafkaerr.Is(err, kafkaerr.Authentication):
		return fmt.Errorf("%w at %s (%s): %v", ErrAuthentication, where, c, err)
	case kafkaerr.Is(err, kafkaerr.TLSUnknownCA):
		return fmt.Errorf("%w at %s: the broker's certificate is not signed by a trusted CA (set the CA file): %v", ErrTLS, where, err)
	case kafkaerr.Is(err, kafkaerr.TLSHostname):
		return fmt.Errorf("%w at %s: the broker's certificate is not for this name (set the server name): %v", ErrTLS, where, err)
	case kafkaerr.Is(err, kafkaerr.TLSPlaintextPeer):
		return fmt.Errorf("%w at %s: the broker did not answer in TLS (is this a plaintext listener?)", ErrTLS, where)
	case kafkaerr.Is(err, kafkaerr.TLSRequired):
		return fmt.Errorf("%w at %s: the listener speaks TLS and the client does not (set TLS and, for a private CA, the CA file)", ErrTLS, where)
	case kafkaerr.Is(err, kafkaerr.TLSClientCert):
		return fmt.Errorf("%w at %s: the broker refused the client certificate, or wants one (set the cert and key files): %v", ErrTLS, where, err)
	case c.usesTLS() && (errors.Is(err, io.EOF) || strings.Contains(err.Error(), "handshake")):
		return fmt.Errorf("%w at %s: %v", ErrTLS, where, err)
	case !c.usesTLS() && (errors.Is(err, io.EOF) || strings.Contains(err.Error(), "connection reset")):
		return fmt.Errorf("%w at %s: the broker closed the connection (a TLS or SASL listener? set TLS and SASL): %v", ErrUnreachable, where, err)
	}
	return fmt.Errorf("%w at %s: %v", ErrUnreachable, where, err)
}
