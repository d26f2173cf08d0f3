// Package lifecycletest holds the lifecycle tests of a command processor
// run as a real process: SIGTERM under load (the process exits 0 within
// its shutdown bound, /readyz goes down while /livez stays up, no command
// is lost or applied twice) and a rolling restart of three group members
// (the processing pause, measured per group option). The tests re-execute
// their own binary as the processor (see child_test.go) and need the real
// Kafka and PostgreSQL (internal/testenv); the package has no API.
//
//	eval "$(scripts/services.sh start)"
//	ORCHESTRIX_REQUIRE_SERVICES=1 go test ./internal/lifecycletest -v
//	# every group option of the rolling restart (about 2 minutes):
//	LIFECYCLE_VARIANTS=all go test ./internal/lifecycletest -run Rolling -v
//	# one, with the members' franz-go debug logs kept in /tmp:
//	LIFECYCLE_VARIANTS=static LIFECYCLE_LOG=debug go test ./internal/lifecycletest -run Rolling -v
package lifecycletest
