"""`llmfeat ingest` end to end: the real MovieLens-100k, and the bad-row fixture."""

import csv

import pyarrow.parquet as pq
from typer.testing import CliRunner

from llmfeat.cli import Exit, app

runner = CliRunner()


def _table(data_dir, name, day):
    return pq.read_table(data_dir / "canonical" / name / f"snapshot_date={day}")


def test_ingest_movielens_100k(tmp_path, movielens_dir):
    res = runner.invoke(
        app,
        [
            "ingest",
            "--source",
            "movielens",
            "--path",
            str(movielens_dir),
            "--as-of",
            "1998-04-23",
            "--data-dir",
            str(tmp_path),
        ],
    )
    assert res.exit_code == Exit.OK, res.output
    day = "1998-04-23"
    assert _table(tmp_path, "users", day).num_rows == 943
    assert _table(tmp_path, "items", day).num_rows == 1682
    inter = _table(tmp_path, "interactions", day)
    assert inter.num_rows == 100_000
    assert _table(tmp_path, "quarantine", day).num_rows == 0
    labels = inter.column("label").to_pylist()
    ratings = inter.column("rating").to_pylist()
    assert all(lab == (r >= 4) for lab, r in zip(labels, ratings, strict=True))
    assert str(inter.schema.field("event_ts").type) == "timestamp[us, tz=UTC]"


def test_ingest_bad_rows_counts_match_fixture(tmp_path, fixtures):
    res = runner.invoke(
        app,
        ["ingest", "--source", "mapped", "--path", str(fixtures / "bad_rows" / "mapping.yaml"), "--as-of", "2024-02-01",
         "--data-dir", str(tmp_path), "--set", "ingest.max_text_chars=200"],
    )  # fmt: skip
    assert res.exit_code == Exit.QUARANTINED, res.output
    with (fixtures / "bad_rows" / "expected.csv").open() as fh:
        expected = list(csv.DictReader(fh))
    n_bad = sum(r["reason"] not in ("OK", "NOT_YET_VISIBLE") for r in expected)
    n_later = sum(r["reason"] == "NOT_YET_VISIBLE" for r in expected)
    assert n_later and f"{n_bad} row(s) quarantined" in res.output
    assert _table(tmp_path, "quarantine", "2024-02-01").num_rows == n_bad
    assert f"{n_bad} row(s) quarantined" in res.output
    for name, file in (("items", "items.csv"), ("users", "users.csv"), ("interactions", "events.csv")):
        assert _table(tmp_path, name, "2024-02-01").num_rows == sum(
            r["file"] == file and r["reason"] == "OK" for r in expected
        )


def test_input_error_exit_code(tmp_path):
    res = runner.invoke(
        app,
        [
            "ingest",
            "--source",
            "mind",
            "--path",
            str(tmp_path),
            "--as-of",
            "2024-01-01",
            "--data-dir",
            str(tmp_path),
        ],
    )
    assert res.exit_code == Exit.INPUT_ERROR
    assert "news.tsv does not exist" in res.output
    assert not (tmp_path / "canonical").exists()  # nothing written


def test_config_error_exit_code(tmp_path):
    res = runner.invoke(app, ["ingest", "--as-of", "2024-01-01", "--set", "ingest.bogus=1"])
    assert res.exit_code == Exit.CONFIG_ERROR
    assert "unknown config key" in res.output
