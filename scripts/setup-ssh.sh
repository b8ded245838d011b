#!/usr/bin/env bash
# Installs Debian's OpenSSH server, which the ssh resource manager's tests run
# as several "hosts" (one sshd per network namespace, each with a generated
# config and keys; nothing is configured system-wide and no service starts).
# Idempotent: does nothing when sshd is already installed.
#
# Needs root (the tests need it anyway for network namespaces). Prints the
# path of sshd.
set -euo pipefail
# Only the result goes to stdout, where callers read it with $(...);
# whatever an installer prints (npm, pip, apt) goes to stderr.
exec 3>&1 1>&2

sshd=/usr/sbin/sshd
if [ -x "$sshd" ]; then
  echo "$sshd" >&3
  exit 0
fi
# shellcheck source=setup-lock.sh
. "$(dirname "${BASH_SOURCE[0]}")/setup-lock.sh"
setup_lock apt
if [ -x "$sshd" ]; then
  echo "$sshd" >&3
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup-ssh: openssh-server is missing and installing it needs root" >&2
  exit 1
fi
echo "setup-ssh: installing openssh-server with apt-get" >&2
# Keep the package's maintainer scripts from starting a system-wide sshd on
# port 22: the tests start their own. Only our own policy file is removed.
policy=/usr/sbin/policy-rc.d
own_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  own_policy=1
fi
cleanup() { if [ -n "$own_policy" ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends openssh-server iproute2 >&2
if [ ! -x "$sshd" ]; then
  echo "setup-ssh: apt-get finished but $sshd is missing" >&2
  exit 1
fi
echo "$sshd" >&3
