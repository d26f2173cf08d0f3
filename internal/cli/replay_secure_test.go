package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestReplaySecureIntegration: replay, groups and events reach a broker
// over SASL_SSL (SCRAM, password from KAFKA_SASL_PASSWORD) and mTLS with
// the --kafka-* flags, and a wrong password ends replay at once with one
// line.
func TestReplaySecureIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a broker of its own")
	}
	sb := testenv.OwnSecureBroker(t)
	plain := testenv.Client(t, sb.Seeds())
	adm := kadm.NewClient(plain)
	src, dst := testenv.Name("src"), testenv.Name("dst")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := adm.CreateTopics(ctx, 2, 1, nil, src, dst); err != nil {
		t.Fatal(err)
	}
	var recs []*kgo.Record
	for i := range 50 {
		ev := orchestrix.Event{Metadata: orchestrix.Metadata{ID: testenv.Name("e"), Type: "Counted", Source: "/test", Time: time.Now()}, StreamID: "s-" + string(rune('a'+i%5)), Version: uint64(i + 1), Data: []byte("{}")}
		r, err := codec.EventToRecord(src, ev)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	if err := plain.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	scram := []string{"--brokers", sb.SASLSSL, "--kafka-tls-ca", sb.CAFile, "--kafka-sasl-mechanism", "SCRAM-SHA-512", "--kafka-sasl-username", sb.User}
	mtls := []string{"--brokers", sb.MTLS, "--kafka-tls-ca", sb.CAFile, "--kafka-tls-cert", sb.ClientCertFile, "--kafka-tls-key", sb.ClientKeyFile}
	t.Setenv("KAFKA_SASL_PASSWORD", sb.Password)
	if code, out, errs := run(t, append([]string{"replay", "--from", src, "--to", dst, "--execute"}, scram...)...); code != 0 || !strings.Contains(out, "copied 50 records") {
		t.Fatalf("replay over SASL_SSL: exit %d\n%s\n%s", code, out, errs)
	}
	if code, out, errs := run(t, append([]string{"events", "export", "--from", "topic", "--topic", dst}, mtls...)...); code != 0 || strings.Count(out, "\n") != 50 {
		t.Fatalf("events export over mTLS: exit %d, %d lines\n%s", code, strings.Count(out, "\n"), errs)
	}
	if code, out, errs := run(t, append([]string{"groups", "describe", "--group", "nobody"}, mtls...)...); code != 0 || !strings.Contains(out, "group nobody") {
		t.Fatalf("groups describe over mTLS: exit %d\n%s\n%s", code, out, errs)
	}
	t.Setenv("KAFKA_SASL_PASSWORD", "wrong-password-42")
	code, _, errs := run(t, append([]string{"replay", "--from", src, "--to", dst}, scram...)...)
	if code == 0 || !strings.Contains(errs, "authentication failed") || strings.Contains(errs, "wrong-password-42") || strings.Count(strings.TrimSpace(errs), "\n") > 0 {
		t.Fatalf("a wrong password: exit %d, stderr %q", code, errs)
	}
}
