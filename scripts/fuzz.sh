#!/usr/bin/env bash
# Runs every Go fuzz target in the module (func FuzzXxx in a _test.go file), one after
# the other, each for FUZZTIME (default 30s): the decoders of what clients and kernels
# send. A failure leaves its input in the package's testdata/fuzz, where it becomes a
# regression test that `go test` runs every time; commit it with the fix.
#   FUZZTIME=5s bash scripts/fuzz.sh          # the short pass
#   bash scripts/fuzz.sh broker               # only packages whose path contains "broker"
# Each package's instrumented test binary is built once and run per target: `go test
# -fuzz` would link it again for every target, which costs more than a short pass fuzzes.
# FUZZ_BUILD_ONLY=1 only compiles them (scripts/setup-background.sh does, to fill Go's
# build cache with the fuzz-instrumented packages while other suites run); the lock
# go-fuzz makes a run wait for such a build instead of compiling the same beside it.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=setup-lock.sh
. "$repo/scripts/setup-lock.sh"
setup_lock go-fuzz
fuzztime=${FUZZTIME:-30s}
filter=${1:-}
# Kept between runs: `go test -c` does not link again a binary that is up to date.
bindir=$repo/bin/fuzz
mkdir -p "$bindir"
cachedir=$(go env GOCACHE)/fuzz
status=0
built=""
while IFS=: read -r file fn; do
  dir=./$(dirname "$file")
  [[ -z "$filter" || "$dir" == *"$filter"* ]] || continue
  bin=$bindir/$(echo "$dir" | tr '/.' '__').test
  if [[ " $built " != *" $dir "* ]]; then
    go test -c -fuzz=. -o "$bin" "$dir"
    built="$built $dir"
  fi
  [ "${FUZZ_BUILD_ONLY:-0}" = 0 ] || continue
  pkg=$(go list "$dir")
  echo "fuzz: $dir $fn for $fuzztime" >&2
  # The binary runs in its package's folder, where testdata/fuzz is.
  corpus=$dir/testdata/fuzz/$fn
  before=$(ls "$corpus" 2>/dev/null | sort || true)
  for attempt in 1 2; do
    out=$bindir/out.txt
    # The binary runs in its package's folder, where testdata/fuzz is.
    if (cd "$dir" && "$bin" -test.run='^$' -test.fuzz="^${fn}\$" -test.fuzztime="$fuzztime" \
      -test.fuzzcachedir="$cachedir/$pkg" -test.parallel="${FUZZPARALLEL:-2}") >"$out" 2>&1; then
      cat "$out" >&2
      break
    fi
    cat "$out" >&2
    # Go's fuzzer can end a run that found nothing with "context deadline exceeded"
    # when its time runs out mid-exchange with a worker. That is not a finding: no
    # input was saved. Run the target once more; a second such run, or any run that
    # saved an input, fails.
    after=$(ls "$corpus" 2>/dev/null | sort || true)
    if [[ $attempt == 1 && "$before" == "$after" ]] && grep -q 'context deadline exceeded' "$out" && ! grep -q 'Failing input written' "$out"; then
      echo "fuzz: $dir $fn: the fuzzer's own timeout, no input saved; running it again" >&2
      continue
    fi
    echo "fuzz: $dir $fn FAILED (input saved under $corpus)" >&2
    status=1
    break
  done
done < <(git ls-files '*_test.go' | xargs grep -Ho '^func Fuzz[A-Za-z0-9_]*' | sed 's/:func /:/' | sort)
exit $status
