"""`kernelbus serve` with extra flags (HTTPS, identity sources), for suites whose gateway
the shared `gateway` fixture cannot start: its readiness check may need a client
certificate, a CA or a token of some identity source.

The Server it returns is kbprocs.Server, so teardown (SIGTERM, leak check) is the same.
"""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path

import kbprocs


def start_kernelbus(workdir: Path, extra_args: list[str], name: str = "gateway-custom",
                    scheme: str = "http", token: str | None = None,
                    ready_headers: dict | None = None, **ready_kw) -> kbprocs.Server:
    """Start kernelbus serve on port 0 with extra_args; ready once GET /api with
    ready_headers and ready_kw (requests' verify=, cert=) answers 200."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    cmd = [str(kbprocs.kernelbus_bin()), "serve", "--listen", "127.0.0.1:0",
           "--data-dir", str(data), "--kernelspec-dir", str(kbprocs.KERNELS_DIR),
           "--launcher", str(kbprocs.launcher_bin()), "--log-level", "info"]
    if token:
        cmd += ["--token", token]
    cmd += extra_args
    env = kbprocs.venv_path_env({"IPYTHONDIR": str(workdir / "ipython")})
    srv = kbprocs._spawn(name, cmd, env, workdir, None, token, "/api", uuid.uuid4().hex,
                         ready_headers, **ready_kw)
    if not srv.url.startswith(scheme + "://"):
        srv.stop()
        raise RuntimeError(f"{name} serves at {srv.url}, want {scheme}")
    return srv


def start_jupyter_server(workdir: Path, gateway_url: str, gateway_token: str | None,
                         gateway_client_args: list[str] = (), extra_env: dict | None = None,
                         name: str = "jupyter-server-custom") -> kbprocs.Server:
    """jupyter_server 2.x in gateway mode in front of gateway_url, with extra GatewayClient
    options. Ready on /api (/api/status asks the gateway, which a refused client cannot)."""
    workdir = Path(workdir)
    root = workdir / "root"
    root.mkdir(parents=True, exist_ok=True)
    port = kbprocs.free_port()
    token = secrets.token_hex(16)
    cmd = [str(kbprocs.VENV / "bin" / "python"), "-m", "jupyter_server", "--no-browser", "--allow-root",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--gateway-url={gateway_url}", "--GatewayClient.request_timeout=60",
           *gateway_client_args]
    extra = kbprocs._jupyter_dirs(workdir, ())
    if gateway_token:
        extra["JUPYTER_GATEWAY_AUTH_TOKEN"] = gateway_token
    extra.update(extra_env or {})
    env = kbprocs.venv_path_env(extra)
    for k in list(env):
        # The gateway client forwards KERNEL_* variables of its own environment.
        if k.startswith("KERNEL_"):
            del env[k]
    return kbprocs._spawn(name, cmd, env, workdir, f"http://127.0.0.1:{port}", token, "/api",
                          uuid.uuid4().hex)
