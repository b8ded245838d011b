#!/usr/bin/env bash
# Installs what the YARN tests need, once, into the cache:
#   $KB_CACHE/yarn/<hadoop version>/   the MiniYARNCluster harness (e2e/yarn/harness) and its jars
#   $KB_CACHE/spark-venv/              a venv with pyspark and ipykernel (Spark's SPARK_HOME is its pyspark folder)
#   $KB_CACHE/spark-venv/spark-python-lib/  pyspark.zip and py4j-*.zip, which YARN cluster mode ships
#                                      (a pip-installed Spark has no python/lib of its own)
# and writes $KB_CACHE/yarn/env with the paths the tests read. Idempotent: each step is
# skipped while its stamp holds the hash of its inputs.
#
# Env:
#   KB_CACHE   cache folder (default ~/.cache/kernelbus)
#   KB_PYTHON  interpreter used to create the venv (default python3)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}
hadoop_version=3.4.1
pyspark_version=4.0.1
py=${KB_PYTHON:-python3}
# shellcheck source=setup-lock.sh
. "$(dirname "${BASH_SOURCE[0]}")/setup-lock.sh"
setup_lock yarn

# --- the harness -----------------------------------------------------------
src=$repo/e2e/yarn/harness
hdir=$cache/yarn/$hadoop_version
want=$( { cat "$src/pom.xml"; find "$src/src" -type f | sort | xargs cat; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$hdir/.stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "yarn-setup: building the MiniYARNCluster harness (hadoop $hadoop_version)" >&2
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  cp -r "$src/." "$build/"
  (cd "$build" && mvn -B -q -Dhadoop.version=$hadoop_version package)
  rm -rf "$hdir" && mkdir -p "$hdir"
  cp "$build/target/kernelbus-yarn-harness.jar" "$hdir/"
  cp -r "$build/target/lib" "$hdir/lib"
  echo "$want" > "$hdir/.stamp"
else
  echo "yarn-setup: harness in $hdir is current" >&2
fi

# --- pyspark ---------------------------------------------------------------
venv=$cache/spark-venv
if [ -d "$venv" ] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$venv"
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
want="pyspark==$pyspark_version ipykernel $("$venv/bin/python" -c 'import sys; print(sys.version)')"
if [ "$(cat "$venv/.kb-stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "yarn-setup: installing pyspark $pyspark_version into $venv" >&2
  "$venv/bin/python" -m pip install --quiet "pyspark==$pyspark_version" ipykernel
  echo "$want" > "$venv/.kb-stamp"
else
  echo "yarn-setup: $venv is current" >&2
fi
spark_home=$("$venv/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
lib=$venv/spark-python-lib
if [ ! -f "$lib/.stamp" ] || [ "$(cat "$lib/.stamp")" != "$pyspark_version" ]; then
  echo "yarn-setup: zipping pyspark and py4j for YARN" >&2
  rm -rf "$lib" && mkdir -p "$lib"
  "$venv/bin/python" - "$lib" <<'PY'
import os, sys, zipfile, pyspark, py4j
out = sys.argv[1]
def pack(pkg, name, skip=()):
    root = os.path.dirname(os.path.dirname(pkg.__file__))
    top = os.path.basename(os.path.dirname(pkg.__file__))
    with zipfile.ZipFile(os.path.join(out, name), "w", zipfile.ZIP_DEFLATED) as z:
        for d, dirs, files in os.walk(os.path.join(root, top)):
            rel = os.path.relpath(d, root)
            dirs[:] = [x for x in dirs if os.path.join(rel, x) not in skip and x != "__pycache__"]
            for f in files:
                z.write(os.path.join(d, f), os.path.join(rel, f))
# Only the Python package: the jars reach YARN as spark.yarn.jars.
pack(pyspark, "pyspark.zip", skip={"pyspark/jars", "pyspark/bin", "pyspark/sbin", "pyspark/examples", "pyspark/data", "pyspark/licenses"})
import importlib.metadata as md
pack(py4j, "py4j-%s-src.zip" % md.version("py4j"))
PY
  echo "$pyspark_version" > "$lib/.stamp"
fi

# Written aside and renamed, so a reader never sees a half-written file.
cat > "$cache/yarn/env.$$" <<ENV
KB_YARN_HARNESS=$hdir
KB_SPARK_HOME=$spark_home
KB_SPARK_PYTHON=$venv/bin/python
KB_PYSPARK_ARCHIVES=$(ls "$lib"/*.zip | tr '\n' ',' | sed 's/,$//')
ENV
mv -f "$cache/yarn/env.$$" "$cache/yarn/env"
echo "yarn-setup: ok ($cache/yarn/env)" >&2
