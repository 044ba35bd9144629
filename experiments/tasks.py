"""The tasks of both studies, their languages and split sizes, and the split rules: written once.

The fine-tuning driver (:mod:`experiments.driver`) and the frozen-encoder analysis
(:mod:`experiments.transfer`) run the same three tasks with the same split rules; their sizes differ
on purpose (the frozen-encoder analysis is cheap, so it tests on more rows) and are both named here.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "TASKS",
    "DEFAULT_LANGS",
    "SENTIMENT_PARALLEL",
    "FINETUNE_SPLIT",
    "FROZEN_SPLIT",
    "FROZEN_SENTIMENT_TARGETS",
    "sentiment_split",
]

TASKS = ("chatterbot", "sentiment", "pairs")
# target languages per task when none are given (the fine-tuning driver)
DEFAULT_LANGS = {
    "chatterbot": ["korean", "japanese"],
    "sentiment": ["zh", "fr"],
    "pairs": ["korean", "japanese"],
}
# sentiment targets -> the chatterbot language whose English translations give OT's parallel pairs (every
# conversation: the sentiment data share none of them). French has no topic whose translation keeps the
# English conversation structure, so with --align-topics matched only Chinese has pairs.
SENTIMENT_PARALLEL = {"zh": "chinese", "fr": "french"}

# fine-tuning driver defaults (ExperimentConfig / the command line): chatterbot and pairs split by
# conversation (test_fraction), sentiment by sentiment_split (rows; pool_size 0 = all left after the test)
FINETUNE_SPLIT: dict[str, Any] = {
    "test_fraction": 0.25,
    "en_size": 5000,
    "en_test_size": 1000,
    "pool_size": 0,
    "test_size": 1000,
}
# frozen-encoder analysis: the seed draws every split; sentiment targets take (test rows, pool rows or
# None = all left) from FROZEN_SENTIMENT_TARGETS
FROZEN_SPLIT: dict[str, Any] = {"test_fraction": 0.3, "en_size": 5000, "en_test_size": 2000}
FROZEN_SENTIMENT_TARGETS: dict[str, tuple[int, int | None]] = {"zh": (2000, 2000), "fr": (600, None)}


def sentiment_split(records: list[dict], test_size: int, seed: int, pool_size: int | None = None):
    """``(pool, test)`` of one sentiment language: :func:`xite_fast.data.sentiment.split_pool_test`
    (fixed seed, stratified); ``pool_size`` 0, None or at least the rows left after the test takes them
    all."""
    from xite_fast.data.sentiment import split_pool_test

    rest = len(records) - test_size
    pool = pool_size if pool_size and pool_size < rest else None
    return split_pool_test(records, test_size, seed, pool_size=pool)
