"""A small Jupyter kernel websocket client for the end-to-end tests.

Speaks the legacy JSON protocol (no subprotocol, what jupyter_server and nbclient use) or
`v1.kernel.websocket.jupyter.org` (binary frames, what JupyterLab offers). Replies are
collected by the request's msg_id with deadlines: the client only ever blocks in a socket
read that has a timeout, never in a sleep.
"""

from __future__ import annotations

import datetime as _dt
import json
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import quote

import requests
import websocket

V1 = "v1.kernel.websocket.jupyter.org"

# Called with (method, url, status, content type, body) after every REST response
# (conftest checks kernelbus' answers against its OpenAPI document).
RESPONSE_HOOKS: list[Callable[[str, str, int, str, bytes], None]] = []


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id() -> str:
    return uuid.uuid4().hex


# ---------------------------------------------------------------------------------------
# REST


class Rest:
    """requests with a base URL and the `Authorization: token T` header."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60):
        self.base = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.s = requests.Session()

    def headers(self, extra: dict | None = None) -> dict:
        h = {"Authorization": f"token {self.token}"} if self.token else {}
        if extra:
            h.update(extra)
        return h

    def request(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", self.timeout)
        kw["headers"] = self.headers(kw.get("headers"))
        r = self.s.request(method, self.base + path, **kw)
        for hook in RESPONSE_HOOKS:
            hook(method, r.url, r.status_code, r.headers.get("Content-Type", ""), r.content)
        return r

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def patch(self, path, **kw):
        return self.request("PATCH", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def head(self, path, **kw):
        return self.request("HEAD", path, **kw)

    # conveniences -------------------------------------------------------------------

    def start_kernel(self, name: str = "python3", env: dict | None = None) -> dict:
        body = {"name": name}
        if env is not None:
            body["env"] = env
        r = self.post("/api/kernels", json=body)
        assert r.status_code == 201, f"POST /api/kernels -> {r.status_code}: {r.text[:2000]}"
        return r.json()

    def kernel_ids(self) -> list[str]:
        r = self.get("/api/kernels")
        assert r.status_code == 200, f"GET /api/kernels -> {r.status_code}: {r.text[:500]}"
        return [k["id"] for k in r.json()]

    def shutdown_kernel(self, kernel_id: str) -> None:
        r = self.delete(f"/api/kernels/{kernel_id}")
        assert r.status_code in (204, 404), f"DELETE kernel -> {r.status_code}: {r.text[:500]}"

    def wait_kernel_gone(self, kernel_id: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while kernel_id in self.kernel_ids():
            if time.monotonic() > deadline:
                raise AssertionError(f"kernel {kernel_id} still listed {timeout}s after shutdown")
            time.sleep(0.1)  # poll interval, the condition is re-checked


# ---------------------------------------------------------------------------------------
# Frames


def v1_serialize(msg: dict) -> bytes:
    """A message dict -> one v1.kernel.websocket.jupyter.org binary frame."""
    parts = [
        msg.get("channel", "shell").encode(),
        json.dumps(msg["header"]).encode(),
        json.dumps(msg.get("parent_header") or {}).encode(),
        json.dumps(msg.get("metadata") or {}).encode(),
        json.dumps(msg.get("content") or {}).encode(),
    ] + [bytes(b) for b in msg.get("buffers") or []]
    n = len(parts) + 1
    offsets = [8 * (n + 1)]
    for p in parts:
        offsets.append(offsets[-1] + len(p))
    return struct.pack(f"<{n + 1}Q", n, *offsets) + b"".join(parts)


def v1_deserialize(data: bytes) -> dict:
    (n,) = struct.unpack_from("<Q", data, 0)
    offsets = list(struct.unpack_from(f"<{n}Q", data, 8))
    if offsets[0] != 8 * (n + 1):
        raise ValueError(f"bad v1 frame: offsets[0]={offsets[0]} for n={n}")
    parts = [data[offsets[i]:offsets[i + 1]] for i in range(n - 1)]
    channel, header, parent, metadata, content = parts[:5]
    header = json.loads(header)
    return {
        "channel": channel.decode(),
        "header": header,
        "parent_header": json.loads(parent),
        "metadata": json.loads(metadata),
        "content": json.loads(content),
        "buffers": parts[5:],
        "msg_id": header.get("msg_id"),
        "msg_type": header.get("msg_type"),
    }


def legacy_binary_deserialize(data: bytes) -> dict:
    """Legacy-protocol binary frame (a message with buffers)."""
    (nbufs,) = struct.unpack_from("!I", data, 0)
    offsets = list(struct.unpack_from(f"!{nbufs}I", data, 4))
    offsets.append(len(data))
    msg = json.loads(data[offsets[0]:offsets[1]])
    msg["buffers"] = [data[offsets[i]:offsets[i + 1]] for i in range(1, nbufs)]
    return msg


# ---------------------------------------------------------------------------------------
# Websocket client


class Closed(Exception):
    """The server closed the websocket."""


@dataclass
class Execution:
    """Everything that came back for one request, grouped by channel."""

    msg_id: str
    iopub: list = field(default_factory=list)
    shell: list = field(default_factory=list)
    stdin: list = field(default_factory=list)
    control: list = field(default_factory=list)

    @property
    def reply(self) -> dict | None:
        replies = [m for m in self.shell + self.control if m["msg_type"].endswith("_reply")]
        return replies[-1] if replies else None

    @property
    def stdout(self) -> str:
        return "".join(m["content"]["text"] for m in self.iopub
                       if m["msg_type"] == "stream" and m["content"].get("name") == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(m["content"]["text"] for m in self.iopub
                       if m["msg_type"] == "stream" and m["content"].get("name") == "stderr")

    def of_type(self, msg_type: str) -> list:
        return [m for m in self.iopub + self.shell + self.stdin + self.control
                if m["msg_type"] == msg_type]

    def summary(self) -> str:
        return (f"msg {self.msg_id}: iopub={[m['msg_type'] for m in self.iopub][:40]} "
                f"shell={[m['msg_type'] for m in self.shell]} stdin={[m['msg_type'] for m in self.stdin]} "
                f"stdout={self.stdout[:300]!r} stderr={self.stderr[:300]!r}")


def run_in_kernel(ws_base: str, kernel_id: str, token: str | None, code: str, timeout: float = 60) -> Execution:
    """Connect a websocket to the kernel, wait until it answers kernel_info, run `code`
    and close: one cell, as a notebook opened for it would run."""
    ws = KernelWS(ws_base, kernel_id, token=token).connect()
    try:
        ws.kernel_info(timeout=timeout)
        ws.discard_pending()
        return ws.run(code, timeout=timeout)
    finally:
        ws.close(timeout=2)


class KernelWS:
    """One websocket connection to /api/kernels/{id}/channels?session_id=S."""

    def __init__(self, ws_base: str, kernel_id: str, session_id: str | None = None,
                 token: str | None = None, token_in_query: bool = False,
                 protocol: str | None = None, connect_timeout: float = 60,
                 username: str = "e2e"):
        self.ws_base = ws_base.rstrip("/")
        self.kernel_id = kernel_id
        self.session_id = session_id or new_id()
        self.token = token
        self.token_in_query = token_in_query
        self.protocol = protocol
        self.connect_timeout = connect_timeout
        self.username = username
        self.ws: websocket.WebSocket | None = None
        self.pending: list[dict] = []  # messages read but not yet claimed by a collect
        self.seen_ids: list[str] = []  # msg_id of every message received, in order
        self.dropped: list[bytes] = []  # frames we could not parse

    # connection ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        u = f"{self.ws_base}/api/kernels/{quote(self.kernel_id)}/channels?session_id={quote(self.session_id)}"
        if self.token and self.token_in_query:
            u += f"&token={quote(self.token)}"
        return u

    def connect(self) -> "KernelWS":
        headers = []
        if self.token and not self.token_in_query:
            headers.append(f"Authorization: token {self.token}")
        kw = {"header": headers, "timeout": self.connect_timeout,
              "enable_multithread": False, "skip_utf8_validation": True}
        if self.protocol:
            kw["subprotocols"] = [self.protocol]
        self.ws = websocket.create_connection(self.url, **kw)
        if self.protocol:
            got = self.ws.getsubprotocol()
            assert got == self.protocol, f"asked for subprotocol {self.protocol!r}, server chose {got!r}"
        else:
            got = self.ws.getsubprotocol()
            assert not got, f"offered no subprotocol, server chose {got!r}"
        return self

    @property
    def connected(self) -> bool:
        return self.ws is not None and self.ws.connected

    def close(self, drain_into: list | None = None, timeout: float = 10) -> None:
        """Graceful close: send a Close frame, then keep reading until the server's Close.

        Messages that arrive after our Close are kept (in self.pending, or appended to
        drain_into), so a test knows exactly what the server delivered before it closed.
        """
        if not self.ws:
            return
        ws, self.ws = self.ws, None
        if ws.connected:
            try:
                ws.send_close()
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    ws.settimeout(max(0.05, deadline - time.monotonic()))
                    op, frame = ws.recv_data_frame(True)
                    if op == websocket.ABNF.OPCODE_CLOSE:
                        break
                    if op in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                        msg = self._parse(op, frame.data)
                        if msg is not None:
                            (drain_into if drain_into is not None else self.pending).append(msg)
            except (websocket.WebSocketException, OSError):
                pass
        ws.shutdown()

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake."""
        if self.ws:
            self.ws.shutdown()
            self.ws = None

    def __enter__(self):
        if not self.ws:
            self.connect()
        return self

    def __exit__(self, *exc):
        self.close(timeout=2)

    # sending ------------------------------------------------------------------------

    def make_msg(self, channel: str, msg_type: str, content: dict | None = None,
                 parent: dict | None = None, metadata: dict | None = None) -> dict:
        header = {
            "msg_id": new_id(),
            "msg_type": msg_type,
            "session": self.session_id,
            "username": self.username,
            "date": now_iso(),
            "version": "5.3",
        }
        return {"header": header, "msg_id": header["msg_id"], "msg_type": msg_type,
                "parent_header": parent or {}, "metadata": metadata or {},
                "content": content or {}, "channel": channel, "buffers": []}

    def send_msg(self, msg: dict) -> dict:
        assert self.ws is not None, "not connected"
        if self.protocol == V1:
            self.ws.send_bytes(v1_serialize(msg))
        else:
            self.ws.send(json.dumps(msg))
        return msg

    def send(self, channel: str, msg_type: str, content: dict | None = None, **kw) -> dict:
        return self.send_msg(self.make_msg(channel, msg_type, content, **kw))

    def send_raw(self, data: str | bytes) -> None:
        assert self.ws is not None, "not connected"
        if isinstance(data, bytes):
            self.ws.send_bytes(data)
        else:
            self.ws.send(data)

    def execute(self, code: str, allow_stdin: bool = False, silent: bool = False,
                store_history: bool = True) -> dict:
        return self.send("shell", "execute_request", {
            "code": code, "silent": silent, "store_history": store_history,
            "user_expressions": {}, "allow_stdin": allow_stdin, "stop_on_error": True,
        })

    # receiving ----------------------------------------------------------------------

    def _parse(self, opcode: int, data: bytes) -> dict | None:
        try:
            if opcode == websocket.ABNF.OPCODE_BINARY:
                msg = v1_deserialize(data) if self.protocol == V1 else legacy_binary_deserialize(data)
            else:
                if isinstance(data, bytes):
                    data = data.decode("utf-8")
                msg = json.loads(data)
                msg.setdefault("buffers", [])
        except (ValueError, struct.error, UnicodeDecodeError):
            self.dropped.append(data[:200] if isinstance(data, bytes) else data[:200].encode())
            return None
        msg.setdefault("msg_id", msg.get("header", {}).get("msg_id"))
        msg.setdefault("msg_type", msg.get("header", {}).get("msg_type"))
        self.seen_ids.append(msg["msg_id"])
        return msg

    def recv(self, timeout: float) -> dict | None:
        """Next message from the socket, or None when `timeout` passes first."""
        if self.ws is None:
            raise Closed("not connected")
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.ws.settimeout(remaining)
            try:
                # control_frame=True: pings come back to this loop, so they cannot keep
                # the read blocked past the deadline.
                op, frame = self.ws.recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                return None
            except (websocket.WebSocketConnectionClosedException, ConnectionError) as e:
                raise Closed(str(e)) from e
            if op == websocket.ABNF.OPCODE_CLOSE:
                self.ws.shutdown()
                self.ws = None
                raise Closed(f"server closed: {frame.data[:2].hex() if frame.data else ''}")
            if op not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                continue  # ping / pong
            msg = self._parse(op, frame.data)
            if msg is not None:
                return msg

    def _next(self, timeout: float, want: Callable[[dict], bool]) -> dict | None:
        for i, m in enumerate(self.pending):
            if want(m):
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            m = self.recv(max(0.0, deadline - time.monotonic()))
            if m is None:
                return None
            if want(m):
                return m
            self.pending.append(m)

    def wait_for(self, want: Callable[[dict], bool], timeout: float, what: str = "message") -> dict:
        m = self._next(timeout, want)
        if m is None:
            raise AssertionError(f"no {what} within {timeout}s; pending: "
                                 f"{[(x['channel'], x['msg_type']) for x in self.pending][-20:]}")
        return m

    def collect(self, request: dict, timeout: float = 60,
                on_input: Callable[[dict], str] | None = None,
                on_message: Callable[[dict], None] | None = None,
                need_idle: bool = True) -> Execution:
        """Gather everything whose parent is `request` until its reply and (if need_idle)
        the iopub `idle` status for it have both arrived.

        on_input(msg) answers an input_request on stdin; on_message sees each message as it
        arrives (tests use it to act mid-stream, e.g. interrupt after the first output).
        """
        msg_id = request["header"]["msg_id"]
        ex = Execution(msg_id)
        got_reply = got_idle = False

        def mine(m):
            return (m.get("parent_header") or {}).get("msg_id") == msg_id

        deadline = time.monotonic() + timeout
        while not (got_reply and (got_idle or not need_idle)):
            remaining = deadline - time.monotonic()
            m = self._next(max(0.0, remaining), mine) if remaining > 0 else None
            if m is None:
                raise AssertionError(f"timed out after {timeout}s waiting for the reply to "
                                     f"{request['header']['msg_type']}: {ex.summary()}")
            ch = m.get("channel")
            getattr(ex, ch if ch in ("iopub", "shell", "stdin", "control") else "iopub").append(m)
            if on_message:
                on_message(m)
            if ch in ("shell", "control") and m["msg_type"].endswith("_reply"):
                got_reply = True
            elif ch == "iopub" and m["msg_type"] == "status" and m["content"].get("execution_state") == "idle":
                got_idle = True
            elif ch == "stdin" and m["msg_type"] == "input_request":
                assert on_input is not None, f"unexpected input_request: {m['content']}"
                self.send("stdin", "input_reply", {"value": on_input(m)}, parent=m["header"])
        return ex

    def run(self, code: str, timeout: float = 60, **kw) -> Execution:
        """Execute `code` and collect the result."""
        allow_stdin = "on_input" in kw
        return self.collect(self.execute(code, allow_stdin=allow_stdin), timeout=timeout, **kw)

    def kernel_info(self, timeout: float = 60, retry_every: float = 2.0) -> dict:
        """Send kernel_info_request (re-sending every retry_every s until the deadline)
        and return the reply. Re-sending covers a kernel that is still booting or
        restarting, as JupyterLab and jupyter_server's nudge do.
        """
        deadline = time.monotonic() + timeout
        sent = []
        while True:
            req = self.send("shell", "kernel_info_request")
            sent.append(req["header"]["msg_id"])
            ids = set(sent)
            until = min(deadline, time.monotonic() + retry_every)
            m = self._next(max(0.0, until - time.monotonic()),
                           lambda m: m.get("msg_type") == "kernel_info_reply"
                           and (m.get("parent_header") or {}).get("msg_id") in ids)
            if m is not None:
                return m
            if time.monotonic() >= deadline:
                raise AssertionError(f"no kernel_info_reply within {timeout}s")

    def discard_pending(self) -> None:
        self.pending.clear()
