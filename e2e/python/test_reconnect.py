"""No output is lost or repeated when a client disconnects and comes back with the same
session_id (DESIGN.md "No loss"): straight to the gateway's kernel websocket.

The kernel prints 1..N a few ms apart and also records its progress in a file, so the test
can wait (by polling) until output was produced while the client was away, without
guessing with sleeps. Disconnects are graceful (close handshake, reading until the server's
Close), so "delivered" is well defined: every message the server sent before closing was
read by the client.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from kbclient import V1, KernelWS

N = 2000


def _wait_progress(path: Path, at_least: int | None, timeout: float = 60) -> None:
    """Poll the kernel's progress file until it reached `at_least` (None: until done)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = path.read_text().strip()
        except OSError:
            text = ""
        if text == "done" or (at_least is not None and text.isdigit() and int(text) >= at_least):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"kernel progress stuck at {text!r}, wanted {at_least or 'done'}")
        time.sleep(0.02)  # poll interval; the condition is re-checked


def _code(progress: Path) -> str:
    return (
        "import time\n"
        f"p = {str(progress)!r}\n"
        f"for i in range(1, {N} + 1):\n"
        "    print(i, flush=True)\n"
        "    if i % 50 == 0:\n"
        "        open(p, 'w').write(str(i))\n"
        "    time.sleep(0.002)\n"
        "open(p, 'w').write('done')\n"
    )


def _numbers(msgs: list[dict], msg_id: str) -> list[int]:
    text = "".join(m["content"]["text"] for m in msgs
                   if m.get("msg_type") == "stream"
                   and (m.get("parent_header") or {}).get("msg_id") == msg_id)
    return [int(x) for x in text.split()]


