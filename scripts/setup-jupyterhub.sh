#!/usr/bin/env bash
# Creates (or reuses) the JupyterHub the identity tests run against:
#   $KB_CACHE/jupyterhub-<version>        venv with jupyterhub from PyPI
#   $KB_CACHE/jupyterhub-<version>/node   configurable-http-proxy from npm
# It has its own venv so that the Hub's dependencies never move the e2e venv's
# versions. Idempotent: a stamp file records a finished install. Prints the
# venv path on stdout.
#
# Env:
#   KB_CACHE               cache folder (default ~/.cache/kernelbus)
#   KB_PYTHON              interpreter used to create the venv (default python3)
#   KB_JUPYTERHUB_VERSION  jupyterhub version (default 6.1.1)
#   KB_CHP_VERSION         configurable-http-proxy version (default 5.3.0)
set -euo pipefail
# Only the result goes to stdout, where callers read it with $(...);
# whatever an installer prints (npm, pip, apt) goes to stderr.
exec 3>&1 1>&2

cache=${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}
version=${KB_JUPYTERHUB_VERSION:-6.1.1}
chp=${KB_CHP_VERSION:-5.3.0}
py=${KB_PYTHON:-python3}
venv=$cache/jupyterhub-$version
stamp=$venv/.kb-installed
pyver=$("$py" -c 'import sys; print(sys.version.split()[0])')
want="$version $chp $pyver"
# shellcheck source=setup-lock.sh
. "$(dirname "${BASH_SOURCE[0]}")/setup-lock.sh"
setup_lock jupyterhub

command -v npm >/dev/null || { echo "setup-jupyterhub: npm is not installed (the Hub's proxy comes from npm)" >&2; exit 1; }
mkdir -p "$cache"
# shellcheck source=setup-venv.sh
. "$(dirname "${BASH_SOURCE[0]}")/setup-venv.sh"
venv_ready setup-jupyterhub "$venv" "$py"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "setup-jupyterhub: installing jupyterhub==$version and configurable-http-proxy@$chp into $venv" >&2
  rm -f "$stamp"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet "jupyterhub==$version"
  mkdir -p "$cache/npm" "$venv/node"
  npm install --prefix "$venv/node" --no-audit --no-fund --cache "$cache/npm" --loglevel=error \
    "configurable-http-proxy@$chp"
  ln -sf ../node/node_modules/.bin/configurable-http-proxy "$venv/bin/configurable-http-proxy"
  echo "$want" > "$stamp"
else
  echo "setup-jupyterhub: $venv is current" >&2
fi
# Fail here, not inside a test, if the install is unusable.
"$venv/bin/jupyterhub" --version >/dev/null
"$venv/bin/configurable-http-proxy" --version >/dev/null
echo "$venv" >&3
