#!/usr/bin/env bash
# Runs every Go fuzz target in the module (func FuzzXxx in a _test.go file), one after
# the other, each for FUZZTIME (default 30s): the decoders of what clients and kernels
# send. A failure leaves its input in the package's testdata/fuzz, where it becomes a
# regression test that `go test` runs every time; commit it with the fix.
#   FUZZTIME=5s bash scripts/fuzz.sh          # the short pass
#   bash scripts/fuzz.sh broker               # only packages whose path contains "broker"
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
fuzztime=${FUZZTIME:-30s}
filter=${1:-}
status=0
while IFS=: read -r file fn; do
  dir=./$(dirname "$file")
  [[ -z "$filter" || "$dir" == *"$filter"* ]] || continue
  echo "fuzz: $dir $fn for $fuzztime" >&2
  if ! go test -run '^$' -fuzz "^${fn}\$" -fuzztime "$fuzztime" "$dir"; then
    echo "fuzz: $dir $fn FAILED (input saved under $dir/testdata/fuzz/$fn)" >&2
    status=1
  fi
done < <(git ls-files '*_test.go' | xargs grep -Ho '^func Fuzz[A-Za-z0-9_]*' | sed 's/:func /:/' | sort)
exit $status
