#!/usr/bin/env bash
# The end-to-end suites: real Jupyter clients against a running kernelbus.
#   1. scripts/setup-python.sh, scripts/setup-node.sh, scripts/setup-jupyterhub.sh (cached; fast the second time)
#   2. go build bin/kernelbus and bin/kernelbus-launcher (skipped when KERNELBUS_BIN is set,
#      KB_NO_BUILD=1, or KB_TEST_TARGET names a reference gateway)
#   3. pytest e2e/python, then the @jupyterlab/services suite (scripts/e2e-js.sh)
# Exits non-zero if anything fails. Extra arguments go to pytest.
#
# Env: KB_CACHE (default ~/.cache/kernelbus, outside the clone so a fresh clone on the same machine reuses it), KERNELBUS_BIN, KERNELBUS_LAUNCHER_BIN,
#      KB_TEST_TARGET (kernelbus | kg | jupyter-server; see e2e/python/kbprocs.py).
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}
export KB_CACHE=$cache

"$repo/scripts/setup-python.sh" || exit 1
"$repo/scripts/setup-node.sh" || exit 1
# The identity suites run a real JupyterHub from its own venv.
KB_JUPYTERHUB_VENV=$("$repo/scripts/setup-jupyterhub.sh") || exit 1
export KB_JUPYTERHUB_VENV

target=${KB_TEST_TARGET:-kernelbus}
if [ "$target" = kernelbus ] && [ -z "${KERNELBUS_BIN:-}" ] && [ "${KB_NO_BUILD:-0}" != 1 ]; then
  echo "e2e: building kernelbus and kernelbus-launcher into $repo/bin" >&2
  (cd "$repo" && go build -o "$repo/bin/" ./cmd/kernelbus ./cmd/kernelbus-launcher) || exit 1
fi
export KERNELBUS_BIN=${KERNELBUS_BIN:-$repo/bin/kernelbus}
export KERNELBUS_LAUNCHER_BIN=${KERNELBUS_LAUNCHER_BIN:-$repo/bin/kernelbus-launcher}

status=0

# A private temp folder (gateway data dirs and logs), so concurrent runs never prune each
# other's; kept when something failed.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kb-e2e.XXXXXX")

"$cache/venv/bin/python" -m pytest "$repo/e2e/python" -p no:cacheprovider \
  --basetemp="$tmp/pytest" --timeout=240 --durations=10 "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "e2e: pytest collected no tests: that is a failure here" >&2
fi
[ $rc -eq 0 ] || status=1

"$repo/scripts/e2e-js.sh" || status=1

if [ $status -eq 0 ]; then
  rm -rf "$tmp"
  echo "e2e: all suites passed" >&2
else
  echo "e2e: FAILED (logs and data kept in $tmp)" >&2
fi
exit $status
