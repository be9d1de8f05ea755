"""The model input vector: fixed layout, masks for unknown ids, stats on a comparable scale, unit rows."""

import datetime as dt

import numpy as np

from llmfeat.features.feature_vector import (
    ITEM_STATS,
    ITEM_TEXT,
    USER_TEXT,
    build_feature_matrix,
    ranker_layout,
    stat_names,
)
from llmfeat.features.stats import packed_columns

NOW = dt.datetime(2024, 1, 10, tzinfo=dt.UTC)
EPOCH_DAYS_NOW = NOW.timestamp() / 86400


def test_layout_and_masks():
    u = [0.6, 0.8]
    item_stats = np.zeros(len(packed_columns("impressions")), np.float32)
    item_stats[packed_columns("impressions").index("impressions_total")] = np.e - 1  # log1p -> 1
    item_stats[-1] = EPOCH_DAYS_NOW - 2  # last event two days ago
    cols = {
        USER_TEXT: [u, u, None],
        ITEM_TEXT: [[1.0, 0.0], None, [0.0, 1.0]],
        ITEM_STATS: [item_stats, None, None],
    }
    fm = build_feature_matrix(cols, NOW, dim=2)
    assert fm.names == ranker_layout(2) and len(fm.names) == 6 + len(stat_names())
    assert list(fm.user_known) == [True, True, False] and list(fm.item_known) == [True, False, True]
    assert np.allclose(np.linalg.norm(fm.matrix, axis=1), 1.0)

    # row 0 before normalisation: user (0.6, 0.8), item (1, 0), product (0.6, 0), stats...
    raw_stats = np.zeros(len(stat_names()))
    raw_stats[stat_names().index("item_impressions_total")] = 1.0
    raw_stats[stat_names().index("item_days_since_last_event")] = np.log1p(3.0)
    raw = np.concatenate([[0.6, 0.8], [1.0, 0.0], [0.6, 0.0], raw_stats])
    assert np.allclose(fm.matrix[0], raw / np.linalg.norm(raw), atol=1e-6)
    # unknown item: zeros in its block (and in the product), flagged by the mask
    assert np.allclose(fm.matrix[1][2:6], 0.0)


def test_no_stats_means_no_activity_and_no_recency():
    fm = build_feature_matrix({ITEM_TEXT: [[1.0, 0.0]]}, [NOW], dim=2)
    stats = fm.matrix[0][6:]
    assert np.allclose(stats, 0.0)


def test_one_user_many_items_equals_the_repeated_rows():
    """build_user_items_matrix (the ranker's path: user blocks computed once) == build_feature_matrix on the
    user's values repeated on every row, bit for bit, with missing values on either side."""
    from llmfeat.features.feature_vector import (
        HISTORY_CLICKS,
        ITEM_STATS,
        ITEM_TEXT,
        USER_STATS,
        USER_TEXT,
        build_user_items_matrix,
    )

    rng = np.random.default_rng(3)
    dim, n = 8, 7
    wi, wu = len(packed_columns("impressions")), len(packed_columns("events"))
    at = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    unit = lambda v: (v / np.linalg.norm(v)).astype(np.float32)  # noqa: E731
    items = {
        ITEM_TEXT: [unit(rng.normal(size=dim)) if i % 3 else None for i in range(n)],
        ITEM_STATS: [
            np.abs(rng.normal(size=wi)).astype(np.float32) * 50 if i % 2 else None for i in range(n)
        ],
    }
    for user in (
        {
            USER_TEXT: [unit(rng.normal(size=dim))],
            USER_STATS: [np.full(wu, 3.0, np.float32)],
            HISTORY_CLICKS: [4],
        },
        {USER_TEXT: [None], USER_STATS: [None], HISTORY_CLICKS: [None]},
        {},
    ):
        want = build_feature_matrix({**items, **{k: v * n for k, v in user.items()}}, at, dim, n)
        got = build_user_items_matrix(user, items, at, dim, n)
        np.testing.assert_array_equal(got.matrix, want.matrix)
        assert list(got.user_known) == list(want.user_known) and list(got.item_known) == list(want.item_known)
        assert got.names == want.names
    assert build_user_items_matrix({}, {ITEM_TEXT: []}, at, dim, 0).matrix.shape == (
        0,
        3 * dim + len(stat_names()),
    )


def test_click_counts_read_the_same_small_and_large():
    """The ranker's small-input path of the click counts == the pandas path training takes."""
    from llmfeat.features.feature_vector import _clicks_block

    odd = [3, None, float("nan"), "7", "x", 2.5, np.int32(4), -2, True]
    small = _clicks_block(odd)
    large = _clicks_block(odd * 200)[: len(odd)]
    np.testing.assert_array_equal(small, large)
