"""Large outputs, hostile input, auth, and the exact REST formats real clients parse
(docs/jupyter-protocol.md sections 2, 4.3, 4.6 and 5), straight against the gateway.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
import time
import uuid
from datetime import datetime

import pytest
import requests
import websocket

import kbprocs
from kbclient import V1, KernelWS

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
BIG = 20_000_000


@pytest.fixture(scope="module")
def boom_dir(tmp_path_factory):
    """A kernelspec folder whose only spec fails at once, writing a marker to stderr."""
    return kbprocs.make_kernelspec_dir(
        tmp_path_factory.mktemp("specs"), "boom",
        ["python", "-c", "import sys; sys.stderr.write('boom-marker\\n'); sys.exit(3)"],
        display_name="Boom (fails to start)")


@pytest.fixture(scope="module")
def gateway_options(boom_dir):
    return {"token": "tok-" + uuid.uuid4().hex, "extra_kernelspec_dirs": [boom_dir]}


def _assert_json_error(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, f"{r.request.method} {r.url} -> {r.status_code} (want {status}): {r.text[:500]}"
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers.get("Content-Type")
    body = r.json()
    assert isinstance(body.get("reason"), str) and body["reason"], body
    assert isinstance(body.get("message"), str) and body["message"], body
    return body


def _assert_kernel_model(m: dict) -> None:
    assert set(m) >= {"id", "name", "last_activity", "execution_state", "connections"}, m
    assert UUID_RE.match(m["id"]), m["id"]
    # jupyter_server parses it with exactly this format.
    datetime.strptime(m["last_activity"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert type(m["connections"]) is int, m["connections"]
    assert m["execution_state"] in ("starting", "idle", "busy", "restarting", "dead",
                                    "unknown"), m["execution_state"]


# ---------------------------------------------------------------------------------------
# Large outputs


@pytest.mark.parametrize("protocol", [None, V1], ids=["legacy", "v1"])
def test_20mb_stream_output_intact(gateway, kernel, protocol):
    with KernelWS(gateway.ws_url, kernel["id"], token=gateway.token, protocol=protocol) as ws:
        ws.kernel_info(timeout=60)
        ws.discard_pending()
        ex = ws.run(f"print('x' * {BIG})", timeout=180)
        assert ex.reply["content"]["status"] == "ok", ex.reply["content"]
        out = ex.stdout
        assert len(out) == BIG + 1, f"got {len(out)} chars of stdout"
        assert out == "x" * BIG + "\n"
        # Still healthy afterwards.
        assert ws.run("print('small')", timeout=30).stdout == "small\n"


def test_20mb_display_data_intact(gateway, kernel):
    # ~20 MB of base64 made from seeded random bytes, so nothing compresses it away;
    # the test computes the same bytes locally.
    nbytes = 15_000_000
    expected = base64.b64encode(random.Random(1234).randbytes(nbytes)).decode()
    code = (
        "import base64, random\n"
        "from IPython.display import display\n"
        f"b64 = base64.b64encode(random.Random(1234).randbytes({nbytes})).decode()\n"
        "display({'image/png': b64, 'text/plain': 'big image'}, raw=True)\n"
    )
    with KernelWS(gateway.ws_url, kernel["id"], token=gateway.token) as ws:
        ws.kernel_info(timeout=60)
        ws.discard_pending()
        ex = ws.run(code, timeout=180)
        assert ex.reply["content"]["status"] == "ok", ex.summary()
        shown = ex.of_type("display_data")
        assert len(shown) == 1, ex.summary()
        got = shown[0]["content"]["data"]["image/png"]
        assert len(got) == len(expected)
        assert hashlib.sha256(got.encode()).hexdigest() == hashlib.sha256(expected.encode()).hexdigest()


# ---------------------------------------------------------------------------------------
# Errors and bad requests


def test_unknown_kernel_is_404_json(rest):
    kid = str(uuid.uuid4())
    for method, path in (("GET", f"/api/kernels/{kid}"), ("DELETE", f"/api/kernels/{kid}"),
                         ("POST", f"/api/kernels/{kid}/interrupt"),
                         ("POST", f"/api/kernels/{kid}/restart")):
        r = rest.request(method, path, json={} if method == "POST" else None)
        _assert_json_error(r, 404)


@pytest.mark.kernelbus_only  # Kernel Gateway answers 500
def test_unknown_kernelspec_on_post_is_404(rest):
    before = rest.kernel_ids()
    r = rest.post("/api/kernels", json={"name": "no-such-spec-" + uuid.uuid4().hex[:6]})
    body = _assert_json_error(r, 404)
    assert "no-such-spec" in body["message"], body
    assert rest.kernel_ids() == before
    _assert_json_error(rest.get("/api/kernelspecs/no-such-spec"), 404)


BAD_ENV = {
    "dollar": "a$b",
    "backtick": "a`id`b",
    "cr": "a\rb",
    "lf": "a\nb",
    "nul": "a\x00b",
    "long": "x" * 4097,
}


@pytest.mark.kernelbus_only
@pytest.mark.parametrize("case", sorted(BAD_ENV))
def test_bad_env_value_is_400_naming_key(rest, case):
    key = f"KERNEL_E2E_BAD_{case.upper()}"
    before = rest.kernel_ids()
    r = rest.post("/api/kernels", json={"name": "python3",
                                        "env": {"KERNEL_E2E_OK": "fine", key: BAD_ENV[case]}})
    body = _assert_json_error(r, 400)
    assert key in body["message"], body
    assert "KERNEL_E2E_OK" not in body["message"], body
    assert rest.kernel_ids() == before, "a kernel was created for a rejected request"


def test_good_env_reaches_kernel(gateway, rest):
    value = "plain value/with:punct=ok-" + uuid.uuid4().hex[:8]
    model = rest.start_kernel("python3", env={"KERNEL_E2E_VALUE": value})
    try:
        with KernelWS(gateway.ws_url, model["id"], token=gateway.token) as ws:
            ws.kernel_info(timeout=60)
            ex = ws.run("import os; print(os.environ.get('KERNEL_E2E_VALUE'))", timeout=30)
            assert ex.stdout == value + "\n", ex.summary()
    finally:
        rest.shutdown_kernel(model["id"])


GARBAGE_FRAMES = [
    ("text", "this is not json"),
    ("text", "{\"channel\": \"shell\", \"content\": {}}"),  # no header
    ("text", "{\"header\": \"x\", \"parent_header\": 5, \"metadata\": null, \"content\": [], \"channel\": \"shell\"}"),
    ("text", "{\"header\": {\"msg_id\": 7, \"msg_type\": [\"execute_request\"]}, \"content\": {\"code\": 1}}"),
    ("text", "{\"header\": {\"msg_id\": \"a\", \"msg_type\": \"execute_request\", \"session\": \"s\", "
             "\"username\": \"u\", \"date\": \"\", \"version\": \"5.3\"}, \"parent_header\": {}, "
             "\"metadata\": {}, \"content\": {\"code\": \"print(1)\"}, \"channel\": \"nope\"}"),
    ("text", "[1, 2, 3]"),
    ("text", "{"),
    ("binary", b"\x00\x01\x02garbage"),
    ("binary", b"\xff" * 64),
]


@pytest.mark.kernelbus_only  # jupyter_server / Kernel Gateway close the socket instead
@pytest.mark.parametrize("protocol", [None, V1], ids=["legacy", "v1"])
def test_malformed_frames_are_dropped(gateway, rest, kernel, protocol):
    with KernelWS(gateway.ws_url, kernel["id"], token=gateway.token, protocol=protocol) as ws:
        ws.kernel_info(timeout=60)
        ws.discard_pending()
        for kind, data in GARBAGE_FRAMES:
            ws.send_raw(data if kind == "text" else bytes(data))
        # The same connection still works, and so does the kernel.
        ex = ws.run("print('alive after garbage')", timeout=30)
        assert ex.stdout == "alive after garbage\n", ex.summary()
        assert ws.connected
    r = rest.get(f"/api/kernels/{kernel['id']}")
    assert r.status_code == 200 and r.json()["execution_state"] != "dead", r.text


@pytest.mark.kernelbus_only
def test_failing_kernelspec_reports_exit_and_stderr(rest):
    before = rest.kernel_ids()
    t0 = time.monotonic()
    r = rest.post("/api/kernels", json={"name": "boom"})
    elapsed = time.monotonic() - t0
    assert not 200 <= r.status_code < 300, f"a kernel that exits at once was reported as started: {r.text}"
    if kbprocs.target() == "kernelbus":
        body = _assert_json_error(r, r.status_code)
        assert "boom-marker" in body["message"], body
        assert re.search(r"\b3\b", body["message"]), f"exit code 3 not in message: {body}"
        assert elapsed < 30, f"failure took {elapsed:.1f}s to report (launch timeout instead of exit?)"
    deadline = time.monotonic() + 15
    while True:
        r = rest.get("/api/kernels")
        left = [k for k in r.json() if k["id"] not in before]
        if not left:
            break
        assert time.monotonic() < deadline, f"failed kernel left in the list: {left}"
        time.sleep(0.1)  # poll interval


# ---------------------------------------------------------------------------------------
# Auth


def test_token_auth(gateway, kernel):
    url, tok = gateway.url, gateway.token
    path = "/api/kernels"
    assert requests.get(url + path, timeout=30).status_code == 401
    assert requests.get(url + path, headers={"Authorization": "token wrong"}, timeout=30).status_code == 401
    assert requests.get(url + path, headers={"Authorization": "token "}, timeout=30).status_code == 401
    assert requests.get(url + path, headers={"Authorization": f"token {tok}"}, timeout=30).status_code == 200
    assert requests.get(url + path, params={"token": tok}, timeout=30).status_code == 200
    # Unknown query parameters (JupyterLab's cache buster) are fine.
    r = requests.get(f"{url}{path}?1718000000000", headers={"Authorization": f"token {tok}"}, timeout=30)
    assert r.status_code == 200
    r = requests.post(url + path, json={"name": "python3"}, timeout=30)
    assert r.status_code == 401
    for p in ("/api/kernelspecs", f"/api/kernels/{kernel['id']}"):
        assert requests.get(url + p, timeout=30).status_code == 401, p

    # Websocket handshake: refused without a token, accepted with header or query token.
    with pytest.raises(websocket.WebSocketBadStatusException) as ei:
        KernelWS(gateway.ws_url, kernel["id"], token=None, connect_timeout=30).connect()
    assert ei.value.status_code in (401, 403)
    for in_query in (False, True):
        ws = KernelWS(gateway.ws_url, kernel["id"], token=tok, token_in_query=in_query).connect()
        try:
            assert ws.kernel_info(timeout=60)["content"]["status"] == "ok"
        finally:
            ws.close(timeout=2)


def test_no_token_configured_accepts_empty_token_header(gateway_factory):
    open_gw = gateway_factory(token=None)
    url = open_gw.url
    assert requests.get(url + "/api/kernels", timeout=30).status_code == 200
    # jupyter_server's GatewayClient sends this literal header by default.
    assert requests.get(url + "/api/kernels", headers={"Authorization": "token "}, timeout=30).status_code == 200
    assert requests.get(url + "/api/kernelspecs", headers={"Authorization": "token "}, timeout=30).status_code == 200


# ---------------------------------------------------------------------------------------
# REST formats


def test_api_root(rest):
    r = rest.get("/api")
    assert r.status_code == 200
    assert isinstance(r.json().get("version"), str)


def test_kernel_rest_lifecycle_formats(rest):
    r = rest.post("/api/kernels", json={"name": "python3", "env": {"KERNEL_LAUNCH_TIMEOUT": "40"}})
    assert r.status_code == 201, r.text
    m = r.json()
    _assert_kernel_model(m)
    assert m["name"] == "python3"
    kid = m["id"]
    loc = r.headers.get("Location", "")
    assert loc.endswith(f"/api/kernels/{kid}"), f"Location: {loc!r}"

    r = rest.get("/api/kernels")
    assert r.status_code == 200 and isinstance(r.json(), list)
    for k in r.json():
        _assert_kernel_model(k)
    assert kid in [k["id"] for k in r.json()]

    r = rest.get(f"/api/kernels/{kid}")
    assert r.status_code == 200
    _assert_kernel_model(r.json())
    assert r.json()["id"] == kid

    r = rest.post(f"/api/kernels/{kid}/interrupt", json={})
    assert r.status_code == 204, r.text
    assert r.content == b""
    # An empty body (no JSON at all) is accepted too.
    r = rest.post(f"/api/kernels/{kid}/interrupt")
    assert r.status_code == 204, r.text

    r = rest.post(f"/api/kernels/{kid}/restart", json={})
    assert r.status_code == 200, r.text
    _assert_kernel_model(r.json())
    assert r.json()["id"] == kid

    r = rest.delete(f"/api/kernels/{kid}")
    assert r.status_code == 204, r.text
    assert r.content == b""
    _assert_json_error(rest.get(f"/api/kernels/{kid}"), 404)
    assert kid not in rest.kernel_ids()
    # A repeated DELETE (jupyter_server retries DELETE) is harmless.
    assert rest.delete(f"/api/kernels/{kid}").status_code in (204, 404)


def test_connections_count_follows_websockets(gateway, rest, kernel):
    """jupyter_server's culler reads `connections` (int) from the model."""
    kid = kernel["id"]

    def wait_connections(n):
        deadline = time.monotonic() + 15
        while True:
            got = rest.get(f"/api/kernels/{kid}").json()["connections"]
            if got == n:
                return
            assert time.monotonic() < deadline, f"connections stayed {got}, want {n}"
            time.sleep(0.1)  # poll interval

    wait_connections(0)
    a = KernelWS(gateway.ws_url, kid, token=gateway.token).connect()
    b = KernelWS(gateway.ws_url, kid, token=gateway.token).connect()
    try:
        a.kernel_info(timeout=60)
        b.kernel_info(timeout=60)
        wait_connections(2)
        a.close(timeout=5)
        wait_connections(1)
    finally:
        a.close(timeout=2)
        b.close(timeout=5)
    wait_connections(0)


