# kernelbus: makes `spark` and `sc` in a kernel that runs as the PySpark driver
# of a YARN application (see driver.py). KERNELBUS_SPARK_CONTEXT says when:
# eager (before the kernel answers), lazy (in the background; first use
# waits) or none.
import os as _kb_os
import itertools as _kb_itertools
import threading as _kb_threading
import time as _kb_time


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
    else:
        _kb_threading.Thread(target=build, name="kernelbus-spark", daemon=True).start()
        ip.user_ns["spark"], ip.user_ns["sc"] = _Waiting("spark"), _Waiting("sc")

    # Each cell's Spark jobs run in a job group of their own, so that an
    # interrupt cancels that cell's jobs and nobody else's.
    cells = _kb_itertools.count(1)

    def pre_run_cell(info=None):
        sc = state["objs"].get("sc")
        state["group"] = None
        if sc is not None:
            group = "kernelbus-cell-%d" % next(cells)
            try:
                sc.setJobGroup(group, "notebook cell", interruptOnCancel=True)
                state["group"] = group
            except Exception:
                pass

    ip.events.register("pre_run_cell", pre_run_cell)

    def on_interrupt(shell, etype, value, tb, tb_offset=None):
        # An interrupt stops the Python side only: cancel the Spark jobs of
        # the cell from another thread (this one's Py4J connection is
        # mid-call) and drop that connection. The interrupt may land while
        # the JVM is still submitting the job, so the cancel is repeated for
        # a few seconds in the background.
        sc = state["objs"].get("sc")
        if sc is not None:
            group = state.get("group")

            def cancel():
                if group:
                    sc.cancelJobGroup(group)
                else:
                    sc.cancelAllJobs()

            def keep_cancelling():
                for _ in range(15):
                    _kb_time.sleep(0.2)
                    try:
                        cancel()
                    except Exception:
                        return

            t = _kb_threading.Thread(target=cancel)
            t.start()
            t.join(30)
            if group:
                _kb_threading.Thread(target=keep_cancelling, daemon=True).start()
            try:
                client = sc._gateway._gateway_client
                conn = client.thread_connection.connection()
                if conn is not None:
                    conn.close()
            except Exception:
                pass
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)

    ip.set_custom_exc((KeyboardInterrupt,), on_interrupt)


_kb_install()
del _kb_install
