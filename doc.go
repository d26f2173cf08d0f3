// Package orchestrix is the shared vocabulary of the Orchestrix framework:
// events, commands, their metadata and the sentinel errors every layer
// agrees on. It imports neither Kafka nor SQL.
//
// An Event is something that happened to one stream (an aggregate); a
// Command asks one aggregate to do something. Both carry Metadata that maps
// one to one onto CloudEvents 1.0 attributes (see package codec), and an
// encoded payload (Data, with its ContentType). Payload holds the decoded Go
// value when a codec.Registry produced or decoded the message.
//
// The runtimes live in sub-packages: stores (event stores), aggregates
// (decide/evolve), producers and consumers (Kafka), outbox (publishing the
// store's log to Kafka), projections and sagas.
package orchestrix
