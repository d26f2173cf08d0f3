package orchestrix

import "time"

// Outcome statuses.
const (
	// OutcomeAccepted: the command's events were stored.
	OutcomeAccepted = "accepted"
	// OutcomeRejected: the aggregate refused the command; nothing stored.
	OutcomeRejected = "rejected"
	// OutcomeDuplicate: the command had been handled before; its first
	// outcome's versions are repeated.
	OutcomeDuplicate = "duplicate"
)

// Outcome is what became of a command, as the aggregate processor
// publishes it (JSON, keyed by command ID) for senders that wait.
type Outcome struct {
	CommandID   string `json:"commandId"`
	AggregateID string `json:"aggregateId"`
	// CommandType is the answered command's type and CorrelationID its
	// correlation ID (a saga sets its own ID there, so that the outcomes
	// and events of its commands find their way back to it).
	CommandType   string `json:"commandType,omitempty"`
	CorrelationID string `json:"correlationId,omitempty"`
	Status        string `json:"status"`
	// FromVersion and ToVersion are the versions written (accepted,
	// duplicate).
	FromVersion uint64 `json:"fromVersion,omitempty"`
	ToVersion   uint64 `json:"toVersion,omitempty"`
	// Code and Message explain a rejection; Fields lists validation
	// failures.
	Code    string       `json:"code,omitempty"`
	Message string       `json:"message,omitempty"`
	Fields  []FieldError `json:"fields,omitempty"`
	// At is when the processor decided.
	At time.Time `json:"at"`
}
