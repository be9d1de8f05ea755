"""Low-level FAISS access for filtered search, kept in one place (modelled on faiss.contrib.inspect_tools):
short functions over swig objects and raw pointers, so the planner in ``llmfeat.retrieval.filters`` and the
``Retriever`` stay in numpy terms.

Everything here is FAISS's own machinery: ``IndexIVF.search_preassigned`` (an IVF search over lists the
caller chose, with ``SearchParametersIVF(sel=...)``), ``IDSelectorBitmap``, ``IndexFlat.compute_distance_subset``
(the exact re-ranking ``IndexRefineFlat`` itself does) and ``knn_inner_product`` with a selector (exact search
within a filter without copying the vectors).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np


def ivf_layer(index: faiss.Index) -> Any | None:
    """The IndexIVF inside ``index`` (behind IDMap / refine / pre-transform), or None."""
    ivf = faiss.try_extract_index_ivf(index)
    return faiss.downcast_index(ivf) if ivf is not None else None


def refine_layer(index: faiss.Index) -> Any | None:
    """The outermost IndexRefine of ``index`` (``...,RFlat``), or None."""
    top = faiss.downcast_index(index)
    return top if isinstance(top, faiss.IndexRefine) else None


def list_of_rows(ivf: Any, count: int) -> np.ndarray:
    """int32 array: the inverted list each id 0..count-1 is stored in (-1: in no list)."""
    invlists = ivf.invlists
    out = np.full(count, -1, dtype=np.int32)
    for lno in range(ivf.nlist):
        size = invlists.list_size(lno)
        if size == 0:
            continue
        ptr = invlists.get_ids(lno)
        try:
            ids = faiss.rev_swig_ptr(ptr, size).copy()
        finally:
            invlists.release_ids(lno, ptr)
        out[ids[(ids >= 0) & (ids < count)]] = lno
    return out


def centroids(ivf: Any) -> np.ndarray:
    """(nlist, d) float32: the coarse centroids (the quantizer's stored vectors)."""
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def inner_products(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows),) float32: <q, row> for each row of the (n, d) C-contiguous float32 ``rows`` (FAISS's SIMD
    kernel; one query is too small for BLAS)."""
    q = np.ascontiguousarray(q, dtype=np.float32).reshape(-1)
    out = np.empty(len(rows), dtype=np.float32)
    if len(rows) == 0:
        return out
    faiss.fvec_inner_products_ny(
        faiss.swig_ptr(out), faiss.swig_ptr(q), faiss.swig_ptr(rows), len(q), len(rows)
    )
    return out


def inner_products_by_idx(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(nq, n) float32: <queries[i], vectors[ids[i, j]]>, the rows of the C-contiguous float32 ``vectors``
    read in place (nothing gathered); every id must be a valid row. FAISS spreads the queries over its
    OpenMP threads: call it with one thread set for small batches."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    out = np.empty(ids.shape, dtype=np.float32)
    if out.size:
        faiss.fvec_inner_products_by_idx(
            faiss.swig_ptr(out), faiss.swig_ptr(q), faiss.swig_ptr(vectors), faiss.swig_ptr(ids),
            q.shape[1], len(q), ids.shape[1],
        )  # fmt: skip
    return out


def exclusion_selector(excluded: np.ndarray) -> tuple[faiss.IDSelector, list[Any]]:
    """An IDSelector of every id except ``excluded`` (int64), O(excluded) to build, and what it reads."""
    excluded = np.ascontiguousarray(excluded, dtype=np.int64)
    batch = faiss.IDSelectorBatch(len(excluded), faiss.swig_ptr(excluded))
    return faiss.IDSelectorNot(batch), [batch, excluded]


def bitmap_selector(bitmap: np.ndarray) -> tuple[faiss.IDSelector, np.ndarray]:
    """An IDSelectorBitmap over ``bitmap`` (uint8, id i = bit i % 8 of byte i // 8, as
    ``np.packbits(mask, bitorder="little")`` packs a bool mask) and the array it reads (keep it alive)."""
    bitmap = np.ascontiguousarray(bitmap, dtype=np.uint8)
    return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap


def search_lists(
    ivf: Any, q: np.ndarray, k: int, lists: np.ndarray, coarse: np.ndarray, sel: faiss.IDSelector
) -> tuple[np.ndarray, np.ndarray]:
    """IVF search of one query over exactly ``lists`` (with ``coarse`` = the query's inner products with
    their centroids), keeping only ids ``sel`` accepts: (scores, ids) of length k, -1 padded.

    The Python wrapper of search_preassigned refuses SearchParameters, so the C++ method is called directly."""
    q = np.ascontiguousarray(q, dtype=np.float32).reshape(1, -1)
    assign = np.ascontiguousarray(lists, dtype=np.int64).reshape(1, -1)
    dis = np.ascontiguousarray(coarse, dtype=np.float32).reshape(1, -1)
    params = faiss.SearchParametersIVF(sel=sel, nprobe=assign.shape[1])
    scores = np.empty((1, k), dtype=np.float32)
    ids = np.empty((1, k), dtype=np.int64)
    ivf.search_preassigned_c(
        1, faiss.swig_ptr(q), k, faiss.swig_ptr(assign), faiss.swig_ptr(dis),
        faiss.swig_ptr(scores), faiss.swig_ptr(ids), False, params,
    )  # fmt: skip
    return scores[0], ids[0]


def rescore(refine: Any, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Exact scores of ``ids`` (all >= 0) from the refine layer's stored vectors, as IndexRefineFlat does."""
    flat = faiss.downcast_index(refine.refine_index)
    q = np.ascontiguousarray(q, dtype=np.float32).reshape(1, -1)
    labels = np.ascontiguousarray(ids, dtype=np.int64).reshape(1, -1)
    out = np.empty(labels.shape, dtype=np.float32)
    flat.compute_distance_subset(
        1, faiss.swig_ptr(q), labels.shape[1], faiss.swig_ptr(out), faiss.swig_ptr(labels)
    )
    return out[0]


def exact_knn(
    vectors: np.ndarray, q: np.ndarray, k: int, sel: faiss.IDSelector | None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of one query over the rows of ``vectors`` that ``sel`` accepts (all when
    None), read in place (a memory map works; nothing is copied): (scores, ids), -1 padded."""
    if not (vectors.flags.c_contiguous and vectors.dtype == np.float32):
        raise ValueError(
            "exact_knn needs C-contiguous float32 vectors"
        )  # a programming error, not a user one
    q = np.ascontiguousarray(q, dtype=np.float32).reshape(1, -1)
    scores = np.empty((1, k), dtype=np.float32)
    ids = np.empty((1, k), dtype=np.int64)
    faiss.knn_inner_product(
        faiss.swig_ptr(q), faiss.swig_ptr(vectors), q.shape[1], 1, len(vectors), k,
        faiss.swig_ptr(scores), faiss.swig_ptr(ids), sel,
    )  # fmt: skip
    return scores[0], ids[0]
