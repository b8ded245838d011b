"""Start and stop the servers the end-to-end suites talk to.

Used by conftest.py (pytest fixtures) and, as a command, by scripts/e2e-js.sh:

    python e2e/python/kbprocs.py run -- node --test e2e/js/

starts a gateway exactly as the `gateway` fixture does, exports KB_GATEWAY_URL and
KB_TOKEN to the command, and stops the gateway afterwards (printing its log tail when the
command failed).

Target selection (env KB_TEST_TARGET):
  unset / "kernelbus"  the real thing: `$KERNELBUS_BIN serve ...` (default <repo>/bin/kernelbus)
                       with `--launcher $KERNELBUS_LAUNCHER_BIN` (default <repo>/bin/kernelbus-launcher).
  "kg"                 for developing the test clients only: a real Jupyter Kernel Gateway,
                       `jupyter kernelgateway` from the scratch venv named by KB_KG_VENV (a venv
                       made by hand OUTSIDE the repo with `pip install jupyter_kernel_gateway
                       ipykernel`). CI never uses this.
  "jupyter-server"     the same idea with plain `jupyter server` from the suite's own venv.
Tests that check kernelbus-specific behaviour (env validation, failing kernelspec message,
reconnect replay) are expected to fail against the two reference targets.

Nothing here sleeps for a fixed time to wait for a condition: readiness and exit are
polled against deadlines.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import atexit
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
# The venv the suite runs in also provides ipykernel's python3 kernelspec and jupyter_server.
VENV = Path(os.environ.get("KB_VENV") or sys.prefix)
KERNELS_DIR = VENV / "share" / "jupyter" / "kernels"

READY_TIMEOUT = 30.0  # seconds a server gets to answer its readiness URL
TERM_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
LEAK_GRACE = 10.0  # seconds children of a stopped server get to disappear
# Every process a gateway starts inherits this variable (unless the gateway scrubs the
# environment of its children); it lets teardown find and kill stray kernels.
MARKER_VAR = "KB_E2E_MARKER"


def target() -> str:
    return os.environ.get("KB_TEST_TARGET", "kernelbus") or "kernelbus"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, read, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kernelbus_bin() -> Path:
    return Path(os.environ.get("KERNELBUS_BIN") or REPO / "bin" / "kernelbus")


def launcher_bin() -> Path:
    return Path(os.environ.get("KERNELBUS_LAUNCHER_BIN") or REPO / "bin" / "kernelbus-launcher")


def venv_path_env(extra: dict | None = None, bin_dir: Path | None = None) -> dict:
    """os.environ with the venv's bin first on PATH: kernelspecs say argv[0] = "python"."""
    env = dict(os.environ)
    bin_dir = bin_dir or VENV / "bin"
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(bin_dir.parent)
    if extra:
        env.update(extra)
    return env


def log_tail(path: Path | str, lines: int = 80) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return f"<no log: {e}>"
    text = data[-200_000:].decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def _marked_pids(marker: str) -> list[int]:
    """Pids of live processes whose environment holds MARKER_VAR=marker."""
    needle = f"{MARKER_VAR}={marker}".encode()
    pids = []
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            pids.append(int(d.name))
    return pids


