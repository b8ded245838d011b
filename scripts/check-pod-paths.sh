#!/usr/bin/env bash
# Fails at once, with the reason, when the clone or KB_CACHE lies under /tmp: the
# Kubernetes suites' node agent gives every pod a private /tmp, so a kernel pod
# could not run the clone's kernelbus-launcher or the cached venv's Python (it
# would exit 127 after the control plane was built). `task test` runs it first,
# test:k8s and test:helm before their set-up; k8stest.HostPaths checks the same in Go.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cache=${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd -P)
bad=""
for p in "$repo" "$cache"; do
  case "$p/" in /tmp/*) bad="$bad $p" ;; esac
done
if [ -n "$bad" ]; then
  echo "check-pod-paths: under /tmp:$bad. The Kubernetes suites' pods get a private /tmp and could not run the launcher or the kernels' Python from there: clone the repo and keep KB_CACHE outside /tmp (e.g. under \$HOME)." >&2
  exit 1
fi
