#!/usr/bin/env bash
# Runs Jupyter Enterprise Gateway's own integration tests, from its sdist on PyPI, against
# `kernelbus serve`: TestAuthorization (the authorization_test kernelspec's authorized_users /
# unauthorized_users) and TestPythonKernelLocal. JEG's test client sends no credentials and
# chooses KERNEL_USERNAME itself, as JEG allows, so the gateway runs with --insecure-no-auth
# (everyone is an anonymous administrator that may name any user).
#
# Needs scripts/setup-python.sh (the venv) and bin/kernelbus{,-launcher} (task build), or
# KERNELBUS_BIN / KERNELBUS_LAUNCHER_BIN. JEG_VERSION picks the sdist (default 3.3.0).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}
version=${JEG_VERSION:-3.3.0}
venv=$cache/venv
kb=${KERNELBUS_BIN:-$repo/bin/kernelbus}
launcher=${KERNELBUS_LAUNCHER_BIN:-$repo/bin/kernelbus-launcher}
[ -x "$venv/bin/python" ] || { echo "jeg-itests: no venv at $venv: run scripts/setup-python.sh" >&2; exit 1; }
[ -x "$kb" ] && [ -x "$launcher" ] || { echo "jeg-itests: build $kb and $launcher first (task build)" >&2; exit 1; }

# The sdist, downloaded once (scripts/setup-jeg-yarn.sh's copy when it has one).
sdist=$cache/jeg-itests/$version
tgz=$sdist/jupyter_enterprise_gateway-$version.tar.gz
if [ ! -f "$tgz" ]; then
  mkdir -p "$sdist"
  if [ -f "$cache/jeg-yarn/$version/sdist/$(basename "$tgz")" ]; then
    cp "$cache/jeg-yarn/$version/sdist/$(basename "$tgz")" "$tgz"
  else
    echo "jeg-itests: downloading the jupyter_enterprise_gateway $version sdist" >&2
    "$venv/bin/python" -m pip download --quiet --no-binary jupyter_enterprise_gateway --no-deps -d "$sdist" "jupyter_enterprise_gateway==$version"
  fi
  [ -f "$tgz" ] || { echo "jeg-itests: no $tgz" >&2; exit 1; }
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/kb-jeg-itests.XXXXXX")
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  if [ "${keep:-}" = 1 ]; then echo "jeg-itests: logs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
tar xzf "$tgz" -C "$work"
src=$work/jupyter_enterprise_gateway-$version
itests=$src/enterprise_gateway/itests

# kernelbus listens on port 0 and logs the address it got ("kernelbus serving", url): no
# port is picked ahead for another process to take first.
PATH="$venv/bin:$PATH" setsid "$kb" serve --listen 127.0.0.1:0 --data-dir "$work/data" --insecure-no-auth \
  --kernelspec-dir "$itests/kernels" --kernelspec-dir "$venv/share/jupyter/kernels" \
  --launcher "$launcher" --log-level info >"$work/serve.log" 2>&1 &
pid=$!
hostport=""
for _ in $(seq 1 600); do
  url=$(grep -m1 '"message":"kernelbus serving"' "$work/serve.log" | sed -n 's/.*"url":"http:\/\/\([^"/]*\).*/\1/p' || true)
  if [ -n "$url" ] && curl -fsS "http://$url/api" >/dev/null 2>&1; then hostport=$url; break; fi
  kill -0 "$pid" 2>/dev/null || { echo "jeg-itests: kernelbus exited:" >&2; tail -30 "$work/serve.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$hostport" ] || { echo "jeg-itests: kernelbus did not serve within a minute:" >&2; tail -30 "$work/serve.log" >&2; exit 1; }

set +e
# JEG's CI sets ITEST_HOSTNAME_PREFIX (its default, "*", is not a valid regex); local
# kernels run on this host.
ITEST_HOSTNAME_PREFIX=${ITEST_HOSTNAME_PREFIX:-$(hostname)} GATEWAY_HOST=$hostport PYTHONPATH=$src "$venv/bin/python" -m pytest -p no:cacheprovider -q \
  "$itests/test_authorization.py" "$itests/test_python_kernel.py::TestPythonKernelLocal" "$@"
rc=$?
set -e
if [ $rc -ne 0 ]; then
  keep=1
  tail -40 "$work/serve.log" >&2
fi
exit $rc
