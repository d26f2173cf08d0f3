// Package codec encodes message payloads and maps orchestrix events and
// commands to and from Kafka records. It is the one place that knows the
// wire format: producers, consumers and the outbox relay all go through it.
//
// # Payloads
//
// A Registry maps message type names to Go types and their codec: JSON
// (RegisterJSON) or Avro (RegisterAvro). There are no global registries;
// make one with NewRegistry, register every type at start-up and share it.
// Encode turns a registered value into (type, content type, dataschema,
// bytes); Decode does the reverse, first running any Upcaster registered
// for an old type name, and returns the registered T as a value.
// EncodeEvent, DecodeEvent, EncodeCommand and DecodeCommand do the same on
// an orchestrix.Event or orchestrix.Command, between Payload and
// Type/ContentType/Data.
//
// Avro data carries the ID of its writer schema as the CloudEvents
// dataschema attribute. Event and Command have no field for it, so it is
// kept in Metadata.Extensions[DataSchemaKey] and written to, and read
// from, the ce_dataschema header as the real attribute. Older schemas
// registered with RegisterAvroSchema let new code read old data (Avro
// schema resolution).
//
// # Kafka records
//
// EventToRecord, CommandToRecord, RecordToEvent and RecordToCommand follow
// the CloudEvents 1.0 Kafka protocol binding in binary mode: the key is
// the aggregate (stream) ID, the value is Data, every attribute is a ce_
// header and the content type is the content-type header. Records are
// validated with the CloudEvents SDK; a record that can never be valid
// fails with a *PoisonError whose Reason is fit for a dead-letter header.
//
// Usage:
//
//	reg := codec.NewRegistry()
//	if err := codec.RegisterJSON[Deposited](reg, "banking.Deposited"); err != nil { ... }
//	e := orchestrix.Event{Metadata: md, StreamID: "acc-1", Payload: Deposited{Amount: 10}}
//	if err := reg.EncodeEvent(&e); err != nil { ... }
//	rec, err := codec.EventToRecord("banking.events", e)
//	...
//	e, err = codec.RecordToEvent(rec) // on the consumer side
//	err = reg.DecodeEvent(&e)         // e.Payload is a Deposited
//
// Every function here returns errors, never panics, on bad input; errors
// for input that can never succeed match orchestrix.ErrInvalid.
package codec
