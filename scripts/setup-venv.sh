# Sourced by the set-up scripts that keep a Python virtualenv in the cache.
# `venv_ready NAME VENV PY` leaves VENV a virtualenv whose interpreter runs:
# one whose interpreter vanished (e.g. the base Python was replaced) is
# removed, and a missing one is created with PY. NAME prefixes the messages.
venv_ready() {
  local name=$1 venv=$2 py=$3
  if [ -d "$venv" ] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "$name: venv at $venv is broken, recreating" >&2
    rm -rf "$venv"
  fi
  if [ ! -x "$venv/bin/python" ]; then
    echo "$name: creating venv at $venv" >&2
    "$py" -m venv "$venv"
  fi
}
