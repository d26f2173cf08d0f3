// Package sagas will hold the saga (process-manager) runtime: durable
// state and the commands it emits committed together (through the outbox
// table), compensation in reverse for every completed step, and durable
// timeouts that fire after a restart (DESIGN G10). Nothing is implemented
// yet; it builds on consumers, stores/postgres and outbox.
package sagas
