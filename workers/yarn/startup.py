# kernelbus: makes `spark` and `sc` in a kernel that runs as the PySpark driver
# of a YARN application (see driver.py). KERNELBUS_SPARK_CONTEXT says when:
# eager (before the kernel answers), lazy (in the background; first use
# waits) or none.
import os as _kb_os
import itertools as _kb_itertools
import threading as _kb_threading
import time as _kb_time


def _kb_log(msg):
    # The kernel's real stderr (ipykernel sends sys.stderr to the notebook);
    # the launcher relays it to the container's log.
    import sys
    try:
        sys.__stderr__.write("kernelbus-spark: %s\n" % msg)
        sys.__stderr__.flush()
    except Exception:
        pass


def _kb_make_spark():
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession
    gw = launch_gateway()  # the AM's gateway, from PYSPARK_GATEWAY_PORT
    jvm = gw.jvm
    # After a kernel restart the JVM's context is still there: getOrCreate
    # attaches to it (a second SparkContext in one JVM is refused).
    conf = SparkConf(_jvm=jvm)
    jsc = jvm.org.apache.spark.api.java.JavaSparkContext.fromSparkContext(
        jvm.org.apache.spark.SparkContext.getOrCreate(conf._jconf))
    sc = SparkContext(gateway=gw, jsc=jsc, conf=conf)
    return SparkSession(sc), sc


def _kb_jvm_times(spark):
    # The driver JVM's CPU and JIT compilation time so far, for the
    # warm-up's log lines: what the JVM did between two of them.
    try:
        jvm = spark.sparkContext._jvm
        pid = jvm.java.lang.ProcessHandle.current().pid()
        with open("/proc/%d/stat" % pid) as f:
            ticks = f.read().rsplit(")", 1)[1].split()
        cpu = (int(ticks[11]) + int(ticks[12])) / float(_kb_os.sysconf("SC_CLK_TCK"))
        jit = jvm.java.lang.management.ManagementFactory.getCompilationMXBean().getTotalCompilationTime() / 1e3
        return "driver JVM CPU %.1f s, JIT %.1f s" % (cpu, jit)
    except Exception as e:
        return "driver JVM times: %r" % (e,)


def _kb_sql_job(spark):
    # The small SQL job of a first cell: range, an aggregate over a
    # shuffle, collect.
    t0 = _kb_time.monotonic()
    spark.range(1000).selectExpr("sum(id)").collect()
    return _kb_time.monotonic() - t0


def _kb_python_job(spark):
    # A Python RDD job: it starts a Python worker on the executor.
    t0 = _kb_time.monotonic()
    spark.sparkContext.parallelize([0], 1).map(lambda x: x + 1).collect()
    return _kb_time.monotonic() - t0


def _kb_warmup(spark):
    # A warm kernel's first jobs, before it answers: executors are
    # requested only once the application master has registered, after the
    # context exists, so without them the first user's cell would wait for
    # an executor container to start (seconds) and for the SQL code paths to
    # load. The first SQL job waits for the executor and loads the classes;
    # a Python RDD job starts the executor's Python worker (seconds of CPU
    # on a crowded host); then the SQL job a few times more, last, so that
    # both JVMs' JIT has compiled what every job runs (planning, task
    # launch, shuffle, result fetch), which one run leaves interpreted, and
    # the JIT's work from the Python job is behind them when the kernel
    # answers. The jobs run in a job group, as a cell's do. A failure is
    # only logged: the kernel still works, just slower.
    took = []
    sc = spark.sparkContext
    try:
        sc.setJobGroup("kernelbus-warm-up", "warm kernel: warm-up", interruptOnCancel=True)
        took.append(_kb_sql_job(spark))
        py = _kb_python_job(spark)
        began = _kb_time.monotonic()
        for i in range(1, _KB_WARMUP_JOBS):
            # On a crowded host the repeats stop early (at least two run):
            # the warm-up must not hold the kernel back for minutes. The
            # budget starts after the first jobs, which wait for the
            # executor's container and its Python worker.
            if i >= 3 and _kb_time.monotonic() - began > _KB_WARMUP_SECONDS:
                break
            took.append(_kb_sql_job(spark))
        _kb_log("warm-up jobs done: SQL %s s, Python RDD %.2f s; %s" % (
            " ".join("%.2f" % x for x in took), py, _kb_jvm_times(spark)))
    except Exception as e:
        _kb_log("warm-up job failed: %r" % (e,))
    finally:
        try:
            sc._jsc.clearJobGroup()
        except Exception:
            pass


