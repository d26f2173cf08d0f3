package outbox

import (
	"errors"
)

// ErrLostLeadership reports that the relay's term ended by itself (its
// lock session broke, or the database ended a silent session); the relay
// stops publishing and campaigns again.
var ErrLostLeadership = errors.New("outbox: lost leadership")

// always is the term of a relay without election: it never ends by
// itself.
type always struct{}

func (always) Lost() <-chan struct{} { return nil }
func (always) Release()              {}