def test_post_without_name_uses_default_spec(rest):
    default = rest.get("/api/kernelspecs").json()["default"]
    for body in ({}, None):
        r = rest.post("/api/kernels", json=body) if body is not None else rest.post("/api/kernels")
        assert r.status_code == 201, f"body {body!r}: {r.status_code} {r.text[:300]}"
        assert r.json()["name"] == default
        rest.shutdown_kernel(r.json()["id"])


def test_kernelspecs_and_resources(rest, kernels_dir):
    r = rest.get("/api/kernelspecs")
    assert r.status_code == 200
    body = r.json()
    assert body["default"] in body["kernelspecs"]
    assert {"python3", "boom"} <= set(body["kernelspecs"])
    for name, ks in body["kernelspecs"].items():
        assert ks["name"] == name
        assert isinstance(ks["resources"], dict)
        spec = ks["spec"]
        assert isinstance(spec["argv"], list)
        assert isinstance(spec["display_name"], str) and isinstance(spec["language"], str)
    py = body["kernelspecs"]["python3"]
    res = py["resources"]
    assert {"logo-64x64", "logo-32x32", "logo-svg"} <= set(res), res
    for key, url in res.items():
        assert "/kernelspecs/python3/" in url, (key, url)
        path = "/kernelspecs/" + url.rsplit("/kernelspecs/", 1)[1]
        got = rest.get(path)
        assert got.status_code == 200 and got.content, (key, url, got.status_code)

    one = rest.get("/api/kernelspecs/python3")
    assert one.status_code == 200
    assert one.json()["name"] == "python3" and one.json()["spec"]["language"] == "python"

    want = (kernels_dir / "python3" / "logo-64x64.png").read_bytes()
    r = rest.get("/kernelspecs/python3/logo-64x64.png")
    assert r.status_code == 200
    assert r.content == want
    assert r.content.startswith(b"\x89PNG")
    assert r.headers.get("Content-Type", "").startswith("image/png")
    h = rest.head("/kernelspecs/python3/logo-64x64.png")
    assert h.status_code == 200 and h.content == b""
    assert rest.get("/kernelspecs/python3/no-such-file.png").status_code == 404