@pytest.mark.kernelbus_only
@pytest.mark.parametrize("protocol", [None, V1], ids=["legacy", "v1"])
def test_reconnect_same_session_gets_every_message_once(gateway, kernel, request, protocol):
    # Under a root gateway the kernel runs as another uid (one of its own by default), which
    # cannot enter pytest's 0700 tmp_path: the progress file lives in a folder it may write.
    pdir = Path(tempfile.mkdtemp(prefix="kb-reconnect-"))
    os.chmod(pdir, 0o777)
    request.addfinalizer(lambda: shutil.rmtree(pdir, ignore_errors=True))
    progress = pdir / "progress"
    session = uuid.uuid4().hex

    def connect():
        ws = KernelWS(gateway.ws_url, kernel["id"], session_id=session, token=gateway.token,
                      protocol=protocol).connect()
        return ws

    ws = connect()
    ws.kernel_info(timeout=60)
    ws.discard_pending()

    req = ws.execute(_code(progress))
    msg_id = req["header"]["msg_id"]
    received: list[dict] = []

    # 1. Read live until ~1/4 of the output arrived, then leave.
    while not _numbers(received, msg_id) or _numbers(received, msg_id)[-1] < N // 4:
        m = ws.recv(timeout=30)
        assert m is not None, f"stream stalled: {_numbers(received, msg_id)[-3:]}"
        received.append(m)
    ws.close(drain_into=received)
    left_at = max(_numbers(received, msg_id))

    # 2. Come back once the kernel has printed a good deal more while nobody listened.
    _wait_progress(progress, min(N, left_at + N // 4))
    ws = connect()
    while _numbers(received, msg_id)[-1] < (3 * N) // 4:
        m = ws.recv(timeout=30)
        assert m is not None, f"no replay/live output after reconnect: {_numbers(received, msg_id)[-3:]}"
        received.append(m)
    ws.close(drain_into=received)

    # 3. Come back only after the execution finished: whatever the previous connection did
    #    not deliver before its close (under load it may have delivered everything, reply
    #    and idle status included) has to come from the replay.
    _wait_progress(progress, None)
    ws = connect()

    def of_request(kind: str, state: str | None = None) -> bool:
        return any((m.get("parent_header") or {}).get("msg_id") == msg_id and m["msg_type"] == kind
                   and (state is None or m["content"].get("execution_state") == state)
                   for m in received)

    deadline = time.monotonic() + 60
    while not (of_request("execute_reply") and of_request("status", "idle")):
        m = ws.recv(timeout=max(0.0, deadline - time.monotonic()))
        assert m is not None, (f"after reconnect: reply={of_request('execute_reply')} "
                               f"idle={of_request('status', 'idle')}, "
                               f"last numbers {_numbers(received, msg_id)[-3:]}")
        received.append(m)
    # A kernel_info round trip as a barrier: its reply is behind everything the replay
    # still held in the stream, so a message delivered twice shows up before it.
    barrier = ws.send("shell", "kernel_info_request")["header"]["msg_id"]
    while True:
        m = ws.recv(timeout=max(0.0, deadline - time.monotonic()))
        assert m is not None, "no kernel_info_reply after the replay"
        if (m.get("parent_header") or {}).get("msg_id") == barrier:
            if m["msg_type"] == "kernel_info_reply":
                break
            continue
        received.append(m)
    reply = next(m for m in received if (m.get("parent_header") or {}).get("msg_id") == msg_id
                 and m["msg_type"] == "execute_reply")

    nums = _numbers(received, msg_id)
    assert nums == list(range(1, N + 1)), _diff(nums)
    assert reply["content"]["status"] == "ok", reply["content"]
    mine = [m for m in received if (m.get("parent_header") or {}).get("msg_id") == msg_id]
    ids = [m["msg_id"] for m in mine]
    assert len(ids) == len(set(ids)), "some messages were delivered twice"
    assert sum(1 for m in mine if m["msg_type"] == "execute_reply") == 1

    # Still a normal connection afterwards.
    ex = ws.run("print('still here')", timeout=30)
    assert ex.stdout == "still here\n"
    ws.close()


def _diff(nums: list[int]) -> str:
    want = list(range(1, N + 1))
    missing = sorted(set(want) - set(nums))
    dups = sorted({n for n in nums if nums.count(n) > 1}) if len(nums) < 5 * N else ["many"]
    disorder = next((i for i in range(1, len(nums)) if nums[i] <= nums[i - 1]), None)
    return (f"got {len(nums)} numbers; missing {len(missing)} (first {missing[:10]}); "
            f"duplicated {dups[:10]}; first out-of-order index {disorder}")


def test_routing_between_two_sessions(gateway, kernel):
    """Two clients on one kernel (jupyter_server semantics): iopub reaches both; the shell
    reply and the stdin input_request reach only the session that sent the request."""
    a = KernelWS(gateway.ws_url, kernel["id"], token=gateway.token).connect()
    b = KernelWS(gateway.ws_url, kernel["id"], token=gateway.token).connect()
    try:
        a.kernel_info(timeout=60)
        b.kernel_info(timeout=60)
        a.discard_pending()
        b.discard_pending()

        req = a.execute("v = input('who? ')\nprint('hi', v)", allow_stdin=True)
        ex = a.collect(req, timeout=60, on_input=lambda m: "a-side")
        assert "hi a-side\n" == ex.stdout, ex.summary()
        assert len(ex.stdin) == 1

        # b sees the same iopub output, but neither the reply nor the input_request.
        msg_id = req["header"]["msg_id"]
        seen_b = []
        deadline = time.monotonic() + 30
        while not any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                      for m in seen_b):
            m = b._next(max(0.0, deadline - time.monotonic()),
                        lambda m: (m.get("parent_header") or {}).get("msg_id") == msg_id)
            assert m is not None, f"b did not get a's iopub: {[x['msg_type'] for x in seen_b]}"
            seen_b.append(m)
        assert "".join(m["content"]["text"] for m in seen_b if m["msg_type"] == "stream") == "hi a-side\n"
        # Anything else for that request that b got by now would be a routing leak;
        # a's reply came before a's idle, so it would already be here.
        extra = b._next(0.5, lambda m: (m.get("parent_header") or {}).get("msg_id") == msg_id)
        leaked = [m for m in seen_b + ([extra] if extra else []) if m["channel"] in ("shell", "stdin")]
        assert not leaked, f"b received another session's {[(m['channel'], m['msg_type']) for m in leaked]}"
    finally:
        a.close(timeout=2)
        b.close(timeout=2)
