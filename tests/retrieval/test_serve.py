"""The HTTP service on a real uvicorn server on loopback: answers, bad input, hot reload under load."""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from llmfeat.retrieval import index as ix
from llmfeat.retrieval.retriever import HeldUserVectors, ParquetUserVectors, Retriever
from llmfeat.retrieval.serve import Recommendations, RetrieverHolder, create_app
from tests.services import running
from tests.synthetic import AS_OF, MODEL, config, make_data, unit, write_items, write_users

K_MAX = 50


@pytest.fixture()
def syn(tmp_path):
    data = make_data(tmp_path / "data")
    ix.run_index(config(data.data_dir), log=lambda _: None)
    return data


@pytest.fixture()
def service(syn):
    holder = RetrieverHolder.from_config(config(syn.data_dir))
    with running(create_app(holder, k_max=K_MAX)) as url, httpx.Client(base_url=url, timeout=20) as client:
        yield client, holder


def test_answers(syn, service):
    client, holder = service
    r = client.get(f"/users/{syn.user_ids[0]}/recommendations", params={"k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index_version"] == holder.get().version and body["model_id"] == MODEL
    assert [h["item_id"] for h in body["results"]] == holder.get().for_user(syn.user_ids[0], 5).ids
    assert not {h["item_id"] for h in body["results"]} & syn.seen[syn.user_ids[0]]
    # the routes write their JSON themselves: exactly what the response model would write, "because" included
    assert Recommendations.model_validate(body).model_dump(mode="json") == body
    assert any(h["because"] for h in body["results"])
    r = client.get("/items/i0003/similar", params=[("k", 3), ("category", "Tiny"), ("category", "Action")])
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    assert Recommendations.model_validate(r.json()).model_dump(mode="json") == r.json()
    assert all(
        h["item_id"] in syn.tiny or syn.category[h["item_id"]] == "Action" for h in r.json()["results"]
    )
    r = client.get(f"/users/{syn.user_ids[0]}/recommendations", params={"k": 5, "exclude_seen": "false"})
    assert {h["item_id"] for h in r.json()["results"]} & syn.seen[syn.user_ids[0]]
    assert client.get("/health").json() == {
        "status": "ok",
        "index_version": holder.get().version,
        "items": 240,
        "last_reload_error": None,
    }
    version = client.get("/version").json()
    assert version["index_version"] == holder.get().version and version["factory"] == "IDMap2,Flat"
    assert version["count"] == 240 and version["dim"] == 16 and version["model_id"] == MODEL
    schema = client.get("/openapi.json").json()
    assert {"/items/{item_id}/similar", "/users/{user_id}/recommendations", "/health", "/version"} <= set(
        schema["paths"]
    )
    k = schema["paths"]["/items/{item_id}/similar"]["get"]["parameters"][1]
    assert k["name"] == "k" and k["schema"]["maximum"] == K_MAX


@pytest.mark.parametrize(
    "path, message",
    [
        ("/items/nope/similar", "unknown item 'nope'"),
        ("/users/ghost/recommendations", "unknown user 'ghost'"),
        ("/items/i0001/similar?category=Horror", "unknown category 'Horror'"),
    ],
)
def test_unknown_is_404_with_a_message(service, path, message):
    client, _ = service
    r = client.get(path)
    assert r.status_code == 404 and message in r.json()["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/items/i0001/similar?k=0",
        f"/items/i0001/similar?k={K_MAX + 1}",
        "/items/i0001/similar?k=ten",
        "/users/u001/recommendations?exclude_seen=maybe",
        "/items/i%01x/similar",
        "/items/i0001/similar?category=",
    ],
)
def test_malformed_is_422(service, path):
    client, _ = service
    r = client.get(path)
    assert r.status_code == 422, r.text


def _publish(syn, n: int, model: str = MODEL, users: bool = False) -> str:
    vectors = unit(np.random.default_rng(50 + n), len(syn.item_ids), syn.vectors.shape[1])
    write_items(syn.data_dir, "default", syn.item_ids, vectors, model, AS_OF.replace(day=1 + n))
    if users:  # the night re-embeds the users too
        user_vectors = unit(np.random.default_rng(80 + n), len(syn.user_ids), syn.vectors.shape[1])
        write_users(syn.data_dir, "default", syn.user_ids, user_vectors, model, AS_OF.replace(day=1 + n))
    return ix.run_index(config(syn.data_dir, "index.keep_versions=1"), log=lambda _: None)["version"]


