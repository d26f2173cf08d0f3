// Package suite is the benchmark suite of the original design, as Go
// benchmarks that measure each case beside its raw baseline in the same
// run and report the ratio (b.ReportMetric "ratio": the system's rate over
// the baseline's, higher is better, 1 means "as fast as the raw library").
//
// The package has no API: everything is in its _test.go files.
//
//   - BenchmarkBus: producers.Sender → Kafka → consumers.Group (with a
//     consumers.Router for 5 and 10 handlers) against raw franz-go
//     produce and a consumer-group poll loop: 1, 100 and 1,000 messages;
//     5 and 10 handlers; small, medium and large payloads; 10 and 100
//     concurrent publishers.
//   - BenchmarkStore: the event store on stores/memory (against a plain
//     map and slice), stores/postgres (against raw pgx INSERT, COPY and
//     SELECT on a table shaped like the events table) and the events
//     topic on Kafka (codec.EventToRecord through the producing client
//     against raw franz-go): append 1, 100, 1k and 10k events, load them,
//     load from a version, snapshots, 100 streams, concurrent writers.
//   - BenchmarkMemoryFootprint: the heap held by 100k events in the
//     memory store against the map and slice.
//
// Integration cases take the services from the environment like the
// tests (internal/testenv: KAFKA_BROKERS, DATABASE_URL) and skip without
// them, or fail when ORCHESTRIX_REQUIRE_SERVICES=1. bench/README.md ("The
// benchmark suite") has the table and the commands; scripts/benchcheck.sh
// runs a cheap subset and compares its ratios with bench/ratios.txt.
package suite
