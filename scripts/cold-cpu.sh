#!/usr/bin/env bash
# The CPU (user + sys) each build of task test costs a new machine, one after another into
# one empty Go build cache, in the order a cold run compiles them (README, "Time"):
#   bash scripts/cold-cpu.sh [DIR]      # default ~/kb-cold-cpu; prints DIR/times.txt
set -u
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
c=${1:-$HOME/kb-cold-cpu}
rm -rf "$c" && mkdir -p "$c"
git clone -q "$repo" "$c/repo" && cd "$c/repo" || exit 1
export GOCACHE=$c/gocache KB_CACHE=$c/kb
m() {
  local name=$1
  shift
  /usr/bin/time -f "$name: wall %e s, user %U s, sys %S s" -a -o "$c/times.txt" "$@" >"$c/$name.log" 2>&1 ||
    echo "$name: FAILED (log $c/$name.log)" >>"$c/times.txt"
}
m task go tool -modfile=tools/go.mod task --version
m build go tool -modfile=tools/go.mod task build
m vet go vet ./...
m race go list -race -export -deps -test ./...
m fuzz env FUZZ_BUILD_ONLY=1 bash scripts/fuzz.sh
m nats-server bash scripts/setup-nats-server.sh
m helm bash scripts/setup-helm.sh
m k8s bash scripts/k8s-build.sh
cat "$c/times.txt"