@pytest.mark.parametrize("held", [False, True], ids=["plain", "held-user-vectors"])
def test_reload_during_requests_fails_none(syn, held):
    """Requests under load while new versions are published and reloaded: none fails, no client goes back a
    version. ``held``: the user vectors are held in the service (``HeldUserVectors``, as ``llmfeat serve``
    holds Feast's) and each night re-embeds the users: every answer is the one the plain path gives for
    that version, so the held vectors swap together with the index, never mixed."""
    cfg = config(syn.data_dir, "index.keep_versions=1")
    if held:
        holder = RetrieverHolder(
            lambda v: Retriever.load(cfg, version=v, users=HeldUserVectors(ParquetUserVectors(syn.data_dir, "default"), syn.user_ids)),
            lambda: ix.current_version(ix.index_root(syn.data_dir, "default")),
        )  # fmt: skip
        users = holder.get().users
        assert isinstance(users, HeldUserVectors) and len(users) == len(syn.user_ids)
    else:
        holder = RetrieverHolder.from_config(cfg)
    first = holder.get().version
    app = create_app(holder, k_max=K_MAX, reload_interval_s=0.05)  # the background check reloads too
    failures: list[str] = []
    versions: dict[int, list[str]] = {}
    answers: list[tuple[str, str, list[str]]] = []
    expected: dict[str, dict[str, list[str]]] = {}

    def expect(version: str) -> None:  # the plain path (user vectors read at load) for this version
        plain = Retriever.load(cfg, version=version)
        expected[version] = {u: plain.for_user(u, 20).ids for u in ("u001", "u003")}

    expect(first)
    stop = threading.Event()

    def hammer(url: str, n: int) -> None:
        seq = versions.setdefault(n, [])
        with httpx.Client(base_url=url, timeout=20) as client:
            while not stop.is_set():
                path = f"/users/u00{n}/recommendations" if n % 2 else f"/items/i000{n}/similar"
                r = client.get(path, params={"k": 20})
                if r.status_code != 200 or len(r.json()["results"]) != 20:
                    failures.append(f"{path}: {r.status_code} {r.text[:200]}")
                else:
                    seq.append(r.json()["index_version"])
                    if n % 2:
                        answers.append((seq[-1], f"u00{n}", [h["item_id"] for h in r.json()["results"]]))

    with running(app) as url:
        threads = [threading.Thread(target=hammer, args=(url, n)) for n in range(4)]
        for t in threads:
            t.start()
        published = [first]
        try:
            for n in range(1, 4):
                time.sleep(0.3)
                published.append(_publish(syn, n, users=held))  # keep_versions=1: the served one's files go
                expect(published[-1])
                r = httpx.post(f"{url}/reload", timeout=20)
                assert r.status_code == 200 and r.json()["index_version"] == published[-1], r.text
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        final = httpx.get(f"{url}/version").json()["index_version"]
    assert not failures, failures[:5]
    assert final == published[-1]
    for seq in versions.values():
        assert seq, "a client got no answer"
        order = [published.index(v) for v in seq]
        assert order == sorted(order)  # a client never goes back to an older version
    assert {v for seq in versions.values() for v in seq} >= {published[0], published[-1]}
    wrong = [(v, u) for v, u, ids in answers if ids != expected[v][u]]
    assert answers and not wrong, wrong[:5]


