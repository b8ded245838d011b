#!/usr/bin/env bash
# Installs a real Prometheus server (Debian's package) for the test that
# has it scrape `kernelbus serve`, and prints the path of its binary. The
# package's service is not started: the test runs its own server on a
# random port with a throwaway configuration and storage.
set -euo pipefail
# Only the result goes to stdout, where callers read it with $(...);
# whatever an installer prints (npm, pip, apt) goes to stderr.
exec 3>&1 1>&2
if bin="$(command -v prometheus 2>/dev/null)"; then
  echo "$bin" >&3
  exit 0
fi
# shellcheck source=setup-lock.sh
. "$(dirname "${BASH_SOURCE[0]}")/setup-lock.sh"
setup_lock apt
if bin="$(command -v prometheus 2>/dev/null)"; then
  echo "$bin" >&3
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "setup-prometheus: no prometheus on PATH; install it (Debian/Ubuntu: apt-get install prometheus) or set PROMETHEUS_BIN" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# A fresh machine has no package lists yet.
if ! apt-cache show prometheus >/dev/null 2>&1; then
  apt-get update -qq >&2
fi
# Where an init system starts the package's own service, it stays on its
# default port, apart from the test's servers.
apt-get install -y -qq --no-install-recommends prometheus >&2
command -v prometheus >&3
