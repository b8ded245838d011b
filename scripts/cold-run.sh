#!/usr/bin/env bash
# The README's test command as a new machine runs it (issue 19's figure): a fresh clone of
# this repository's HEAD in DIR (default ~/kb-cold; not under /tmp, which Kubernetes pods
# cannot see), with every cache the scripts use empty: Go modules and build cache, KB_CACHE,
# pip, npm, Maven. KB_COLD_PURGE_APT=1 (root) first purges the Debian packages the scripts
# install (chromium, Prometheus, openssh-server, and what only they pulled in), so apt
# installs them again. Prints START and EXIT lines with the wall time; each suite's time
# comes from task test itself (scripts/suite-times.sh).
#   bash scripts/cold-run.sh [DIR]
set -u
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
c=${1:-$HOME/kb-cold}
case "$c" in /tmp/*) echo "cold-run: $c is under /tmp, which Kubernetes pods cannot see" >&2; exit 2 ;; esac
rm -rf "$c" && mkdir -p "$c"
if [ "${KB_COLD_PURGE_APT:-0}" = 1 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq chromium prometheus openssh-server >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get autoremove -y -qq --purge >/dev/null 2>&1
  apt-get clean
fi
git clone -q "$repo" "$c/repo"
cd "$c/repo"
export KB_CACHE=$c/kb GOMODCACHE=$c/gomod GOCACHE=$c/gocache PIP_CACHE_DIR=$c/pip \
  npm_config_cache=$c/npm MAVEN_OPTS="-Dmaven.repo.local=$c/m2" CI=1
start=$(date +%s)
echo "START $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD) load $(cut -d' ' -f1-3 /proc/loadavg)"
rc=0
.ci/run || rc=$?
echo "EXIT $rc after $(($(date +%s) - start)) s at $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
exit $rc