class _KbKeepWarm:
    """While a warm kernel waits in its pool (minutes to an hour), what
    the warm-up warmed goes cold: Spark ends the executor's idle Python
    worker and idle task threads after a minute, and the JIT's counters of
    what runs once per job decay. Measured on the MiniYARNCluster at load
    17-31, the first cell's job after 2-3 idle minutes took 1.7-6 times as
    long as the warm-up's last (part of that is the first cell's, which is
    slower without the wait too). So until the first cell runs, a
    background thread repeats the warm-up's two small jobs every
    _KB_KEEP_WARM_SECONDS (1.2 s and 1.0 s at load 13-17 on 2 cores),
    in job group kernelbus-keep-warm. The first cell stops it for good and
    cancels a round still running: from then on the kernel's Spark is the
    user's alone."""

    def __init__(self, spark):
        self.spark = spark
        self.sc = spark.sparkContext
        self.stopped = _kb_threading.Event()
        self.busy = False
        self.rounds = 0
        self.last = None
        t = _kb_threading.Thread(target=self.run, args=(spark,), name="kernelbus-keep-warm", daemon=True)
        t.start()

    def run(self, spark):
        try:
            self.sc.setJobGroup("kernelbus-keep-warm", "warm kernel: keeping it warm until its first cell",
                                interruptOnCancel=True)
        except Exception as e:
            _kb_log("keep-warm: %r; not keeping warm" % (e,))
            return
        while not self.stopped.wait(_KB_KEEP_WARM_SECONDS):
            # busy before the check: stop() then sees a round that it
            # must cancel, or this sees the stop.
            self.busy = True
            if self.stopped.is_set():
                return
            try:
                py = _kb_python_job(spark)
                self.last = (_kb_sql_job(spark), py)
                self.rounds += 1
                if self.rounds == 1:
                    _kb_log("keep-warm: first round: SQL %.2f s, Python RDD %.2f s; again every %d s until the first cell; %s" % (
                        self.last + (_KB_KEEP_WARM_SECONDS, _kb_jvm_times(spark))))
            except Exception as e:
                if not self.stopped.is_set():
                    _kb_log("keep-warm job failed: %r; not keeping warm" % (e,))
                return
            finally:
                self.busy = False

    def stop(self):
        # In the first cell's pre_run_cell, before its code: no JVM call
        # unless a round is running.
        if self.stopped.is_set():
            return
        t0 = _kb_time.monotonic()
        self.stopped.set()
        cancelled = ""
        if self.busy:
            cancelled = "; cancelled the round running"
            jsc = self.sc._jsc.sc()
            try:
                try:
                    # And its future jobs: the round may be about to
                    # submit one.
                    jsc.cancelJobGroupAndFutureJobs("kernelbus-keep-warm", "the warm kernel's first cell")
                except Exception as e:
                    if "cancelJobGroupAndFutureJobs" not in str(e):
                        raise
                    jsc.cancelJobGroup("kernelbus-keep-warm")  # Spark before 4.0
            except Exception as e:
                cancelled = "; cancelling the round running: %r" % (e,)
        last = "" if self.last is None else " (the last: SQL %.2f s, Python RDD %.2f s)" % self.last
        _kb_log("keep-warm stopped at the first cell after %d rounds%s%s, in %.3f s" % (
            self.rounds, last, cancelled, _kb_time.monotonic() - t0))


# How many times a warm kernel runs its small SQL job before it answers,
# and for how long at most after the first (at least two run); how often it
# repeats the small jobs while it waits for a request (under the minute
# after which the executor's idle threads and Python worker end).
_KB_WARMUP_JOBS = 8
_KB_WARMUP_SECONDS = 15
_KB_KEEP_WARM_SECONDS = 20


