"""HTTPS and client certificates (mTLS) with a real Jupyter client.

kernelbus serves HTTPS with a test CA's server certificate and requires client
certificates from that CA. jupyter_server in gateway mode reaches it with
GatewayClient.ca_certs / client_cert / client_key, starts a kernel and runs a cell over
the gateway's REST API and kernel websocket (wss). Clients without a certificate, or with
one from another CA, do not get past the TLS handshake: no HTTP is spoken with them.

The certificates come from trustme (an in-memory test CA), written to the module's tmp dir.
"""

from __future__ import annotations

import secrets
import ssl
from pathlib import Path

import pytest
import requests
import trustme
import websocket

import kbprocs
from kbclient import KernelWS, Rest, run_in_kernel
from kbgateway_custom import start_jupyter_server, start_kernelbus

pytestmark = pytest.mark.kernelbus_only


class Certs:
    """A test CA, the gateway's server certificate and a client certificate, as files."""

    def __init__(self, d: Path):
        d.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_file = d / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert, self.server_key = d / "server.pem", d / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))
        self.client_cert, self.client_key = self._client(self.ca, d, "alice")
        # A client certificate for the same name from a CA the gateway does not trust.
        self.rogue_cert, self.rogue_key = self._client(trustme.CA(), d, "rogue-alice")

    @staticmethod
    def _client(ca: trustme.CA, d: Path, name: str) -> tuple[Path, Path]:
        leaf = ca.issue_cert(f"{name}@example.org", common_name="alice")
        cert, key = d / f"{name}.pem", d / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


def _https_gateway(certs: Certs, tmp_path_factory, name: str, flags: list[str], **kw):
    """kernelbus over HTTPS with the test CA's server certificate, a token and flags."""
    if kbprocs.target() != "kernelbus":
        pytest.skip("HTTPS flags are kernelbus's")
    srv = start_kernelbus(
        tmp_path_factory.mktemp(name),
        ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)] + flags,
        name=name, scheme="https", token=secrets.token_hex(16), verify=str(certs.ca_file), **kw)
    yield srv
    srv.stop()
    assert not srv.exit_problem, srv.exit_problem


@pytest.fixture(scope="module")
def tls_gateway(certs, tmp_path_factory):
    yield from _https_gateway(certs, tmp_path_factory, "gateway-tls",
                              ["--tls-client-ca", str(certs.ca_file), "--tls-client-auth", "require"],
                              cert=(str(certs.client_cert), str(certs.client_key)))


def _jupyter_server(workdir: Path, gateway: kbprocs.Server, gateway_client_args: list[str],
                    extra_env: dict | None = None) -> kbprocs.Server:
    return start_jupyter_server(workdir, gateway.url, gateway.token, gateway_client_args,
                                extra_env=extra_env, name="jupyter-server-tls")


@pytest.fixture(scope="module")
def js_mtls(tls_gateway, certs, tmp_path_factory):
    srv = _jupyter_server(tmp_path_factory.mktemp("js-mtls"), tls_gateway, [
        f"--GatewayClient.ca_certs={certs.ca_file}",
        f"--GatewayClient.client_cert={certs.client_cert}",
        f"--GatewayClient.client_key={certs.client_key}",
    ])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def js_no_cert(tls_gateway, certs, tmp_path_factory):
    # jupyter_server passes GatewayClient.ca_certs on only together with client_cert, so
    # this client trusts the test CA through SSL_CERT_FILE: it does verify the gateway,
    # and is refused only for its missing certificate.
    srv = _jupyter_server(tmp_path_factory.mktemp("js-nocert"), tls_gateway, [],
                          extra_env={"SSL_CERT_FILE": str(certs.ca_file)})
    yield srv
    srv.stop()


def test_jupyter_server_runs_a_cell_over_mtls(js_mtls, tls_gateway, certs):
    rest = Rest(js_mtls.url, js_mtls.token)
    r = rest.post("/api/sessions", json={"path": "tls.ipynb", "name": "tls.ipynb", "type": "notebook",
                                         "kernel": {"name": "python3"}})
    assert r.status_code == 201, f"POST /api/sessions -> {r.status_code}: {r.text[:2000]}\n{tls_gateway.log_tail()}"
    session = r.json()
    kid = session["kernel"]["id"]
    try:
        # jupyter_server relays this websocket to the gateway's over wss with its
        # client certificate.
        ex = run_in_kernel(js_mtls.ws_url, kid, js_mtls.token, "print(6*7)")
        assert ex.stdout == "42\n", ex.summary()
        # The kernel is on the TLS gateway (asked directly, with a certificate).
        g = requests.get(f"{tls_gateway.url}/api/kernels", headers=tls_gateway.headers(), timeout=10,
                         verify=str(certs.ca_file), cert=(str(certs.client_cert), str(certs.client_key)))
        assert g.status_code == 200 and kid in [k["id"] for k in g.json()], g.text
    finally:
        rest.delete(f"/api/sessions/{session['id']}")


