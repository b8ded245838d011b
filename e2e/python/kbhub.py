"""A real JupyterHub (from PyPI, its proxy from npm) for the identity suites.

scripts/setup-jupyterhub.sh installs it into its own venv; scripts/e2e.sh exports that as
KB_JUPYTERHUB_VENV. The Hub runs with the dummy authenticator and a service `kbtest` whose
token manages users, groups and tokens through the Hub's REST API and holds the scope that
lets it start kernels for others (custom:kernelbus:impersonate). `root` is a Hub admin.
"""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

import requests

import kbprocs

IMPERSONATE_SCOPE = "custom:kernelbus:impersonate"


def hub_venv() -> Path:
    v = os.environ.get("KB_JUPYTERHUB_VENV")
    if v:
        return Path(v)
    cache = Path(os.environ.get("KB_CACHE") or Path.home() / ".cache" / "kernelbus")
    found = sorted(cache.glob("jupyterhub-*/bin/jupyterhub"))
    if not found:
        raise RuntimeError("no JupyterHub: run scripts/setup-jupyterhub.sh (task setup:jupyterhub) "
                           "or set KB_JUPYTERHUB_VENV")
    return found[-1].parent.parent


class Hub:
    def __init__(self, srv: kbprocs.Server, service_token: str):
        self.srv = srv
        self.service_token = service_token
        self.api = srv.url + "/hub/api"

    def call(self, method: str, path: str, json=None) -> requests.Response:
        r = requests.request(method, self.api + path, json=json, timeout=30,
                             headers={"Authorization": f"token {self.service_token}"})
        assert r.status_code // 100 == 2, f"Hub {method} {path} -> {r.status_code}: {r.text[:500]}"
        return r

    def add_user(self, name: str, groups: tuple[str, ...] = ()) -> None:
        self.call("POST", f"/users/{name}")
        for g in groups:
            r = requests.get(f"{self.api}/groups/{g}", timeout=30,
                             headers={"Authorization": f"token {self.service_token}"})
            if r.status_code == 404:
                self.call("POST", f"/groups/{g}", json={"users": [name]})
            else:
                self.call("POST", f"/groups/{g}/users", json={"users": [name]})

    def token(self, user: str, expires_in: int | None = None) -> str:
        body = {"note": "kernelbus e2e"}
        if expires_in:
            body["expires_in"] = expires_in
        return self.call("POST", f"/users/{user}/tokens", json=body).json()["token"]

    def stop(self) -> None:
        self.srv.stop()


def start_hub(workdir: Path) -> Hub:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    venv = hub_venv()
    hub_port = kbprocs.free_port()
    service_token = secrets.token_hex(24)
    (workdir / "jupyterhub_config.py").write_text(f"""
c = get_config()
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {kbprocs.free_port()}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{kbprocs.free_port()}"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.admin_users = {{"root"}}
c.JupyterHub.db_url = "sqlite:///{workdir}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{workdir}/cookie_secret"
c.JupyterHub.pid_file = "{workdir}/hub.pid"
c.JupyterHub.custom_scopes = {{"{IMPERSONATE_SCOPE}": {{"description": "start kernels for other users"}}}}
c.JupyterHub.services = [{{"name": "kbtest", "api_token": "{service_token}"}}]
c.JupyterHub.load_roles = [{{"name": "kbtest", "services": ["kbtest"],
    "scopes": ["admin:users", "admin:groups", "tokens", "{IMPERSONATE_SCOPE}"]}}]
""")
    env = kbprocs.venv_path_env(bin_dir=venv / "bin")
    cmd = [str(venv / "bin" / "jupyterhub"), "-f", str(workdir / "jupyterhub_config.py")]
    srv = kbprocs._spawn("jupyterhub", cmd, env, workdir, f"http://127.0.0.1:{hub_port}",
                         service_token, "/hub/api/", uuid.uuid4().hex)
    return Hub(srv, service_token)
