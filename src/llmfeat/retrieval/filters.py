"""Filtered retrieval: which items a query may return (``ItemFilter``) and how to search them (``plan``).

A filter is resolved to rows (faiss ids) once: categories (any of them) AND an allow-list of item ids, minus
a deny-list, minus per-query exclusions (the query item, the user's seen items). Its size is then known
exactly, and the planner picks the search by it (docs/retrieval.md, "Filtered search"):

=================  ==========================================================================================
plan               when
=================  ==========================================================================================
``none``           no item passes the filter: an empty answer with the reason, no search at all
``index``          no positive filter and at most k exclusions: a plain index search of k + exclusions
``exact``          at most ``index.exact_filter_max`` items pass: exact scores of exactly those items
``index-filtered`` otherwise: the index searches inside the filter (an ``IDSelector``), its effort scaled by
                   1 / selectivity: IVF probes the lists nearest the query *that hold allowed items* until
                   they hold ``index.filter_coverage`` x (nprobe x mean list size) of them (the allowed
                   candidates a plain search sees) and, under a category or allow-list, until they hold
                   ``index.filter_scan`` x the filter's size in all (see ``scan_target``); HNSW raises
                   efSearch by min(1 / selectivity, ``index.filter_widen``)
=================  ==========================================================================================

The probe order skips lists without allowed items instead of scanning them, so a clustered filter (a
category) is searched where its members are, however far from the query; the scan floor gives it the
breadth its far-away nearest members need, and bounds the cost at a fraction of exact search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

PLANS = ("none", "index", "exact", "index-filtered")


@dataclass
class ItemFilter:
    """The rows a query may return. ``rows`` (sorted, unique) when something restricts them positively
    (category, allow-list), else None = every row except ``excluded`` (sorted, unique). Immutable in use:
    ``without`` returns a new filter; masks, bitmaps and per-list counts are computed once, when asked."""

    count: int
    rows: np.ndarray | None = None
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    description: str = "all items"
    ignored_ids: int = 0
    """Allow- or deny-list ids that are not in the index version (ignored)."""
    _mask: np.ndarray | None = field(default=None, repr=False)
    _counts: np.ndarray | None = field(default=None, repr=False)
    _list_of: np.ndarray | None = field(default=None, repr=False)
    _bitmap: np.ndarray | None = field(default=None, repr=False)
    _selector: tuple | None = field(default=None, repr=False)
    """(IDSelector, objects it reads), cached by the retriever."""

    @property
    def restricted(self) -> bool:
        return self.rows is not None

    @property
    def remaining(self) -> int:
        return len(self.rows) if self.rows is not None else self.count - len(self.excluded)

    @property
    def selectivity(self) -> float:
        return self.remaining / self.count if self.count else 0.0

    def mask(self) -> np.ndarray:
        """bool per row: may it be returned."""
        if self._mask is None:
            if self.rows is not None:
                mask = np.zeros(self.count, dtype=bool)
                mask[self.rows] = True
            else:
                mask = np.ones(self.count, dtype=bool)
                mask[self.excluded] = False
            self._mask = mask
        return self._mask

    def bitmap(self) -> np.ndarray:
        """The mask packed 8 ids a byte, little-endian bit order (what IDSelectorBitmap reads)."""
        if self._bitmap is None:
            self._bitmap = np.packbits(self.mask(), bitorder="little")
        return self._bitmap

    def allowed_rows(self) -> np.ndarray:
        return self.rows if self.rows is not None else np.flatnonzero(self.mask())

    def keeps(self, rows: np.ndarray) -> np.ndarray:
        """bool per entry of ``rows`` (-1 = none): may it be returned."""
        ok = rows >= 0
        return ok & self.mask()[np.clip(rows, 0, None)]

    def without(self, rows: np.ndarray | None) -> ItemFilter:
        """This filter minus ``rows`` (per-query exclusions); per-list counts are carried over, not recounted."""
        if rows is None or len(rows) == 0:
            return self
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) > 1 and not (rows[1:] > rows[:-1]).all():  # a user's seen rows come sorted and unique
            rows = np.unique(rows)
        if self.rows is not None:
            pos = np.searchsorted(self.rows, rows)
            hit = pos < len(self.rows)
            hit[hit] = self.rows[pos[hit]] == rows[hit]
            removed = rows[hit]
            out = ItemFilter(self.count, np.delete(self.rows, pos[hit]), description=self.description,
                             ignored_ids=self.ignored_ids)  # fmt: skip
        else:
            removed = rows[(rows >= 0) & (rows < self.count)]
            if len(self.excluded):
                removed = removed[~np.isin(removed, self.excluded)]
            excluded = np.union1d(self.excluded, removed) if len(self.excluded) else removed
            out = ItemFilter(self.count, None, excluded, self.description, self.ignored_ids)
        if self.rows is not None and self._bitmap is not None:  # clear the removed bits: no O(n) mask
            bits = self._bitmap.copy()
            np.bitwise_and.at(bits, removed >> 3, np.invert(np.left_shift(1, removed & 7).astype(np.uint8)))
            out._bitmap = bits
        if self._counts is not None and self._list_of is not None:
            counts = self._counts.copy()
            np.subtract.at(counts, self._list_of[removed], 1)
            out._counts, out._list_of = counts, self._list_of
        return out

    def list_counts(self, list_of: np.ndarray, nlist: int) -> np.ndarray:
        """How many allowed rows each inverted list holds (``list_of``: the list of each row)."""
        if self._counts is None or self._list_of is not list_of:
            if self.rows is not None:
                counts = np.bincount(list_of[self.rows], minlength=nlist)
            else:
                counts = np.bincount(list_of, minlength=nlist)
                np.subtract.at(counts, list_of[self.excluded], 1)
            self._counts, self._list_of = counts, list_of
        return self._counts


def plan(flt: ItemFilter, k: int, exact_filter_max: int) -> str:
    """The search path for a filter of this size (see the module docstring)."""
    if flt.remaining == 0:
        return "none"
    if not flt.restricted and len(flt.excluded) <= k:
        return "index"
    if flt.remaining <= exact_filter_max:
        return "exact"
    return "index-filtered"


def coverage_target(nprobe: int, count: int, nlist: int, k: int, k_factor: float, coverage: float) -> int:
    """Allowed items the probed lists must hold: ``coverage`` x what a plain search of nprobe lists scans
    (scaled up for k > 10, the k the search parameters were tuned for), and at least the candidates the
    search keeps (k x k_factor)."""
    plain = nprobe * count / max(1, nlist)
    return int(math.ceil(max(coverage * plain * max(1.0, k / 10), k * k_factor)))


def probe_lists(counts: np.ndarray, lists: np.ndarray, target: int, sizes: np.ndarray | None = None,
                scan: int = 0) -> int:  # fmt: skip
    """How many of ``lists`` (ordered best first; list l holds ``counts[l]`` allowed of ``sizes[l]`` items) to
    probe so that they hold at least ``target`` allowed items and ``scan`` items in all (everything when the
    lists hold fewer)."""
    m = int(np.searchsorted(np.cumsum(counts[lists]), target) + 1)
    if scan > 0 and sizes is not None:
        m = max(m, int(np.searchsorted(np.cumsum(sizes[lists]), scan) + 1))
    return int(min(len(lists), m))


def scan_target(remaining: int, plain: float, scan: float, cap: float) -> int:
    """Items a search under a positive filter (category, allow-list) scans at least: ``scan`` x the filter's
    size, at most ``cap`` x a plain search's. Scanning a code costs a fraction of scoring a vector exactly,
    so a floor proportional to the filter keeps the search a constant factor cheaper than exact search
    within it, while giving clustered filters, whose nearest members lie in lists far from the query, the
    breadth that a count of allowed candidates alone does not."""
    return int(math.ceil(min(scan * remaining, cap * plain)))


def effort_scale(selectivity: float, cap: float) -> float:
    """efSearch / nprobe multiplier of a selector search over a fraction ``selectivity`` of the items."""
    return float(min(cap, max(1.0, 1.0 / max(selectivity, 1e-9))))
