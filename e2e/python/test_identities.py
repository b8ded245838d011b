"""Two users share one kernelbus gateway, each through a real jupyter_server in gateway mode.

alice's jupyter_server authenticates with a users-file API token (GatewayClient.auth_token),
bob's with HTTP basic auth (GatewayClient.http_user / http_pwd), as the inovex platform's
set-up does. Each sees only their own kernels; neither can act on the other's; the kernel
runs as its owner (KERNEL_USERNAME); the shared admin token sees both.
"""

from __future__ import annotations

import secrets
import subprocess
import uuid

import pytest
import requests

import kbprocs
from kbclient import KernelWS, Rest

pytestmark = pytest.mark.skipif(kbprocs.target() != "kernelbus",
                                reason="identities and ownership are kernelbus features")

BOB_PASSWORD = "bob-" + secrets.token_hex(8)


def users(cmd: list[str], file, stdin: str | None = None) -> str:
    r = subprocess.run([str(kbprocs.kernelbus_bin()), "users", *cmd, "--file", str(file)],
                       input=stdin, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"kernelbus users {cmd}: {r.stderr}"
    return r.stdout.strip()


@pytest.fixture(scope="module")
def users_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("users") / "users.json"
    alice = users(["add", "alice"], f)
    bob = users(["add", "bob"], f)
    users(["passwd", "bob"], f, stdin=BOB_PASSWORD + "\n")
    return {"file": f, "alice": alice, "bob": bob}


@pytest.fixture(scope="module")
def gateway_options(users_file):
    return {"token": secrets.token_hex(16), "extra_args": ["--users-file", str(users_file["file"])]}


@pytest.fixture(scope="module")
def js_alice(gateway, users_file, tmp_path_factory):
    from conftest import _start, _stop
    srv = _start(kbprocs.start_jupyter_server_gw, tmp_path_factory.mktemp("js-alice"), gateway,
                 name="jupyter-server-alice", auth_token=users_file["alice"])
    yield srv
    _stop(srv, delete_kernels=False)


@pytest.fixture(scope="module")
def js_bob(gateway, tmp_path_factory):
    from conftest import _start, _stop
    # No token: jupyter_server sends basic auth instead of its "token " header.
    srv = _start(kbprocs.start_jupyter_server_gw, tmp_path_factory.mktemp("js-bob"), gateway,
                 name="jupyter-server-bob", auth_token="",
                 extra_args=["--GatewayClient.http_user=bob", f"--GatewayClient.http_pwd={BOB_PASSWORD}"])
    yield srv
    _stop(srv, delete_kernels=False)


def start_session(js) -> dict:
    r = Rest(js.url, js.token).post("/api/sessions", json={
        "path": f"{js.name}.ipynb", "name": f"{js.name}.ipynb", "type": "notebook",
        "kernel": {"name": "python3"}})
    assert r.status_code == 201, f"{js.name}: POST /api/sessions -> {r.status_code}: {r.text[:2000]}"
    return r.json()


def whoami(js, kernel_id: str) -> str:
    with KernelWS(js.ws_url, kernel_id, session_id=uuid.uuid4().hex, token=js.token).connect() as ws:
        ex = ws.run("import os; print(os.environ.get('KERNEL_USERNAME'))", timeout=90)
    return ex.stdout.strip()


def gw_as(gateway, who: str, users_file) -> requests.Session:
    s = requests.Session()
    if who == "alice":
        s.headers["Authorization"] = f"token {users_file['alice']}"
    elif who == "bob":
        s.auth = ("bob", BOB_PASSWORD)
    else:
        s.headers["Authorization"] = f"token {gateway.token}"
    return s


def listed(gateway, who: str, users_file) -> set[str]:
    r = gw_as(gateway, who, users_file).get(f"{gateway.url}/api/kernels", timeout=30)
    assert r.status_code == 200, r.text
    return {k["id"] for k in r.json()}


def test_each_user_sees_only_their_own(gateway, js_alice, js_bob, users_file):
    a = start_session(js_alice)["kernel"]["id"]
    b = start_session(js_bob)["kernel"]["id"]
    # Through each user's jupyter_server (which lists the gateway's kernels).
    ja = {k["id"] for k in Rest(js_alice.url, js_alice.token).get("/api/kernels").json()}
    jb = {k["id"] for k in Rest(js_bob.url, js_bob.token).get("/api/kernels").json()}
    assert a in ja and b not in ja, (a, b, ja)
    assert b in jb and a not in jb, (a, b, jb)
    # On the gateway itself.
    assert listed(gateway, "alice", users_file) == {a}
    assert listed(gateway, "bob", users_file) == {b}
    assert {a, b} <= listed(gateway, "admin", users_file)
    # Each kernel runs as its owner.
    assert whoami(js_alice, a) == "alice"
    assert whoami(js_bob, b) == "bob"


def test_bob_cannot_touch_alices_kernel(gateway, users_file):
    a = next(iter(listed(gateway, "alice", users_file)))
    bob = gw_as(gateway, "bob", users_file)
    for method, path in [("GET", f"/api/kernels/{a}"), ("POST", f"/api/kernels/{a}/interrupt"),
                         ("POST", f"/api/kernels/{a}/restart"), ("DELETE", f"/api/kernels/{a}")]:
        r = bob.request(method, gateway.url + path, timeout=30)
        assert r.status_code == 404, f"bob {method} {path}: {r.status_code} {r.text}"
    with pytest.raises(Exception) as e:
        KernelWS(gateway.ws_url, a, session_id=uuid.uuid4().hex, token=users_file["bob"]).connect()
    assert "404" in str(e.value), e.value
    assert a in listed(gateway, "alice", users_file), "alice's kernel is gone after bob's attempts"


def test_bad_credentials(gateway):
    r = requests.get(f"{gateway.url}/api/kernels", auth=("bob", "not-" + BOB_PASSWORD), timeout=30)
    assert r.status_code == 401, r.text
    assert "bob" not in r.json()["message"]
    r = requests.get(f"{gateway.url}/api/kernels", headers={"Authorization": "token kbu_wrong"}, timeout=30)
    assert r.status_code == 401, r.text


def test_spoofed_kernel_username(gateway, users_file):
    r = gw_as(gateway, "alice", users_file).post(f"{gateway.url}/api/kernels", timeout=60,
                                                   json={"name": "python3", "env": {"KERNEL_USERNAME": "bob"}})
    assert r.status_code == 403, r.text
