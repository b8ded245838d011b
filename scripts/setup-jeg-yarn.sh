#!/usr/bin/env bash
# Lays out Jupyter Enterprise Gateway's own YARN cluster-mode PySpark kernelspec
# for the YARN start benchmark (`task bench:yarn`), in the cache, never in the repo:
#   $KB_CACHE/jeg-yarn/<version>/sdist/      the jupyter_enterprise_gateway sdist from PyPI
#                                            (JEG's kernelspecs and kernel launchers are not in
#                                            its wheel, only in the sdist)
#   $KB_CACHE/jeg-yarn/<version>/kernels/spark_python_yarn_cluster/
#       kernel.json                          the sdist's, with env pointed at this machine
#       bin/run.sh                           the sdist's, unmodified
#       scripts/launch_ipykernel.py          the sdist's Python launcher, unmodified
#   $KB_CACHE/jeg-yarn/<version>/compat/sitecustomize.py   see below
# and installs what launch_ipykernel.py imports (pycryptodomex, jupyter_client,
# ipykernel) into the spark venv of scripts/yarn-setup.sh, since the launcher runs
# in the YARN application master under that venv's python.
#
# Needs scripts/yarn-setup.sh to have run (it reads $KB_CACHE/yarn/env). Idempotent:
# the layout is redone only when its stamp (version + the env it was made from)
# changes; the sdist download is kept. Prints the kernels folder on stdout.
#
# Env:
#   KB_CACHE        cache folder (default ~/.cache/kernelbus)
#   KB_JEG_VERSION  jupyter_enterprise_gateway version (default 3.3.0)
set -euo pipefail
# Only the result goes to stdout, where callers read it with $(...);
# whatever an installer prints (npm, pip, apt) goes to stderr.
exec 3>&1 1>&2

cache=${KB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kernelbus}
version=${KB_JEG_VERSION:-3.3.0}
# shellcheck source=setup-lock.sh
. "$(dirname "${BASH_SOURCE[0]}")/setup-lock.sh"
setup_lock jeg-yarn
envfile=$cache/yarn/env
[ -f "$envfile" ] || { echo "setup-jeg-yarn: $envfile missing: run scripts/yarn-setup.sh first" >&2; exit 1; }
set -a
# shellcheck disable=SC1090
. "$envfile"
set +a
venv=$(dirname "$(dirname "$KB_SPARK_PYTHON")")

root=$cache/jeg-yarn/$version
sdist=$root/sdist
spec=$root/kernels/spark_python_yarn_cluster
compat=$root/compat

# --- the sdist (downloaded once) --------------------------------------------
tgz=$sdist/jupyter_enterprise_gateway-$version.tar.gz
if [ ! -f "$sdist/.stamp" ] || [ ! -f "$tgz" ]; then
  echo "setup-jeg-yarn: downloading the jupyter_enterprise_gateway $version sdist" >&2
  rm -rf "$sdist" && mkdir -p "$sdist"
  # Only JEG itself as an sdist: with --no-binary :all: pip built its build backend and
  # that backend's own build requirements from sdists too (over 6 min on a cold cache
  # instead of 20 s).
  "$KB_SPARK_PYTHON" -m pip download --quiet --no-binary jupyter_enterprise_gateway --no-deps -d "$sdist" \
    "jupyter_enterprise_gateway==$version"
  [ -f "$tgz" ] || { echo "setup-jeg-yarn: no $tgz after pip download" >&2; exit 1; }
  echo "$version" > "$sdist/.stamp"
fi

# --- the launcher's imports in the spark venv -------------------------------
if ! "$KB_SPARK_PYTHON" -c 'import Cryptodome, jupyter_client, ipykernel' >/dev/null 2>&1; then
  echo "setup-jeg-yarn: installing pycryptodomex, jupyter_client, ipykernel into $venv" >&2
  "$KB_SPARK_PYTHON" -m pip install --quiet pycryptodomex jupyter_client ipykernel
fi

