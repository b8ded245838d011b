#!/usr/bin/env bash
# The set-ups of `task test`'s later suites, started together in the background
# when the run starts, so that on a new machine their downloads (apt, npm, PyPI,
# Maven, Go modules) overlap each other and the first Go suites, and the one-time
# builds (Kubernetes, Helm, nats-server, the YARN harness) use the CPU that the
# suites leave idle instead of adding their time to the run's:
#   bash scripts/setup-background.sh start   # returns at once
#   bash scripts/setup-background.sh stop    # the run's end: a summary, and what still runs is ended
#   bash scripts/setup-background.sh all     # `task setup`: all of them now, in the foreground
# Everything here runs at the lowest CPU and I/O priority (nice 19, ionice idle),
# so a suite running beside it keeps its speed. There is no separate barrier:
# each set-up script holds its lock while it works (scripts/setup-lock.sh), so
# a suite's own dependency on a set-up waits for the background run, then finds
# the work done, or, when it failed, shows its log and does it again in the
# foreground, where its error fails the suite. Logs and exit codes of the
# background runs: bin/setup-background/<name>.{log,rc}.
#
# Env: KB_CACHE (default ~/.cache/kernelbus), KB_SETUP_BACKGROUND=0 to skip it.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$repo/bin/setup-background
cache=${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}
export KB_CACHE=$cache

# One set-up: its script's output to <name>.log, its exit code to <name>.rc.
step() {
  local name=$1
  shift
  local rc=0 t0=$SECONDS
  "$@" >"$dir/$name.log" 2>&1 </dev/null || rc=$?
  echo "$rc" >"$dir/$name.rc"
  echo "$(date -u +%T) $name: exit $rc after $((SECONDS - t0)) s" >>"$dir/times"
  return "$rc"
}

# Chains run side by side; the steps of one chain run in order (the apt-get
# installs share dpkg's lock; the JEG YARN kernelspec needs the YARN set-up; the
# Go builds, CPU-bound, would only crowd each other).
run() {
  local s=$repo/scripts
  cd "$repo"
  step apt bash -c "bash '$s/setup-prometheus.sh' >/dev/null && bash '$s/setup-ssh.sh' >/dev/null && bash '$s/setup-ui.sh'" &
  step node bash "$s/setup-node.sh" &
  step jupyterhub bash "$s/setup-jupyterhub.sh" &
  { step yarn bash "$s/yarn-setup.sh" && step jeg-yarn bash "$s/setup-jeg-yarn.sh"; } &
  # First the fuzz-instrumented build of the module (test:fuzz-short comes right after
  # test:race, the first suite; it waits for the lock, then finds Go's build cache full),
  # then the builds of the later suites.
  {
    # (One that fails does not stop the next: it is redone in the foreground anyway.)
    step go-fuzz env FUZZ_BUILD_ONLY=1 bash "$s/fuzz.sh" || true
    step nats-server bash "$s/setup-nats-server.sh" || true
    step helm bash "$s/setup-helm.sh" || true
    step k8s bash "$s/k8s-build.sh" || true
  } &
  wait
}

case "${1:-}" in
start)
  [ "${KB_SETUP_BACKGROUND:-1}" != 0 ] || exit 0
  if [ -f "$dir/pgid" ] && kill -0 -- "-$(cat "$dir/pgid")" 2>/dev/null; then
    echo "setup-background: already running (process group $(cat "$dir/pgid"))" >&2
    exit 0
  fi
  rm -rf "$dir" && mkdir -p "$dir"
  # Its own session and process group, so that `stop` ends all of it and only it.
  setsid nice -n 19 ionice -c 3 bash "${BASH_SOURCE[0]}" run >"$dir/run.log" 2>&1 </dev/null &
  echo $! >"$dir/pgid"
  echo "setup-background: set-ups started in the background (logs in $dir)" >&2
  ;;
run)
  # Under Linux's autogroup scheduling (kernel.sched_autogroup_enabled) nice ranks
  # processes only within their session, and setsid above made this one a session of
  # its own: without this, its compiles took as much CPU as the suites'. (The cold run
  # of 3bf4d5f: the foreground's 17 CPU-minutes of compiles took 18 min of wall time.)
  echo 19 >/proc/self/autogroup 2>/dev/null || true
  run
  ;;
all)
  rm -rf "$dir" && mkdir -p "$dir"
  echo "setup-background: every set-up side by side (logs in $dir)" >&2
  run
  status=0
  for rc in "$dir"/*.rc; do
    [ "$(cat "$rc")" = 0 ] && continue
    name=$(basename "$rc" .rc)
    echo "setup-background: $name FAILED (exit $(cat "$rc")); the end of $dir/$name.log:" >&2
    tail -n 30 "$dir/$name.log" | sed 's/^/  | /' >&2
    status=1
  done
  rm -f "$dir"/*.rc
  sed 's/^/setup-background: /' "$dir/times" >&2
  exit $status
  ;;
stop)
  [ -d "$dir" ] || exit 0
  if [ -f "$dir/pgid" ]; then
    pg=$(cat "$dir/pgid")
    # apt-get is left to finish (a dpkg killed midway leaves the machine's
    # packages half-configured); the rest is ended.
    for _ in $(seq 1 1200); do
      pgrep -g "$pg" -x 'apt-get|dpkg' >/dev/null 2>&1 || break
      sleep 0.5
    done
    kill -TERM -- "-$pg" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 -- "-$pg" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pg" 2>/dev/null || true
    rm -f "$dir/pgid"
  fi
  failed=""
  for rc in "$dir"/*.rc; do
    [ -e "$rc" ] || continue
    [ "$(cat "$rc")" = 0 ] || failed="$failed $(basename "$rc" .rc)"
  done
  if [ -n "$failed" ]; then
    # Each of these ran again in the foreground when a suite needed it, so the
    # run's result already says whether that worked; this is the record.
    echo "setup-background: these set-ups failed in the background:$failed (logs in $dir)" >&2
  fi
  # Exit codes belong to this run only: a later suite run alone must not report them.
  rm -f "$dir"/*.rc
  [ ! -f "$dir/times" ] || sed 's/^/setup-background: /' "$dir/times" >&2
  ;;
*)
  echo "usage: $0 start|stop|all" >&2
  exit 2
  ;;
esac
