// Package kafkaerr is the module's one classifier of Kafka client errors:
// it names the condition an error of franz-go, of a broker or of the
// network stands for, and each runtime (consumers, outbox, producers,
// kafkaconn) maps the class to its typed errors and to what it does next.
package kafkaerr

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Class is a condition a Kafka error stands for.
type Class int

// The classes, in the order Of tests them: an error that fits several
// (wrapping more than one cause) gets the first.
const (
	// Other is none of the classes below.
	Other Class = iota
	// Fenced: a newer producer with the same transactional ID took over
	// (ProducerFenced, InvalidProducerEpoch, TransactionalIDNotFound).
	Fenced
	// Unauthorized: an ACL refuses the topic, the transactional ID or the
	// cluster operation.
	Unauthorized
	// Authentication: the broker refused the SASL exchange.
	Authentication
	// TopicMissing: the topic or partition does not exist.
	TopicMissing
	// TooLarge: a record or batch is larger than the topic takes.
	TooLarge
	// TLSUnknownCA: the broker's certificate is not signed by a trusted CA.
	TLSUnknownCA
	// TLSHostname: the broker's certificate is not for the name dialled.
	TLSHostname
	// TLSPlaintextPeer: a TLS client got a plaintext answer.
	TLSPlaintextPeer
	// TLSRequired: a plaintext client spoke to a TLS listener.
	TLSRequired
	// TLSClientCert: the broker refused the client certificate, or wants
	// one.
	TLSClientCert
	// Disconnected: a connection could not be made or was cut (a network
	// error, a refused or reset connection, an unexpected EOF).
	Disconnected
	// TimedOut: a record or request ran out of time (the record delivery
	// timeout, a context deadline): a broker that did not answer in time.
	TimedOut
)

// Of returns the class of err: the first class it fits (Other for nil).
func Of(err error) Class {
	if err == nil {
		return Other
	}
	for c := Other + 1; int(c) < len(fits); c++ {
		if fits[c](err) {
			return c
		}
	}
	return Other
}

// Is reports whether err fits class c, whatever other classes it fits
// too: a caller that asks about one condition asks Is, one that branches
// on all asks Of.
func Is(err error, c Class) bool {
	return err != nil && c > Other && int(c) < len(fits) && fits[c](err)
}

// fits holds the test of each class.
var fits = [...]func(error) bool{
	Other: func(error) bool { return false },
	Fenced: func(err error) bool {
		return errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) || errors.Is(err, kerr.TransactionalIDNotFound)
	},
	Unauthorized: func(err error) bool {
		return errors.Is(err, kerr.TopicAuthorizationFailed) || errors.Is(err, kerr.TransactionalIDAuthorizationFailed) || errors.Is(err, kerr.ClusterAuthorizationFailed)
	},
	Authentication: func(err error) bool {
		return errors.Is(err, kerr.SaslAuthenticationFailed) || errors.Is(err, kerr.IllegalSaslState) || errors.Is(err, kerr.UnsupportedSaslMechanism)
	},
	TopicMissing: func(err error) bool { return errors.Is(err, kerr.UnknownTopicOrPartition) },
	TooLarge: func(err error) bool {
		return errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge)
	},
	TLSUnknownCA:     func(err error) bool { var e x509.UnknownAuthorityError; return errors.As(err, &e) },
	TLSHostname:      func(err error) bool { var e x509.HostnameError; return errors.As(err, &e) },
	TLSPlaintextPeer: func(err error) bool { var e tls.RecordHeaderError; return errors.As(err, &e) },
	TLSRequired:      func(err error) bool { return strings.Contains(err.Error(), "speaking to a tls endpoint") },
	TLSClientCert: func(err error) bool {
		msg := err.Error()
		return strings.Contains(msg, "tls: bad certificate") || strings.Contains(msg, "tls: certificate required")
	},
	Disconnected: func(err error) bool {
		var op *net.OpError
		return errors.As(err, &op) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
			errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
	},
	TimedOut: func(err error) bool {
		return errors.Is(err, kgo.ErrRecordTimeout) || errors.Is(err, context.DeadlineExceeded)
	},
}
