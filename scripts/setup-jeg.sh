#!/usr/bin/env bash
# Creates (or reuses) the virtualenv Jupyter Enterprise Gateway runs in for the
# benchmarks:
#   $KB_CACHE/jeg-<version>  (KB_CACHE defaults to ~/.cache/kernelbus)
# JEG 3.x pins jupyter_server<2 and jupyter_client<7, so it cannot share the
# e2e venv. ipykernel goes into the same venv so that JEG's python3
# kernelspec works, though the benchmark points both gateways at one spec.
# Idempotent: a stamp file records a finished install. Prints the venv path
# on stdout.
#
# Env:
#   KB_CACHE     cache folder (default ~/.cache/kernelbus)
#   KB_PYTHON    interpreter used to create the venv (default python3)
#   KB_JEG_VERSION  jupyter_enterprise_gateway version (default 3.3.0)
set -euo pipefail
# Only the result goes to stdout, where callers read it with $(...);
# whatever an installer prints (npm, pip, apt) goes to stderr.
exec 3>&1 1>&2

cache=${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}
version=${KB_JEG_VERSION:-3.3.0}
py=${KB_PYTHON:-python3}
venv=$cache/jeg-$version
stamp=$venv/.kb-installed
pyver=$("$py" -c 'import sys; print(sys.version.split()[0])')

mkdir -p "$cache"
# shellcheck source=setup-venv.sh
. "$(dirname "${BASH_SOURCE[0]}")/setup-venv.sh"
venv_ready setup-jeg "$venv" "$py"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$version $pyver" ]; then
  echo "setup-jeg: installing jupyter_enterprise_gateway==$version into $venv" >&2
  rm -f "$stamp"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet "jupyter_enterprise_gateway==$version" ipykernel
  "$venv/bin/python" -m ipykernel install --sys-prefix >/dev/null
  echo "$version $pyver" > "$stamp"
else
  echo "setup-jeg: $venv is current" >&2
fi
"$venv/bin/jupyter-enterprisegateway" --version >/dev/null
echo "$venv" >&3
