"""Shared test helpers (plain functions; fixtures live in the conftest.py of the level that shares them).

Import as ``from tests.utils import ...`` (pytest's pythonpath holds the repository root). Heavy libraries
(torch, transformers, tokenizers, sentence-transformers, xite_fast) are imported inside the helpers, so a
subprocess or an ops test that imports this module pays only for numpy.

- op backends: :func:`cpu_ext`, :func:`needs_cpu_ext`, :func:`backend_params`
- top-k checks: :func:`assert_topk_equal` (tie-aware), :func:`exact_topk`, :func:`cosine_scores64`,
  :func:`random_data`, :func:`ref_topk64`
- orthonormal bases: :func:`orthonormal` (numpy), :func:`orthonormal_torch`
- tiny offline models: :func:`tiny_config`, :func:`word_level_tokenizer`, :func:`make_bert_folder`,
  :func:`make_st_folder`
- a toy 3-class task for the trainer tests: :func:`toy_sentences`, :func:`toy_tokenizer`,
  :func:`toy_classifier`, :func:`training_args`, :func:`logged_losses`
- a deterministic fake encoder: :class:`HashEncoder`
- a small augment run: :func:`write_run_inputs`, :func:`run_opts`, :func:`run_small`, :func:`run_digests`
- files: :func:`write_chatterbot_sample`, :func:`dir_bytes`
- Triton: :func:`run_aot`
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ op backends (ops/)
def cpu_ext(op: str | None = None) -> bool:
    """The C++ extension is built (``backends_available()["cpu"]``) and, given ``op``, exports it."""
    from xite_fast import _backend

    return bool(
        _backend.backends_available()["cpu"] and (op is None or hasattr(_backend.load_extension(), op))
    )


def needs_cpu_ext(op: str | None = None) -> Any:
    """``pytest.mark.skipif`` for a test of the C++ kernel (``op``: the function the extension must
    export)."""
    import pytest

    return pytest.mark.skipif(not cpu_ext(op), reason="C++ kernel not built")


def backend_params(op: str | None = None, *, torch_first: bool = False) -> list:
    """The ``backend`` values an op test runs: "cpu" (skipped without the C++ kernel) and "torch"."""
    import pytest

    cpu = pytest.param("cpu", marks=needs_cpu_ext(op))
    return ["torch", cpu] if torch_first else [cpu, "torch"]


# ------------------------------------------------------------------------------------------- top-k checks
# Tie-aware comparison of top-k results (after faiss's ``check_ref_knn_with_draws``). Two exact top-k
# searches may legitimately differ where scores tie (within rounding): inside a group of tied reference
# scores the indices must match as sets, outside such groups they must match exactly. The last group of a
# row may continue past position k, so there the kernel may pick other members of the tie: pass the data
# (queries, keys) so every returned index is re-scored in float64 to prove it belongs there; without the
# data the last group must match as a set too. Failures print the first mismatching rows.


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def cosine_scores64(queries: Any, keys: Any, *, assume_normalized: bool = False) -> np.ndarray:
    """(N, M) float64 cosine scores; zero vectors score 0 (small inputs only)."""
    q = _np(queries).astype(np.float64)
    x = _np(keys).astype(np.float64)
    if not assume_normalized:
        qn = np.linalg.norm(q, axis=1, keepdims=True)
        xn = np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.where(qn > 0, qn, 1.0)
        x = x / np.where(xn > 0, xn, 1.0)
    return q @ x.T


def exact_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of a dense (N, M) score matrix: descending, ties -> lower index (stable sort)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order.astype(np.int64)


def _fmt_row(r: int, s, i, rs, ri) -> str:
    return (
        f"  row {r}:\n    got idx {i.tolist()}\n    ref idx {ri.tolist()}\n"
        f"    got s {s.tolist()}\n    ref s {rs.tolist()}"
    )


def assert_topk_equal(
    scores: Any,
    indices: Any,
    ref_scores: Any,
    ref_indices: Any,
    *,
    atol: float = 1e-5,
    queries: Any = None,
    keys: Any = None,
    assume_normalized: bool = False,
    max_rows: int = 3,
) -> None:
    """Assert that (scores, indices) is a correct top-k given the reference (ref_scores, ref_indices).

    Args:
        scores, indices: (N, k) result under test.
        ref_scores, ref_indices: (N, k) oracle result.
        atol: score tolerance; reference scores closer than ``2 * atol`` count as tied.
        queries, keys: optional (N, D) / (M, D) data to re-score returned indices in float64.
        assume_normalized: how to re-score (raw inner products when True).
        max_rows: how many failing rows to print.
    """
    s, i, rs, ri = _np(scores), _np(indices), _np(ref_scores), _np(ref_indices)
    if s.shape != rs.shape or i.shape != ri.shape or s.shape != i.shape:
        raise AssertionError(
            f"shape mismatch: scores {s.shape} indices {i.shape} vs ref {rs.shape} {ri.shape}"
        )
    if not np.isfinite(s).all():
        bad = np.flatnonzero(~np.isfinite(s).all(axis=1))
        raise AssertionError(f"scores contain NaN/inf in rows {bad[:max_rows].tolist()}")
    n, k = s.shape
    problems: list[str] = []
    if k and (np.diff(s, axis=1) > 0).any():
        r = int(np.flatnonzero((np.diff(s, axis=1) > 0).any(axis=1))[0])
        problems.append("scores not sorted descending\n" + _fmt_row(r, s[r], i[r], rs[r], ri[r]))
    sorted_i = np.sort(i, axis=1)
    if k > 1 and (np.diff(sorted_i, axis=1) == 0).any():
        r = int(np.flatnonzero((np.diff(sorted_i, axis=1) == 0).any(axis=1))[0])
        problems.append("duplicate indices in a row\n" + _fmt_row(r, s[r], i[r], rs[r], ri[r]))
    diff = np.abs(s.astype(np.float64) - rs.astype(np.float64))
    if (diff > atol).any():
        rows = np.flatnonzero((diff > atol).any(axis=1))
        problems.append(
            f"scores differ by up to {diff.max():.3g} > atol={atol} in {len(rows)} rows\n"
            + "\n".join(_fmt_row(int(r), s[r], i[r], rs[r], ri[r]) for r in rows[:max_rows])
        )
    if queries is not None and keys is not None:
        q = _np(queries).astype(np.float64)
        x = _np(keys).astype(np.float64)
        if i.min(initial=0) < 0 or i.max(initial=0) >= x.shape[0]:
            raise AssertionError(f"indices out of range [0, {x.shape[0]})")
        true = np.einsum("nd,nkd->nk", q, x[i]) if assume_normalized else None
        if true is None:
            qn = np.linalg.norm(q, axis=1)
            xn = np.linalg.norm(x, axis=1)[i]
            dots = np.einsum("nd,nkd->nk", q, x[i])
            denom = qn[:, None] * xn
            true = np.where(denom > 0, dots / np.where(denom > 0, denom, 1.0), 0.0)
        tdiff = np.abs(true - s)
        if (tdiff > atol).any():
            rows = np.flatnonzero((tdiff > atol).any(axis=1))
            problems.append(
                f"returned scores differ from the float64 re-score of their indices by {tdiff.max():.3g}\n"
                + "\n".join(_fmt_row(int(r), s[r], i[r], true[r], ri[r]) for r in rows[:max_rows])
            )
    rescored = queries is not None and keys is not None
    bad_rows: list[int] = []
    for r in range(n):
        # tie groups of the reference: consecutive scores within 2*atol are chained together
        breaks = np.flatnonzero(np.abs(np.diff(rs[r].astype(np.float64))) > 2 * atol) + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [k]])
        ok = True
        for a, b in zip(starts, ends, strict=True):
            if b == k and rescored:
                # the last group may continue past k, so other members of the tie are valid too;
                # their membership was proven by the float64 re-score above
                continue
            if b - a == 1:
                ok = i[r, a] == ri[r, a]
            else:
                ok = set(i[r, a:b].tolist()) == set(ri[r, a:b].tolist())
            if not ok:
                break
        if not ok:
            bad_rows.append(r)
    if bad_rows:
        problems.append(
            f"indices differ outside tie groups in {len(bad_rows)} rows\n"
            + "\n".join(_fmt_row(r, s[r], i[r], rs[r], ri[r]) for r in bad_rows[:max_rows])
        )
    if problems:
        raise AssertionError("top-k mismatch:\n" + "\n".join(problems))


def random_data(
    n: int, m: int, d: int, seed: int = 0, dtype: Any = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal queries (n, d) and keys (m, d) from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(dtype), rng.standard_normal((m, d)).astype(dtype)


def ref_topk64(q: Any, x: Any, k: int, assume_normalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(scores, indices) of the float64 torch reference ``xite_fast.reference.cosine_topk_ref``."""
    import torch

    from xite_fast.reference import cosine_topk_ref

    s, i = cosine_topk_ref(
        torch.from_numpy(np.asarray(q, np.float64)),
        torch.from_numpy(np.asarray(x, np.float64)),
        k,
        assume_normalized=assume_normalized,
    )
    return s.numpy(), i.numpy()


