"""nbclient (what papermill uses) executing notebooks through jupyter_server's
GatewayKernelManager, which talks to the gateway directly over REST and one websocket.

That client sends messages without `channel`, with float `date`s, and expects kernel name
"python3". Its websocket carries no auth header, no cookie and no session_id (jupyter_server
2.x `GatewayKernelClient.start_channels`), so it only works against a gateway without a
token: this module's gateway runs without one.
"""

from __future__ import annotations

import asyncio
import time

import nbformat
import pytest
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.gateway.managers import GatewayKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


@pytest.fixture(scope="module")
def gateway_options():
    return {"token": None}


@pytest.fixture
def gateway_client(gateway):
    GatewayClient.clear_instance()
    gc = GatewayClient.instance(url=gateway.url, auth_token=gateway.token or "",
                                request_timeout=60.0, connect_timeout=30.0)
    yield gc
    GatewayClient.clear_instance()


def _notebook(*sources: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


def test_nbclient_executes_notebook_through_gateway(gateway_client, rest, tmp_path):
    nb = _notebook(
        "a = 6",
        "print(a * 7)",
        "from IPython.display import display, HTML\n"
        "display(HTML(f'<b>{a * 7 + 1}</b>'))\n"
        "a * 100",
    )
    before = set(rest.kernel_ids())
    client = NotebookClient(nb, kernel_manager_class=GatewayKernelManager, timeout=60,
                            startup_timeout=60, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    c0, c1, c2 = nb.cells
    assert c0.outputs == []
    assert c0.execution_count == 1
    assert [(o.output_type, o.name, o.text) for o in c1.outputs] == [("stream", "stdout", "42\n")]
    kinds = [o.output_type for o in c2.outputs]
    assert kinds == ["display_data", "execute_result"], c2.outputs
    assert c2.outputs[0].data["text/html"] == "<b>43</b>"
    assert c2.outputs[1].data["text/plain"] == "600"
    assert c2.execution_count == 3
    # nbclient shuts its kernel down at the end (DELETE on the gateway).
    for kid in set(rest.kernel_ids()) - before:
        rest.wait_kernel_gone(kid, timeout=15)


def test_nbclient_cell_error_is_reported(gateway_client, tmp_path):
    nb = _notebook("x = 1", "1/0", "print('not reached')")
    client = NotebookClient(nb, kernel_manager_class=GatewayKernelManager, timeout=60,
                            startup_timeout=60, resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError) as ei:
        client.execute()
    assert "ZeroDivisionError" in str(ei.value)
    err = nb.cells[1].outputs[0]
    assert err.output_type == "error" and err.ename == "ZeroDivisionError"
    assert nb.cells[2].outputs == []


def test_gateway_kernel_manager_interrupt(gateway_client, rest):
    """GatewayKernelManager/GatewayKernelClient used directly, as papermill-style tools
    do: start, execute, interrupt (POST .../interrupt), shutdown (DELETE).

    (nbclient's own interrupt_on_timeout path cannot be used here: in jupyter_server 2.x
    its kernel-alive check reaches jupyter_client's local-process is_alive, which asserts
    on the provisioner a gateway kernel does not have.)
    """

    async def scenario():
        km = GatewayKernelManager()
        await km.start_kernel(kernel_name="python3")
        kid = km.kernel_id
        kc = km.client()
        await kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            msg_id = kc.execute("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
            deadline = time.monotonic() + 60
            while True:
                remaining = deadline - time.monotonic()
                assert remaining > 0, "no 'sleeping' output"
                m = await kc.get_iopub_msg(timeout=remaining)
                if (m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "stream"
                        and "sleeping" in m["content"]["text"]):
                    break
            t0 = time.monotonic()
            await km.interrupt_kernel()
            while True:
                remaining = t0 + 30 - time.monotonic()
                assert remaining > 0, "no execute_reply after interrupt"
                reply = await kc.get_shell_msg(timeout=remaining)
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
            elapsed = time.monotonic() - t0
            assert reply["content"]["status"] == "error", reply["content"]
            assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
            assert elapsed < 20, f"interrupt took {elapsed:.1f}s"
        finally:
            kc.stop_channels()
            await km.shutdown_kernel()
        return kid

    kid = asyncio.run(scenario())
    rest.wait_kernel_gone(kid, timeout=15)
