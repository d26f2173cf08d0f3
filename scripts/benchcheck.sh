#!/usr/bin/env bash
# Benchmark regression check: runs a cheap subset of the benchmark suite
# (bench/suite, and the saga transition benchmark of sagas/) against the
# real services, extracts each case's ratio to its raw baseline measured in
# the same run, and compares it with the ratio recorded in bench/ratios.txt.
# Ratios, not absolute times: the machine's speed cancels out.
#
# A case fails when its ratio falls below recorded × TOLERANCE (0.6 by
# default: wide enough for a noisy shared 2-core machine), or below 0.8 ×
# the lowest of its recorded runs where that is lower (a case noisier than
# the tolerance); a failing case is run once more on its own and fails the
# check only if it fails again.
#
#   scripts/benchcheck.sh            # check (exit 1 on a regression)
#   scripts/benchcheck.sh --record   # measure and rewrite bench/ratios.txt
#
# Environment: BENCHCHECK_TOLERANCE (default 0.6); ORCHESTRIX_BENCH_SLOW=regexp
# slows the matching suite cases to twice their time, to see the check fail.
# Takes about two minutes on the 2-core machine (services already running):
# 20-40 s to build the two test binaries, 80-100 s of benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."

record=0
case "${1:-}" in
  --record) record=1 ;;
  "") ;;
  *) echo "usage: $0 [--record]" >&2; exit 2 ;;
esac
tol="${BENCHCHECK_TOLERANCE:-0.6}"
ratios_file=bench/ratios.txt

eval "$(scripts/services.sh start)"
export ORCHESTRIX_REQUIRE_SERVICES=1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go test -vet=off -c -o "$work/suite.test" ./bench/suite
go test -vet=off -c -o "$work/sagas.test" ./sagas

# The subset: "prefix regexp benchtime" per line, run by the suite's test
# binary; a case whose name starts with prefix is rerun with its benchtime.
# About 80 s of benchmarks on the 2-core machine.
subset=(
  'Store/memory/ Store/memory/^(append=100|load=1000)$ 1000x'
  'MemoryFootprint MemoryFootprint 2x'
  'Store/postgres/ Store/postgres/^(append=100|load=1000|snapshot-load)$ 60x'
  'Store/kafka/ Store/kafka/^(append=1000|load=1000)$ 40x'
  'Bus/messages= Bus/^messages=100$ 100x'
  'Bus/publishers= Bus/^publishers=10$ 20x'
)

# ratios prints "case ratio" for each benchmark line of go test output on
# stdin: the case is the name without "Benchmark" and the -GOMAXPROCS
# suffix, the ratio the value before the "ratio" unit.
ratios() {
  awk '/^Benchmark/ {
    name = $1; sub(/^Benchmark/, "", name); sub(/-[0-9]+$/, "", name)
    for (i = 2; i <= NF; i++) if ($i == "ratio") print name, $(i-1)
  }'
}

# suite RE BENCHTIME: runs suite cases, prints their ratios.
suite() {
  "$work/suite.test" -test.run '^$' -test.bench "$1" -test.benchtime "$2" -test.timeout 10m </dev/null >"$work/out" 2>&1 || {
    cat "$work/out" >&2; echo "benchcheck: the suite failed on $1" >&2; return 1; }
  ratios <"$work/out"
}

# sagas: one saga transition on PostgreSQL against one outbox row committed
# (sagas/bench_test.go, which runs them one after the other); the ratio is
# the baseline's p50 over the transition's (higher is better, as for
# speeds), the median of 3 runs of the pair.
sagas() {
  local r
  : >"$work/sagas-ratios"
  for r in 1 2 3; do
    "$work/sagas.test" -test.run '^$' -test.bench 'Transition/postgres|BaselineCommit' -test.benchtime 500x -test.timeout 5m </dev/null >"$work/sagas" 2>&1 || {
      cat "$work/sagas" >&2; echo "benchcheck: the saga benchmarks failed" >&2; return 1; }
    awk '/^Benchmark/ { for (i = 2; i <= NF; i++) { if ($i == "p50-us") p50[$1] = $(i-1); if ($i == "p99-us") p99[$1] = $(i-1) } }
      END {
        for (k in p50) { if (k ~ /^BenchmarkTransition\/postgres/) { t = p50[k]; t99 = p99[k] } if (k ~ /^BenchmarkBaselineCommit/) c = p50[k] }
        if (t > 0 && c > 0) printf "%.4f\n", c / t
        if (t > 0) printf "# saga transition p50 %.2f ms, p99 %.2f ms (target < 10 ms)\n", t / 1000, t99 / 1000 > "/dev/stderr"
      }' "$work/sagas" >>"$work/sagas-ratios"
  done
  sort -g "$work/sagas-ratios" | awk '{ v[NR] = $1 } END { if (NR) printf "sagas/Transition/postgres-p50 %s\n", v[int((NR + 1) / 2)] }'
}