# ------------------------------------------------------------------------------------- orthonormal bases
def orthonormal(d: int, r: int, rng: Any = 0) -> np.ndarray:
    """(d, r) float32 with orthonormal columns: Q of a standard-normal (d, r) draw from ``rng`` (a
    ``numpy.random.Generator``, used as is, or a seed)."""
    g = np.random.default_rng(rng)  # a Generator is returned unchanged
    return np.linalg.qr(g.standard_normal((d, r)))[0].astype(np.float32)


def orthonormal_torch(d: int, r: int, generator: Any = None) -> Any:
    """(d, r) float32 torch tensor with orthonormal columns: Q of a float64 standard-normal draw."""
    import torch

    return torch.linalg.qr(torch.randn(d, r, generator=generator, dtype=torch.float64))[0].float()


# ---------------------------------------------------------------------------------- tiny offline models
def tiny_config(
    arch: str = "bert",
    *,
    vocab_size: int,
    hidden: int,
    intermediate: int,
    layers: int = 2,
    heads: int = 2,
    max_positions: int | None = None,
    dropout: float | None = None,
    **kw: Any,
) -> Any:
    """A small randomly initialisable transformers config: ``arch`` "bert", "xlm-roberta" or
    "distilbert" (DistilBERT's own field names are filled from the same arguments). ``max_positions`` and
    ``dropout`` (hidden and attention; DistilBERT also the classifier's) keep the library default when None;
    ``kw`` go to the config as they are."""
    from transformers import BertConfig, DistilBertConfig, XLMRobertaConfig

    if max_positions is not None:
        kw["max_position_embeddings"] = max_positions
    if arch == "distilbert":
        if dropout is not None:
            kw.update(dropout=dropout, attention_dropout=dropout, seq_classif_dropout=dropout)
        return DistilBertConfig(
            vocab_size=vocab_size, dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=intermediate, **kw
        )
    if dropout is not None:
        kw.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    cls = {"bert": BertConfig, "xlm-roberta": XLMRobertaConfig}[arch]
    return cls(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        **kw,
    )


