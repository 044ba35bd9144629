"""The tasks of both studies, their languages and split sizes, and the split rules: written once.

The fine-tuning driver (:mod:`experiments.driver`) and the frozen-encoder analysis
(:mod:`experiments.transfer`) run the same three tasks with the same split rules; their sizes differ
on purpose (the frozen-encoder analysis is cheap, so it tests on more rows) and are both named here.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "TASKS",
    "FINETUNE_TASKS",
    "CUSTOM_TASK",
    "DEFAULT_LANGS",
    "SENTIMENT_PARALLEL",
    "FINETUNE_SPLIT",
    "FROZEN_SPLIT",
    "FROZEN_SENTIMENT_TARGETS",
    "sentiment_split",
    "custom_splits",
]

TASKS = ("chatterbot", "sentiment", "pairs")
# the fine-tuning driver also runs the protocol on the user's own data (ExperimentConfig(task="custom",
# source=..., target=...) / --source FILE --target FILE): custom_splits
CUSTOM_TASK = "custom"
FINETUNE_TASKS = (*TASKS, CUSTOM_TASK)
# target languages per task when none are given (the fine-tuning driver)
DEFAULT_LANGS = {
    "chatterbot": ["korean", "japanese"],
    "sentiment": ["zh", "fr"],
    "pairs": ["korean", "japanese"],
    "custom": ["target"],
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


def custom_splits(cfg: Any) -> dict[str, Any]:
    """The custom task's splits, in :func:`experiments.driver.load_splits`' layout, from the user's data.

    ``cfg.source`` (labelled) and ``cfg.target`` are anything
    :func:`xite_fast.data.records.iter_table_records` reads (a .txt/.jsonl/.tsv/.csv/.parquet file, a pandas
    DataFrame, a ``datasets.Dataset``, a dict of columns), with ``cfg.text_field`` / ``cfg.label_field`` /
    ``cfg.pair_field``. Both are split by :func:`sentiment_split` (fixed seed ``cfg.split_seed``,
    stratified), each test taking ``cfg.test_fraction`` of the rows: the source into ``cfg.en_size``
    training rows (or all left) and its test, the target into an unlabelled pool (``cfg.pool_size`` rows,
    0: all left) and a gold test. A target without labels
    (``cfg.target_labels`` False, or no ``label_field`` column) is all pool and has no test rows: its
    accuracies are NaN. The label names are the source's labels, sorted; the target's must be among them.
    """
    import numpy as np

    from xite_fast.data.records import iter_table_records

    fields = {"text_field": cfg.text_field, "label_field": cfg.label_field, "pair_field": cfg.pair_field}
    lang = cfg.langs[0]

    def read(table: Any, name: str, need_label: bool) -> list[dict]:
        rows = [
            {"text": r.text, "label": r.label, "text_pair": r.pair}
            for _, r in iter_table_records(table, need_label=need_label, name=name, **fields)
        ]
        if cfg.limit:
            rows = rows[:: max(1, len(rows) // cfg.limit)][: cfg.limit]
        return rows

    def test_rows(n: int, what: str) -> int:
        test = max(1, round(n * cfg.test_fraction))
        if not 0 < test < n:
            raise ValueError(
                f"{what}: {n} rows leave no test/train split at --test-fraction {cfg.test_fraction}"
            )
        return test

    source = read(cfg.source, "source", True)
    target = read(cfg.target, "target", bool(cfg.target_labels))
    have = sum(r["label"] is not None for r in target)
    if 0 < have < len(target) and cfg.target_labels is not False:
        raise ValueError(
            f"target: {len(target) - have} of {len(target)} rows have no {cfg.label_field!r} label; label "
            "every row, or none (target_labels=False / --no-target-labels: an unlabelled target)"
        )
    labelled = cfg.target_labels is not False and have == len(target) > 0
    names = sorted({r["label"] for r in source})
    if len(names) < 2:
        raise ValueError(f"source: needs at least 2 labels to classify, got {[str(v) for v in names]}")
    label_of = {v: i for i, v in enumerate(names)}
    if labelled:
        unknown = sorted({str(r["label"]) for r in target if r["label"] not in label_of})
        if unknown:
            raise ValueError(f"target: labels {unknown} are not source labels {[str(v) for v in names]}")

    def part(records: list[dict], gold: bool) -> tuple[tuple, list[str] | None]:
        y = [label_of[r["label"]] for r in records] if gold else [-1] * len(records)
        pairs = [r["text_pair"] or "" for r in records] if cfg.pair_field else None
        return ([r["text"] for r in records], np.array(y, dtype=np.int64)), pairs

    tr, te = sentiment_split(source, test_rows(len(source), "source"), cfg.split_seed, cfg.en_size)
    (en_tr, en_tr_p), (en_te, en_te_p) = part(tr, True), part(te, True)
    if labelled:
        pool, test = sentiment_split(target, test_rows(len(target), "target"), cfg.split_seed, cfg.pool_size)
    else:
        keep = len(target) if not cfg.pool_size else min(cfg.pool_size, len(target))
        pool = [target[i] for i in np.unique(np.linspace(0, len(target) - 1, keep).round().astype(int))]
        test = []
    (t_pool, t_pool_p), (t_test, t_test_p) = part(pool, labelled), part(test, labelled)
    return {
        "topics": [str(v) for v in names],
        "labelled": {lang: labelled},
        "english": {"train": en_tr, "test": en_te, "train_pair": en_tr_p, "test_pair": en_te_p},
        lang: {"pool": t_pool, "test": t_test, "pool_pair": t_pool_p, "test_pair": t_test_p},
    }
