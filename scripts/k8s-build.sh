#!/usr/bin/env bash
# Builds (or reuses) the real Kubernetes control plane the Kubernetes tests run against:
#   $KB_CACHE/k8s/<k8s version>/kube-apiserver, kube-controller-manager, kube-scheduler
#                                               from k8s.io/kubernetes@<version>
#   $KB_CACHE/k8s/<k8s version>/etcd             from go.etcd.io/etcd/server/v3@<etcd version>
# straight from the Go module proxy (no container images, no downloads from elsewhere).
# Idempotent and cached: a second run with the binaries present takes milliseconds. Runs
# are serialized with a lock file (flock), so two test runs that start together build once.
# A cold build takes about 4 minutes on 2 cores and ~1.8 GB of memory.
#
# Prints the folder holding the binaries on stdout (everything else goes to stderr).
#
# Env:
#   KB_CACHE         cache folder (default ~/.cache/kernelbus)
#   KB_K8S_VERSION   default v1.34.4
#   KB_ETCD_VERSION  default v3.6.5
set -euo pipefail
# Only the result goes to stdout, where callers read it with $(...).
exec 3>&1 1>&2

cache=${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}
kver=${KB_K8S_VERSION:-v1.34.4}
ever=${KB_ETCD_VERSION:-v3.6.5}
out=$cache/k8s/$kver
mkdir -p "$out"

cmds="kube-apiserver kube-controller-manager kube-scheduler"
missing() { for c in $cmds; do [ -x "$out/$c" ] || echo "$c"; done; }
have() { [ -z "$(missing)" ] && [ -x "$out/etcd" ] && [ -f "$out/.etcd-$ever" ]; }
if have; then echo "$out" >&3; exit 0; fi

# shellcheck source=setup-lock.sh
. "$(dirname "${BASH_SOURCE[0]}")/setup-lock.sh"
setup_lock k8s
exec 9>"$out/.lock"
echo "k8s-build: waiting for the build lock $out/.lock" >&2
flock 9
if have; then echo "$out" >&3; exit 0; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/kb-k8s-build.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod GOWORK=off
start=$SECONDS

todo=$(missing)
if [ -n "$todo" ]; then
  echo "k8s-build: building" $todo "$kver from the Go module proxy" >&2
  dir=$(go mod download -json "k8s.io/kubernetes@$kver" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
  [ -d "$dir" ] || { echo "k8s-build: module download failed" >&2; exit 1; }
  cp -r "$dir" "$work/kubernetes"
  chmod -R u+w "$work/kubernetes"
  cd "$work/kubernetes"
  rm -f go.work go.work.sum
  # The module zip lacks ./staging: point every staging replace at the published module.
  sver=v0.${kver#v1.}
  go mod edit -json | sed -n 's/.*"Path": "\(k8s\.io\/[^"]*\)".*/\1/p' | sort -u | while read -r m; do
    if grep -q "$m => ./staging" go.mod; then echo "-replace=$m=$m@$sver"; fi
  done > "$work/replaces"
  xargs go mod edit < "$work/replaces"
  mkdir -p "$work/bin"
  # One go build for all of them: they share most packages.
  go build -trimpath -o "$work/bin/" \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$kver -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$kver" | cut -d. -f2)" \
    $(for c in $todo; do echo "./cmd/$c"; done)
  for c in $todo; do mv "$work/bin/$c" "$out/$c"; done
  echo "k8s-build:" $todo "built ($((SECONDS - start)) s)" >&2
fi

if [ ! -x "$out/etcd" ] || [ ! -f "$out/.etcd-$ever" ]; then
  echo "k8s-build: building etcd $ever from the Go module proxy" >&2
  mkdir -p "$work/etcd" && cd "$work/etcd"
  go mod init kb-etcd-build >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@$ever" >&2
  go build -trimpath -ldflags "-s -w" -o "$work/etcd-bin" go.etcd.io/etcd/server/v3
  mv "$work/etcd-bin" "$out/etcd"
  touch "$out/.etcd-$ever"
fi

echo "k8s-build: done in $((SECONDS - start)) s: $out" >&2
echo "$out" >&3