def test_version_of_another_model_is_refused_and_the_old_one_kept(syn, service):
    client, holder = service
    old = holder.get().version
    # The item embeddings are redone with another model (a new table); the user vectors are not.
    shutil.rmtree(syn.data_dir / "embeddings" / "default" / "item_text")
    _publish(syn, 1, model="other-model@9999")
    r = client.post("/reload")
    assert r.status_code == 409 and "other-model@9999" in r.json()["detail"] and old in r.json()["detail"]
    assert client.get("/health").json()["index_version"] == old
    assert "IndexModelMismatchError" in client.get("/health").json()["last_reload_error"]
    assert client.get(f"/users/{syn.user_ids[0]}/recommendations").status_code == 200
    assert client.post("/reload").status_code == 409  # still refused, still serving
    # the operator re-embeds with the right model and publishes: the next reload clears the error
    shutil.rmtree(syn.data_dir / "embeddings" / "default" / "item_text")
    fixed = _publish(syn, 2)
    r = client.post("/reload")
    assert r.status_code == 200 and r.json()["index_version"] == fixed
    assert client.get("/health").json()["last_reload_error"] is None


def test_llmfeat_serve_command(syn, tmp_path):
    """The CLI entry point end to end: a subprocess bound to loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    cmd = [
        sys.executable,
        "-m",
        "llmfeat.cli",
        "serve",
        "-s",
        "serve.user_source=parquet",
        "--data-dir",
        str(syn.data_dir),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "llmfeat serve did not come up"
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["items"] == 240
        # the docs pages load their scripts from the service itself (an offline host shows them too)
        page = httpx.get(f"http://127.0.0.1:{port}/docs", timeout=10).text
        assert "cdn." not in page and "swagger-ui-bundle.js" in page
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
            assert (
                httpx.get(f"http://127.0.0.1:{port}/static-offline-docs/{asset}", timeout=10).status_code
                == 200
            )
        assert "cdn." not in httpx.get(f"http://127.0.0.1:{port}/redoc", timeout=10).text
        new = _publish(syn, 1)
        r = httpx.post(f"http://127.0.0.1:{port}/reload", timeout=20)
        assert r.status_code == 200 and r.json()["index_version"] == new
    finally:
        proc.terminate()
        proc.wait(20)
    assert f"index reloaded: {r.json()['previous_version']} -> {new}" in proc.stdout.read()


def test_rollback_clears_the_reload_error(syn):
    """A broken version is refused; once `current` points back at the served version, /health is clean."""
    from llmfeat.retrieval.retriever import Retriever
    from llmfeat.retrieval.serve import ReloadError

    cfg = config(syn.data_dir)
    served = ix.current_version(ix.index_root(syn.data_dir, "default"))
    published = {"now": "broken-version"}

    def load(version):
        if version == "broken-version":
            raise ix.CorruptIndexError("index version broken-version: index.faiss is missing")
        return Retriever.load(cfg, version=version)

    holder = RetrieverHolder(load, lambda: published["now"])
    assert holder.get().version == served
    with pytest.raises(ReloadError):
        holder.reload()
    assert "CorruptIndexError" in holder.last_error
    published["now"] = served
    assert holder.reload().reloaded is False and holder.last_error is None


# --- the response cache --------------------------------------------------------------------------------------


def test_repeated_answers_come_from_the_cache_and_equal_computed_ones(syn, service):
    """A repeated GET is served from the cache (``x-cache: hit``) with the same body; a GET with allow/deny
    lists is never cached; categories in another order are the same request; with the cache off no answer
    says ``x-cache``."""
    client, holder = service
    user = syn.user_ids[0]
    first = client.get(f"/users/{user}/recommendations", params={"k": 5})
    again = client.get(f"/users/{user}/recommendations", params={"k": 5})
    assert first.status_code == again.status_code == 200
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
    assert again.content == first.content
    assert [h["item_id"] for h in again.json()["results"]] == holder.get().for_user(user, 5).ids
    other_k = client.get(f"/users/{user}/recommendations", params={"k": 6})
    assert other_k.headers["x-cache"] == "miss" and len(other_k.json()["results"]) == 6
    with_seen = client.get(f"/users/{user}/recommendations", params={"k": 5, "exclude_seen": "false"})
    assert with_seen.headers["x-cache"] == "miss" and with_seen.content != first.content
    for _ in range(2):
        listed = client.get(f"/users/{user}/recommendations", params={"k": 5, "deny": "i0001"})
        assert listed.status_code == 200 and "x-cache" not in listed.headers
    a = client.get("/items/i0003/similar", params=[("k", 3), ("category", "Tiny"), ("category", "Action")])
    b = client.get("/items/i0003/similar", params=[("k", 3), ("category", "Action"), ("category", "Tiny")])
    assert (a.headers["x-cache"], b.headers["x-cache"]) == ("miss", "hit") and a.content == b.content
    assert client.get("/items/nope/similar").status_code == 404  # errors are not cached
    assert client.get("/items/nope/similar").status_code == 404

    with running(create_app(holder, k_max=K_MAX, response_cache_mb=0)) as url:
        for _ in range(2):
            r = httpx.get(f"{url}/users/{user}/recommendations", params={"k": 5}, timeout=20)
            assert r.status_code == 200 and "x-cache" not in r.headers and r.content == first.content


class _PublishingSource:
    """A user-vector source whose vectors change with each publish (as Feast's online store after a night)."""

    model_id = MODEL

    def __init__(self, ids, vectors):
        self.ids, self.vectors, self.version = list(ids), vectors, 0

    def publish(self, vectors) -> None:
        self.vectors, self.version = vectors, self.version + 1

    def publish_version(self) -> int:
        return self.version

    def get(self, user_ids):
        pos = {u: i for i, u in enumerate(self.ids)}
        rows = np.array([pos.get(u, -1) for u in user_ids])
        found = rows >= 0
        out = np.zeros((len(user_ids), self.vectors.shape[1]), np.float32)
        out[found] = self.vectors[rows[found]]
        return out, found, MODEL


def test_cached_answers_follow_a_user_vector_refresh_within_one_index_version(syn):
    """Held user vectors re-read after a publish (same index version): the next answer is computed from the
    new vectors, not taken from the cache; users read through (not held) are never cached."""
    cfg = config(syn.data_dir)
    rng = np.random.default_rng(3)
    source = _PublishingSource(syn.user_ids, unit(rng, len(syn.user_ids), syn.vectors.shape[1]))
    held_ids = syn.user_ids[:-1]  # the last user is not held: read through on each request
    holder = RetrieverHolder(
        lambda v: Retriever.load(cfg, version=v, users=HeldUserVectors(source, held_ids)),
        lambda: ix.current_version(ix.index_root(syn.data_dir, "default")),
    )
    user, live = syn.user_ids[0], syn.user_ids[-1]
    with running(create_app(holder, k_max=K_MAX)) as url, httpx.Client(base_url=url, timeout=20) as client:
        before = [client.get(f"/users/{user}/recommendations", params={"k": 8}) for _ in range(2)]
        assert [r.headers["x-cache"] for r in before] == ["miss", "hit"]
        source.publish(unit(rng, len(syn.user_ids), syn.vectors.shape[1]))
        assert client.post("/reload").json()["reloaded"] is False  # same index; the held users are re-read
        after = client.get(f"/users/{user}/recommendations", params={"k": 8})
        assert after.headers["x-cache"] == "miss"
        ids = [h["item_id"] for h in after.json()["results"]]
        assert ids == holder.get().for_user(user, 8).ids
        assert ids != [h["item_id"] for h in before[0].json()["results"]]
        for _ in range(2):
            r = client.get(f"/users/{live}/recommendations", params={"k": 8})
            assert r.status_code == 200 and "x-cache" not in r.headers


def test_response_cache_keeps_to_its_bytes_and_to_one_retriever():
    from llmfeat.retrieval.serve import ResponseCache

    cache = ResponseCache(max_bytes=10)
    a, b = object(), object()
    cache.put(a, "x", b"1234")
    cache.put(a, "y", b"5678")
    assert cache.get(a, "x") == b"1234"  # x is now the most recently used
    cache.put(a, "z", b"90ab")  # 12 bytes > 10: the least recently used (y) goes
    assert cache.get(a, "y") is None and cache.get(a, "x") == b"1234" and cache.get(a, "z") == b"90ab"
    assert cache.get(b, "x") is None  # another retriever never reads a's answers
    cache.put(b, "x", b"new")
    assert len(cache) == 1 and cache.get(a, "x") is None and cache.get(b, "x") == b"new"
    cache.put(b, "big", b"x" * 11)  # larger than the whole cache: not kept
    assert cache.get(b, "big") is None and cache.get(b, "x") == b"new"
