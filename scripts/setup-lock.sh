# Sourced by the set-up scripts. `setup_lock NAME` holds $KB_CACHE/locks/NAME.lock
# until the script exits, so two runs of one set-up (the background start of
# `task test`, scripts/setup-background.sh, and a suite's own dependency on it)
# never install into one folder at once: the second waits, then finds the work
# done. When the background run of this set-up failed, its log is shown here and
# the set-up runs again in the foreground, where its error fails the suite.
# Locks named go-* guard builds of this clone's own code (scripts/fuzz.sh, test:race), so
# they live in the clone's bin/locks: runs in other clones do not wait for them.
_setup_lock_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
setup_lock() {
  local name=$1 cache=${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}
  local bg=$_setup_lock_repo/bin/setup-background locks=$cache/locks
  case "$name" in go-*) locks=$_setup_lock_repo/bin/locks ;; esac
  mkdir -p "$locks"
  exec 8>"$locks/$name.lock"
  if ! flock -n 8; then
    echo "$name: waiting for the set-up already under way (lock $locks/$name.lock)" >&2
    flock 8
  fi
  local rc
  rc=$(cat "$bg/$name.rc" 2>/dev/null || true)
  if [ -n "$rc" ] && [ "$rc" != 0 ]; then
    echo "$name: its background run failed (exit $rc); the end of $bg/$name.log:" >&2
    tail -n 30 "$bg/$name.log" | sed 's/^/  | /' >&2
    echo "$name: running it again here" >&2
  fi
}

# Run as a command, `bash scripts/setup-lock.sh NAME CMD...` runs CMD holding the lock NAME.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  setup_lock "$1"
  shift
  exec "$@"
fi