def test_sessions_crud(rest):
    r = rest.post("/api/sessions", json={"path": "crud/a.ipynb", "name": "a.ipynb", "type": "notebook",
                                         "kernel": {"name": "python3"}})
    assert r.status_code == 201, r.text
    s = r.json()
    sid, kid = s["id"], s["kernel"]["id"]
    assert s["path"] == "crud/a.ipynb" and s["type"] == "notebook"
    assert s["kernel"]["name"] == "python3"
    _assert_kernel_model(s["kernel"])
    try:
        r = rest.get("/api/sessions")
        assert r.status_code == 200
        assert sid in [x["id"] for x in r.json()]

        r = rest.get(f"/api/sessions/{sid}")
        assert r.status_code == 200 and r.json()["kernel"]["id"] == kid

        r = rest.patch(f"/api/sessions/{sid}", json={"path": "crud/b.ipynb", "name": "b.ipynb"})
        assert r.status_code == 200, r.text
        assert r.json()["path"] == "crud/b.ipynb"
        assert r.json()["kernel"]["id"] == kid
        assert rest.get(f"/api/sessions/{sid}").json()["path"] == "crud/b.ipynb"
    finally:
        r = rest.delete(f"/api/sessions/{sid}")
    assert r.status_code == 204, r.text
    assert rest.get(f"/api/sessions/{sid}").status_code == 404
    assert sid not in [x["id"] for x in rest.get("/api/sessions").json()]
    rest.wait_kernel_gone(kid)