def word_level_tokenizer(vocab: dict[str, int], *, pair: str, whitespace_split: bool = False) -> Any:
    """``PreTrainedTokenizerFast`` over a fixed word vocabulary (no download): one id per word, ``<unk>``
    otherwise, ``<s> $A </s>`` framing and the given ``pair`` template; ``vocab`` holds ``<s> </s> <pad>
    <unk>``. Words split on white space and punctuation, or on white space only (``whitespace_split``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit() if whitespace_split else pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair=pair, special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


BERT_WORDS = (
    "the a is of and to in weather nice today book about history train station where my computer broken "
    "i like coffee sister doctor what time it are you how do go home . , ? !"
).split()


def make_bert_folder(out: Path, seed: int = 0, hidden: int = 32, type_vocab_size: int = 2) -> Path:
    """Random tiny BertModel + BertTokenizerFast (WordPiece over :data:`BERT_WORDS` and letters) saved as a
    Hugging Face folder at ``out`` (no download)."""
    import torch
    from transformers import BertModel, BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *BERT_WORDS,
        *letters,
        *("##" + c for c in letters),
    ]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(out / "vocab.txt"))
    torch.manual_seed(seed)
    cfg = tiny_config(
        vocab_size=len(vocab),
        hidden=hidden,
        intermediate=2 * hidden,
        heads=4,
        max_positions=64,
        type_vocab_size=type_vocab_size,
    )
    model = BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():  # larger weights than the init: pooling modes and pairs then differ clearly
        for p in model.parameters():
            p.mul_(3.0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_st_folder(
    hf: Path,
    out: Path,
    pooling: str,
    normalize: bool,
    prompts: dict | None = None,
    default: str | None = None,
) -> Path:
    """sentence-transformers folder (Transformer + Pooling [+ Normalize]) saved by sentence-transformers."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    tr = Transformer(str(hf), max_seq_length=40)
    mods = [tr, Pooling(tr.get_embedding_dimension(), pooling_mode=pooling)]
    if normalize:
        mods.append(Normalize())
    SentenceTransformer(modules=mods, prompts=prompts or {}, default_prompt_name=default).save(str(out))
    return out


