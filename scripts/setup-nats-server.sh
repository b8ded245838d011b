#!/usr/bin/env bash
# Builds nats-server from the module proxy at the version go.mod requires,
# once per version, into ${KB_CACHE}/bin, and prints its path. The failover
# tests run it as separate processes to form a real 3-node cluster.
set -euo pipefail
# Only the result goes to stdout, where callers read it with $(...);
# whatever an installer prints (npm, pip, apt) goes to stderr.
exec 3>&1 1>&2
# shellcheck source=setup-lock.sh
. "$(dirname "${BASH_SOURCE[0]}")/setup-lock.sh"
setup_lock nats-server
cd "$(dirname "$0")/.."
cache="${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}"
version="$(go list -m -f '{{.Version}}' github.com/nats-io/nats-server/v2)"
bin="$cache/bin/nats-server-$version"
if [ ! -x "$bin" ]; then
  mkdir -p "$cache/bin"
  go build -trimpath -o "$bin.tmp" github.com/nats-io/nats-server/v2 >&2
  mv "$bin.tmp" "$bin"
fi
echo "$bin" >&3
