#!/usr/bin/env bash
# Installs what the browser test (e2e/ui) needs: Debian's chromium (apt-get,
# once; needs root) and playwright-core from npm (`npm ci` from the committed
# lockfile, cached by a stamp like setup-node.sh). Prints nothing on stdout.
#
# Env:
#   KB_CACHE   cache folder (default ~/.cache/kernelbus)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}
dir=$repo/e2e/ui
# shellcheck source=setup-lock.sh
. "$repo/scripts/setup-lock.sh"
setup_lock apt

if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup-ui: chromium is missing; install Debian's chromium package (apt-get install chromium) as root" >&2
    exit 1
  fi
  echo "setup-ui: apt-get install chromium" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >&2 ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >&2; }
fi

lock=$dir/package-lock.json
stamp=$dir/node_modules/.kb-lock.sha256
want=$( { cat "$dir/package.json" "$lock"; node --version; } | sha256sum | cut -d' ' -f1)
if [ "$want" != "$(cat "$stamp" 2>/dev/null || true)" ]; then
  echo "setup-ui: npm ci in $dir" >&2
  mkdir -p "$cache/npm"
  (cd "$dir" && npm ci --no-audit --no-fund --cache "$cache/npm" --loglevel=error >&2)
  echo "$want" > "$stamp"
fi
(cd "$dir" && node -e 'require("playwright-core")') || { echo "setup-ui: playwright-core is unusable" >&2; exit 1; }
echo "setup-ui: ok" >&2
