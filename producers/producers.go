// Package producers sends commands to Kafka and builds the producing
// client every Orchestrix publisher uses.
//
// A [Sender] turns a payload into a CloudEvent ([codec]) on the context's
// command topic, keyed by aggregate ID so one aggregate's commands stay in
// one partition, in order. [Sender.Send] waits for the broker's acknowledgement;
// [Sender.SendAsync] calls back. The client is idempotent (franz-go's default:
// retries never duplicate or reorder within a partition) and lingers
// [DefaultLinger], low for request paths; raise it with [kgo.ProducerLinger]
// for throughput.
//
// Errors a caller can branch on: [ErrUnknownTopic] (the topic does not
// exist: topics are created explicitly), [ErrTooLarge] (the record exceeds
// the producer's or broker's limit), [ErrUnreachable] (no broker answered
// within the delivery timeout). A sender that must know what became of its
// command waits for the outcome with an [Awaiter].
package producers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/kafkaerr"
	"github.com/orchestrix/orchestrix/kafkaconn"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kgo"
)

// DefaultLinger is how long NewClient's producer waits to fill a batch.
const DefaultLinger = time.Millisecond

// DefaultDeliveryTimeout bounds how long a record may wait for delivery.
const DefaultDeliveryTimeout = 30 * time.Second

// Typed errors; match with errors.Is. They are the shared sentinels of
// packages topics and kafkaconn: one per condition across the module.
var (
	ErrUnknownTopic = topics.ErrNotFound
	ErrTooLarge     = topics.ErrTooLarge
	ErrUnreachable  = kafkaconn.ErrUnreachable
)

// NewClient returns a producing client for seeds: idempotent, acks=all,
// linger DefaultLinger, delivery timeout DefaultDeliveryTimeout, and a
// missing topic reported after a few metadata retries instead of waiting.
// opts come last and override these.
func NewClient(seeds []string, opts ...kgo.Opt) (*kgo.Client, error) {
	if len(seeds) == 0 {
		return nil, fmt.Errorf("producers: no seed brokers: %w", orchestrix.ErrInvalid)
	}
	base := []kgo.Opt{
		kgo.SeedBrokers(seeds...),
		kgo.ProducerLinger(DefaultLinger),
		kgo.RecordDeliveryTimeout(DefaultDeliveryTimeout),
		kgo.UnknownTopicRetries(3),
	}
	cl, err := kgo.NewClient(append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("producers: new client: %w", err)
	}
	return cl, nil
}

// Classify wraps a produce error with the package's typed errors where
// one applies.
func Classify(err error) error {
	switch {
	case err == nil:
		return nil
	case kafkaerr.Is(err, kafkaerr.TopicMissing):
		return fmt.Errorf("%w: %w", ErrUnknownTopic, err)
	case kafkaerr.Is(err, kafkaerr.TooLarge):
		return fmt.Errorf("%w: %w", ErrTooLarge, err)
	case kafkaerr.Is(err, kafkaerr.TimedOut):
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	return err
}

// Sender sends commands of one bounded context. It is safe for concurrent
// use and does not own the client.
type Sender struct {
	cl     *kgo.Client
	reg    *codec.Registry
	topic  string
	source string
	now    func() time.Time
	trace  func(context.Context) string
}

// SenderOption configures a Sender.
type SenderOption func(*Sender)

// WithTraceContext makes Send and SendAsync set the TraceParent of a
// command that has none to f(ctx): the W3C traceparent of ctx's span, ""
// for none. Tracing adapters provide f (tracing/otel's TraceParent), so
// the core does not import a tracing library.
func WithTraceContext(f func(ctx context.Context) string) SenderOption {
	return func(s *Sender) { s.trace = f }
}

// NewSender returns a sender producing to topic (see topics.Commands) with
// CloudEvents source source (e.g. "/banking/api").
func NewSender(cl *kgo.Client, reg *codec.Registry, topic, source string, opts ...SenderOption) (*Sender, error) {
	var errs []error
	if cl == nil || reg == nil {
		errs = append(errs, errors.New("a client and a codec registry are required"))
	}
	if err := orchestrix.CheckID("topic", topic); err != nil {
		errs = append(errs, err)
	}
	if err := orchestrix.CheckID("source", source); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("producers: %w: %w", orchestrix.ErrInvalid, err)
	}
	s := &Sender{cl: cl, reg: reg, topic: topic, source: source, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// Topic returns the command topic.
func (s *Sender) Topic() string { return s.topic }

// Command builds an encoded command for aggregateID with a fresh UUIDv7
// ID; set CorrelationID, CausationID or TraceParent on the result before
// sending to link it to what caused it.
func (s *Sender) Command(aggregateID string, payload any) (orchestrix.Command, error) {
	if err := orchestrix.CheckID("aggregate id", aggregateID); err != nil {
		return orchestrix.Command{}, err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return orchestrix.Command{}, err
	}
	cmd := orchestrix.Command{
		Metadata:    orchestrix.Metadata{ID: id.String(), Source: s.source, Subject: aggregateID, Time: s.now().UTC()},
		AggregateID: aggregateID,
		Payload:     payload,
	}
	if err := s.reg.EncodeCommand(&cmd); err != nil {
		return orchestrix.Command{}, fmt.Errorf("producers: command for %q: %w", aggregateID, err)
	}
	return cmd, nil
}

func (s *Sender) record(ctx context.Context, cmd orchestrix.Command) (*kgo.Record, error) {
	if cmd.TraceParent == "" && s.trace != nil {
		cmd.TraceParent = s.trace(ctx)
	}
	if cmd.Data == nil && cmd.Payload != nil {
		if err := s.reg.EncodeCommand(&cmd); err != nil {
			return nil, err
		}
	}
	return codec.CommandToRecord(s.topic, cmd)
}

// Send produces cmd and waits for the broker's acknowledgement.
func (s *Sender) Send(ctx context.Context, cmd orchestrix.Command) error {
	r, err := s.record(ctx, cmd)
	if err != nil {
		return fmt.Errorf("producers: send %s: %w", cmd.ID, err)
	}
	if err := s.cl.ProduceSync(ctx, r).FirstErr(); err != nil {
		return fmt.Errorf("producers: send %s to %s: %w", cmd.ID, s.topic, Classify(err))
	}
	return nil
}

// SendAsync produces cmd and calls done (from a client goroutine) with the
// result. done must not block.
func (s *Sender) SendAsync(ctx context.Context, cmd orchestrix.Command, done func(error)) {
	r, err := s.record(ctx, cmd)
	if err != nil {
		done(fmt.Errorf("producers: send %s: %w", cmd.ID, err))
		return
	}
	s.cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
		if err != nil {
			err = fmt.Errorf("producers: send %s to %s: %w", cmd.ID, s.topic, Classify(err))
		}
		done(err)
	})
}