# --------------------------------------------------------------------- a toy 3-class task (trainer tests)
TOY_WORDS = {
    0: "apple banana cherry grape melon peach plum lemon".split(),
    1: "dog cat horse mouse tiger lion bear wolf".split(),
    2: "red blue green black white pink gray gold".split(),
}


def toy_sentences(
    n: int, seed: int, lang: str = "en", lo: int = 2, hi: int = 7
) -> tuple[list[str], np.ndarray]:
    """``n`` sentences of ``lo``..``hi`` words, class ``i % 3`` (fruit / animals / colours), and their
    int64 labels; another ``lang`` gives the same content words with a ``_x`` suffix (other tokens)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        c = i % len(TOY_WORDS)
        words = [rng.choice(TOY_WORDS[c]) for _ in range(rng.randint(lo, hi))]
        if lang != "en":
            words = [w + "_x" for w in words]
        texts.append(" ".join(words))
        labels.append(c)
    return texts, np.array(labels, dtype=np.int64)


@functools.cache
def toy_tokenizer() -> Any:
    """Word-level tokenizer over :data:`TOY_WORDS` and their ``_x`` forms (RoBERTa-style pairs); one shared
    instance, treat as read-only."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for ws in TOY_WORDS.values():
        for w in ws:
            for v in (w, w + "_x"):
                vocab.setdefault(v, len(vocab))
    return word_level_tokenizer(vocab, pair="<s> $A </s> $B:1 </s>:1")


def toy_classifier(
    arch: str = "bert",
    seed: int = 0,
    layers: int = 2,
    num_labels: int = 3,
    dropout: float = 0.1,
    **cfg_kw: Any,
) -> Any:
    """A random ``AutoModelForSequenceClassification`` (hidden 32, 2 heads) over :func:`toy_tokenizer`'s
    vocabulary, initialised after ``torch.manual_seed(seed)``."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    cfg = tiny_config(
        arch,
        hidden=32,
        layers=layers,
        heads=2,
        intermediate=48,
        dropout=dropout,
        vocab_size=len(toy_tokenizer()),
        max_positions=64,
        pad_token_id=0,
        num_labels=num_labels,
        **cfg_kw,
    )
    return AutoModelForSequenceClassification.from_config(cfg)


def training_args(tmp_path: Path, **kw: Any) -> Any:
    """CPU ``TrainingArguments`` for a few quick epochs under ``tmp_path / "out"``; ``kw`` override."""
    from transformers import TrainingArguments

    base = dict(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=3,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        use_cpu=True,
        seed=0,
        warmup_steps=0.1,
    )
    base.update(kw)
    return TrainingArguments(**base)


def logged_losses(trainer: Any) -> np.ndarray:
    """The training losses a trainer logged (float64, one per logging step)."""
    return np.array([h["loss"] for h in trainer.state.log_history if "loss" in h], dtype=np.float64)


# --------------------------------------------------------------------------------------- a fake encoder
class HashEncoder:
    """A deterministic offline stand-in for ``Encoder`` (runs in milliseconds): a unit vector from the
    sha256 of each text (a pair is joined with NUL)."""

    dim, model_id, prefix = 16, "hash16", None

    def encode(self, texts, batch_size=64, show_progress_bar=False, normalize=True):
        rows = []
        for t in texts:
            t = t if isinstance(t, str) else "\x00".join(t)
            v = np.frombuffer(hashlib.sha256(t.encode()).digest()[:16], dtype=np.uint8).astype(np.float32)
            v = v - 127.5
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)


# ---------------------------------------------------------------------- a small augment run (xite tests)
RUN_LABELS = ["food", "sports", "music", "weather"]


def write_run_inputs(d: Path, target: str = "목표 문장 {i}") -> tuple[Path, Path]:
    """``src.jsonl`` (37 rows ``source sentence {i}``, label ``RUN_LABELS[i % 4]``) and ``tgt.jsonl`` (29
    rows ``target.format(i=i)``, gold label ``RUN_LABELS[3 * i % 4]``) under ``d``, created if missing."""
    d.mkdir(parents=True, exist_ok=True)
    src, tgt = d / "src.jsonl", d / "tgt.jsonl"
    src.write_text(
        "".join(
            json.dumps({"text": f"source sentence {i}", "label": RUN_LABELS[i % 4]}) + "\n" for i in range(37)
        )
    )
    tgt.write_text(
        "".join(
            json.dumps({"text": target.format(i=i), "label": RUN_LABELS[(i * 3) % 4]}, ensure_ascii=False)
            + "\n"
            for i in range(29)
        )
    )
    return src, tgt


def run_opts(src: Any, tgt: Any, out: Any, **kw: Any) -> dict:
    """``AugmentConfig`` fields of the small run (shards of 8, batches of 3, proj, weighted 3-NN vote, no
    progress bars); ``kw`` add or override."""
    return {
        "source": str(src),
        "target": str(tgt),
        "out": str(out),
        "shard_size": 8,
        "batch_size": 3,
        "mode": "proj",
        "vote": "weighted",
        "k": 3,
        "progress": False,
        **kw,
    }


def run_small(src: Any, tgt: Any, out: Any, **kw: Any) -> Any:
    """``run_augment`` of :func:`run_opts` with the :class:`HashEncoder` (well under a second)."""
    from xite_fast.xite.pipeline import AugmentConfig, run_augment

    return run_augment(AugmentConfig(**run_opts(src, tgt, out, **kw)), encoder=HashEncoder())


def run_digests(out: Path) -> dict[str, str]:
    """sha256 of every file of a run directory by relative path, except the ``.lock`` and ``timings.json``
    (one process's facts: stage times, parts reused, files re-made); ``report.json`` is deterministic."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != ".lock" and p.name != "timings.json"
    }


