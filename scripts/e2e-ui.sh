#!/usr/bin/env bash
# The web UI's browser test (e2e/ui/ui.test.mjs): playwright-core driving
# Debian's chromium against `kernelbus serve`. Screenshots and page load
# times land in e2e/ui/artifacts (git-ignored).
#
# Env: KB_CACHE (the Python venv at $KB_CACHE/venv), KERNELBUS_BIN,
# KERNELBUS_LAUNCHER_BIN (default <repo>/bin/...).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}
[ -x "$cache/venv/bin/python" ] || { echo "e2e-ui: no venv at $cache/venv: run scripts/setup-python.sh" >&2; exit 1; }
bash "$repo/scripts/setup-ui.sh"
export KB_VENV=$cache/venv
cd "$repo/e2e/ui"
exec node ui.test.mjs "$@"
