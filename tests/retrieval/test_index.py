"""`llmfeat index`: reading the change log, choosing and building the index, versions published atomically."""

import json
import threading
import time

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from llmfeat.cli import Exit, app
from llmfeat.core.config import IndexConfig
from llmfeat.core.results import IndexResult
from llmfeat.retrieval import index as ix
from tests.synthetic import AS_OF, MODEL, config, make_data, unit, write_items

APPROX = "index.factory=IVF16,PQ8x4fs,RFlat"


@pytest.fixture()
def syn(tmp_path):
    return make_data(tmp_path / "data")


def _root(syn):
    return ix.index_root(syn.data_dir, "default")


def numpy_top(vectors, q, k):
    scores = vectors @ q
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    return order, scores[order]


def test_catalogue_is_the_latest_row_per_item_in_the_catalogue(syn):
    cat = ix.read_catalogue(syn.data_dir, "default")
    assert cat.item_ids.tolist() == syn.item_ids  # "gone" left the catalogue: not indexed
    np.testing.assert_allclose(cat.vectors, syn.vectors, atol=1e-6)  # superseded older rows are not used
    assert cat.model_id == MODEL and cat.as_of == AS_OF
    assert cat.notes["vectors_not_in_catalogue"] == 1 and cat.notes["items_without_vector"] == 0
    tiny = [i for i, labels in zip(cat.item_ids, cat.labels, strict=True) if "Tiny" in labels]
    assert tiny == syn.tiny


def test_flat_index_is_exact_against_numpy(syn):
    m = ix.run_index(config(syn.data_dir), log=lambda _: None)
    assert m["index"] == {"factory": "IDMap2,Flat", "class": "IndexIDMap2", "exact": True}
    loaded = ix.load_version(_root(syn))
    queries = unit(np.random.default_rng(7), 25, syn.vectors.shape[1])
    scores, ids = loaded.index.search(queries, 10)
    for q, got_ids, got_scores in zip(queries, ids, scores, strict=True):
        want_ids, want_scores = numpy_top(syn.vectors, q, 10)
        assert got_ids.tolist() == want_ids.tolist()
        np.testing.assert_allclose(got_scores, want_scores, rtol=0, atol=1e-5)


def test_id_map_round_trip(syn):
    ix.run_index(config(syn.data_dir), log=lambda _: None)
    loaded = ix.load_version(_root(syn))
    ids = pq.read_table(loaded.path / ix.IDS_FILE)
    assert ids.column("faiss_id").to_pylist() == list(range(len(syn.item_ids)))
    item_of = dict(zip(ids.column("faiss_id").to_pylist(), ids.column("item_id").to_pylist(), strict=True))
    for fid, item_id in item_of.items():
        expected = syn.vectors[syn.item_ids.index(item_id)]
        np.testing.assert_allclose(loaded.index.reconstruct(fid), expected, atol=1e-6)  # IDMap2 stores ids
        np.testing.assert_allclose(loaded.vectors[fid], expected, atol=1e-6)
    # Searching with an item's own vector finds its faiss id first, which maps back to the same item id.
    _, found = loaded.index.search(np.ascontiguousarray(syn.vectors), 1)
    assert [item_of[int(f)] for f in found[:, 0]] == syn.item_ids


def test_choose_factory_follows_size_and_override():
    cfg = IndexConfig()
    assert ix.choose_factory(10_000, 384, cfg) == "IDMap2,Flat"
    assert ix.choose_factory(1_000_000, 384, cfg) == "IVF4096,PQ192x4fs,RFlat"
    assert ix.choose_factory(100_000, 384, cfg) == "IVF1024,PQ192x4fs,RFlat"
    assert ix.choose_factory(100_000, 385, cfg) == "IVF1024,Flat"
    assert ix.choose_factory(100_000, 384, IndexConfig(nlist=2000)) == "IVF2000,PQ192x4fs,RFlat"
    assert ix.choose_factory(10, 384, IndexConfig(factory="IDMap2,HNSW32,Flat")) == "IDMap2,HNSW32,Flat"


def test_approximate_build_is_tuned_recorded_and_reproducible(syn):
    first = ix.run_index(config(syn.data_dir, APPROX), log=lambda _: None)
    second = ix.run_index(config(syn.data_dir, APPROX), log=lambda _: None)
    assert first["version"] != second["version"]
    assert first["files"]["index.faiss"]["sha256"] == second["files"]["index.faiss"]["sha256"]  # seeded
    assert first["training"]["seed"] == 1234 and first["training"]["sample_size"] == len(syn.item_ids)
    assert first["params"]["nlist"] == 16 and first["tuning"]["tuned"] == "nprobe"
    ladder = first["tuning"]["ladder"]
    assert ladder[-1]["nprobe"] == first["params"]["nprobe"]
    # The smallest nprobe at which both item and user queries reach the target.
    assert all(min(step["items"], step["users"]) < 0.97 for step in ladder[:-1])
    assert min(ladder[-1]["items"], ladder[-1]["users"]) >= 0.97
    assert first["tuning"]["recall_at_10"] == min(first["tuning"]["recall"].values()) >= 0.97
    assert first["tuning"]["queries"] == {"items": 100, "users": 12}
    assert first["inputs"]["tuning_user_vectors"].endswith("user_text")
    loaded = ix.load_version(_root(syn), first["version"])
    assert faiss.extract_index_ivf(loaded.index).nprobe == first["params"]["nprobe"]