def _kb_install():
    from IPython import get_ipython
    ip = get_ipython()
    mode = _kb_os.environ.get("KERNELBUS_SPARK_CONTEXT", "lazy")
    if mode == "none":
        return
    state = {"done": _kb_threading.Event(), "error": None, "objs": {}}

    def build():
        try:
            state["objs"]["spark"], state["objs"]["sc"] = _kb_make_spark()
        except BaseException as e:  # reported on first use, and logged now
            import sys
            import traceback
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            state["error"] = e
        finally:
            state["done"].set()

    class _Waiting:
        def __init__(self, name):
            self._kb_name = name

        def _kb_get(self):
            state["done"].wait()
            if state["error"] is not None:
                raise RuntimeError("the Spark session could not be created: %r" % (state["error"],))
            obj = state["objs"][self._kb_name]
            ip.user_ns[self._kb_name] = obj
            return obj

        def __getattr__(self, attr):
            return getattr(self._kb_get(), attr)

        def __repr__(self):
            return repr(self._kb_get())

    if mode == "eager":
        build()
        if state["error"] is not None:
            raise state["error"]
        ip.user_ns.update(state["objs"])
        if _kb_os.environ.get("KERNELBUS_SPARK_WARMUP") == "1":
            _kb_warmup(state["objs"]["spark"])
            state["keep_warm"] = _KbKeepWarm(state["objs"]["spark"])
    else:
        _kb_threading.Thread(target=build, name="kernelbus-spark", daemon=True).start()
        ip.user_ns["spark"], ip.user_ns["sc"] = _Waiting("spark"), _Waiting("sc")

    # Each cell's Spark jobs run in a job group of their own, so that an
    # interrupt cancels that cell's jobs and nobody else's.
    cells = _kb_itertools.count(1)
    try:
        from py4j.protocol import Py4JNetworkError
    except ImportError:
        class Py4JNetworkError(Exception):
            pass

    def retry(call):
        # On a KeyboardInterrupt, Py4J has the JVM shut the interrupted
        # connection down; for a moment after that the JVM may drop new
        # connections too ("Answer from Java side is empty").
        delay = 0.05
        for attempt in range(20):
            try:
                return call()
            except Py4JNetworkError as e:
                if attempt == 19:
                    raise
                _kb_log("Py4J: %s; trying again" % (e,))
                _kb_time.sleep(delay)  # backing off from a refused connection
                delay = min(delay * 2, 0.5)

    def pre_run_cell(info=None):
        keep_warm = state.pop("keep_warm", None)
        if keep_warm is not None:
            keep_warm.stop()
        sc = state["objs"].get("sc")
        state["group"] = None
        if sc is not None:
            group = "kernelbus-cell-%d" % next(cells)
            try:
                retry(lambda: sc.setJobGroup(group, "notebook cell", interruptOnCancel=True))
                state["group"] = group
            except Exception as e:
                _kb_log("setting job group %s: %r" % (group, e))

    ip.events.register("pre_run_cell", pre_run_cell)

    def cancel(sc, group):
        # The interrupt may land while the JVM is still submitting the cell's
        # job (the Python side has given up on that call, the JVM has not), so
        # the group's future jobs are cancelled too; the next cell has a new
        # group. Spark before 4.0 lacks that: cancel now and for a few seconds.
        jsc = retry(lambda: sc._jsc.sc())
        if not group:
            retry(jsc.cancelAllJobs)
            return "all jobs"
        try:
            retry(lambda: jsc.cancelJobGroupAndFutureJobs(group, "interrupted from the notebook"))
            return "job group %s and its future jobs" % group
        except Exception as e:
            if "cancelJobGroupAndFutureJobs" not in str(e):
                raise

        def again():
            for _ in range(15):
                _kb_time.sleep(0.2)  # repeats for a job still being submitted
                try:
                    jsc.cancelJobGroup(group)
                except Exception as e:
                    _kb_log("interrupt: cancelling job group %s again: %r" % (group, e))
                    return

        retry(lambda: jsc.cancelJobGroup(group))
        _kb_threading.Thread(target=again, name="kernelbus-cancel", daemon=True).start()
        return "job group %s" % group

    def interrupt_in(exc):
        # The KeyboardInterrupt behind exc: itself, or one that was being
        # handled when exc was raised (PySpark's clean-up after an interrupted
        # call makes a Py4J call of its own, which can fail as above).
        seen = set()
        while exc is not None and id(exc) not in seen:
            if isinstance(exc, KeyboardInterrupt):
                return exc
            seen.add(id(exc))
            exc = exc.__context__
        return None

    def on_error(shell, etype, value, tb, tb_offset=None):
        # An interrupt stops the Python side only. The cell's Spark jobs are
        # cancelled from another thread (this one's Py4J connection is gone).
        ki = interrupt_in(value)
        sc = state["objs"].get("sc")
        if ki is not None and sc is not None:
            group = state.get("group")
            done = []

            def cancel_now():
                try:
                    done.append(cancel(sc, group))
                except Exception as e:
                    _kb_log("interrupt: could not cancel the Spark jobs of job group %s: %r" % (group, e))

            t = _kb_threading.Thread(target=cancel_now, name="kernelbus-cancel")
            t.start()
            t.join(30)
            if done:
                _kb_log("interrupt: cancelled %s" % done[0])
        if ki is not None and ki is not value:
            _kb_log("interrupt: shown as KeyboardInterrupt; PySpark's clean-up after it raised %r" % (value,))
            etype, value, tb = type(ki), ki, ki.__traceback__
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)

    ip.set_custom_exc((KeyboardInterrupt, Py4JNetworkError), on_error)

_kb_install()
del _kb_install
