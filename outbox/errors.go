package outbox

import (
	"errors"
	"fmt"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/kafkaerr"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/topics"
)

// Errors a caller can match with errors.Is.
var (
	// ErrTopicMissing: a topic the relay publishes to does not exist.
	// Topics are created explicitly (orchestrix topics create), never by
	// the relay, except its own checkpoint topic.
	ErrTopicMissing = topics.ErrNotFound
	// ErrFenced: another relay instance with the same transactional ID
	// initialised its producer, so this one may no longer publish.
	ErrFenced = errors.New("outbox: fenced by a newer relay instance")
	// ErrTooLarge: a record is larger than its topic's max.message.bytes
	// (the reason given in its dead letter).
	ErrTooLarge = topics.ErrTooLarge
)

// permanentError marks an error the relay cannot recover from by itself.
type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }

func (p permanentError) Unwrap() error { return p.err }

func permanent(err error) error { return permanentError{err} }

// isPermanent reports whether Run should return err rather than retry.
func isPermanent(err error) bool {
	var p permanentError
	switch {
	case errors.As(err, &p),
		errors.Is(err, orchestrix.ErrInvalid),
		errors.Is(err, ErrTopicMissing),
		errors.Is(err, stores.ErrNotMigrated),
		errors.Is(err, stores.ErrSchemaTooNew),
		kafkaerr.Is(err, kafkaerr.Unauthorized):
		// Not kerr.MessageTooLarge: every term reads the topics'
		// max.message.bytes afresh and dead-letters a record that is
		// larger, so the next term gets past it.
		return true
	}
	return false
}

// classify marks fencing errors with ErrFenced.
func classify(err error) error {
	if kafkaerr.Is(err, kafkaerr.Fenced) {
		return fmt.Errorf("%w: %w", ErrFenced, err)
	}
	return err
}