def test_bad_factory_is_a_configuration_error(syn):
    res = CliRunner().invoke(app, ["index", "--data-dir", str(syn.data_dir), "--factory", "IVF999999,Flat"])
    assert res.exit_code == Exit.CONFIG_ERROR, res.output
    assert "cannot train 999999 inverted lists" in res.output
    res = CliRunner().invoke(app, ["index", "--data-dir", str(syn.data_dir), "--factory", "NotAnIndex"])
    assert res.exit_code == Exit.CONFIG_ERROR and "not valid" in res.output


def test_missing_embeddings_is_an_input_error(tmp_path):
    res = CliRunner().invoke(app, ["index", "--data-dir", str(tmp_path)])
    assert res.exit_code == Exit.INPUT_ERROR
    assert "run `llmfeat embed` first" in res.output


def test_cli_index_prints_summary_and_publishes(syn):
    res = CliRunner().invoke(
        app, ["index", "--data-dir", str(syn.data_dir), "--set", "index.tune_queries=50"]
    )
    assert res.exit_code == Exit.OK, res.output
    version = ix.current_version(_root(syn))
    assert version in res.output and "IDMap2,Flat (exact)" in res.output and "240 x 16" in res.output


def _publish_new(syn, n: int, keep: int) -> str:
    """A new catalogue state (new vectors for every item), built and published as a new version."""
    vectors = unit(np.random.default_rng(100 + n), len(syn.item_ids), syn.vectors.shape[1])
    write_items(syn.data_dir, "default", syn.item_ids, vectors, MODEL, AS_OF.replace(day=1 + n))
    return ix.run_index(config(syn.data_dir, f"index.keep_versions={keep}"), log=lambda _: None)["version"]


def test_reader_polling_during_publishes_only_sees_complete_versions(syn):
    root = _root(syn)
    published = [_publish_new(syn, 1, keep=2)]
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                loaded = ix.load_version(root, verify=True)  # checksums of every file against the manifest
                assert loaded.manifest["version"] == loaded.version == loaded.path.name
                assert loaded.index.ntotal == len(loaded.vectors) == loaded.ids.num_rows == len(syn.item_ids)
                seen.append(loaded.version)
                for name in ix.list_versions(root):  # anything listed is complete (it may be pruned after)
                    manifest = root / "versions" / name / ix.MANIFEST_FILE
                    assert manifest.is_file() or not manifest.parent.exists(), name
            except BaseException as exc:  # noqa: BLE001 - every failure is reported by the test
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for n in range(2, 8):
            published.append(_publish_new(syn, n, keep=2))
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    assert set(seen) <= set(published) and len(set(seen)) >= 2
    assert ix.list_versions(root) == published[-2:]
    assert not [p for p in (root / "versions").iterdir() if p.name.startswith(".")]  # no staging left


def test_prune_keeps_k_newest_and_never_the_current(syn):
    root = _root(syn)
    versions = [_publish_new(syn, n, keep=10) for n in range(1, 5)]
    assert ix.list_versions(root) == versions and ix.current_version(root) == versions[-1]
    ix.publish(root, versions[0])  # roll back to the oldest
    assert ix.prune(root, keep=1) == versions[1:3]
    assert ix.list_versions(root) == [versions[0], versions[-1]]
    assert ix.current_version(root) == versions[0]


def test_failed_build_leaves_the_published_version(syn, monkeypatch):
    root = _root(syn)
    first = _publish_new(syn, 1, keep=3)

    def broken(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(ix.faiss, "write_index", broken)
    with pytest.raises(OSError, match="disk full"):
        ix.run_index(config(syn.data_dir), log=lambda _: None)
    assert ix.current_version(root) == first and ix.list_versions(root) == [first]
    assert not [p for p in (root / "versions").iterdir() if p.name.startswith(".")]


def test_corrupted_file_is_refused(syn):
    ix.run_index(config(syn.data_dir), log=lambda _: None)
    loaded = ix.load_version(syn.data_dir / "index" / "default")
    data = bytearray((loaded.path / ix.VECTORS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (loaded.path / ix.VECTORS_FILE).write_bytes(bytes(data))
    with pytest.raises(ix.CorruptIndexError, match="vectors.npy does not match"):
        ix.load_version(_root(syn))


def test_manifest_records_the_build(syn):
    m = ix.run_index(config(syn.data_dir), log=lambda _: None)
    assert isinstance(m, IndexResult) and m.version == m["version"] and m.count == len(syn.item_ids)
    assert m.headline() == f"version {m.version}: {m.count} items, IDMap2,Flat"
    on_disk = json.loads((ix.index_root(syn.data_dir, "default") / "current" / ix.MANIFEST_FILE).read_text())
    assert on_disk["version"] == m["version"]
    for key in (
        "model_id",
        "dim",
        "count",
        "index",
        "params",
        "training",
        "tuning",
        "files",
        "built_at",
        "as_of",
    ):
        assert key in on_disk, key
    assert on_disk["model_id"] == MODEL and on_disk["dim"] == 16 and on_disk["count"] == 240
    assert set(on_disk["files"]) == {ix.INDEX_FILE, ix.IDS_FILE, ix.VECTORS_FILE}
