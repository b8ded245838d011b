#!/usr/bin/env bash
# Builds the real Helm CLI from the Go module proxy (helm is a Go module), once
# per version, into ${KB_CACHE}/bin, and prints its path. The chart tests
# (deploy/helm) lint, render and install deploy/helm/kernelbus with it.
# Runs are serialized with a lock file, so two test runs that start together
# build once. A cold build takes a few minutes on 2 cores.
#
# Env: KB_CACHE (default ~/.cache/kernelbus), KB_HELM_VERSION (default v3.22.0).
set -euo pipefail
# Only the result goes to stdout, where callers read it with $(...);
# whatever an installer prints (npm, pip, apt) goes to stderr.
exec 3>&1 1>&2
cache="${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}"
version="${KB_HELM_VERSION:-v3.22.0}"
bin="$cache/bin/helm-$version"
if [ -x "$bin" ]; then echo "$bin" >&3; exit 0; fi
mkdir -p "$cache/bin"
# shellcheck source=setup-lock.sh
. "$(dirname "${BASH_SOURCE[0]}")/setup-lock.sh"
setup_lock helm
exec 9>"$bin.lock"
flock 9
if [ ! -x "$bin" ]; then
  echo "setup-helm: building helm $version from the Go module proxy" >&2
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/kb-helm.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # go install with an @version builds outside any module: no go.mod of ours
  # is touched and helm's own go.sum pins its dependencies.
  GOBIN="$tmp" GOFLAGS= GOWORK=off CGO_ENABLED=0 \
    go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version" \
    "helm.sh/helm/v3/cmd/helm@$version" >&2
  mv "$tmp/helm" "$bin"
fi
echo "$bin" >&3
