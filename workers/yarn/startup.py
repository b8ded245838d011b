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


def _kb_warmup(spark):
    # A warm kernel's first jobs, before it answers: executors are
    # requested only once the application master has registered, after the
    # context exists, so without them the first user's cell would wait for
    # an executor container to start (seconds) and for the SQL code paths to
    # load. One job loads the classes; the same small job a few times more
    # lets both JVMs' JIT compile what every job runs (planning, task
    # launch, shuffle, result fetch), which one run leaves interpreted; a
    # Python RDD job starts the executor's Python worker. A failure is only
    # logged: the kernel still works, just slower.
    took = []
    began = None
    try:
        for i in range(_KB_WARMUP_JOBS):
            # On a crowded host the repeats stop early (at least two run):
            # the warm-up must not hold the kernel back for minutes. The
            # budget starts after the first job, which waits for the
            # executor's container.
            if i >= 2 and _kb_time.monotonic() - began > _KB_WARMUP_SECONDS:
                break
            t0 = _kb_time.monotonic()
            spark.range(1000).selectExpr("sum(id)").collect()
            took.append(_kb_time.monotonic() - t0)
            if began is None:
                began = _kb_time.monotonic()
        t0 = _kb_time.monotonic()
        spark.sparkContext.parallelize([0], 1).map(lambda x: x + 1).collect()
        _kb_log("warm-up jobs done: SQL %s s, Python RDD %.2f s" % (
            " ".join("%.2f" % x for x in took), _kb_time.monotonic() - t0))
    except Exception as e:
        _kb_log("warm-up job failed: %r" % (e,))


# How many times a warm kernel runs its small SQL job before it answers,
# and for how long at most after the first (at least two run).
_KB_WARMUP_JOBS = 8
_KB_WARMUP_SECONDS = 15


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
