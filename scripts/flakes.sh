#!/usr/bin/env bash
# Flake hunt: runs the tests of each package repeatedly against the real
# services and prints a table of the tests that failed at least once, with
# their failure rate.
#
#   scripts/flakes.sh [-n count] [-r regexp] [-t timeout] [-o dir] [-x] [packages...]
#
#   -n count    runs of each test (go test -count; default 5)
#   -r regexp   only the tests matching it (go test -run)
#   -t timeout  go test -timeout per package (default 6m per run, at
#               least 60m: the consumers suite takes 4-5 min a run under
#               -race on a loaded 2-core machine, and -count=20 ran out of
#               60m)
#   -o dir      where the logs go (default a new directory under ${TMPDIR:-/tmp})
#   -x          no -race (default: with -race, like scripts/test.sh)
#   packages    default ./... (the core module); a directory with a go.mod
#               of its own (an adapter module, e.g. metrics/prom) stands
#               for every package of that module
#
# It starts (or reuses) the services with scripts/services.sh, installs
# the Python client as scripts/test.sh does, and sets
# ORCHESTRIX_REQUIRE_SERVICES=1, so an integration test that cannot reach
# its service fails instead of skipping. The packages run one after the
# other, so a package's flake is not a neighbour's load.
# Each package's `go test -v` output is kept in <dir>/<package>.log: tests
# with random failures log their seed there (replay one with
# ORCHESTRIX_TEST_SEED=<seed>).
#
# The table lists every test (subtests included) that failed at least once:
# package, test, failures/runs and rate. A package whose binary died
# (panic, timeout) without a failing test is listed with the test "(package)".
# The exit status is 1 if anything failed, 0 otherwise. See docs/services.md.
set -euo pipefail
cd "$(dirname "$0")/.."

count=5 run= timeout= out= race=-race
while getopts "n:r:t:o:x" opt; do
  case $opt in
    n) count=$OPTARG ;;
    r) run=$OPTARG ;;
    t) timeout=$OPTARG ;;
    o) out=$OPTARG ;;
    x) race= ;;
    *) sed -n '2,32p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
timeout=${timeout:-$((count * 6 > 60 ? count * 6 : 60))m}
[ $# -gt 0 ] || set -- ./...

eval "$(scripts/services.sh start)"
export ORCHESTRIX_REQUIRE_SERVICES=1
# The official EventSourcingDB client stores/esdb/esdbtest proves its double with (as scripts/test.sh).
req=stores/esdb/esdbtest/pyclient/requirements.txt
if [ -f "$req" ]; then
  python3 -m pip install --quiet --disable-pip-version-check -r "$req" >&2
fi
out=${out:-$(mktemp -d "${TMPDIR:-/tmp}/orchestrix-flakes.XXXXXX")}
mkdir -p "$out"

# pkgs are "dir<TAB>import path": the module directory go test runs in.
pkgs=()
core=()
for arg in "$@"; do
  if [ -f "$arg/go.mod" ] && [ "$(cd "$arg" && pwd)" != "$PWD" ]; then
    mapfile -t -O "${#pkgs[@]}" pkgs < <(cd "$arg" && go list ./... | sed "s|^|$arg\t|")
  else
    core+=("$arg")
  fi
done
if [ ${#core[@]} -gt 0 ]; then
  mapfile -t -O "${#pkgs[@]}" pkgs < <(go list "${core[@]}" | sed "s|^|.\t|")
fi
module=$(go list -m)
summary="$out/summary.tsv"
: >"$summary"
echo "flakes: ${#pkgs[@]} packages, -count=$count ${race:+-race }${run:+-run '$run' }logs in $out" >&2

for entry in "${pkgs[@]}"; do
  dir=${entry%%$'\t'*} pkg=${entry#*$'\t'}
  rel=${pkg#"$module"}; rel=${rel#/}; rel=${rel:-.}
  log="$out/$(echo "$rel" | tr / _).log"
  start=$SECONDS
  status=0
  (cd "$dir" && go test $race -v -count="$count" -timeout "$timeout" ${run:+-run "$run"} "$pkg") >"$log" 2>&1 || status=$?
  # Passes and failures per test name; a failing parent test is dropped
  # when one of its subtests failed (the subtest is the flake).
  awk -v pkg="$rel" -v status="$status" '
    /^ *--- (PASS|FAIL|SKIP): / {
      name = $3; runs[name]++
      if ($2 == "FAIL:") fails[name]++
    }
    /^(panic: |fatal error: )|test timed out after/ { died = 1 }
    END {
      any = 0
      for (n in fails) {
        leaf = 1
        for (m in fails) if (index(m, n "/") == 1) { leaf = 0; break }
        if (leaf) { printf "%s\t%s\t%d\t%d\n", pkg, n, fails[n], runs[n]; any = 1 }
      }
      if (status != 0 && !any) printf "%s\t(package)\t1\t1\n", pkg
      else if (died) printf "%s\t(package: panic or timeout)\t1\t1\n", pkg
    }' "$log" >>"$summary"
  n=$(awk -v p="$rel" '$1 == p' "$summary" | wc -l)
  echo "flakes: $rel: exit $status, $n failing tests, $((SECONDS - start))s" >&2
done

echo
if [ ! -s "$summary" ]; then
  echo "no test failed in $count runs"
  exit 0
fi
{
  printf "package\ttest\tfailed\trate\n"
  sort -t$'\t' -k1,1 -k2,2 "$summary" | awk -F'\t' '{ printf "%s\t%s\t%d/%d\t%.0f%%\n", $1, $2, $3, $4, 100 * $3 / $4 }'
} | column -t -s$'\t'
echo
echo "logs: $out"
exit 1
