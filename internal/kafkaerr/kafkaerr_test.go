package kafkaerr_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/orchestrix/orchestrix/internal/kafkaerr"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want kafkaerr.Class
	}{
		{"nil", nil, kafkaerr.Other},
		{"other", errors.New("boom"), kafkaerr.Other},
		{"fenced", kerr.ProducerFenced, kafkaerr.Fenced},
		{"epoch", fmt.Errorf("end txn: %w", kerr.InvalidProducerEpoch), kafkaerr.Fenced},
		{"txn id gone", kerr.TransactionalIDNotFound, kafkaerr.Fenced},
		{"topic acl", kerr.TopicAuthorizationFailed, kafkaerr.Unauthorized},
		{"txn acl", kerr.TransactionalIDAuthorizationFailed, kafkaerr.Unauthorized},
		{"cluster acl", kerr.ClusterAuthorizationFailed, kafkaerr.Unauthorized},
		{"sasl", kerr.SaslAuthenticationFailed, kafkaerr.Authentication},
		{"sasl mechanism", kerr.UnsupportedSaslMechanism, kafkaerr.Authentication},
		{"topic", fmt.Errorf("produce: %w", kerr.UnknownTopicOrPartition), kafkaerr.TopicMissing},
		{"too large", kerr.MessageTooLarge, kafkaerr.TooLarge},
		{"batch too large", kerr.RecordListTooLarge, kafkaerr.TooLarge},
		{"unknown ca", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, kafkaerr.TLSUnknownCA},
		{"hostname", x509.HostnameError{Certificate: &x509.Certificate{}, Host: "h"}, kafkaerr.TLSHostname},
		{"plaintext peer", tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, kafkaerr.TLSPlaintextPeer},
		{"tls listener", errors.New("invalid large response size 352518912 > limit 104857600; the first three bytes received appear to be a tls alert record for TLS v1.2; is this a plaintext connection speaking to a tls endpoint?"), kafkaerr.TLSRequired},
		{"client cert", errors.New("remote error: tls: certificate required"), kafkaerr.TLSClientCert},
		{"op error", &net.OpError{Op: "dial", Err: errors.New("no route")}, kafkaerr.Disconnected},
		{"refused", fmt.Errorf("dial: %w", syscall.ECONNREFUSED), kafkaerr.Disconnected},
		{"reset", syscall.ECONNRESET, kafkaerr.Disconnected},
		{"eof", io.EOF, kafkaerr.Disconnected},
		{"unexpected eof", io.ErrUnexpectedEOF, kafkaerr.Disconnected},
		{"record timeout", kgo.ErrRecordTimeout, kafkaerr.TimedOut},
		{"deadline", context.DeadlineExceeded, kafkaerr.TimedOut},
		// Two causes: the first class in order wins.
		{"fenced and timed out", errors.Join(context.DeadlineExceeded, kerr.ProducerFenced), kafkaerr.Fenced},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := kafkaerr.Of(tc.err); got != tc.want {
				t.Fatalf("Of(%v) = %d, want %d", tc.err, got, tc.want)
			}
			if tc.want != kafkaerr.Other && !kafkaerr.Is(tc.err, tc.want) {
				t.Fatalf("Is(%v, %d) = false", tc.err, tc.want)
			}
		})
	}
}

// TestIs: Is answers for one class whatever else the error fits; never
// for Other, nil or a class out of range.
func TestIs(t *testing.T) {
	err := errors.Join(context.DeadlineExceeded, kerr.ProducerFenced)
	if !kafkaerr.Is(err, kafkaerr.TimedOut) || !kafkaerr.Is(err, kafkaerr.Fenced) || kafkaerr.Is(err, kafkaerr.TooLarge) {
		t.Fatal("Is does not test each class on its own")
	}
	if kafkaerr.Is(nil, kafkaerr.Fenced) || kafkaerr.Is(errors.New("x"), kafkaerr.Other) || kafkaerr.Is(err, kafkaerr.Class(99)) || kafkaerr.Is(err, kafkaerr.Class(-1)) {
		t.Fatal("Is answered true for nil, Other or an unknown class")
	}
}
