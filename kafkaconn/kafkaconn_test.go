package kafkaconn_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/kafkaconn"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestSecureListenersIntegration runs a broker of its own with a SASL_SSL
// listener (PLAIN, SCRAM-SHA-256/512, OAUTHBEARER) and an mTLS listener,
// with certificates made by the test: every mechanism produces and
// consumes a record, and each usual mistake is one clear error within the
// timeout, never a hang, with no password in it.
func TestSecureListenersIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a broker of its own")
	}
	sb := testenv.OwnSecureBroker(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(testenv.UnsecuredJWT("alice")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	topic := testenv.Topic(t, sb.Seeds(), 1, nil)
	ok := map[string]struct {
		seeds string
		c     kafkaconn.Config
	}{
		"plain":               {sb.SASLSSL, kafkaconn.Config{CAFile: sb.CAFile, SASL: kafkaconn.PLAIN, User: sb.User, Password: sb.Password}},
		"scram-sha-256":       {sb.SASLSSL, kafkaconn.Config{CAFile: sb.CAFile, SASL: kafkaconn.ScramSHA256, User: sb.User, Password: sb.Password}},
		"scram-sha-512":       {sb.SASLSSL, kafkaconn.Config{CAFile: sb.CAFile, SASL: kafkaconn.ScramSHA512, User: sb.User, Password: sb.Password}},
		"oauthbearer file":    {sb.SASLSSL, kafkaconn.Config{CAFile: sb.CAFile, SASL: kafkaconn.OAuthBearer, TokenFile: tokenFile}},
		"oauthbearer command": {sb.SASLSSL, kafkaconn.Config{CAFile: sb.CAFile, SASL: kafkaconn.OAuthBearer, TokenCommand: "cat " + tokenFile}},
		"mtls":                {sb.MTLS, kafkaconn.Config{CAFile: sb.CAFile, CertFile: sb.ClientCertFile, KeyFile: sb.ClientKeyFile}},
	}
	for name, tc := range ok {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			if err := kafkaconn.Check(ctx, []string{tc.seeds}, tc.c, 15*time.Second); err != nil {
				t.Fatalf("Check: %v", err)
			}
			opts, err := tc.c.Options()
			if err != nil {
				t.Fatal(err)
			}
			cl, err := kgo.NewClient(append(opts, kgo.SeedBrokers(tc.seeds), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte(name)}).FirstErr(); err != nil {
				t.Fatalf("produce: %v", err)
			}
			fs := cl.PollFetches(ctx)
			if err := fs.Err0(); err != nil || fs.NumRecords() == 0 {
				t.Fatalf("consume: %v, %d records", err, fs.NumRecords())
			}
		})
	}
	bad := map[string]struct {
		seeds string
		c     kafkaconn.Config
		want  error
	}{
		"wrong password":                    {sb.SASLSSL, kafkaconn.Config{CAFile: sb.CAFile, SASL: kafkaconn.ScramSHA512, User: sb.User, Password: "not-the-password"}, kafkaconn.ErrAuthentication},
		"unknown user":                      {sb.SASLSSL, kafkaconn.Config{CAFile: sb.CAFile, SASL: kafkaconn.PLAIN, User: "mallory", Password: "not-the-password"}, kafkaconn.ErrAuthentication},
		"unknown CA":                        {sb.SASLSSL, kafkaconn.Config{CAFile: sb.OtherCAFile, SASL: kafkaconn.PLAIN, User: sb.User, Password: "not-the-password"}, kafkaconn.ErrTLS},
		"plaintext on tls":                  {sb.SASLSSL, kafkaconn.Config{}, kafkaconn.ErrTLS},
		"tls on plaintext":                  {sb.Seeds()[0], kafkaconn.Config{CAFile: sb.CAFile}, kafkaconn.ErrTLS},
		"mtls without a client certificate": {sb.MTLS, kafkaconn.Config{CAFile: sb.CAFile}, kafkaconn.ErrTLS},
	}
	for name, tc := range bad {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			err := kafkaconn.Check(t.Context(), []string{tc.seeds}, tc.c, 5*time.Second)
			if err == nil {
				t.Fatal("Check passed")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("Check = %v, want %v", err, tc.want)
			}
			if d := time.Since(start); d > 8*time.Second {
				t.Errorf("Check took %s with a 5s timeout", d)
			}
			if strings.Contains(err.Error(), "not-the-password") || strings.Contains(err.Error(), sb.Password) {
				t.Errorf("the error shows a password: %v", err)
			}
			if strings.Count(err.Error(), "\n") > 0 {
				t.Errorf("the error is more than one line: %q", err)
			}
			t.Logf("%s: %v", name, err)
		})
	}
}

// TestConfig: bad combinations are reported together; String shows no
// secret; FromEnv reads the documented variables.
func TestConfig(t *testing.T) {
	_, err := kafkaconn.Config{SASL: "GSSAPI", CertFile: "x.pem"}.Options()
	if !errors.Is(err, orchestrix.ErrInvalid) || !strings.Contains(err.Error(), "GSSAPI") || !strings.Contains(err.Error(), "key file") {
		t.Errorf("Options = %v, want both problems, ErrInvalid", err)
	}
	for _, c := range []kafkaconn.Config{
		{SASL: kafkaconn.PLAIN, User: "u"},
		{SASL: kafkaconn.OAuthBearer},
		{SASL: kafkaconn.OAuthBearer, TokenFile: "a", TokenCommand: "b"},
		{User: "u", Password: "p"},
		{CAFile: "/nonexistent/ca.pem"},
	} {
		if _, err := c.Options(); !errors.Is(err, orchestrix.ErrInvalid) {
			t.Errorf("%+v: Options = %v, want ErrInvalid", c, err)
		}
	}
	c := kafkaconn.FromEnv(func(k string) string {
		return map[string]string{"KAFKA_TLS": "true", "KAFKA_SASL_MECHANISM": "scram-sha-512", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "hunter2"}[k]
	})
	if c.SASL != kafkaconn.ScramSHA512 || !c.TLS || c.Password != "hunter2" {
		t.Errorf("FromEnv = %+v", c)
	}
	if s := c.String(); strings.Contains(s, "hunter2") || !strings.Contains(s, "SCRAM-SHA-512") {
		t.Errorf("String = %q", s)
	}
}