# --- the kernelspec ---------------------------------------------------------
want="$version $(cat "$envfile" | sha256sum | cut -d' ' -f1) $(sha256sum < "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
if [ "$(cat "$root/.stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "setup-jeg-yarn: laying out $spec" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  top=jupyter_enterprise_gateway-$version
  tar -xzf "$tgz" -C "$tmp" \
    "$top/etc/kernelspecs/spark_python_yarn_cluster" \
    "$top/etc/kernel-launchers/python/scripts/launch_ipykernel.py"
  rm -rf "$spec" "$compat" && mkdir -p "$spec/scripts" "$compat"
  cp -r "$tmp/$top/etc/kernelspecs/spark_python_yarn_cluster/." "$spec/"
  # JEG's image build puts the Python launcher next to bin/ as scripts/; run.sh
  # runs ${PROG_HOME}/scripts/launch_ipykernel.py.
  cp "$tmp/$top/etc/kernel-launchers/python/scripts/launch_ipykernel.py" "$spec/scripts/"
  chmod +x "$spec/bin/run.sh"

  # JEG 3.3.0's launcher builds its namespace with SparkSession._wrapped, which
  # Spark removed in 3.3: with pyspark 4 the session starts but `spark` stays a
  # placeholder whose every use raises. Rather than edit the launcher, the
  # application master gets this sitecustomize (through
  # spark.yarn.appMasterEnv.PYTHONPATH below) giving SparkSession a _wrapped that
  # is the session's SQLContext, which is what it was.
  cat > "$compat/sitecustomize.py" <<'PY'
# kernelbus bench: SparkSession._wrapped for JEG 3.3.0's launch_ipykernel.py on Spark >= 3.3.
try:
    from pyspark.sql import SQLContext, SparkSession

    if not hasattr(SparkSession, "_wrapped"):
        SparkSession._wrapped = property(lambda s: SQLContext(s.sparkContext, s))
except Exception:  # no pyspark here: nothing to fix
    pass
PY

  # kernel.json: the sdist's metadata (YarnClusterProcessProxy) and argv
  # (--RemoteProcessProxy.* and spark-context-initialization-mode as shipped),
  # with argv[0] at this run.sh and env for this machine:
  # - SPARK_HOME, PYSPARK_PYTHON: the pip-installed Spark and the spark venv.
  # - PYTHONPATH dropped: the sdist's points at an HDP layout, and spark-submit
  #   would carry it into the containers.
  # - PYSPARK_ARCHIVES_PATH (not in the sdist's spec): a pip-installed Spark has
  #   no python/lib, so spark-submit is told where pyspark.zip and py4j are.
  # - SPARK_OPTS: the sdist's options with its paths replaced (appMasterEnv
  #   PYTHONPATH is the compat folder, PATH leads with the spark venv), then the
  #   minicluster settings kernelbus's pyspark_yarn spec in workers/yarn uses too
  #   (sparkOpts in yarn_test.go; keep them the same): jars from SPARK_HOME, the
  #   venv python, 512m driver/executor, one executor, loopback, no UI.
  # HADOOP_CONF_DIR is the minicluster's, known only when it runs: the benchmark
  # sets it in JEG's environment with EG_INHERITED_ENVS=HADOOP_CONF_DIR, which
  # passes it on to run.sh.
  "$KB_SPARK_PYTHON" - "$spec" "$compat" "$venv" <<'PY'
import json, os, sys

spec, compat, venv = sys.argv[1:4]
home, py = os.environ["KB_SPARK_HOME"], os.environ["KB_SPARK_PYTHON"]
path = os.path.join(spec, "kernel.json")
with open(path) as f:
    k = json.load(f)
k["argv"][0] = os.path.join(spec, "bin", "run.sh")
env = k["env"]
env.pop("PYTHONPATH", None)
env["SPARK_HOME"] = home
env["PYSPARK_PYTHON"] = py
env["PYSPARK_ARCHIVES_PATH"] = os.environ["KB_PYSPARK_ARCHIVES"]
env["SPARK_OPTS"] = " ".join([
    "--master yarn --deploy-mode cluster --name ${KERNEL_ID:-ERROR__NO__KERNEL_ID}",
    "--conf spark.yarn.submit.waitAppCompletion=false",
    "--conf spark.yarn.appMasterEnv.PYTHONUSERBASE=/home/${KERNEL_USERNAME}/.local",
    "--conf spark.yarn.appMasterEnv.PYTHONPATH=" + compat,
    "--conf spark.yarn.appMasterEnv.PATH=" + os.path.join(venv, "bin") + ":$PATH",
    "--conf spark.yarn.maxAppAttempts=1",
    # run.sh evals SPARK_OPTS: the quotes keep the * from the shell.
    "--conf 'spark.yarn.jars=local:" + home + "/jars/*'",
    "--conf spark.pyspark.python=" + py,
    "--conf spark.driver.memory=512m --conf spark.executor.memory=512m --conf spark.executor.instances=1",
    "--conf spark.yarn.appMasterEnv.SPARK_LOCAL_IP=127.0.0.1 --conf spark.executorEnv.SPARK_LOCAL_IP=127.0.0.1",
    "--conf spark.ui.enabled=false ${KERNEL_EXTRA_SPARK_OPTS}",
])
with open(path, "w") as f:
    json.dump(k, f, indent=2)
PY
  echo "$want" > "$root/.stamp"
else
  echo "setup-jeg-yarn: $spec is current" >&2
fi
echo "$root/kernels" >&3
