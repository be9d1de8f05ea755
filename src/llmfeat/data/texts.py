"""Text templates: item and user fields -> the one string the encoder sees. Pure functions.

A template is ordinary ``str.format`` syntax, e.g. ``"{title}. {category}. {description}"``, with one twist
so that missing fields leave no litter: the literal text *before* a placeholder belongs to it and is dropped
when the field is empty; for the first field that does render, leading separators (spaces and ``.,;:|-``)
of its literal are dropped too, but words are kept (``"Age {age}"`` stays ``"Age 24"``). Lists render joined
with ``", "``.
"""

from __future__ import annotations

import math
import string
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from llmfeat.core.errors import ConfigError

SEPARATORS = " .,;:|-"
HISTORY_JOINER = "; "


@lru_cache(maxsize=64)
def _parse(template: str) -> tuple[tuple[tuple[str, str | None], ...], str]:
    parts: list[tuple[str, str | None]] = []
    trailing = ""
    for literal, name, spec, conv in string.Formatter().parse(template):
        if spec or conv:
            raise ConfigError(
                f"template {template!r}: format specs and conversions are not supported ({{{name}}})"
            )
        if name is None:
            trailing = literal
        else:
            if not name.isidentifier():
                raise ConfigError(f"template {template!r}: {{{name}}} is not a field name")
            parts.append((literal, name))
    return tuple(parts), trailing


def template_fields(template: str) -> list[str]:
    return [name for _, name in _parse(template)[0] if name]


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, list | tuple) or (hasattr(value, "tolist") and not isinstance(value, str | bytes)):
        items = value.tolist() if hasattr(value, "tolist") else value
        if not isinstance(items, list):  # a numpy scalar
            return _as_text(items)
        return ", ".join(s for s in (_as_text(v) for v in items) if s)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def render(template: str, fields: Mapping[str, Any]) -> str:
    parts, trailing = _parse(template)
    out: list[str] = []
    for literal, name in parts:
        if name not in fields:
            raise ConfigError(f"template field {{{name}}} is not a column (have: {sorted(fields)})")
        value = _as_text(fields[name])
        if not value:
            continue
        out.append((literal.lstrip(SEPARATORS) if not out else literal) + value)
    return ("".join(out) + trailing).strip() if out else ""


def render_all(template: str, rows: Iterable[Mapping[str, Any]]) -> list[str]:
    return [render(template, row) for row in rows]


def history_text(titles: Iterable[str]) -> str:
    """Titles of a user's latest clicks, newest first."""
    return HISTORY_JOINER.join(t for t in titles if t)
