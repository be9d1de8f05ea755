"""Retriever: item -> similar items, user -> items, filters, user vector sources, model-id guard."""

import shutil

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from llmfeat.cli import Exit, app
from llmfeat.retrieval import index as ix
from llmfeat.retrieval.retriever import (
    ParquetUserVectors,
    Retriever,
    UnknownCategoryError,
    UnknownItemError,
    UnknownUserError,
    UserVectorSource,
)
from tests.synthetic import MODEL, config, make_data

APPROX = "index.factory=IVF16,PQ8x4fs,RFlat"


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    data = make_data(tmp_path_factory.mktemp("retrieval") / "data")
    ix.run_index(config(data.data_dir), log=lambda _: None)
    return data


@pytest.fixture(scope="module")
def flat(syn):
    return Retriever.load(config(syn.data_dir))


def expected(syn, q, k, *, exclude=(), category=None):
    """Exact top-k by numpy over the items left after the filters."""
    scores = syn.vectors @ (q / np.linalg.norm(q))
    keep = [
        j
        for j, iid in enumerate(syn.item_ids)
        if iid not in exclude
        and (category is None or category == syn.category[iid] or (category == "Tiny" and iid in syn.tiny))
    ]
    keep.sort(key=lambda j: (-scores[j], j))
    return [syn.item_ids[j] for j in keep[:k]], [float(scores[j]) for j in keep[:k]]


def _user(syn, u):
    return syn.user_vectors[syn.user_ids.index(u)]


def test_for_user_excludes_seen_items_exactly(syn, flat):
    for u in syn.user_ids:
        res = flat.for_user(u, 10)
        ids, scores = expected(syn, _user(syn, u), 10, exclude=syn.seen[u])
        assert res.ids == ids
        np.testing.assert_allclose(res.scores, scores, atol=1e-5)
        assert res.index_version == flat.version
        # Each user's 4 nearest items were seen, so including them changes the answer.
        with_seen = flat.for_user(u, 10, exclude_seen=False)
        assert with_seen.ids == expected(syn, _user(syn, u), 10)[0] and with_seen.ids != res.ids


@pytest.mark.parametrize("exact_filter_max", [20_000, 0])
@pytest.mark.parametrize("k", [3, 10])
def test_every_exclusion_path_gives_the_exact_answer(syn, k, exact_filter_max):
    """k=10 > 7 seen: over-fetch; k=3: a selector of the seen items inside FAISS, or exact scoring."""
    r = Retriever.load(config(syn.data_dir, f"index.exact_filter_max={exact_filter_max}"))
    threads = faiss.omp_get_max_threads()
    for u in syn.user_ids:
        res = r.for_user(u, k)
        assert res.ids == expected(syn, _user(syn, u), k, exclude=syn.seen[u])[0]
        assert res.method == ("exact" if exact_filter_max and k == 3 else "index")
    assert faiss.omp_get_max_threads() == threads  # the per-search thread setting is put back


def test_similar_items_excludes_the_item_itself(syn, flat):
    for iid in syn.item_ids[:30]:
        res = flat.similar_items(iid, 5)
        q = syn.vectors[syn.item_ids.index(iid)]
        assert res.ids == expected(syn, q, 5, exclude={iid})[0]
        assert iid not in res.ids and res.method == "index"


@pytest.mark.parametrize("exact_filter_max", [20_000, 0], ids=["exact-path", "selector-path"])
def test_category_filters_small_and_large(syn, exact_filter_max):
    r = Retriever.load(config(syn.data_dir, f"index.exact_filter_max={exact_filter_max}"))
    u = syn.user_ids[0]
    for category in ("Drama", "Tiny"):
        res = r.for_user(u, 10, categories=[category])
        assert res.ids == expected(syn, _user(syn, u), 10, exclude=syn.seen[u], category=category)[0]
    tiny = r.for_user(u, 10, categories=["Tiny"])
    assert len(tiny.ids) == len(set(syn.tiny) - syn.seen[u])  # fewer than k exist: all of them, no padding
    both = r.similar_items(syn.item_ids[0], 12, categories=["Comedy", "Tiny"])
    assert all(syn.category[i] == "Comedy" or i in syn.tiny for i in both.ids) and len(both.ids) == 12


