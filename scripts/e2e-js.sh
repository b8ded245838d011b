#!/usr/bin/env bash
# Runs the @jupyterlab/services suite (e2e/js) against a gateway that it starts itself,
# exactly as the Python `gateway` fixture does (e2e/python/kbprocs.py: port 0, read back from its log,
# temporary data dir, the venv's kernelspecs, a random token), and stops it afterwards.
#
# Needs scripts/setup-python.sh and scripts/setup-node.sh to have run (scripts/e2e.sh
# does both). KERNELBUS_BIN / KERNELBUS_LAUNCHER_BIN / KB_TEST_TARGET as for pytest.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}
py=$cache/venv/bin/python
[ -x "$py" ] || { echo "e2e-js: no venv at $cache/venv: run scripts/setup-python.sh" >&2; exit 1; }
[ -d "$repo/e2e/js/node_modules" ] || { echo "e2e-js: run scripts/setup-node.sh first" >&2; exit 1; }

cd "$repo/e2e/js"
# kernelbus' answers are checked against its OpenAPI document after the suite.
log=""
if [ "${KB_TEST_TARGET:-kernelbus}" = kernelbus ]; then
  log=$(mktemp "${TMPDIR:-/tmp}/kb-openapi.XXXXXX")
  export KB_OPENAPI_LOG=$log
  trap 'rm -f "$log"' EXIT
fi
"$py" "$repo/e2e/python/kbprocs.py" run -- node --test --test-force-exit --test-reporter=spec "$@" services.test.mjs
if [ -n "$log" ]; then
  "$py" "$repo/e2e/python/openapi_check.py" "$log"
fi
