"""The Feast adapter is the only door to Feast: no module outside ``src/llmfeat/feast/`` imports Feast or
protobufs, and the view / feature / service / entity names are spelt once (``llmfeat.feast.names``), which
the repository definitions import too. Static checks over the source tree (AST, not text search)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llmfeat.feast import names

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "llmfeat"
ADAPTER = SRC / "feast"
FORBIDDEN = ("feast", "google.protobuf")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, at any depth (function-level imports included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def is_feast_internal(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN) or module.endswith("_pb2")


def outside_adapter() -> list[Path]:
    return [p for p in sorted(SRC.rglob("*.py")) if ADAPTER not in p.parents]


def test_no_feast_or_protobuf_import_outside_the_adapter():
    offenders = [
        f"{p.relative_to(ROOT)}:{line}: import {module}"
        for p in outside_adapter()
        for line, module in imported_modules(p)
        if is_feast_internal(module)
    ]
    assert offenders == [], "Feast / protobuf imported outside src/llmfeat/feast/:\n" + "\n".join(offenders)


def test_the_scan_sees_the_adapter_imports():
    """The check above can fail: the adapter itself imports Feast and protobufs, and the scan finds them."""
    found = {m for p in ADAPTER.rglob("*.py") for _, m in imported_modules(p) if is_feast_internal(m)}
    assert "feast" in found and any(m.endswith("_pb2") for m in found)


def _spelt_names() -> set[str]:
    """Every feature view and feature service name, and every full feature name (``view__feature``), as
    names.py defines them. (Entity and plain feature names such as "user" or "model_id" are ordinary words
    elsewhere too: not counted.)"""
    values = {k: v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
    return {v for k, v in values.items() if k.endswith("_VIEW") or "__" in v} | {
        names.RANKER,
        names.CTR_TRAINING,
    }


def string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
    }
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


@pytest.mark.parametrize("where", ["src", "feature_repo"])
def test_feast_names_are_spelt_once(where):
    """No string literal outside names.py equals a view / service / full feature name (item_stats and
    user_stats are table names as well as view names, and table names appear in paths: those two are not
    counted)."""
    spelt = _spelt_names() - set(names.EMBEDDING_TABLES) - set(names.STATS_TABLES)
    files = outside_adapter() if where == "src" else [ROOT / "feature_repo" / "features.py"]
    offenders = [
        f"{p.relative_to(ROOT)}:{line}: {value!r}"
        for p in files
        for line, value in string_constants(p)
        if value in spelt
    ]
    assert offenders == [], "Feast names spelt outside llmfeat/feast/names.py:\n" + "\n".join(offenders)


def test_repository_definitions_use_the_names_module():
    modules = [m for _, m in imported_modules(ROOT / "feature_repo" / "features.py")]
    assert "llmfeat.feast" in modules or "llmfeat.feast.names" in modules
