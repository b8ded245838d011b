#!/usr/bin/env bash
# Checks the README's promise: in a clean clone, its first command sets up and
# runs kernelbus with a Python kernel it can start. The command is read from
# the README itself (first line of the first code block), so the two cannot
# drift apart. The download caches (KB_CACHE, Go's module cache) are shared
# with the calling environment: a fresh machine fills them the same way.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d)
# Run as root, kernelbus runs local kernels as unprivileged uids, which must reach the clone's
# kernelbus-launcher: mktemp's folder is 0700.
chmod 755 "$work"
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

git clone --quiet "$repo" "$work/clone"
cd "$work/clone"
run_cmd=$(awk '/^```/{n++; next} n==1 {print; exit}' README.md | sed 's/[[:space:]]*#.*$//')
test_cmd=$(awk '/^```/{n++; next} n==1 {c++} n==1 && c==2 {print; exit}' README.md | sed 's/[[:space:]]*#.*$//')
case "$run_cmd" in *"task run"*) ;; *) echo "fresh-clone-check: README's first command is not the run command: $run_cmd" >&2; exit 1;; esac
case "$test_cmd" in *"task test"*) ;; *) echo "fresh-clone-check: README's second command is not the test command: $test_cmd" >&2; exit 1;; esac
grep -q "$test_cmd" .ci/run || { echo "fresh-clone-check: .ci/run does not call '$test_cmd'" >&2; exit 1; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export KB_CACHE=${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}
echo "fresh-clone-check: running '$run_cmd' in a clean clone on port $port" >&2
setsid bash -c "$run_cmd -- --listen 127.0.0.1:$port --data-dir $work/data" >"$work/run.log" 2>&1 &
pid=$!

url=http://127.0.0.1:$port
# With no token configured, kernelbus prints one it generated (as jupyter_server does);
# a user copies it from there, and so does this check.
token=""
for i in $(seq 1 600); do
  [ -n "$token" ] || token=$(grep -o 'auth_token=[0-9a-f]*' "$work/run.log" 2>/dev/null | head -1 | cut -d= -f2 || true)
  if [ -n "$token" ] && curl -fsS -H "Authorization: token $token" "$url/api/kernelspecs" >"$work/specs.json" 2>/dev/null; then break; fi
  kill -0 "$pid" 2>/dev/null || { echo "fresh-clone-check: kernelbus exited:" >&2; tail -30 "$work/run.log" >&2; exit 1; }
  sleep 0.5
done
[ -n "$token" ] || { echo "fresh-clone-check: kernelbus printed no token:" >&2; tail -30 "$work/run.log" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' "$url/api/kernels")
[ "$code" = 401 ] || { echo "fresh-clone-check: GET /api/kernels without the token answered $code, not 401" >&2; exit 1; }
python3 - "$url" "$work/specs.json" "$token" <<'PY'
import json, sys, urllib.request
url, specs, token = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
auth = {"Authorization": "token " + token}
assert "python3" in specs["kernelspecs"], f"no python3 kernelspec: {list(specs['kernelspecs'])}"
req = urllib.request.Request(url + "/api/kernels", data=b'{"name":"python3"}', method="POST",
                             headers={"Content-Type": "application/json", **auth})
with urllib.request.urlopen(req, timeout=60) as r:
    assert r.status == 201, r.status
    kid = json.load(r)["id"]
req = urllib.request.Request(f"{url}/api/kernels/{kid}", method="DELETE", headers=auth)
with urllib.request.urlopen(req, timeout=30) as r:
    assert r.status == 204, r.status
print(f"fresh-clone-check: ok, started and stopped python3 kernel {kid}")
PY
