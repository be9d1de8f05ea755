"""Contextual bandits on the published features (issue 13).

- ``features``: the shared (user + context) and action (item) feature rows, and their Vowpal Wabbit text.
- ``policy``: the VW ``--cb_explore_adf`` learner, the baselines (random, popularity, greedy CTR) and the
  versioned policy store the service hot-reloads.
- ``ope``: off-policy evaluation (IPS, SNIPS, doubly robust) with bootstrap intervals.
- ``simulate``: the supervised-to-bandit simulator on the demo data, with curves and a report section.
- ``events``: the append-only SQLite event log of decisions and rewards.
- ``service``: ``POST /rank`` and ``POST /reward`` for ``llmfeat serve``.
- ``nightly``: trains a policy from the event log and publishes it as a new version.
"""
