#!/usr/bin/env bash
# Creates (or reuses) the Python virtualenv the end-to-end suites run in:
#   $KB_CACHE/venv  (KB_CACHE defaults to ~/.cache/kernelbus)
# and installs e2e/python/requirements.txt into it. Idempotent and cached: the pip step
# is skipped while a stamp file holds the hash of the requirements file (plus the Python
# version), so a second run takes well under a second.
#
# Env:
#   KB_CACHE   cache folder (default ~/.cache/kernelbus, outside the clone so a fresh clone on the same machine reuses it)
#   KB_PYTHON  interpreter used to create the venv (default python3)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}
venv=$cache/venv
req=$repo/e2e/python/requirements.txt
stamp=$venv/.kb-requirements.sha256
py=${KB_PYTHON:-python3}
# shellcheck source=setup-lock.sh
. "$(dirname "${BASH_SOURCE[0]}")/setup-lock.sh"
setup_lock python
# shellcheck source=setup-venv.sh
. "$(dirname "${BASH_SOURCE[0]}")/setup-venv.sh"

mkdir -p "$cache"

venv_ready setup-python "$venv" "$py"

want=$( { cat "$req"; "$venv/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)

if [ "$want" != "$have" ]; then
  echo "setup-python: installing $req" >&2
  rm -f "$stamp"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -r "$req"
  echo "$want" > "$stamp"
else
  echo "setup-python: $venv is current" >&2
fi

# ipykernel's wheel ships the python3 kernelspec into <prefix>/share/jupyter/kernels;
# kernelbus is pointed at that folder with --kernelspec-dir, so it must be there.
spec=$venv/share/jupyter/kernels/python3/kernel.json
if [ ! -f "$spec" ]; then
  echo "setup-python: $spec missing, running ipykernel install --sys-prefix" >&2
  "$venv/bin/python" -m ipykernel install --sys-prefix >/dev/null
fi
if [ ! -f "$spec" ]; then
  echo "setup-python: ERROR: no python3 kernelspec at $spec" >&2
  exit 1
fi
"$venv/bin/python" - "$spec" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1]))
assert spec["argv"] and spec["language"] == "python", spec
PY
# A worker running as root runs local kernels as unprivileged uids (one per kernel by
# default), which must be able to run this venv's python: every folder above the venv and
# above the interpreter it links to needs o+x (search only, no listing), the venv itself o+rX.
open_up() { # path: o+x on each folder from / down to path's folder (those we own)
  local p d
  p=$(cd "$(dirname "$1")" && pwd -P)/$(basename "$1")
  d=$(dirname "$p")
  while [ "$d" != / ]; do
    if [ -O "$d" ] && [ -n "$(find "$d" -maxdepth 0 ! -perm -o=x)" ]; then
      chmod o+x "$d" && echo "setup-python: chmod o+x $d (local kernels run as another account)" >&2
    fi
    d=$(dirname "$d")
  done
}
open_up "$venv/bin/python"
open_up "$(readlink -f "$venv/bin/python")"
chmod -R o+rX "$venv" 2>/dev/null || true
echo "setup-python: ok ($venv)" >&2
