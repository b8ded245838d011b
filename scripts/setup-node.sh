#!/usr/bin/env bash
# Installs the Node dependencies of the JS end-to-end suite (e2e/js) with `npm ci` from
# the committed package-lock.json. Idempotent and cached: skipped while
# e2e/js/node_modules holds a stamp with the hash of the lockfile (and the Node version).
# npm's download cache lives under $KB_CACHE/npm so a reinstall works from local files.
#
# Env:
#   KB_CACHE   cache folder (default ~/.cache/kernelbus, outside the clone so a fresh clone on the same machine reuses it)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}
dir=$repo/e2e/js
lock=$dir/package-lock.json
stamp=$dir/node_modules/.kb-lock.sha256
# shellcheck source=setup-lock.sh
. "$(dirname "${BASH_SOURCE[0]}")/setup-lock.sh"
setup_lock node

command -v node >/dev/null || { echo "setup-node: node is not installed" >&2; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "setup-node: Node >= 20 required (found $(node --version))" >&2
  exit 1
fi

want=$( { cat "$dir/package.json" "$lock"; node --version; } | sha256sum | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)

if [ "$want" != "$have" ]; then
  echo "setup-node: npm ci in $dir" >&2
  mkdir -p "$cache/npm"
  (cd "$dir" && npm ci --no-audit --no-fund --cache "$cache/npm" --loglevel=error)
  echo "$want" > "$stamp"
else
  echo "setup-node: $dir/node_modules is current" >&2
fi

# Fail here, not inside a test, if the install is unusable.
(cd "$dir" && node --input-type=module -e '
  const s = await import("@jupyterlab/services");
  const ws = await import("ws");
  if (!s.KernelManager || !s.ServerConnection || !ws.WebSocket) process.exit(1);
')
echo "setup-node: ok" >&2
