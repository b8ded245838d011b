"""Real jupyter_server 2.x in gateway mode in front of the gateway under test.

A notebook front-end talks only to jupyter_server (its /api/sessions, /api/kernels and the
kernel websocket, legacy JSON protocol); jupyter_server proxies to the gateway. The tests
share one session/kernel and run in file order; each one still asserts on its own.
"""

from __future__ import annotations

import time
import uuid

import pytest

from kbclient import Closed, KernelWS, Rest

NOTEBOOK = "e2e-gateway.ipynb"


class JSSession:
    """One jupyter_server session plus the browser-side websocket to its kernel."""

    def __init__(self, js, gw_rest: Rest):
        self.js = js
        self.rest = Rest(js.url, js.token)
        self.gw_rest = gw_rest
        r = self.rest.post("/api/sessions", json={
            "path": NOTEBOOK, "name": NOTEBOOK, "type": "notebook", "kernel": {"name": "python3"},
        })
        assert r.status_code == 201, f"POST /api/sessions -> {r.status_code}: {r.text[:2000]}"
        self.model = r.json()
        self.session_id = self.model["id"]
        self.kernel_id = self.model["kernel"]["id"]
        self.client_session = uuid.uuid4().hex
        self.ws = None
        self.connect()

    def connect(self):
        self.ws = KernelWS(self.js.ws_url, self.kernel_id, session_id=self.client_session,
                           token=self.js.token).connect()
        return self.ws

    def ensure_connected(self):
        if not self.ws.connected:
            self.connect()
        return self.ws

    def close(self):
        if self.ws:
            self.ws.close(timeout=2)


@pytest.fixture(scope="module")
def jss(jupyter_server_gw, rest):
    s = JSSession(jupyter_server_gw, rest)
    s.ws.kernel_info(timeout=60)
    s.ws.discard_pending()
    yield s
    s.close()
    # Best effort if test_delete_session did not get there.
    s.rest.delete(f"/api/sessions/{s.session_id}")


def test_session_started_kernel_on_gateway(jss, rest):
    assert jss.model["kernel"]["name"] == "python3"
    assert jss.kernel_id in rest.kernel_ids(), "jupyter_server's kernel is not listed by the gateway"
    r = rest.get(f"/api/kernels/{jss.kernel_id}")
    assert r.status_code == 200
    assert r.json()["name"] == "python3"


def test_execute_stream_and_reply(jss):
    ex = jss.ws.run("print(6*7)", timeout=60)
    assert ex.stdout == "42\n", ex.summary()
    assert ex.reply["msg_type"] == "execute_reply"
    assert ex.reply["content"]["status"] == "ok", ex.reply["content"]
    # Things real clients rely on in every relayed message.
    for m in ex.iopub + ex.shell:
        assert m["channel"] in ("iopub", "shell")
        assert m["msg_id"] == m["header"]["msg_id"]
        assert m["msg_type"] == m["header"]["msg_type"]
        assert isinstance(m["header"].get("version"), str)
    states = [m["content"]["execution_state"] for m in ex.iopub if m["msg_type"] == "status"]
    assert states[0] == "busy" and states[-1] == "idle", states


def test_stdin_input_request(jss):
    prompts = []

    def answer(msg):
        prompts.append(msg["content"]["prompt"])
        return "hello-stdin"

    ex = jss.ws.run("v = input('q? ')\nprint('got', v)", timeout=60, on_input=answer)
    assert prompts == ["q? "], ex.summary()
    assert len(ex.stdin) == 1 and ex.stdin[0]["channel"] == "stdin"
    assert "got hello-stdin\n" in ex.stdout, ex.summary()
    assert ex.reply["content"]["status"] == "ok", ex.reply["content"]


def test_interrupt_via_jupyter_server(jss):
    ws = jss.ws
    req = ws.execute("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
    # Interrupt only once the kernel is inside the sleep (its output has arrived).
    ws.wait_for(lambda m: m["msg_type"] == "stream"
                and m["parent_header"].get("msg_id") == req["header"]["msg_id"]
                and "sleeping" in m["content"]["text"], timeout=60, what="'sleeping' output")
    t0 = time.monotonic()
    r = jss.rest.post(f"/api/kernels/{jss.kernel_id}/interrupt", json={})
    assert r.status_code == 204, f"interrupt -> {r.status_code}: {r.text[:500]}"
    ex = ws.collect(req, timeout=30)
    elapsed = time.monotonic() - t0
    content = ex.reply["content"]
    assert content["status"] == "error", content
    assert content["ename"] == "KeyboardInterrupt", content
    assert elapsed < 20, f"interrupt took {elapsed:.1f}s"
    # The kernel is usable afterwards.
    assert ws.run("print('after')", timeout=30).stdout == "after\n"


def test_restart_via_jupyter_server(jss, rest):
    ws = jss.ws
    assert ws.run("kb_before_restart = 123", timeout=30).reply["content"]["status"] == "ok"
    before = ws.kernel_info(timeout=30)
    ws.discard_pending()

    r = jss.rest.post(f"/api/kernels/{jss.kernel_id}/restart", json={})
    assert r.status_code == 200, f"restart -> {r.status_code}: {r.text[:500]}"
    assert r.json()["id"] == jss.kernel_id

    # The browser-side socket either survives the restart or is closed; JupyterLab
    # reconnects in the latter case, and so do we.
    try:
        after = ws.kernel_info(timeout=60)
    except Closed:
        ws = jss.connect()
        after = ws.kernel_info(timeout=60)
    ws.discard_pending()
    # A restarted kernel is a new process with a new session.
    assert after["header"]["session"] != before["header"]["session"], "kernel session unchanged: no restart"

    ex = ws.run("print(kb_before_restart)", timeout=60)
    assert ex.reply["content"]["status"] == "error", ex.summary()
    assert ex.reply["content"]["ename"] == "NameError", ex.reply["content"]

    assert jss.kernel_id in rest.kernel_ids(), "kernel id changed or vanished on the gateway after restart"
    r = jss.rest.get(f"/api/sessions/{jss.session_id}")
    assert r.status_code == 200 and r.json()["kernel"]["id"] == jss.kernel_id


def test_delete_session_removes_gateway_kernel(jss, rest):
    jss.close()
    r = jss.rest.delete(f"/api/sessions/{jss.session_id}")
    assert r.status_code == 204, f"DELETE session -> {r.status_code}: {r.text[:500]}"
    rest.wait_kernel_gone(jss.kernel_id, timeout=15)
    r = rest.get(f"/api/kernels/{jss.kernel_id}")
    assert r.status_code == 404, f"GET deleted kernel -> {r.status_code}"
    r = jss.rest.get("/api/sessions")
    assert jss.session_id not in [s["id"] for s in r.json()]
