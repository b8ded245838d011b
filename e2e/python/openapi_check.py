"""Checks every REST response the end-to-end suites get from kernelbus against the
OpenAPI document the front-end serves (frontend/openapi.yaml): the status must be
documented for the operation, and a JSON body must match the documented schema.

kbclient.Rest reports each response to `observe`; conftest registers the kernelbus
gateways' base URLs (responses of jupyter_server or a reference gateway are not checked)
and calls `problems()` after each test, failing it on any mismatch.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import yaml

SPEC_PATH = Path(__file__).resolve().parents[2] / "frontend" / "openapi.yaml"

_lock = threading.Lock()
_bases: set[str] = set()
_pending: list[tuple[str, str, int, str, bytes]] = []
_spec: dict | None = None
_routes: list[tuple[re.Pattern, dict]] = []
checked = 0  # responses checked so far, for the session summary


def watch(base_url: str) -> None:
    """Check responses from the kernelbus gateway at base_url."""
    with _lock:
        _bases.add(base_url.rstrip("/"))


def unwatch(base_url: str) -> None:
    with _lock:
        _bases.discard(base_url.rstrip("/"))


def observe(method: str, url: str, status: int, content_type: str, body: bytes) -> None:
    with _lock:
        for base in _bases:
            if url.startswith(base + "/"):
                path = urlsplit(url[len(base):]).path
                _pending.append((method, path, status, content_type, body))
                return


def _load() -> None:
    global _spec
    if _spec is not None:
        return
    _spec = yaml.safe_load(SPEC_PATH.read_text())
    for path, item in _spec["paths"].items():
        rx = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$"
        if path.endswith("{file}"):
            rx = rx[:-len("[^/]+$")] + ".+$"
        _routes.append((re.compile(rx), item))


def _check(method: str, path: str, status: int, content_type: str, body: bytes) -> str | None:
    _load()
    item = next((it for rx, it in _routes if rx.match(path)), None)
    if item is None:
        # Only the front-end's catch-all may answer an undocumented path.
        return None if status in (404, 405) else f"{method} {path} -> {status}: path not in openapi.yaml"
    op = item.get(method.lower())
    if op is None:
        if method == "HEAD" and "get" in item:
            return None
        return None if status in (404, 405) else f"{method} {path} -> {status}: method not in openapi.yaml"
    responses = op["responses"]
    resp = responses.get(str(status)) or responses.get("default")
    if resp is None:
        return f"{method} {path} -> {status}: status not documented"
    if "$ref" in resp:
        resp = _spec["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    ctype = content_type.split(";")[0].strip()
    if ctype != "application/json" or not body or method == "HEAD":
        return None
    media = resp.get("content", {}).get("application/json")
    if media is None:
        return f"{method} {path} -> {status}: JSON body where openapi.yaml documents none"
    import json

    try:
        doc = json.loads(body)
    except ValueError as e:
        return f"{method} {path} -> {status}: body is not JSON: {e}"
    # The schema's $refs point into the document's components.
    schema = dict(media["schema"], components=_spec["components"])
    try:
        jsonschema.Draft202012Validator(schema).validate(doc)
    except jsonschema.ValidationError as e:
        return f"{method} {path} -> {status}: {e.message} at {list(e.absolute_path)}: {body[:300]!r}"
    return None


def check_log(path: str) -> int:
    """Checks a JSON Lines log of exchanges (the JS suite's KB_OPENAPI_LOG); exit status."""
    import json

    n, found = 0, []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            ex = json.loads(line)
            n += 1
            p = _check(ex["method"], ex["path"], ex["status"], ex["content_type"], ex["body"].encode())
            if p:
                found.append(p)
    print(f"openapi: {n} kernelbus REST responses of the JS suite checked against frontend/openapi.yaml")
    if n == 0:
        print("openapi: the JS suite recorded no responses: its fetch hook is broken")
        return 1
    for p in found:
        print("openapi: " + p)
    return 1 if found else 0


def problems() -> list[str]:
    """Checks what was observed since the last call."""
    global checked
    with _lock:
        todo = list(_pending)
        _pending.clear()
        checked += len(todo)
    out = []
    for ex in todo:
        p = _check(*ex)
        if p:
            out.append(p)
    return out


if __name__ == "__main__":
    import sys

    sys.exit(check_log(sys.argv[1]))
