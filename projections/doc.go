// Package projections will hold the projection runtime: read models built
// from event topics with the checkpoint written in the same transaction as
// the read model (exactly-once effect), and rebuild by replay from
// scratch (DESIGN G9). Nothing is implemented yet; it builds on consumers
// and the stores' ReadAll.
package projections
