"""Warm kernels (kernelbus serve --warm) handed to a real jupyter_server 2.x in gateway mode.

The gateway keeps one warm python3 kernel. A notebook session opened through jupyter_server
(which sends KERNEL_USERNAME and KERNEL_WORKING_DIR, accepted by the pool) gets that very
kernel, runs code in it through jupyter_server's websocket, and the pool starts another.
"""

from __future__ import annotations

import time
import uuid

import pytest

from kbclient import Rest, run_in_kernel

pytestmark = pytest.mark.kernelbus_only


@pytest.fixture(scope="module")
def gateway_options() -> dict:
    return {"token": uuid.uuid4().hex, "extra_args": ["--warm", "python3=1,idle=10m,accept=KERNEL_WORKING_DIR"]}


def running_warm(rest: Rest, timeout: float = 90) -> list[str]:
    """Ids of the running warm kernels, once there is one (the shared token is an admin's)."""
    deadline = time.monotonic() + timeout
    while True:
        r = rest.get("/api/warm")
        assert r.status_code == 200, f"GET /api/warm -> {r.status_code}: {r.text[:500]}"
        ids = [w["id"] for w in r.json() if w["state"] == "running"]
        if ids or time.monotonic() > deadline:
            return ids
        time.sleep(0.2)


def test_warm_kernel_handed_to_jupyter_server(jupyter_server_gw, rest):
    warm = running_warm(rest)
    assert len(warm) == 1, "no warm kernel started"
    assert warm[0] not in rest.kernel_ids(), "a warm kernel nobody took is listed"

    js = Rest(jupyter_server_gw.url, jupyter_server_gw.token)
    t0 = time.monotonic()
    r = js.post("/api/sessions", json={"path": "warm.ipynb", "name": "warm.ipynb", "type": "notebook",
                                        "kernel": {"name": "python3"}})
    took = time.monotonic() - t0
    assert r.status_code == 201, f"POST /api/sessions -> {r.status_code}: {r.text[:2000]}"
    session = r.json()
    kid = session["kernel"]["id"]
    assert kid == warm[0], f"jupyter_server got kernel {kid}, not the warm one {warm[0]} (session took {took:.2f}s)"

    ex = run_in_kernel(jupyter_server_gw.ws_url, kid, jupyter_server_gw.token, "print(6*7)")
    assert ex.stdout == "42\n", ex.summary()
    assert ex.reply["content"]["status"] == "ok", ex.reply["content"]

    # Replaced: another warm kernel runs, and the handed one is a normal kernel now.
    deadline = time.monotonic() + 90
    while True:
        again = running_warm(rest)
        if again and again[0] != kid:
            break
        assert time.monotonic() < deadline, f"the warm pool was not refilled: {again}"
        time.sleep(0.2)
    assert kid in rest.kernel_ids()
    r = js.delete(f"/api/sessions/{session['id']}")
    assert r.status_code == 204, r.text
