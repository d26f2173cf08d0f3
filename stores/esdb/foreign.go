package esdb

import (
	"errors"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores"
)

// ForeignEventError is the error ReadAll and Observe yield for an event
// under the store's streams subject that the store did not write (no or
// an unknown envelope, an envelope naming another subject): another
// application's event, or one written by hand. It matches ErrForeignEvent
// and carries the event as the server sent it.
//
// It implements outbox.Unreadable: a relay following the store writes the
// event to its dead-letter topic and reads on after it, instead of
// stopping at it. Other readers stop at it, as at any error.
type ForeignEventError struct {
	// Event is the event as read from EventSourcingDB.
	Event Event
	// Err says why it is foreign; it matches ErrForeignEvent.
	Err error
}

// Error names the event and why it is foreign.
func (e *ForeignEventError) Error() string { return e.Err.Error() }

// Unwrap returns Err.
func (e *ForeignEventError) Unwrap() error { return e.Err }

// UnreadableEntry returns what is known of the event as a stores.Entry:
// Position and Cursor as for the store's own events (the ESDB ID + 1),
// StreamID and Subject the ESDB subject, ID the ESDB ID, Type, Source and
// Time the CloudEvent's, Data the event's data as sent, with content type
// application/json.
func (e *ForeignEventError) UnreadableEntry() stores.Entry {
	pos, _ := e.Event.Position() // checked by foreign
	return stores.Entry{
		Event: orchestrix.Event{
			Metadata: orchestrix.Metadata{ID: e.Event.ID, Type: e.Event.Type, Source: e.Event.Source,
				Subject: e.Event.Subject, Time: e.Event.Time},
			StreamID:    e.Event.Subject,
			Position:    pos + 1,
			ContentType: "application/json",
			Data:        e.Event.Data,
		},
		Cursor: stores.Cursor{Position: pos + 1},
	}
}

// foreign turns a decoding error of a stream event into a
// *ForeignEventError when that is what it is (and the event has a valid
// ID, so a reader can go on after it); other errors are returned as they
// are.
func foreign(e Event, err error) error {
	if _, perr := e.Position(); perr != nil || !errors.Is(err, ErrForeignEvent) {
		return err
	}
	return &ForeignEventError{Event: e, Err: err}
}

// MaxEventSize returns the limit on one event's Data (WithMaxEventSize):
// an outbox.Relay over the store takes it as its MaxEventSize.
func (s *Store) MaxEventSize() int { return s.maxSize }
