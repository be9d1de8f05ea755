"""Point-in-time feature retrieval from Feast's offline store (Spark) (``get_historical_features``), for
training sets and checks.

Every returned row is checked back in: the result has exactly one row per entity row given, in the same
order (Feast's file offline store silently drops rows, the Spark store keeps them; we verify either way).
Timestamps come back as tz-aware UTC whatever the store returned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from llmfeat.core import compact
from llmfeat.core.errors import RetrievalError  # noqa: F401 - re-exported
from llmfeat.feast.names import CTR_TRAINING

ROW_ID = "_llmfeat_row"


def sync_sources(views) -> None:
    """Bring the compact copy each of ``views`` (Feast feature views) reads in step with its table
    (``core.compact``), each once: before anything reads them through Feast."""
    for path in sorted({str(getattr(v.batch_source, "path", "") or "") for v in views} - {""}):
        compact.sync(Path(path))


def _retrieve(store, frame: pd.DataFrame, features) -> pd.DataFrame:
    """Run the point-in-time join. With a staging location (llmfeat's generated config has one) Spark writes
    the result as Parquet and pyarrow reads it, so memory is bounded by the frame, not the driver; the
    staged copy is removed afterwards."""
    import shutil

    staging = getattr(store.config.offline_store, "staging_location", None)
    local = Path(staging) if staging and str(staging).startswith("/") else None
    before = set(local.iterdir()) if local and local.is_dir() else set()
    try:
        job = store.get_historical_features(entity_df=frame, features=features, full_feature_names=True)
        return job.to_arrow().to_pandas() if staging else job.to_df()
    finally:
        for leftover in (set(local.iterdir()) - before) if local and local.is_dir() else ():
            shutil.rmtree(leftover, ignore_errors=True)


def historical_features(
    store, entity_df: pd.DataFrame, service: str = CTR_TRAINING, extra: list[str] = ()
) -> pd.DataFrame:
    """``entity_df``: user_id, item_id, event_timestamp (UTC) and any extra columns (labels...), kept as-is.
    ``extra``: feature references (``view:feature``) to fetch besides the service's."""
    missing = {"user_id", "item_id", "event_timestamp"} - set(entity_df.columns)
    if missing:
        raise RetrievalError(f"entity_df lacks column(s) {sorted(missing)}")
    frame = entity_df.reset_index(drop=True).copy()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    frame[ROW_ID] = np.arange(len(frame), dtype=np.int64)
    features = store.get_feature_service(service)
    names = {p.name for p in features.feature_view_projections} | {ref.split(":")[0] for ref in extra}
    sync_sources(store.get_feature_view(name) for name in sorted(names))
    if extra:
        refs = [f"{p.name}:{f.name}" for p in features.feature_view_projections for f in p.features]
        features = refs + list(extra)
    out = _retrieve(store, frame, features)
    if len(out) != len(frame) or set(out[ROW_ID]) != set(frame[ROW_ID]):
        raise RetrievalError(
            f"the offline store returned {len(out)} rows for {len(frame)} entity rows "
            f"({len(set(frame[ROW_ID]) - set(out[ROW_ID]))} missing)"
        )
    out = out.sort_values(ROW_ID).reset_index(drop=True)
    for col in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[col]):
            out[col] = pd.to_datetime(out[col], utc=True)
    return out.drop(columns=[ROW_ID])
