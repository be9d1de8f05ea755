"""serve.auth: with a token configured, every route but /health needs it, on a real loopback server."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Route

from llmfeat.core.config import ConfigError, ServeAuthConfig
from llmfeat.retrieval import index as ix
from llmfeat.retrieval.serve import RetrieverHolder, create_app
from llmfeat.retrieval.serve_auth import protect, resolve_token
from tests.services import running
from tests.synthetic import config, make_data

TOKEN = "s3cret-token-42"


@pytest.fixture()
def syn(tmp_path):
    data = make_data(tmp_path / "data")
    ix.run_index(config(data.data_dir), log=lambda _: None)
    return data


# A request that succeeds for each route the service has today; routes added later are still checked for 401.
VALID = {
    ("GET", "/items/{item_id}/similar"): "/items/i0003/similar?k=3",
    ("GET", "/users/{user_id}/recommendations"): None,  # filled with a real user below
    ("GET", "/version"): "/version",
    ("POST", "/reload"): "/reload",
    ("GET", "/openapi.json"): "/openapi.json",
    ("GET", "/docs"): "/docs",
    ("GET", "/redoc"): "/redoc",
    ("GET", "/docs/oauth2-redirect"): "/docs/oauth2-redirect",
}


def _requests(app, user: str) -> list[tuple[str, str, str]]:
    """(method, route path, concrete URL) for every route of the app but /health."""
    out = []
    for route in app.routes:
        if not isinstance(route, APIRoute | Route) or route.path == "/health":
            continue
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            url = VALID.get((method, route.path)) or route.path.replace("{item_id}", "i0003").replace(
                "{user_id}", user
            )
            if (method, route.path) == ("GET", "/users/{user_id}/recommendations"):
                url = f"/users/{user}/recommendations?k=3"
            out.append((method, route.path, url))
    return out


def test_every_route_but_health_needs_the_token(syn):
    holder = RetrieverHolder.from_config(config(syn.data_dir))
    app = create_app(holder, k_max=50)
    protect(app, TOKEN)
    requests = _requests(app, syn.user_ids[0])
    assert {(m, p) for m, p, _ in requests} >= set(VALID)  # the check covers every route the service has
    with running(app) as url, httpx.Client(base_url=url, timeout=20) as client:
        assert client.get("/health").status_code == 200  # probes need no token
        wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"},
                 {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
                 {"Authorization": "Bearer"}]  # fmt: skip
        bodies = set()
        for method, path, concrete in requests + [("GET", "/no/such/route", "/no/such/route")]:
            for headers in wrong:
                r = client.request(method, concrete, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer"
                bodies.add(r.content)
        # the same answer whatever was wrong: nothing about the token, nor which routes exist
        assert len(bodies) == 1
        assert httpx.Response(401, content=bodies.pop()).json() == {"detail": "Not authenticated"}
        good = {"Authorization": f"Bearer {TOKEN}"}
        for method, path, concrete in requests:
            r = client.request(method, concrete, headers=good)
            if (method, path) in VALID:
                assert r.status_code == 200, (method, path, r.status_code, r.text)
            else:  # a route added since: the token lets the request through to it
                assert r.status_code != 401, (method, path)
        assert (
            client.post("/reload", headers={"authorization": f"bearer {TOKEN}"}).json()["reloaded"] is False
        )


def test_without_a_token_nothing_changes(syn):
    holder = RetrieverHolder.from_config(config(syn.data_dir))
    app = create_app(holder, k_max=50)
    protect(app, resolve_token(ServeAuthConfig()))
    with running(app) as url, httpx.Client(base_url=url, timeout=20) as client:
        assert client.get("/version").status_code == 200 and client.post("/reload").status_code == 200


def test_token_configuration(tmp_path):
    assert resolve_token(ServeAuthConfig()) is None
    assert resolve_token(ServeAuthConfig(token=" abc ")) == "abc"
    (tmp_path / "token").write_text("from-file\n")
    assert resolve_token(ServeAuthConfig(token_file=tmp_path / "token")) == "from-file"
    with pytest.raises(ConfigError, match="not both"):
        resolve_token(ServeAuthConfig(token="a", token_file=tmp_path / "token"))
    with pytest.raises(ConfigError, match="cannot be read"):
        resolve_token(ServeAuthConfig(token_file=tmp_path / "missing"))
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve_token(ServeAuthConfig(token_file=tmp_path / "empty"))


def test_llmfeat_serve_with_a_token_file(syn, tmp_path):
    """The CLI wiring: `llmfeat serve` with serve.auth.token_file, as the production config sets it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "token").write_text(TOKEN + "\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    base = [sys.executable, "-m", "llmfeat.cli", "serve", "-s", "serve.user_source=parquet", "--data-dir",
            str(syn.data_dir), "--port", str(port)]  # fmt: skip
    bad = subprocess.run([*base, "-s", f"serve.auth.token_file={tmp_path / 'missing'}"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "serve.auth.token_file" in bad.stdout, bad.stdout + bad.stderr
    proc = subprocess.Popen([*base, "-s", f"serve.auth.token_file={tmp_path / 'token'}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "llmfeat serve did not come up"
                time.sleep(0.2)
        assert health.status_code == 200
        assert httpx.post(f"http://127.0.0.1:{port}/reload", timeout=5).status_code == 401
        ok = httpx.post(
            f"http://127.0.0.1:{port}/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
        )
        assert ok.status_code == 200, ok.text
    finally:
        proc.terminate()
        proc.wait(20)