def test_approximate_index_filters_and_falls_back_exactly(tmp_path):
    data = make_data(tmp_path / "data", n_items=600, seed=3)
    ix.run_index(config(data.data_dir, APPROX, "index.nprobe=2"), log=lambda _: None)
    u = data.user_ids[1]
    want = expected(data, _user(data, u), 10, exclude=data.seen[u], category="Drama")[0]
    r = Retriever.load(config(data.data_dir, "index.exact_filter_max=0"))
    assert not r.info()["exact"] and r.info()["params"]["nprobe"] == 2
    drama = r.for_user(u, 10, categories=["Drama"])  # the lists nearest the query holding Drama items
    assert drama.method == "index" and len(drama.ids) == 10
    assert all(data.category[i] == "Drama" and i not in data.seen[u] for i in drama.ids)
    assert len(set(drama.ids) & set(want)) >= 8  # approximate, but close to exact
    tiny = r.for_user(u, 3, categories=["Tiny"], exclude_seen=False)
    assert tiny.ids == expected(data, _user(data, u), 3, category="Tiny")[0]
    # k above the category's size: filter-aware probing takes every list holding Drama items (never runs
    # dry), and the refine step re-ranks them exactly.
    everything = r.for_user(u, 300, categories=["Drama"])
    assert everything.method == "index" and everything.plan == "index-filtered"
    assert everything.ids == expected(data, _user(data, u), 300, exclude=data.seen[u], category="Drama")[0]


def test_overfetch_without_selectors_matches_exact(syn):
    """The path GPU indexes take (they accept no IDSelector), exercised on the CPU."""
    r = Retriever.load(config(syn.data_dir, "index.exact_filter_max=0"))
    r._selectors = False  # what a GPU index sets
    for u in syn.user_ids[:4]:
        for category in (None, "Action", "Tiny"):
            res = r.for_user(u, 7, categories=[category] if category else None)
            assert res.ids == expected(syn, _user(syn, u), 7, exclude=syn.seen[u], category=category)[0]


def test_unknown_ids_and_categories(flat):
    with pytest.raises(UnknownItemError, match="unknown item 'nope'"):
        flat.similar_items("nope")
    with pytest.raises(UnknownUserError, match="unknown user 'ghost'"):
        flat.for_user("ghost")
    with pytest.raises(
        UnknownCategoryError, match=r"unknown category 'Horror'; known .*: \w+ \(\d+\), .*Tiny \(3\)"
    ):
        flat.similar_items("i0001", categories=["Horror"])
    # matching ignores case; the answer is the same as with the stored label
    assert (
        flat.similar_items("i0001", 5, categories=["tiny"]).ids
        == flat.similar_items("i0001", 5, ["Tiny"]).ids
    )
    with pytest.raises(ValueError, match="k must be >= 1"):
        flat.similar_items("i0001", k=0)


def test_everything_filtered_gives_no_results(syn):
    loaded = ix.load_version(ix.index_root(syn.data_dir, "default"))
    users = ParquetUserVectors(syn.data_dir, "default")
    r = Retriever(loaded, users, {syn.user_ids[0]: syn.tiny})
    assert r.for_user(syn.user_ids[0], 5, categories=["Tiny"]).ids == []
    assert sorted(r.seen_items(syn.user_ids[0])) == syn.tiny


def test_history_vectors_source(syn):
    r = Retriever.load(config(syn.data_dir, "serve.user_vectors=history"))
    assert isinstance(r.users, UserVectorSource)
    assert len(r.for_user(syn.user_ids[0], 5).ids) == 5
    with pytest.raises(UnknownUserError, match="no user vector"):
        r.for_user(syn.user_ids[-1], 5)  # the last user has no clicks, hence no history vector


def test_user_embeddings_of_another_model_are_refused(tmp_path):
    data = make_data(tmp_path / "data", user_model_id="other-model@9999")
    ix.run_index(config(data.data_dir), log=lambda _: None)
    with pytest.raises(ix.IndexModelMismatchError, match=f"{MODEL}.*other-model@9999"):
        Retriever.load(config(data.data_dir))
    res = CliRunner().invoke(
        app,
        [
            "retrieve",
            "-s",
            "serve.user_source=parquet",
            "--data-dir",
            str(data.data_dir),
            "--user",
            data.user_ids[0],
        ],
    )
    assert res.exit_code == Exit.CONFIG_ERROR and "other-model@9999" in res.output


class _LateModelSource:
    """A source that only learns its model id when it fetches (as an online store may)."""

    model_id = None

    def get(self, user_ids):
        return np.ones((len(user_ids), 16), np.float32), np.ones(len(user_ids), bool), "other-model@9999"


def test_model_returned_by_the_source_is_checked_per_call(syn):
    r = Retriever.load(config(syn.data_dir), users=_LateModelSource())
    with pytest.raises(ix.IndexModelMismatchError, match="other-model@9999"):
        r.for_user(syn.user_ids[0])


