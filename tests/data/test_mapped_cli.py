"""The generic (mapped) loader off the happy path, each case through the real `llmfeat` process: exit code,
message, and what ingest wrote (validation runs after the loader in every case)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from llmfeat.core.config import load_config
from llmfeat.data.texts import render

REPO = Path(__file__).resolve().parents[2]
AS_OF = "2024-03-01"
ITEMS = "sku,name,blurb,modified\nA,Alpha kettle,A kettle.,2024-01-01T00:00:00Z\nB,Beta mug,A mug.,2024-01-01T00:00:00Z\n"
EVENTS = "uid,sku,ts,clicked\nU1,A,2024-01-02T10:00:00Z,1\nU2,B,2024-01-03T09:00:00Z,0\nU1,B,2024-01-04T09:00:00Z,1\n"
ITEMS_SECTION = """items:
  path: items.csv
  id: sku
  columns: {title: name, description: blurb}
  updated_at: modified
"""
EVENTS_SECTION = """interactions:
  path: events.csv
  user_id: uid
  item_id: sku
  timestamp: ts
  label: clicked
"""


def llmfeat(*args: str, cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "250"}
    proc = subprocess.run([sys.executable, "-m", "llmfeat.cli", *args], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)  # fmt: skip
    return proc.returncode, proc.stdout


def ingest(tmp_path: Path, mapping: str, files: dict[str, str], *sets: str) -> tuple[int, str, Path]:
    src = tmp_path / "src"
    src.mkdir(parents=True)
    (src / "mapping.yaml").write_text(mapping)
    for name, text in files.items():
        (src / name).write_text(text)
    data = tmp_path / "data"
    extra = [a for s in sets for a in ("--set", s)]
    rc, out = llmfeat("ingest", "--source", "mapped", "--path", str(src / "mapping.yaml"), "--as-of", AS_OF,
                      "--data-dir", str(data), *extra, cwd=tmp_path)  # fmt: skip
    return rc, out, data


def table(data: Path, name: str):
    return pq.read_table(data / "canonical" / name / f"snapshot_date={AS_OF}")


def test_no_users_section_derives_utc_users(tmp_path):
    rc, out, data = ingest(
        tmp_path, ITEMS_SECTION + EVENTS_SECTION, {"items.csv": ITEMS, "events.csv": EVENTS}
    )
    assert rc == 0, out
    users = table(data, "users")
    assert sorted(users.column("user_id").to_pylist()) == ["U1", "U2"]
    assert str(users.schema.field("updated_at").type) == "timestamp[us, tz=UTC]"
    first = dict(
        zip(users.column("user_id").to_pylist(), users.column("updated_at").to_pylist(), strict=True)
    )
    assert first["U1"].isoformat() == "2024-01-02T10:00:00+00:00"  # the user's first interaction
    assert table(data, "interactions").num_rows == 3


@pytest.mark.parametrize(
    ("mapping", "key", "hint"),
    [
        (ITEMS_SECTION + EVENTS_SECTION + "user:\n  path: users.csv\n  id: uid\n", "'user'", "'users'"),
        (ITEMS_SECTION.replace("updated_at:", "upated_at:") + EVENTS_SECTION, "'upated_at'", "'updated_at'"),
        (ITEMS_SECTION + EVENTS_SECTION.replace("label:", "lable:"), "'lable'", "'label'"),
    ],
    ids=["top-level", "items-section", "interactions-section"],
)
def test_unknown_mapping_keys_are_refused(tmp_path, mapping, key, hint):
    rc, out, data = ingest(tmp_path, mapping, {"items.csv": ITEMS, "events.csv": EVENTS})
    assert rc == 3, out
    assert f"unknown key {key}" in out and f"did you mean {hint}" in out
    assert str(tmp_path / "src" / "mapping.yaml") in out
    assert "Traceback" not in out
    assert not (data / "canonical").exists()


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    broken = ITEMS_SECTION + EVENTS_SECTION.replace("  label: clicked", "  label: [clicked")
    rc, out, data = ingest(tmp_path, broken, {"items.csv": ITEMS, "events.csv": EVENTS})
    assert rc == 3, out
    assert str(tmp_path / "src" / "mapping.yaml") in out and "not valid YAML at line" in out
    assert "Traceback" not in out


def test_description_only_items_survive(tmp_path):
    items = (
        "sku,name,blurb,modified\n"
        'A,,"A long description of a cast-iron kettle, its enamel and its whistle.",2024-01-01T00:00:00Z\n'
        "B,Beta mug,,2024-01-01T00:00:00Z\n"
        "C,,,2024-01-01T00:00:00Z\n"
    )
    rc, out, data = ingest(
        tmp_path, ITEMS_SECTION + EVENTS_SECTION, {"items.csv": items, "events.csv": EVENTS}
    )
    assert rc == 4, out  # C has no text at all: quarantined, the others kept
    kept = table(data, "items").to_pylist()
    assert sorted(r["item_id"] for r in kept) == ["A", "B"]
    q = table(data, "quarantine").to_pylist()
    assert [(r["reason"], r["row"]) for r in q] == [("EMPTY_TEXT", 4)]
    # what embed encodes is the rendered template: the description carries item A
    template = load_config(None, []).embed.item_template
    a = next(r for r in kept if r["item_id"] == "A")
    assert a["title"] is None and "cast-iron kettle" in render(template, a)


def test_catalogue_only_ingest(tmp_path):
    rc, out, data = ingest(tmp_path, ITEMS_SECTION, {"items.csv": ITEMS})
    assert rc == 0, out
    assert table(data, "items").num_rows == 2
    assert table(data, "users").num_rows == 0 and table(data, "interactions").num_rows == 0
    assert "no interactions section: catalogue only" in out


def test_empty_items_file_is_refused_and_embed_does_nothing(tmp_path):
    rc, out, data = ingest(tmp_path, ITEMS_SECTION + EVENTS_SECTION,
                           {"items.csv": "sku,name,blurb,modified\n", "events.csv": EVENTS})  # fmt: skip
    assert rc == 3, out
    assert "has no data rows" in out and str(tmp_path / "src" / "items.csv") in out
    assert not (data / "canonical").exists()

    # every item quarantined at ingest (future updated_at): the snapshot's items table is empty ...
    future = ITEMS.replace("2024-01-01", "2030-01-01")
    rc, out, data = ingest(
        tmp_path / "q", ITEMS_SECTION + EVENTS_SECTION, {"items.csv": future, "events.csv": EVENTS}
    )
    assert rc == 4, out
    assert table(data, "items").num_rows == 0
    # ... and embed says so and writes nothing, instead of crashing in Spark
    rc, out = llmfeat("embed", "--as-of", AS_OF, "--data-dir", str(data), cwd=tmp_path)
    assert rc == 3, out
    assert "nothing to embed" in out and "Traceback" not in out
    assert not (data / "embeddings").exists()


def test_repetitive_text_is_quarantined(tmp_path):
    items = ITEMS + f"C,Gamma,{'x' * 1_000_000},2024-01-01T00:00:00Z\n"
    rc, out, data = ingest(tmp_path, ITEMS_SECTION + EVENTS_SECTION, {"items.csv": items, "events.csv": EVENTS},
                           "ingest.max_text_chars=2000000")  # fmt: skip
    assert rc == 4, out
    assert "REPETITIVE_TEXT=1" in out
    q = table(data, "quarantine").to_pylist()
    assert [(r["reason"], r["row"]) for r in q] == [("REPETITIVE_TEXT", 4)]
    assert "'description'" in q[0]["detail"]
    assert sorted(table(data, "items").column("item_id").to_pylist()) == ["A", "B"]


def test_catalogue_with_users_needs_their_updated_at(tmp_path):
    users = "uid,job\nU1,chef\n"
    mapping = ITEMS_SECTION + "users:\n  path: users.csv\n  id: uid\n  columns: {occupation: job}\n"
    rc, out, _ = ingest(tmp_path, mapping, {"items.csv": ITEMS, "users.csv": users})
    assert rc == 3, out
    assert "users needs 'updated_at' when there is no interactions section" in out


def test_release_dates_are_mapped_and_an_unreadable_one_is_quarantined(tmp_path):
    items = (
        "sku,name,blurb,modified,launch\n"
        "A,Alpha kettle,A kettle.,2024-01-01T00:00:00Z,2023-11-20\n"
        "B,Beta mug,A mug.,2024-01-01T00:00:00Z,\n"
        "C,Gamma pot,A pot.,2024-01-01T00:00:00Z,next spring\n"
    )
    mapping = ITEMS_SECTION + "  released_at: launch\n"
    rc, out, data = ingest(tmp_path, mapping, {"items.csv": items})
    assert rc == 4, out  # C's date does not parse: quarantined, the others kept
    got = table(data, "items").to_pandas().set_index("item_id")["released_at"]
    assert got["A"] == pd.Timestamp("2023-11-20", tz="UTC") and got.isna()["B"]  # empty: unknown
    q = table(data, "quarantine").to_pandas()
    assert list(q["reason"]) == ["BAD_TIMESTAMP"] and list(q["row"]) == [4]
    assert "column 'released_at' = next spring does not parse" in q["detail"].iloc[0]


def test_input_quoted_in_an_error_is_printed_as_it_is_not_as_markup(tmp_path):
    """A header like "[/b]" in a user's file used to crash the error report itself (rich markup)."""
    items = "sku,[/b] name [red]\nA,Alpha kettle\n"
    rc, out, _ = ingest(tmp_path, ITEMS_SECTION, {"items.csv": items})
    assert rc == 3, out
    assert "[/b] name [red]" in out and "Traceback" not in out
