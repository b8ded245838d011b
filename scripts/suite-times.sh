#!/usr/bin/env bash
# The wall time of each suite of `task test`, for the README's figures and for
# seeing which suite grew:
#   bash scripts/suite-times.sh begin        # the run starts
#   bash scripts/suite-times.sh mark NAME    # suite NAME starts (and the one before ends)
#   bash scripts/suite-times.sh report       # the run ends: a table to stderr
# Marks go to bin/suite-times (one "epoch name" line each).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
f=$repo/bin/suite-times
mkdir -p "$repo/bin"
case "${1:-}" in
begin) echo "$(date +%s) set-up" >"$f" ;;
mark) echo "$(date +%s) ${2:?suite name}" >>"$f" ;;
report)
  [ -f "$f" ] || exit 0
  echo "$(date +%s) end" >>"$f"
  awk 'NR > 1 { printf "suite-times: %-18s %5d s\n", name, $1 - t }
       NR == 1 { t0 = $1 }
       { t = $1; name = $2 }
       END { printf "suite-times: %-18s %5d s (%.1f min)\n", "total", t - t0, (t - t0) / 60 }' "$f" >&2
  ;;
*)
  echo "usage: $0 begin|mark NAME|report" >&2
  exit 2
  ;;
esac