def test_cli_retrieve(syn):
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "retrieve",
            "-s",
            "serve.user_source=parquet",
            "--data-dir",
            str(syn.data_dir),
            "--user",
            "u001",
            "-k",
            "4",
        ],
    )
    assert res.exit_code == Exit.OK, res.output
    top = expected(syn, _user(syn, "u001"), 4, exclude=syn.seen["u001"])[0]
    assert all(i in res.output for i in top) and "user u001" in res.output
    res = runner.invoke(
        app,
        [
            "retrieve",
            "-s",
            "serve.user_source=parquet",
            "--data-dir",
            str(syn.data_dir),
            "--item",
            "i0003",
            "--category",
            "Tiny",
        ],
    )
    assert res.exit_code == Exit.OK and all(i in res.output for i in syn.tiny)
    res = runner.invoke(
        app,
        ["retrieve", "-s", "serve.user_source=parquet", "--data-dir", str(syn.data_dir), "--item", "nope"],
    )
    assert res.exit_code == Exit.NOT_FOUND and "unknown item 'nope'" in res.output
    res = runner.invoke(
        app,
        [
            "retrieve",
            "-s",
            "serve.user_source=parquet",
            "--data-dir",
            str(syn.data_dir),
            "--item",
            "i0003",
            "-k",
            "0",
        ],
    )
    assert res.exit_code == Exit.CONFIG_ERROR
    res = runner.invoke(app, ["retrieve", "-s", "serve.user_source=parquet", "--data-dir", str(syn.data_dir)])
    assert res.exit_code == Exit.CONFIG_ERROR and "exactly one of --user and --item" in res.output


@pytest.mark.skipif(
    faiss.get_num_gpus() == 0, reason="no GPU visible to faiss (install the `gpu` extra on a GPU host)"
)
def test_gpu_search_matches_cpu(syn):
    gpu = Retriever.load(config(syn.data_dir, "index.gpu=auto"))
    cpu = Retriever.load(config(syn.data_dir, "index.gpu=never"))
    assert gpu.device.startswith("gpu") and cpu.device == "cpu"
    for u in syn.user_ids[:4]:
        assert gpu.for_user(u, 10).ids == cpu.for_user(u, 10).ids
        assert gpu.for_user(u, 5, categories=["Tiny"]).ids == cpu.for_user(u, 5, categories=["Tiny"]).ids


def test_items_are_served_without_user_vectors(tmp_path):
    data = make_data(tmp_path / "data")
    ix.run_index(config(data.data_dir), log=lambda _: None)
    shutil.rmtree(data.data_dir / "embeddings" / "default" / "user_text")
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "retrieve",
            "-s",
            "serve.user_source=parquet",
            "--data-dir",
            str(data.data_dir),
            "--item",
            "i0003",
            "-k",
            "3",
        ],
    )
    assert res.exit_code == Exit.OK, res.output
    res = runner.invoke(
        app,
        ["retrieve", "-s", "serve.user_source=parquet", "--data-dir", str(data.data_dir), "--user", "u001"],
    )
    assert res.exit_code == Exit.NOT_FOUND and "no user embedding table" in res.output
    res = runner.invoke(
        app,
        [
            "retrieve",
            "-s",
            "serve.user_source=parquet",
            "--data-dir",
            str(data.data_dir),
            "--user",
            "u001",
            "--user-vectors",
            "bogus",
        ],
    )
    assert (
        res.exit_code == Exit.CONFIG_ERROR
        and "serve.user_vectors: 'bogus' is not one of text, history" in res.output
    )


def test_duplicate_titles_are_hinted(syn):
    from llmfeat.retrieval.retriever import _shared_titles

    assert _shared_titles(["Heat (1995)", "Up", "Heat (1995)", None, "", "Up", "Solo"]) == {
        0: [2],
        2: [0],
        1: [5],
        5: [1],
    }
    # a catalogue listing one title under two ids: each result names the other id
    ids = ix.load_version(ix.index_root(syn.data_dir, "default")).ids
    titles = ids.column("title").to_pylist()
    titles[5] = titles[7]
    import pyarrow as pa

    loaded = ix.load_version(ix.index_root(syn.data_dir, "default"))
    loaded.ids = ids.set_column(ids.schema.get_field_index("title"), "title", pa.array(titles, pa.string()))
    r = Retriever(loaded)
    res = r.similar_items(syn.item_ids[0], k=len(syn.item_ids) - 1)
    hints = dict(zip(res.ids, res.same_title, strict=True))
    assert hints[syn.item_ids[5]] == [syn.item_ids[7]] and hints[syn.item_ids[7]] == [syn.item_ids[5]]
    assert sum(bool(h) for h in hints.values()) == 2