# ------------------------------------------------------------------------------------------------ files
def write_chatterbot_sample(
    tmp_path: Path, n_src: int = 60, n_tgt: int = 45, seed: int = 0
) -> tuple[Path, Path, Path]:
    """A small labelled English source / Korean target on disk (chatterbot, 3 topics): ``en.jsonl`` (text,
    label), ``ko.jsonl`` (text, gold label) and ``ko.txt`` (the Korean texts, one per line) under
    ``tmp_path``, a fixed-seed sample of the emotion / food / sports topics."""
    from xite_fast.data.chatterbot import load_chatterbot

    topics = ["emotion", "food", "sports"]
    en = load_chatterbot("english", topics=topics)
    ko = load_chatterbot("korean", topics=topics)
    rng = np.random.default_rng(seed)
    en = [en[i] for i in sorted(rng.choice(len(en), n_src, replace=False))]
    ko = [ko[i] for i in sorted(rng.choice(len(ko), n_tgt, replace=False))]
    src, tgt, txt = tmp_path / "en.jsonl", tmp_path / "ko.jsonl", tmp_path / "ko.txt"
    for path, recs in ((src, en), (tgt, ko)):
        path.write_text(
            "".join(
                json.dumps({"text": r["text"], "label": r["label"]}, ensure_ascii=False) + "\n" for r in recs
            ),
            encoding="utf-8",
        )
    txt.write_text("".join(r["text"] + "\n" for r in ko), encoding="utf-8")
    return src, tgt, txt


def dir_bytes(d: Path) -> dict[str, bytes]:
    """{name: bytes} of the files directly in ``d``, hidden ones (``.lock``, temporaries) left out."""
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if not p.name.startswith(".")}


def store_content(d: Path) -> tuple[dict, dict]:
    """(shard files' bytes, manifest) of an embedding store without the counts of rows the model ran
    (``encoded``, ``encoded_rows``) and the manifest digest: what two stores of the same rows share however
    much dedupe saved (with dedupe on, Ray actors dedupe within their shards, one process across them)."""
    import json

    files = dir_bytes(d)
    m = json.loads(files.pop("manifest.json"))
    for s in m["shards"]:
        s.pop("encoded")
    m.pop("encoded_rows"), m.pop("digest")
    return files, m


# ----------------------------------------------------------------------------------------------- Triton
def run_aot(script: str) -> subprocess.CompletedProcess:
    """Run a Triton ahead-of-time compile script (PTX + cubin via triton's bundled ptxas; no GPU needed) in a
    subprocess without TRITON_INTERPRET: the interpreter accepts code the GPU compiler rejects."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