def _wait_exit(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


@dataclass
class Server:
    """One running server process (a gateway or a jupyter server in gateway mode)."""

    name: str
    url: str  # http://127.0.0.1:PORT (no trailing slash)
    token: str | None
    log_path: Path
    proc: subprocess.Popen
    workdir: Path
    marker: str
    cmd: list[str] = field(default_factory=list)
    stopped: bool = False
    exit_problem: str | None = None  # set by stop(): SIGKILL was needed, or children leaked

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http"):]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def headers(self) -> dict:
        return {"Authorization": f"token {self.token}"} if self.token else {}

    def log_tail(self, lines: int = 80) -> str:
        return log_tail(self.log_path, lines)

    def describe(self) -> str:
        return f"{self.name} at {self.url} (pid {self.proc.pid}, log {self.log_path})"

    def delete_all_kernels(self) -> None:
        """Best effort: shut down every kernel the server lists, so teardown leaves none."""
        try:
            r = requests.get(f"{self.url}/api/kernels", headers=self.headers(), timeout=10)
            if r.status_code != 200:
                return
            for k in r.json():
                requests.delete(f"{self.url}/api/kernels/{k['id']}", headers=self.headers(), timeout=30)
        except (requests.RequestException, ValueError, KeyError, TypeError):
            pass

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after TERM_GRACE seconds; then kill what it left behind.

        Sets exit_problem when the process had to be killed or when processes it started
        (found by MARKER_VAR in their environment) outlived it by LEAK_GRACE seconds;
        the fixtures turn that into a test failure.
        """
        if self.stopped:
            return
        self.stopped = True
        problems = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if not _wait_exit(self.proc, TERM_GRACE):
                problems.append(f"{self.describe()} did not exit within {TERM_GRACE:.0f}s of SIGTERM; killed")
                self.proc.kill()
                _wait_exit(self.proc, 10)
        # Its own process group first (children that did not start a group of their own).
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        # Then anything else it started (launchers, kernels in their own groups).
        deadline = time.monotonic() + LEAK_GRACE
        left = _marked_pids(self.marker)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)  # poll interval; re-checked against the deadline
            left = _marked_pids(self.marker)
        if left:
            problems.append(f"{self.name} left {len(left)} process(es) running after it exited: "
                            + "; ".join(_cmdline(p) for p in left))
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if problems:
            self.exit_problem = "\n".join(problems)
        assert self.proc.poll() is not None, f"{self.describe()} is still running after SIGKILL"


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} " + raw.replace(b"\0", b" ").decode(errors="replace")[:200]


_STARTED: list[Server] = []


@atexit.register
def _stop_leftovers() -> None:
    """Last resort (e.g. the run was interrupted): no server outlives the test process."""
    for srv in _STARTED:
        if not srv.stopped:
            try:
                srv.stop()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass


def _spawn(name: str, cmd: list[str], env: dict, workdir: Path, url: str | None, token: str | None,
           ready_path: str, marker: str, ready_headers: dict | None = None, **ready_kw) -> Server:
    """Runs cmd and waits until GET ready_path answers 200. url None: the server is
    kernelbus listening on port 0, and its address is the one its log says it serves on."""
    log_path = workdir / f"{name}.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    logf = open(log_path, "ab")
    env = dict(env)
    env[MARKER_VAR] = marker
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(workdir),
            start_new_session=True,  # own process group: teardown can kill what it leaves
        )
    finally:
        logf.close()
    srv = Server(name=name, url=url or "", token=token, log_path=log_path, proc=proc,
                 workdir=workdir, marker=marker, cmd=cmd)
    _STARTED.append(srv)
    try:
        if url is None:
            srv.url = _logged_url(srv, offset)
        wait_ready(srv, ready_path, ready_headers, **ready_kw)
    except BaseException:
        srv.stop()
        raise
    return srv


def _poll(srv: Server, what: str, attempt):
    """Calls attempt() -> (value, note) until value is not None, a short pause between
    tries that also notices the process exiting; fails with the log's tail when the process
    exits first or READY_TIMEOUT passes (note says what the last try saw)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if srv.proc.poll() is not None:
            raise RuntimeError(
                f"{srv.name} exited with code {srv.proc.returncode} before {what}\n"
                f"command: {' '.join(srv.cmd)}\n--- log tail ---\n{srv.log_tail()}"
            )
        value, note = attempt()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{srv.name}: no {what} within {READY_TIMEOUT:.0f}s (last: {note})\n"
                f"command: {' '.join(srv.cmd)}\n--- log tail ---\n{srv.log_tail()}"
            )
        try:
            srv.proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass


