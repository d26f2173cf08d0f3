#!/usr/bin/env bash
# The whole test suite against real services: starts (or reuses) PostgreSQL
# and a real Kafka broker with scripts/services.sh, installs the official
# EventSourcingDB Python client used to prove the ESDB double, then runs
# `go test -race ./...` with ORCHESTRIX_REQUIRE_SERVICES=1, so an
# integration test that cannot reach its service fails instead of skipping.
#
# Extra arguments go to `go test` (e.g. scripts/test.sh -run Conformance).
#
# ORCHESTRIX_SERVICES chooses where the services come from:
#   script (default)  scripts/services.sh, no Docker needed (what CI runs)
#   docker            Kafka and PostgreSQL containers started by
#                     scripts/containers (testcontainers-go), removed at the end
#   env               KAFKA_BROKERS and DATABASE_URL as already exported
set -euo pipefail
cd "$(dirname "$0")/.."

case "${ORCHESTRIX_SERVICES:-script}" in
  script) eval "$(scripts/services.sh start)" ;;
  docker)
    # Built rather than `go run` so its exit status (2: no Docker) survives.
    bin="$(mktemp -d)"
    trap 'rm -rf "$bin"' EXIT
    go -C scripts/containers build -o "$bin/containers" .
    status=0
    ORCHESTRIX_SERVICES=env "$bin/containers" -- scripts/test.sh "$@" || status=$?
    exit "$status"
    ;;
  env) : "${KAFKA_BROKERS:?ORCHESTRIX_SERVICES=env needs KAFKA_BROKERS}" "${DATABASE_URL:?ORCHESTRIX_SERVICES=env needs DATABASE_URL}" ;;
  *) echo "ORCHESTRIX_SERVICES=$ORCHESTRIX_SERVICES: want script, docker or env" >&2; exit 2 ;;
esac
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
