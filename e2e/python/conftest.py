"""Fixtures for the end-to-end suites: a running gateway and real Jupyter clients.

Binaries (built by the test task / scripts/e2e.sh):
  KERNELBUS_BIN           default <repo>/bin/kernelbus
  KERNELBUS_LAUNCHER_BIN  default <repo>/bin/kernelbus-launcher

KB_TEST_TARGET picks what the `gateway` fixture starts:
  unset / kernelbus   kernelbus serve (what CI runs)
  kg                  a real Jupyter Kernel Gateway from the scratch venv KB_KG_VENV (made by
                      hand outside the repo, never by CI), to check the test clients
                      against a reference gateway
  jupyter-server      plain `jupyter server` with a token, from the suite's venv
Kernelbus-specific tests are marked `kernelbus_only` and are expected to fail against the
reference targets. See kbprocs.py for how each target is started.

Each test module gets one gateway (module scope). A module changes how it is started by
overriding the `gateway_options` fixture (e.g. no token, extra kernelspec folders).
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import kbclient  # noqa: E402
import kbprocs  # noqa: E402
import openapi_check  # noqa: E402
from kbclient import Rest  # noqa: E402

kbclient.RESPONSE_HOOKS.append(openapi_check.observe)

# Servers alive right now, so a failing test can show their log tails.
_LIVE: list[kbprocs.Server] = []


def pytest_report_header(config):
    t = kbprocs.target()
    if t == "kernelbus":
        return f"gateway: kernelbus {kbprocs.kernelbus_bin()} (launcher {kbprocs.launcher_bin()})"
    return f"gateway: REFERENCE TARGET {t!r} (KB_TEST_TARGET); kernelbus_only tests are expected to fail"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for srv in _LIVE:
            report.sections.append((f"{srv.name} log tail ({srv.log_path})", srv.log_tail(60)))


def _start(starter, *args, **kw) -> kbprocs.Server:
    error = None
    try:
        srv = starter(*args, **kw)
    except RuntimeError as e:
        error = str(e)
    if error is not None:
        pytest.fail(error, pytrace=False)
    _LIVE.append(srv)
    if kbprocs.target() == "kernelbus" and srv.name.startswith("gateway"):
        openapi_check.watch(srv.url)
    return srv


def _stop(srv: kbprocs.Server, delete_kernels: bool = True) -> None:
    openapi_check.unwatch(srv.url)
    try:
        if delete_kernels and srv.proc.poll() is None:
            srv.delete_all_kernels()
        srv.stop()
    finally:
        if srv in _LIVE:
            _LIVE.remove(srv)
    if srv.exit_problem:
        pytest.fail(f"{srv.exit_problem}\n--- log tail ---\n{srv.log_tail()}", pytrace=False)
    if kbprocs.target() == "kernelbus" and srv.name.startswith("gateway"):
        # SIGTERM must end kernelbus cleanly.
        assert srv.proc.returncode in (0, -15, 143), (
            f"{srv.describe()} exited with {srv.proc.returncode} after SIGTERM\n{srv.log_tail()}")


def pytest_terminal_summary(terminalreporter):
    if kbprocs.target() == "kernelbus":
        terminalreporter.write_line(f"openapi: {openapi_check.checked} kernelbus REST responses checked against frontend/openapi.yaml")


@pytest.fixture(autouse=True)
def openapi_conformance():
    """Every REST answer kernelbus gave during the test matches frontend/openapi.yaml."""
    yield
    found = openapi_check.problems()
    if found:
        pytest.fail("responses that do not match frontend/openapi.yaml:\n" + "\n".join(found), pytrace=False)


@pytest.fixture(scope="session")
def kernelbus_bin() -> Path:
    """Path of the kernelbus binary (env KERNELBUS_BIN, default <repo>/bin/kernelbus)."""
    return kbprocs.kernelbus_bin()


@pytest.fixture(scope="session")
def kernelbus_launcher_bin() -> Path:
    return kbprocs.launcher_bin()


@pytest.fixture(scope="session")
def kernels_dir() -> Path:
    """The python3 kernelspec folder ipykernel installed into the venv."""
    d = kbprocs.KERNELS_DIR
    assert (d / "python3" / "kernel.json").is_file(), f"no python3 kernelspec in {d}: run scripts/setup-python.sh"
    return d


@pytest.fixture(scope="module")
def gateway_options() -> dict:
    """How the module's gateway is started; override in a test module to change it."""
    return {"token": secrets.token_hex(16)}


@pytest.fixture(scope="module")
def gateway(gateway_options, tmp_path_factory, kernels_dir):
    """The gateway under test, on a random port, ready (GET /api == 200).

    Has .url, .ws_url, .token, .log_path. Teardown shuts its kernels down, sends SIGTERM,
    SIGKILL after 10 s, and fails if the process had to be killed.
    """
    srv = _start(kbprocs.start_gateway, tmp_path_factory.mktemp("gateway"), **gateway_options)
    yield srv
    _stop(srv)


@pytest.fixture(scope="module")
def gateway_factory(tmp_path_factory, kernels_dir):
    """Start extra gateways (e.g. with and without a token) that live until module end."""
    started = []

    def make(**options) -> kbprocs.Server:
        srv = _start(kbprocs.start_gateway, tmp_path_factory.mktemp("gateway-extra"),
                     name=f"gateway-extra{len(started)}", **options)
        started.append(srv)
        return srv

    yield make
    for srv in reversed(started):
        _stop(srv)


@pytest.fixture(scope="module")
def jupyter_server_gw(gateway, tmp_path_factory):
    """A real jupyter_server 2.x in gateway mode in front of `gateway`.

    Has .url, .ws_url, .token (jupyter_server's own token) and .workdir / "root" as its
    root_dir. Ready once GET /api/status answers 200.
    """
    srv = _start(kbprocs.start_jupyter_server_gw, tmp_path_factory.mktemp("jupyter-server"), gateway)
    yield srv
    _stop(srv, delete_kernels=False)


@pytest.fixture(scope="module")
def rest(gateway) -> Rest:
    """REST client for the gateway, with its token."""
    return Rest(gateway.url, gateway.token)


@pytest.fixture
def kernel(rest):
    """A fresh python3 kernel on the module's gateway, shut down after the test."""
    model = rest.start_kernel("python3")
    yield model
    rest.shutdown_kernel(model["id"])