def _logged_url(srv: Server, offset: int) -> str:
    """scheme://host:port of the "kernelbus serving" line that kernelbus serve, started
    with --listen 127.0.0.1:0, logs (JSON) once it listens: no port is picked beforehand
    that another process could take first."""
    def attempt():
        with open(srv.log_path, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("message") == "kernelbus serving" and rec.get("url"):
                u = urllib.parse.urlsplit(rec["url"])
                return f"{u.scheme}://{u.netloc}", ""
        return None, "no 'kernelbus serving' line yet"
    return _poll(srv, "the 'kernelbus serving' log line", attempt)


def wait_ready(srv: Server, path: str, headers: dict | None = None, **kw) -> None:
    """Polls GET path on srv until it answers 200 (headers: srv's own by
    default; kw goes to requests, e.g. TLS options), failing with the log's
    tail when the process exits first or READY_TIMEOUT passes."""
    headers = srv.headers() if headers is None else headers

    def attempt():
        try:
            r = requests.get(srv.url + path, headers=headers, timeout=2, **kw)
        except requests.RequestException as e:
            return None, repr(e)
        if r.status_code == 200:
            return True, ""
        return None, f"HTTP {r.status_code}: {r.text[:200]}"
    _poll(srv, f"200 on GET {path}", attempt)


def start_gateway(workdir: Path, token: str | None = None,
                  extra_kernelspec_dirs: tuple[Path, ...] | list[Path] = (),
                  name: str = "gateway", extra_args: tuple[str, ...] | list[str] = ()) -> Server:
    """Start the gateway under test (kernelbus on port 0, the reference servers on a free
    port) and wait until GET /api answers 200.

    extra_kernelspec_dirs are folders that hold <name>/kernel.json subfolders, like
    <venv>/share/jupyter/kernels. extra_args are more kernelbus flags (kernelbus only).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    marker = uuid.uuid4().hex
    t = target()
    # kernelbus listens on port 0 and logs its address; the reference servers need a
    # port picked beforehand.
    port = free_port() if t != "kernelbus" else 0
    url = f"http://127.0.0.1:{port}" if port else None

    if t == "kernelbus":
        kb, launcher = kernelbus_bin(), launcher_bin()
        for p, var in ((kb, "KERNELBUS_BIN"), (launcher, "KERNELBUS_LAUNCHER_BIN")):
            if not os.access(p, os.X_OK):
                raise RuntimeError(
                    f"{p} is not an executable: build it (go build -o bin/ ./cmd/...) or set {var}"
                )
        data_dir = workdir / "data"
        data_dir.mkdir(exist_ok=True)
        cmd = [str(kb), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
               "--kernelspec-dir", str(KERNELS_DIR)]
        for d in extra_kernelspec_dirs:
            cmd += ["--kernelspec-dir", str(d)]
        cmd += ["--launcher", str(launcher), "--log-level", "info"]
        # Tests that are not about authentication run the gateway open, as they always did.
        cmd += ["--token", token] if token else ["--insecure-no-auth"]
        cmd += list(extra_args)
        env = venv_path_env({"IPYTHONDIR": str(workdir / "ipython")})
    elif t == "kg":
        kg_venv = Path(os.environ.get("KB_KG_VENV", "/tmp/kbscratch/kgvenv"))
        exe = kg_venv / "bin" / "jupyter-kernelgateway"
        if not exe.exists():
            raise RuntimeError(f"KB_TEST_TARGET=kg needs jupyter_kernel_gateway in KB_KG_VENV ({kg_venv})")
        cmd = [str(exe), "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={port}",
               "--KernelGatewayApp.port_retries=0",
               "--JupyterWebsocketPersonality.list_kernels=True",
               # Its default IOPub rate limit drops large outputs.
               "--ZMQChannelsWebsocketConnection.limit_rate=False",
               f"--KernelGatewayApp.auth_token={token or ''}"]
        env = venv_path_env(_jupyter_dirs(workdir, extra_kernelspec_dirs), bin_dir=kg_venv / "bin")
    elif t == "jupyter-server":
        cmd = [str(VENV / "bin" / "python"), "-m", "jupyter_server", "--no-browser", "--allow-root",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={token or ''}", "--ServerApp.disable_check_xsrf=True",
               "--ZMQChannelsWebsocketConnection.limit_rate=False",
               f"--ServerApp.root_dir={workdir}"]
        env = venv_path_env(_jupyter_dirs(workdir, extra_kernelspec_dirs))
    else:
        raise RuntimeError(f"unknown KB_TEST_TARGET {t!r} (kernelbus, kg or jupyter-server)")

    return _spawn(name, cmd, env, workdir, url, token, "/api", marker)


def _jupyter_dirs(workdir: Path, extra_kernelspec_dirs) -> dict:
    """Env that isolates a Python Jupyter server in workdir and adds kernelspec folders.

    JUPYTER_PATH entries hold a kernels/ subfolder, so each extra kernelspec folder must be
    named "kernels" (conftest's helpers make them that way).
    """
    jp = []
    for d in extra_kernelspec_dirs:
        d = Path(d)
        if d.name != "kernels":
            raise RuntimeError(f"reference targets need kernelspec folders named 'kernels', got {d}")
        jp.append(str(d.parent))
    env = {
        "JUPYTER_CONFIG_DIR": str(workdir / "jupyter-config"),
        "JUPYTER_DATA_DIR": str(workdir / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(workdir / "jupyter-runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "IPYTHONDIR": str(workdir / "ipython"),
    }
    if jp:
        env["JUPYTER_PATH"] = os.pathsep.join(jp)
    return env


def start_jupyter_server_gw(workdir: Path, gateway: Server, name: str = "jupyter-server-gw",
                            auth_token: str | None = None, extra_args: tuple[str, ...] | list[str] = ()) -> Server:
    """Real jupyter_server 2.x in gateway mode, proxying to `gateway`.

    It authenticates to the gateway with auth_token (None: the gateway's token; "": none);
    extra_args are more jupyter_server flags (e.g. --GatewayClient.http_user=...).
    """
    workdir = Path(workdir)
    root = workdir / "root"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    token = secrets.token_hex(16)
    cmd = [str(VENV / "bin" / "python"), "-m", "jupyter_server", "--no-browser", "--allow-root",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--gateway-url={gateway.url}", *extra_args]
    extra = _jupyter_dirs(workdir, ())
    token_for_gateway = gateway.token if auth_token is None else auth_token
    if token_for_gateway:
        extra["JUPYTER_GATEWAY_AUTH_TOKEN"] = token_for_gateway
    env = venv_path_env(extra)
    for k in list(env):
        # The gateway client forwards KERNEL_* variables of its own environment to the
        # gateway; keep the runner's out of it.
        if k.startswith("KERNEL_"):
            del env[k]
    return _spawn(name, cmd, env, workdir, f"http://127.0.0.1:{port}", token, "/api/status",
                  uuid.uuid4().hex)


def make_kernelspec_dir(base: Path, name: str, argv: list, display_name: str | None = None,
                        language: str = "python") -> Path:
    """Create <base>/kernels/<name>/kernel.json and return <base>/kernels, the folder to
    pass to --kernelspec-dir (named "kernels" so the reference targets can use it too)."""
    d = Path(base) / "kernels" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "kernel.json").write_text(json.dumps({
        "argv": argv, "display_name": display_name or name, "language": language,
    }))
    return d.parent


# ---------------------------------------------------------------------------------------
# Command line: run a command against a gateway started the same way as the fixture.


def _cli(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "run" or "--" not in argv:
        print("usage: kbprocs.py run [--no-token] -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    opts, cmd = argv[1:argv.index("--")], argv[argv.index("--") + 1:]
    token = None if "--no-token" in opts else secrets.token_hex(16)
    workdir = Path(tempfile.mkdtemp(prefix="kb-e2e-js-"))
    srv = None
    rc = 1
    try:
        srv = start_gateway(workdir, token=token)
        print(f"kbprocs: {srv.describe()}", file=sys.stderr, flush=True)
        env = dict(os.environ, KB_GATEWAY_URL=srv.url, KB_TOKEN=token or "")
        child = subprocess.Popen(cmd, env=env)
        try:
            rc = child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)
            rc = child.wait()
        if rc != 0:
            print(f"--- {srv.name} log tail ({srv.log_path}) ---\n{srv.log_tail()}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - report and fail
        print(f"kbprocs: {e}", file=sys.stderr)
        rc = 1
    finally:
        if srv is not None:
            srv.delete_all_kernels()
            srv.stop()
            if srv.exit_problem:
                print(f"kbprocs: {srv.exit_problem}", file=sys.stderr)
                rc = rc or 1
        if rc == 0 and not os.environ.get("KB_KEEP_TMP"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kbprocs: kept {workdir}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
