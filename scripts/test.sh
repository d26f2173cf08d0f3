#!/usr/bin/env bash
# The whole test suite against real services: starts (or reuses) PostgreSQL
# and a real Kafka broker with scripts/services.sh, installs the official
# EventSourcingDB Python client used to prove the ESDB double, then runs
# `go test -race ./...` with ORCHESTRIX_REQUIRE_SERVICES=1, so an
# integration test that cannot reach its service fails instead of skipping.
#
# Extra arguments go to `go test` (e.g. scripts/test.sh -run Conformance).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/services.sh start)"
export ORCHESTRIX_REQUIRE_SERVICES=1

req=stores/esdb/esdbtest/pyclient/requirements.txt
if [ -f "$req" ]; then
  python3 -m pip install --quiet --disable-pip-version-check -r "$req" >&2
fi

# shellcheck source=scripts/redact.sh
source scripts/redact.sh
echo "services: KAFKA_BROKERS=$KAFKA_BROKERS DATABASE_URL=$DATABASE_URL" | redact >&2
go vet ./...
go test -race -count=1 -timeout 20m "$@" ./...
# Adapter modules of their own (they keep their dependencies out of the
# core module): vetted and tested the same way.
# Every go.mod below the root is such a module, found rather than listed.
for mod in $(git ls-files '*/go.mod' | xargs -n1 dirname); do
  (cd "$mod" && go vet ./... && go test -race -count=1 -timeout 10m "$@" ./...)
done
