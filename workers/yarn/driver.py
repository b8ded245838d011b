# kernelbus: the PySpark "driver" that spark-submit starts in the YARN
# application master (cluster mode). Spark's PythonRunner runs this file with
# the Py4J gateway of the AM's JVM in its environment; it hands that
# environment to the kernel through the launch configuration and becomes
# kernelbus-launcher (exec), which starts the Python kernel. The kernel then
# attaches to the same JVM, so it is the Spark driver. When the launcher exits
# the application ends. A detached process starts the JVM's SparkContext
# meanwhile (prewarm), so the kernel finds it built or being built.
import base64
import fcntl
import json
import os
import shutil
import stat
import sys

# Variables of the AM container the kernel needs to be the driver.
PASS = ("PYSPARK_", "SPARK_", "PYTHONHASHSEED", "HADOOP_", "YARN_", "JAVA_HOME",
        "CONTAINER_ID", "LOCAL_DIRS", "LOG_DIRS", "NM_HOST", "LD_LIBRARY_PATH",
        "APPLICATION_WEB_PROXY_BASE")


def prewarm():
    """Starts the JVM's SparkContext in a detached process while the
    launcher and the kernel boot; the kernel's startup file then attaches
    to it (SparkContext.getOrCreate waits for a context being built)
    instead of building it only once ipykernel is up."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)  # the child only forks the builder and exits
        return
    code = 0
    try:
        if os.fork() == 0:  # the builder, reparented, not the launcher's child
            from pyspark import SparkConf
            from pyspark.java_gateway import launch_gateway
            import time
            t0 = time.monotonic()
            gw = launch_gateway()
            gw.jvm.org.apache.spark.SparkContext.getOrCreate(SparkConf(_jvm=gw.jvm)._jconf)
            sys.stderr.write("kernelbus: SparkContext built ahead of the kernel in %.1f s\n" % (time.monotonic() - t0))
    except BaseException:
        import traceback
        sys.stderr.write("kernelbus: building the SparkContext ahead of the kernel failed (the kernel tries again):\n")
        traceback.print_exc()
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)


def main():
    here = os.getcwd()
    with open(os.path.join(here, "kb-launch.json")) as f:
        cfg = json.load(f)
    env = cfg.setdefault("env", {}) or {}
    cfg["env"] = env
    if env.get("KERNELBUS_SPARK_CONTEXT", "lazy") != "none":
        prewarm()
    for k, v in os.environ.items():
        if k.startswith(PASS):
            env[k] = v
    # The AM's PYTHONPATH (pyspark.zip, py4j, --py-files) comes first.
    pp = [p for p in (os.environ.get("PYTHONPATH", ""), env.get("PYTHONPATH", "")) if p]
    if pp:
        env["PYTHONPATH"] = os.pathsep.join(pp)
    # An IPython profile whose startup file creates spark and sc.
    ipdir = os.path.join(here, "kb-ipython")
    startup = os.path.join(ipdir, "profile_default", "startup")
    os.makedirs(startup, exist_ok=True)
    shutil.copy(os.path.join(here, "kb_spark_startup.py"), os.path.join(startup, "00-kernelbus-spark.py"))
    env["IPYTHONDIR"] = ipdir
    # A kernel environment is unpacked by YARN beside this file (its
    # archive went with spark.yarn.dist.archives): the worker wrote its
    # folder as {container_dir}/<alias>.
    argv = [a.replace("{container_dir}", here) for a in (cfg.get("argv") or [])]
    for k, v in list(env.items()):
        if isinstance(v, str) and "{container_dir}" in v:
            env[k] = v.replace("{container_dir}", here)
    # The kernel runs under the Python Spark chose for the driver.
    if argv and argv[0] in ("python", "python3", "{python}"):
        argv[0] = sys.executable
    cfg["argv"] = argv
    launcher = os.path.join(here, "kernelbus-launcher")
    os.chmod(launcher, os.stat(launcher).st_mode | stat.S_IXUSR)
    enc = base64.b64encode(json.dumps(cfg).encode()) + b"\n"
    # The config holds the kernel's bus credentials: it goes to the
    # launcher through a pipe on stdin, never an environment the kernel
    # could read in /proc, and its localized file is removed.
    try:
        os.remove(os.path.join(here, "kb-launch.json"))
    except OSError:
        pass
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, 1031, max(len(enc), 65536))  # F_SETPIPE_SZ: fits the whole config
    except OSError:
        pass
    # A writer of its own (forked twice, so the launcher that replaces
    # this process is left no child to reap) in case the pipe is smaller.
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            os.close(r)
            view = memoryview(enc)
            while view:
                view = view[os.write(w, view):]
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(w)
    os.dup2(r, 0)
    os.close(r)
    env = {k: v for k, v in os.environ.items() if k != "KB_LAUNCH_CONFIG"}
    os.execve(launcher, [launcher, "--config=-"], env)


if __name__ == "__main__":
    main()