def test_direct_wss_with_client_certificate(tls_gateway, certs):
    """A kernel websocket straight to the gateway over wss with a client certificate."""
    h = tls_gateway.headers()
    tls = {"verify": str(certs.ca_file), "cert": (str(certs.client_cert), str(certs.client_key))}
    r = requests.post(f"{tls_gateway.url}/api/kernels", json={"name": "python3"}, headers=h, timeout=60, **tls)
    assert r.status_code == 201, r.text
    kid = r.json()["id"]
    try:
        sslopt = {"ca_certs": str(certs.ca_file), "certfile": str(certs.client_cert),
                  "keyfile": str(certs.client_key)}
        ws = _TLSKernelWS("wss" + tls_gateway.url[len("https"):], kid, token=tls_gateway.token,
                          sslopt=sslopt).connect()
        try:
            ws.kernel_info(timeout=60)
            ws.discard_pending()
            assert ws.run("print('over wss')", timeout=60).stdout == "over wss\n"
        finally:
            ws.close(timeout=2)
        # The same websocket without a certificate: the TLS handshake fails.
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _TLSKernelWS("wss" + tls_gateway.url[len("https"):], kid, token=tls_gateway.token,
                         sslopt={"ca_certs": str(certs.ca_file)}).connect()
    finally:
        requests.delete(f"{tls_gateway.url}/api/kernels/{kid}", headers=h, timeout=30, **tls)


@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA"])
def test_client_without_trusted_certificate_is_refused(tls_gateway, certs, who):
    cert = None if who == "no certificate" else (str(certs.rogue_cert), str(certs.rogue_key))
    # The right token does not help: without a trusted certificate no HTTP is spoken.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{tls_gateway.url}/api/kernels", headers=tls_gateway.headers(), timeout=10,
                     verify=str(certs.ca_file), cert=cert)


def test_plain_http_to_the_tls_port_gets_no_answer(tls_gateway):
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(tls_gateway.url.replace("https:", "http:") + "/api", timeout=10)


def test_jupyter_server_without_client_certificate_is_refused(js_no_cert, tls_gateway):
    rest = Rest(js_no_cert.url, js_no_cert.token)
    r = rest.get("/api/kernelspecs")
    # jupyter_server turns the failed handshake into an error of its own (5xx).
    assert r.status_code >= 500, f"{r.status_code}: {r.text[:500]}"
    assert "certificate required" in js_no_cert.log_tail(200).lower(), js_no_cert.log_tail(60)
    r = rest.post("/api/sessions", json={"path": "x.ipynb", "name": "x.ipynb", "type": "notebook",
                                         "kernel": {"name": "python3"}})
    assert r.status_code >= 500, f"{r.status_code}: {r.text[:500]}"


class _TLSKernelWS(KernelWS):
    """KernelWS over wss with explicit TLS options (CA, client certificate)."""

    def __init__(self, *args, sslopt: dict, **kw):
        super().__init__(*args, **kw)
        self.sslopt = sslopt

    def connect(self) -> "_TLSKernelWS":
        headers = [f"Authorization: token {self.token}"] if self.token else []
        self.ws = websocket.create_connection(self.url, header=headers, timeout=self.connect_timeout,
                                              enable_multithread=False, skip_utf8_validation=True,
                                              sslopt=self.sslopt)
        return self


@pytest.fixture(scope="module")
def https_gateway(certs, tmp_path_factory):
    """HTTPS without client certificates: the token authenticates."""
    yield from _https_gateway(certs, tmp_path_factory, "gateway-https", [])


def test_jupyter_server_over_https_without_client_certificate(https_gateway, certs, tmp_path_factory):
    # GatewayClient.ca_certs is ignored without client_cert (jupyter_server 2.x), so the
    # test CA is trusted through SSL_CERT_FILE, as an operator with a private CA would.
    js = _jupyter_server(tmp_path_factory.mktemp("js-https"), https_gateway, [],
                         extra_env={"SSL_CERT_FILE": str(certs.ca_file)})
    try:
        rest = Rest(js.url, js.token)
        r = rest.post("/api/sessions", json={"path": "h.ipynb", "name": "h.ipynb", "type": "notebook",
                                             "kernel": {"name": "python3"}})
        assert r.status_code == 201, f"{r.status_code}: {r.text[:2000]}\n{https_gateway.log_tail()}"
        session = r.json()
        assert run_in_kernel(js.ws_url, session["kernel"]["id"], js.token, "print('https')").stdout == "https\n"
        rest.delete(f"/api/sessions/{session['id']}")
    finally:
        js.stop()
    # A client that does not trust the CA refuses the gateway's certificate.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{https_gateway.url}/api", headers=https_gateway.headers(), timeout=10)