# exact CASE: the -test.bench pattern that matches CASE alone (the
# top level is the function's name, Benchmark included).
exact() {
  local IFS=/ parts out=() p
  read -r -a parts <<<"Benchmark$1"
  for p in "${parts[@]}"; do out+=("^${p}\$"); done
  echo "${out[*]}"
}

# benchtime CASE: the benchtime of CASE's line in the subset.
benchtime() {
  local line
  for line in "${subset[@]}"; do
    if [[ "$1" == "${line%% *}"* ]]; then echo "${line##* }"; return; fi
  done
  echo 20x
}

# measure: runs the subset once, appending "case ratio" lines to $1.
measure() {
  local line re
  for line in "${subset[@]}"; do
    re=${line#* }
    suite "${re%% *}" "${line##* }" | tee -a "$1"
  done
  sagas | tee -a "$1"
}

start=$(date +%s)
if [ "$record" = 1 ]; then
  # Several runs; the recorded ratio is each case's median, the spread is
  # kept beside it for the reader.
  runs="${BENCHCHECK_RECORD_RUNS:-3}"
  : >"$work/all"
  for r in $(seq "$runs"); do
    echo "benchcheck: recording, run $r of $runs" >&2
    measure "$work/all"
  done
  {
    echo "# Ratios to the raw baselines measured in the same run (higher is better): each"
    echo "# case's median of ${runs} runs of scripts/benchcheck.sh --record, then the runs' min-max,"
    echo "# recorded on $(date -u +%Y-%m-%d) at $(git rev-parse --short HEAD), load average $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "# scripts/benchcheck.sh fails when a case falls twice below its ratio here × ${tol}"
    echo "# (or 0.8 × its min, where lower)."
    echo "# case ratio min-max"
    sort -k1,1 -k2,2g "$work/all" | awk '
      { v[$1] = v[$1] " " $2; n[$1]++; if (!($1 in order)) { order[$1] = ++k; names[k] = $1 } }
      END {
        for (i = 1; i <= k; i++) {
          c = names[i]; m = split(substr(v[c], 2), a, " ")
          med = (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
          printf "%s %.3f %s-%s\n", c, med, a[1], a[m]
        }
      }'
  } >"$ratios_file"
  echo "benchcheck: recorded $(grep -vc '^#' "$ratios_file") ratios in $ratios_file ($(($(date +%s) - start)) s)"
  exit 0
fi
: >"$work/measured"
measure "$work/measured"

fail=0
printf '%-45s %9s %9s %9s  %s\n' case recorded measured floor verdict
while read -r name recorded spread _; do
  case "$name" in ''|'#'*) continue ;; esac
  got=$(awk -v n="$name" '$1 == n { print $2 }' "$work/measured" | tail -1)
  # The floor: recorded × tolerance, or, for a case noisier than that when
  # it was recorded, 0.8 × the lowest of its recorded runs.
  floor=$(awk -v r="$recorded" -v t="$tol" -v s="${spread:-}" 'BEGIN {
    f = r * t; split(s, m, "-"); if (m[1] != "" && m[1] * 0.8 < f) f = m[1] * 0.8; printf "%.4f", f }')
  below() { [ -z "$1" ] || awk -v g="$1" -v f="$floor" 'BEGIN { exit !(g < f) }'; }
  verdict=ok
  if below "$got"; then
    # Once more, on its own: a shared machine has bad seconds.
    if [[ "$name" == sagas/* ]]; then
      again=$(sagas 2>/dev/null | awk -v n="$name" '$1 == n { print $2 }')
    else
      again=$(suite "$(exact "$name")" "$(benchtime "$name")" | awk -v n="$name" '$1 == n { print $2 }')
    fi
    if below "$again"; then
      verdict="FAIL (retry: ${again:-not measured})"
      fail=1
    else
      verdict="ok on retry ($again)"
    fi
  fi
  printf '%-45s %9s %9s %9s  %s\n' "$name" "$recorded" "${got:-missing}" "$floor" "$verdict"
done <"$ratios_file"
echo "benchcheck: $(($(date +%s) - start)) s, tolerance ${tol}"
if [ "$fail" = 1 ]; then
  echo "benchcheck: a ratio fell below its recorded value × ${tol} twice; see bench/README.md (The benchmark suite)" >&2
  exit 1
fi
