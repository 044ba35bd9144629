"""Frozen-encoder analysis of cross-lingual transfer: when (and why) does XITE's matching help?

``python -m experiments.transfer --task sentiment --targets zh fr`` (also ``--task chatterbot``
and ``--task pairs`` with ``--targets ko ja``) embeds every text once with the frozen encoder
(:class:`xite_fast.Encoder`, ONNX fp32 e5-small; cached by :func:`xite_fast.encode_corpus` under
``<cache>/transfer``, so reruns skip encoding) and trains scikit-learn logistic regressions on the
embeddings. Per seed (the seed draws the target's pool/test split and the English training sample):

* ``zero-shot``: trained on English only. ``oracle``: trained on the target pool's gold labels (an
  upper reference, not a method).
* ``nn-transfer``: each test row takes the label of its nearest English training row (top-1 cosine,
  :func:`xite_fast.xite.match.match_arrays`, per-language centering or raw).
* ``self-train``: English + the pool labelled by the zero-shot classifier.
* ``λ=0``: English + the pool with its matched labels (no mixing). ``xite``: English + one synthetic
  row per pool row, ``lda_project_interp(matched English row, pool row, W, λ, mode)`` with λ ~
  Beta(1, 1) (the :class:`xite_fast.XiteAugmenter` semantics; ``mode="interp"`` or an LDA mode with
  a :class:`xite_fast.LanguageLDA` fitted on English + target, r = 1, or on every language of the
  task, r > 1).
* task-aware matching variants: matching in a space that stretches the English classifier's
  direction(s) (``clf-space``), keeping only pool rows whose matched label agrees with the
  pseudo-label (``agree``), choosing among the top-10 neighbours the nearest whose label is the
  pseudo-label (``label-aware``), and similarity / confidence thresholds.

Pairs (``--task pairs``): a row is the concatenation ``[u; v]`` of the two sentence embeddings
(matching and mixing act on it; an LDA basis acts on each half), and the classifier sees
``[u, v, u*v, |u-v|]``.

The analysis (label-transfer accuracy per similarity bin, agreement of matched labels and
pseudo-labels, thresholds, λ sweep, centering, the chatterbot twin effect) and the plots are
written next to the tables; the findings live in ``bench/results/transfer_*.md`` and the README.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import cpu_model
from experiments.tasks import FROZEN_SENTIMENT_TARGETS, FROZEN_SPLIT, TASKS, sentiment_split

__all__ = [
    "TASKS",
    "TaskData",
    "cache_dir",
    "embed_spec",
    "prepare",
    "run_rows",
    "analyse",
    "twin_transfer",
    "summarize",
    "plot_accuracy",
    "plot_similarity",
    "run",
    "main",
]

_SENTIMENT_SPLIT = FROZEN_SENTIMENT_TARGETS  # target -> (test rows, pool rows or None = all left)
_EN_TRAIN, _EN_TEST = FROZEN_SPLIT["en_size"], FROZEN_SPLIT["en_test_size"]
_CHAT_TEST_FRACTION = FROZEN_SPLIT["test_fraction"]
_C = 10.0  # logistic-regression inverse regularisation (chosen on English held-out accuracy only)


# ----------------------------------------------------------------------------------------- data
def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """``<xite_fast cache>/transfer``: the embedding stores of the analysis."""
    from xite_fast._io import cache_root

    return cache_root(root) / "transfer"


def _cached_store(out: Path, texts: list[str]):
    """The complete store in ``out`` if its shards hold exactly ``texts``, else None (no model load)."""
    from xite_fast.encode.store import MANIFEST, EmbeddingStore, _texts_sha256

    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not manifest.get("complete") or manifest.get("num_rows") != len(texts):
        return None
    for sh in manifest["shards"]:
        if _texts_sha256(texts[sh["start"] : sh["start"] + sh["rows"]]) != sh["text_sha256"]:
            return None
    return EmbeddingStore(out)


def embed_spec(
    spec: str, encoder: Any = None, root: str | os.PathLike | None = None
) -> tuple[list[dict], np.ndarray]:
    """Records of a bundled spec and their (N, D) float32 text embeddings, cached with ``encode_corpus``.

    The store folder is named by the spec and the sha256 of the package files; the cache holds the
    default encoder's embeddings. With ``encoder=None`` a complete store holding exactly these texts
    is reused without loading the model; otherwise (or when it is missing) the default
    :class:`xite_fast.Encoder` or ``encoder`` encodes through ``encode_corpus``, which checks texts
    and model id before reusing shards.
    """
    from xite_fast.data.bundled import load_bundled
    from xite_fast.encode.store import encode_corpus

    d = load_bundled(spec)
    texts = [r["text"] for r in d.records]
    out = cache_dir(root) / f"{d.spec.replace(':', '-')}-{d.sha256[:12]}"
    store = _cached_store(out, texts) if encoder is None else None
    if store is None:
        if encoder is None:
            from xite_fast.encode.encoder import Encoder

            encoder = Encoder()
        store = encode_corpus(iter(texts), out, encoder, show_progress_bar=False)
    return d.records, np.asarray(store.to_memmap(), dtype=np.float32)


@dataclass
class TaskData:
    """Embeddings and labels of one (task, target, seed).

    ``*_X`` are (N, D) float32 rows (pairs: D = 2 x sentence dim), ``*_y`` (N,) int64 label codes
    into ``classes``. ``pool_y`` are the pool's gold labels: used only by the oracle and to measure
    label quality. ``lang_X`` holds unlabelled sentence embeddings per language for LDA fitting.
    """

    task: str
    target: str
    seed: int
    classes: list
    src_X: np.ndarray
    src_y: np.ndarray
    en_test_X: np.ndarray
    en_test_y: np.ndarray
    pool_X: np.ndarray
    pool_y: np.ndarray
    test_X: np.ndarray
    test_y: np.ndarray
    lang_X: dict[str, np.ndarray] = field(default_factory=dict)
    pair: bool = False
    info: dict = field(default_factory=dict)


def _codes(labels: list, classes: list) -> np.ndarray:
    pos = {c: i for i, c in enumerate(classes)}
    return np.asarray([pos[x] for x in labels], dtype=np.int64)


def _sentiment(target: str, seed: int, embed) -> TaskData:
    from xite_fast.data.sentiment import LABELS

    if target not in _SENTIMENT_SPLIT:
        raise ValueError(f"sentiment targets are {sorted(_SENTIMENT_SPLIT)}, got {target!r}")
    en, en_X = embed("sentiment:en")
    tg, tg_X = embed(f"sentiment:{target}")
    for r, i in zip(en, range(len(en)), strict=True):
        r["_i"] = i
    for r, i in zip(tg, range(len(tg)), strict=True):
        r["_i"] = i
    en_train, en_test = sentiment_split(en, _EN_TEST, seed, _EN_TRAIN)
    n_test, n_pool = _SENTIMENT_SPLIT[target]
    pool, test = sentiment_split(tg, n_test, seed, n_pool)
    classes = list(LABELS)
    lang_X = {"en": en_X[[r["_i"] for r in en_train]], target: tg_X[[r["_i"] for r in pool]]}
    for other in _SENTIMENT_SPLIT:
        if other != target:
            lang_X[other] = embed(f"sentiment:{other}")[1]

    def take(rs, X):
        return X[[r["_i"] for r in rs]], _codes([r["label"] for r in rs], classes)

    return TaskData(
        "sentiment",
        target,
        seed,
        classes,
        *take(en_train, en_X),
        *take(en_test, en_X),
        *take(pool, tg_X),
        *take(test, tg_X),
        lang_X=lang_X,
    )


def _chatterbot_split(target: str, seed: int, embed, pairs: bool) -> TaskData:
    from xite_fast.data.chatterbot import chatterbot_topics, language_name, split_by_conversation
    from xite_fast.data.pairs import load_pairs

    tname = language_name(target)
    topics = chatterbot_topics("english", tname)
    en, en_X = embed("chatterbot:english")
    tg, tg_X = embed(f"chatterbot:{tname}")
    lang_X = {"en": en_X, target: tg_X}
    for other in ("ko", "ja"):
        if other != target:
            lang_X[other] = embed(f"chatterbot:{language_name(other)}")[1]
    if pairs:
        en_row = {r["text"]: i for i, r in enumerate(en)}
        tg_row = {r["text"]: i for i, r in enumerate(tg)}
        en_recs, tg_recs = load_pairs("english", topics=topics), load_pairs(tname, topics=topics)
        classes = [0, 1]

        def rows(recs, X, index):
            u = X[[index[r["text"]] for r in recs]]
            v = X[[index[r["text_pair"]] for r in recs]]
            return np.concatenate([u, v], axis=1)

        en_all, tg_all = rows(en_recs, en_X, en_row), rows(tg_recs, tg_X, tg_row)
    else:
        keep = set(topics)
        en_idx = [i for i, r in enumerate(en) if r["label"] in keep]
        en_recs = [dict(en[i], _i=i) for i in en_idx]
        tg_recs = [dict(r, _i=i) for i, r in enumerate(tg)]
        classes = sorted(topics)
        en_all, tg_all = en_X, tg_X
    for i, r in enumerate(en_recs):
        r["_r"] = r.get("_i", i)
    for i, r in enumerate(tg_recs):
        r["_r"] = r.get("_i", i)
    en_tr, en_te = split_by_conversation(en_recs, _CHAT_TEST_FRACTION, seed)
    tg_tr, tg_te = split_by_conversation(tg_recs, _CHAT_TEST_FRACTION, seed)

    def take(rs, X):
        return X[[r["_r"] for r in rs]], _codes([r["label"] for r in rs], classes)

    td = TaskData(
        "pairs" if pairs else "chatterbot",
        target,
        seed,
        classes,
        *take(en_tr, en_all),
        *take(en_te, en_all),
        *take(tg_tr, tg_all),
        *take(tg_te, tg_all),
        lang_X=lang_X,
        pair=pairs,
    )
    td.info["topics"] = len(topics)

    # (conv_id, turn[, label]) of each row: the pool's English twins sit in the English training
    # conversations (same split), so matching can copy a translation's label
    def key(r):
        return (r["conv_id"], r["turn"], r["label"]) if pairs else (r["conv_id"], r["turn"])

    td.info["src_keys"] = [key(r) for r in en_tr]
    td.info["pool_keys"] = [key(r) for r in tg_tr]
    return td


def prepare(task: str, target: str, seed: int, embed=None) -> TaskData:
    """Build the :class:`TaskData` of one target and seed.

    Args:
        task: one of :data:`TASKS`.
        target: ``zh`` / ``fr`` (sentiment) or a chatterbot language (``ko``, ``ja``).
        seed: split seed.
        embed: ``spec -> (records, (N, D) float32)``; default :func:`embed_spec` with one shared Encoder.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if embed is None:
        embed = _default_embed()
    if task == "sentiment":
        return _sentiment(target, seed, embed)
    return _chatterbot_split(target, seed, embed, pairs=task == "pairs")


def _default_embed(encoder: Any = None):
    memo: dict = {}

    def embed(spec: str):
        if spec not in memo:
            memo[spec] = embed_spec(spec, encoder)
        recs, X = memo[spec]
        return [dict(r) for r in recs], X

    return embed


# ----------------------------------------------------------------------------------------- models
def _features(X: np.ndarray, pair: bool) -> np.ndarray:
    if not pair:
        return X
    d = X.shape[1] // 2
    u, v = X[:, :d], X[:, d:]
    return np.concatenate([u, v, u * v, np.abs(u - v)], axis=1)


def _fit(X: np.ndarray, y: np.ndarray, pair: bool, n_classes: int):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=_C, max_iter=3000)
    clf.fit(_features(X, pair), y)
    clf.n_all_classes_ = n_classes
    return clf


def _proba(clf, X: np.ndarray, pair: bool) -> np.ndarray:
    p = clf.predict_proba(_features(X, pair))
    out = np.zeros((X.shape[0], clf.n_all_classes_))
    out[:, clf.classes_] = p
    return out


def _scores(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    return float((y == pred).mean()), float(f1_score(y, pred, average="macro"))


def _match(td: TaskData, queries: np.ndarray, *, center: bool = True, k: int = 1, space=None):
    from xite_fast.xite.match import match_arrays

    keys = td.src_X
    if space is not None:
        # the means must be those of the raw rows mapped, so map first and let match_arrays center
        queries, keys = space(queries), space(keys)
    return match_arrays(queries, keys, k, center=center)


def _clf_space(clf, beta: float):
    """x -> x + (beta - 1) P x, P the projector on the span of the classifier's weight rows."""
    q, _ = np.linalg.qr(np.asarray(clf.coef_, dtype=np.float64).T)
    q = q.astype(np.float32)

    def f(x):
        return x + (beta - 1.0) * ((x @ q) @ q.T)

    return f


def _pair_W(W: np.ndarray, pair: bool) -> np.ndarray:
    if not pair:
        return W
    d, r = W.shape
    out = np.zeros((2 * d, 2 * r), np.float32)
    out[:d, :r], out[d:, r:] = W, W
    return out


def _lda_W(td: TaskData, multi: bool) -> np.ndarray:
    from xite_fast.xite.lda import LanguageLDA

    langs = list(td.lang_X) if multi else ["en", td.target]
    rng = np.random.default_rng(td.seed)
    Xs, ys = [], []
    for lang in langs:
        X = td.lang_X[lang]
        if X.shape[0] > 4000:
            X = X[np.sort(rng.choice(X.shape[0], 4000, replace=False))]
        Xs.append(X)
        ys += [lang] * X.shape[0]
    lda = LanguageLDA().fit(np.concatenate(Xs), np.asarray(ys))
    return _pair_W(lda.components_, td.pair)


def _mix(td: TaskData, src_ids: np.ndarray, rows: np.ndarray, lam, mode: str, W) -> np.ndarray:
    from xite_fast.ops.lda_project_interp import lda_project_interp
    from xite_fast.xite.augmenter import lambdas_for

    lam_arr = lambdas_for(lam, rows, 1.0, td.seed)
    src = np.ascontiguousarray(td.src_X[src_ids[rows]])
    tgt = np.ascontiguousarray(td.pool_X[rows])
    return lda_project_interp(src, tgt, W, lam_arr, mode)


def run_rows(td: TaskData, *, fixed_lams: tuple[float, ...] = (0.25, 0.5, 0.75)) -> tuple[list[dict], dict]:
    """Every row of the table for one (task, target, seed) and the per-seed analysis.

    Returns:
        rows: dicts ``{"row", "acc", "f1", "en_acc", "label_acc", "kept"}`` (``label_acc``: accuracy of
        the pool labels the row trained on, ``kept``: share of the pool used).
        analysis: see :func:`analyse`.
    """
    C = len(td.classes)
    pair = td.pair
    rows: list[dict] = []

    def evaluate(name: str, X: np.ndarray, y: np.ndarray, *, labels_used=None, kept=None, note=""):
        clf = _fit(X, y, pair, C)
        acc, f1 = _scores(td.test_y, _proba(clf, td.test_X, pair).argmax(1))
        en_acc = float((_proba(clf, td.en_test_X, pair).argmax(1) == td.en_test_y).mean())
        rows.append(
            {
                "row": name,
                "acc": acc,
                "f1": f1,
                "en_acc": en_acc,
                "label_acc": labels_used,
                "kept": kept,
                "note": note,
            }
        )
        return clf

    def with_pool(rows_idx, labels, X_pool=None):
        Xp = td.pool_X[rows_idx] if X_pool is None else X_pool
        return np.concatenate([td.src_X, Xp]), np.concatenate([td.src_y, labels])

    zs = evaluate("zero-shot", td.src_X, td.src_y)
    evaluate("oracle (pool gold labels)", td.pool_X, td.pool_y, labels_used=1.0, kept=1.0)
    all_rows = np.arange(td.pool_X.shape[0])

    # nearest-neighbour label transfer as a classifier on the test set
    for center in (True, False):
        _, ids = _match(td, td.test_X, center=center)
        acc, f1 = _scores(td.test_y, td.src_y[ids[:, 0]])
        rows.append(
            {
                "row": f"nn-transfer ({'centered' if center else 'raw'})",
                "acc": acc,
                "f1": f1,
                "en_acc": None,
                "label_acc": None,
                "kept": None,
                "note": "no training",
            }
        )

    p_pool = _proba(zs, td.pool_X, pair)
    pseudo, conf = p_pool.argmax(1), p_pool.max(1)

    def lab_acc(labels, idx):
        return float((labels == td.pool_y[idx]).mean()) if len(idx) else float("nan")

    evaluate(
        "self-train (pseudo-labels)",
        *with_pool(all_rows, pseudo),
        labels_used=lab_acc(pseudo, all_rows),
        kept=1.0,
    )
    sim, ids = _match(td, td.pool_X)
    sim, src = sim[:, 0], ids[:, 0]
    matched = td.src_y[src]

    def xite_rows(tag: str, idx: np.ndarray, labels_all: np.ndarray, src_ids: np.ndarray, modes=None):
        kept = len(idx) / len(all_rows)
        la = lab_acc(labels_all[idx], idx)
        evaluate(f"λ=0{tag}", *with_pool(idx, labels_all[idx]), labels_used=la, kept=kept)
        for mode, W, mtag in modes or (("interp", None, "interp"),):
            Xm = _mix(td, src_ids, idx, "beta", mode, W)
            evaluate(f"xite {mtag}{tag}", *with_pool(idx, labels_all[idx], Xm), labels_used=la, kept=kept)

    W1, Wm = _lda_W(td, multi=False), _lda_W(td, multi=True)
    r1, rm = W1.shape[1] // (2 if pair else 1), Wm.shape[1] // (2 if pair else 1)
    all_modes = [("interp", None, "interp")] + [
        (m, W, f"{m} (LDA {name}, r={r})")
        for W, name, r in ((W1, "en+target", r1), (Wm, f"all {len(td.lang_X)} languages", rm))
        for m in ("proj", "comp", "shift")
    ]
    xite_rows("", all_rows, matched, src, modes=all_modes)
    for lam in fixed_lams:  # λ sweep (weight of the English row) for the default mode
        Xm = _mix(td, src, all_rows, lam, "interp", None)
        evaluate(
            f"xite interp λ={lam}",
            *with_pool(all_rows, matched, Xm),
            labels_used=lab_acc(matched, all_rows),
            kept=1.0,
        )
    # raw (uncentered) matching
    rsim, rids = _match(td, td.pool_X, center=False)
    xite_rows(" [raw matching]", all_rows, td.src_y[rids[:, 0]], rids[:, 0])
    # task-aware 1: agreement of matched label and pseudo-label
    agree = np.flatnonzero(matched == pseudo)
    xite_rows(" [agree: matched == pseudo]", agree, matched, src)
    # task-aware 2: among the top-10 neighbours, the nearest carrying the pseudo-label
    k = min(10, td.src_X.shape[0])
    _, ids10 = _match(td, td.pool_X, k=k)
    lab10 = td.src_y[ids10]
    hit = lab10 == pseudo[:, None]
    has = hit.any(1)
    first = hit.argmax(1)
    la_src = ids10[np.arange(len(all_rows)), first]
    xite_rows(" [label-aware top-10]", np.flatnonzero(has), pseudo, la_src)
    # task-aware 3: matching in the classifier-stretched space (single-sentence tasks only)
    if not pair:
        for beta in (3.0, 10.0):
            csim, cids = _match(td, td.pool_X, space=_clf_space(zs, beta))
            xite_rows(f" [clf-space β={beta:g}]", all_rows, td.src_y[cids[:, 0]], cids[:, 0])
    twin_acc = None
    if "pool_keys" in td.info:  # chatterbot / pairs: the same rows without their English twin
        _, ids2 = _match(td, td.pool_X, k=2)
        twin = np.asarray(
            [td.info["src_keys"][j] == q for j, q in zip(ids2[:, 0], td.info["pool_keys"], strict=True)]
        )
        src_nt = np.where(twin, ids2[:, 1], ids2[:, 0])
        twin_acc = lab_acc(td.src_y[src_nt], all_rows)
        xite_rows(" [twin excluded]", all_rows, td.src_y[src_nt], src_nt)
    # thresholds: keep the most similar / most confident half
    top_sim = np.flatnonzero(sim >= np.quantile(sim, 0.5))
    xite_rows(" [similarity ≥ median]", top_sim, matched, src)
    top_conf = np.flatnonzero(conf >= np.quantile(conf, 0.5))
    evaluate(
        "self-train [confidence ≥ median]",
        *with_pool(top_conf, pseudo[top_conf]),
        labels_used=lab_acc(pseudo[top_conf], top_conf),
        kept=len(top_conf) / len(all_rows),
    )

    an = analyse(td, sim, matched, pseudo, conf, rsim[:, 0], td.src_y[rids[:, 0]])
    an["lambda_beta"] = _lambda_stats(td)
    an["matched_acc_twin_excluded"] = twin_acc
    return rows, an


def _lambda_stats(td: TaskData) -> dict:
    from xite_fast.xite.augmenter import lambdas_for

    lam = lambdas_for("beta", np.arange(td.pool_X.shape[0]), 1.0, td.seed)
    return {
        "mean": float(lam.mean()),
        "q10": float(np.quantile(lam, 0.1)),
        "q90": float(np.quantile(lam, 0.9)),
    }


def analyse(
    td: TaskData,
    sim: np.ndarray,
    matched: np.ndarray,
    pseudo: np.ndarray,
    conf: np.ndarray,
    raw_sim: np.ndarray | None = None,
    raw_matched: np.ndarray | None = None,
    n_bins: int = 5,
) -> dict:
    """Label quality of the matched pool.

    Args:
        sim: (N,) float32 top-1 (centered) similarity of each pool row; matched: (N,) its label code.
        pseudo, conf: (N,) the zero-shot classifier's label and probability.
        raw_sim, raw_matched: the same for raw (uncentered) matching.
        n_bins: equal-count similarity bins.

    Returns:
        dict with ``matched_acc``, ``pseudo_acc``, ``agree_rate``, ``acc_when_agree``,
        ``matched_acc_when_disagree``, ``pseudo_acc_when_disagree``, ``sim_bins`` (per bin: lo, hi, n,
        acc), ``sim_thresholds`` / ``conf_thresholds`` (kept share -> label accuracy), ``raw_*``.
    """
    gold = td.pool_y
    ok_m, ok_p = matched == gold, pseudo == gold
    agree = matched == pseudo
    edges = np.quantile(sim, np.linspace(0, 1, n_bins + 1))
    bins = []
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        m = (sim >= lo) & ((sim <= hi) if b == n_bins - 1 else (sim < hi))
        bins.append({"lo": float(lo), "hi": float(hi), "n": int(m.sum()), "acc": float(ok_m[m].mean())})

    def thresholds(score, ok):
        out = {}
        for keep in (0.25, 0.5, 0.75, 1.0):
            m = score >= np.quantile(score, 1.0 - keep)
            out[str(keep)] = float(ok[m].mean())
        return out

    res = {
        "n_pool": int(len(gold)),
        "matched_acc": float(ok_m.mean()),
        "pseudo_acc": float(ok_p.mean()),
        "agree_rate": float(agree.mean()),
        "acc_when_agree": float(ok_m[agree].mean()) if agree.any() else float("nan"),
        "matched_acc_when_disagree": float(ok_m[~agree].mean()) if (~agree).any() else float("nan"),
        "pseudo_acc_when_disagree": float(ok_p[~agree].mean()) if (~agree).any() else float("nan"),
        "sim_bins": bins,
        "sim_thresholds": thresholds(sim, ok_m),
        "conf_thresholds": thresholds(conf, ok_p),
        "sim": sim.astype(float).tolist(),
        "sim_ok": ok_m.astype(int).tolist(),
    }
    if raw_sim is not None and raw_matched is not None:
        res["raw_matched_acc"] = float((raw_matched == gold).mean())
        res["raw_sim_mean"] = float(raw_sim.mean())
    return res


def twin_transfer(embed=None, targets=("ko", "ja")) -> list[dict]:
    """Chatterbot label transfer with and without each sentence's own English translation.

    Every target sentence is matched (top-1, centered) against all English sentences of the shared
    topics, as the demo does; the twin is the English sentence at the same ``(conv_id, turn)``.
    ``twin-excluded`` takes the best English sentence that is not the twin.
    """
    from xite_fast.data.chatterbot import chatterbot_topics, language_name
    from xite_fast.xite.match import match_arrays

    embed = embed or _default_embed()
    en, en_X = embed("chatterbot:english")
    out = []
    for t in targets:
        name = language_name(t)
        topics = set(chatterbot_topics("english", name))
        tg, tg_X = embed(f"chatterbot:{name}")
        ei = [i for i, r in enumerate(en) if r["label"] in topics]
        en_lab = [en[i]["label"] for i in ei]
        en_key = [(en[i]["conv_id"], en[i]["turn"]) for i in ei]
        _, ids = match_arrays(tg_X, en_X[ei], 2)
        ok_with, ok_without, twin_top1 = [], [], 0
        keys = set(en_key)
        for j, r in enumerate(tg):
            key = (r["conv_id"], r["turn"])
            ok_with.append(en_lab[ids[j, 0]] == r["label"])
            is_twin = en_key[ids[j, 0]] == key
            twin_top1 += is_twin
            best = ids[j, 1] if is_twin else ids[j, 0]
            ok_without.append(en_lab[best] == r["label"])
        has_twin = sum(1 for r in tg if (r["conv_id"], r["turn"]) in keys)
        out.append(
            {
                "target": name,
                "n": len(tg),
                "with_twin": float(np.mean(ok_with)),
                "twin_excluded": float(np.mean(ok_without)),
                "twin_is_top1": twin_top1 / len(tg),
                "has_twin": has_twin / len(tg),
            }
        )
    return out


# ----------------------------------------------------------------------------------------- reporting
def _mean_std(v: list[float]) -> tuple[float, float]:
    a = np.asarray([x for x in v if x is not None], dtype=float)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def summarize(rows: list[dict]) -> list[dict]:
    """Mean/std over seeds per (target, row), with the share of the zero-shot -> oracle gap closed."""
    out = []
    targets = list(dict.fromkeys(r["target"] for r in rows))
    for t in targets:
        rt = [r for r in rows if r["target"] == t]
        names = list(dict.fromkeys(r["row"] for r in rt))
        base = {
            n: _mean_std([r["acc"] for r in rt if r["row"] == n])[0]
            for n in ("zero-shot", "oracle (pool gold labels)")
        }
        gap = base["oracle (pool gold labels)"] - base["zero-shot"]
        for n in names:
            rn = [r for r in rt if r["row"] == n]
            acc, acc_sd = _mean_std([r["acc"] for r in rn])
            f1, f1_sd = _mean_std([r["f1"] for r in rn])
            out.append(
                {
                    "target": t,
                    "row": n,
                    "seeds": len(rn),
                    "acc": acc,
                    "acc_std": acc_sd,
                    "f1": f1,
                    "f1_std": f1_sd,
                    "en_acc": _mean_std([r["en_acc"] for r in rn])[0],
                    "label_acc": _mean_std([r["label_acc"] for r in rn])[0],
                    "kept": _mean_std([r["kept"] for r in rn])[0],
                    "gap_closed": (acc - base["zero-shot"]) / gap if gap > 0 else float("nan"),
                }
            )
    return out


def _f(x: float | None, nd: int = 3) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def plot_accuracy(summary: list[dict], path: str | os.PathLike, title: str) -> None:
    """PNG: target accuracy per row (mean ± std over seeds as error bars), one panel per target.

    ``summary``: dicts with ``target``, ``row``, ``acc`` and ``acc_std``; a ``zero-shot`` row, if present,
    is drawn as a dashed line. Also used by the fine-tuning driver's tables
    (:func:`experiments.tables.write_tables`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(s["target"] for s in summary))
    names = list(dict.fromkeys(s["row"] for s in summary))
    fig, axes = plt.subplots(
        1, len(targets), figsize=(6.5 * len(targets), 0.28 * len(names) + 1.5), squeeze=False
    )
    for ax, t in zip(axes[0], targets, strict=True):
        st = {s["row"]: s for s in summary if s["target"] == t}
        y = np.arange(len(names))
        acc = [st[n]["acc"] if n in st else np.nan for n in names]
        sd = [st[n]["acc_std"] if n in st else 0 for n in names]
        colors = [
            "tab:gray"
            if n.startswith(("zero-shot", "oracle"))
            else "tab:orange"
            if n.startswith(("self-train", "nn-"))
            else "tab:blue"
            for n in names
        ]
        ax.barh(y, acc, xerr=sd, color=colors, capsize=2)
        if "zero-shot" in st:
            ax.axvline(st["zero-shot"]["acc"], color="k", ls="--", lw=0.8)
        ax.set_yticks(y, names, fontsize=7)
        ax.invert_yaxis()
        lo = np.nanmin(acc) - 0.05
        ax.set_xlim(max(0.0, lo), min(1.0, np.nanmax(acc) + 0.03))
        ax.set_xlabel("target test accuracy (mean ± std over seeds)")
        ax.set_title(f"{title}: en → {t}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_similarity(
    analyses: dict[str, list[dict]],
    path: str | os.PathLike,
    title: str,
    xlabel: str = "top-1 centered cosine similarity (pool row → English)",
) -> None:
    """PNG: histogram of the pool's top-1 match similarity with the label-transfer accuracy per bin
    (bins of ≥ 20 rows), one panel per target.

    ``analyses``: ``{target: [per seed: {"sim": (N,) similarities, "sim_ok": (N,) 0/1 matched label ==
    gold, "pseudo_acc": float}]}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(analyses), figsize=(5.5 * len(analyses), 3.8), squeeze=False)
    for ax, (t, ans) in zip(axes[0], analyses.items(), strict=True):
        sim = np.concatenate([np.asarray(a["sim"]) for a in ans])
        ok = np.concatenate([np.asarray(a["sim_ok"]) for a in ans])
        edges = np.linspace(sim.min(), sim.max(), 16)
        ax.hist(sim, bins=edges, color="tab:blue", alpha=0.6)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("pool rows (all seeds)")
        ax2 = ax.twinx()
        centers, accs = [], []
        for b in range(len(edges) - 1):
            m = (sim >= edges[b]) & (sim <= edges[b + 1] if b == len(edges) - 2 else sim < edges[b + 1])
            if m.sum() >= 20:
                centers.append(0.5 * (edges[b] + edges[b + 1]))
                accs.append(ok[m].mean())
        ax2.plot(centers, accs, "o-", color="tab:red")
        ax2.axhline(
            np.mean([a["pseudo_acc"] for a in ans]),
            color="tab:orange",
            ls="--",
            lw=1,
            label="zero-shot pseudo-label acc",
        )
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("label-transfer accuracy per bin (≥ 20 rows)", color="tab:red")
        ax2.legend(loc="lower right", fontsize=7)
        ax.set_title(f"{title}: en → {t}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_lda(lang_X: dict[str, np.ndarray], path: Path, title: str, seed: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xite_fast.xite.lda import LanguageLDA

    rng = np.random.default_rng(seed)
    Xs, ys = [], []
    for lang, X in lang_X.items():
        Xs.append(X[np.sort(rng.choice(X.shape[0], min(1500, X.shape[0]), replace=False))])
        ys += [lang] * Xs[-1].shape[0]
    X, y = np.concatenate(Xs), np.asarray(ys)
    lda = LanguageLDA(n_components=2).fit(X, y)
    Z = lda.transform(X)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for lang in lang_X:
        m = y == lang
        ax.scatter(Z[m, 0], Z[m, 1] if Z.shape[1] > 1 else np.zeros(m.sum()), s=3, alpha=0.4, label=lang)
    ax.set_xlabel("LDA direction 1")
    ax.set_ylabel("LDA direction 2")
    ax.set_title(f"{title}: language subspace (LanguageLDA, r=2)")
    ax.legend(markerscale=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _machine() -> str:
    model = cpu_model()
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return f"{model}, {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in load)}"


def _md_text(task: str, command: str, summary, analyses, twins, info: dict) -> str:
    L = [
        f"# Frozen-encoder transfer analysis: {task}",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {info['machine']}; wall time {info['seconds']:.0f} s (embeddings cached under "
        f"`~/.cache/xite_fast/transfer`). Encoder: e5-small, ONNX fp32, frozen; classifier: scikit-learn "
        f"LogisticRegression(C={_C:g}). Seeds {info['seeds']} (pool/test split and English sample).",
        "",
        f"Data: {info['data']}",
        "",
    ]
    L += [
        "Columns: target test accuracy and macro-F1 (mean ± std over seeds); gap = share of the "
        "zero-shot → oracle gap closed; English = accuracy on held-out English (forgetting); "
        "labels = accuracy of the pool labels the row trained on; kept = share of the pool used.",
        "",
    ]
    for t in dict.fromkeys(s["target"] for s in summary):
        L += [
            f"## en → {t}",
            "",
            "| row | accuracy | macro-F1 | gap | English | labels | kept |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in (s for s in summary if s["target"] == t):
            L.append(
                f"| {s['row']} | {_f(s['acc'])} ± {_f(s['acc_std'])} | {_f(s['f1'])} | "
                f"{_f(s['gap_closed'], 2)} | {_f(s['en_acc'])} | {_f(s['label_acc'])} | {_f(s['kept'], 2)} |"
            )
        ans = analyses[t]

        def m(key, ans=ans):
            v = [a.get(key) for a in ans]
            return "–" if any(x is None for x in v) else _f(float(np.mean(v)))

        L += [
            "",
            f"Label quality of the pool (mean over seeds, {ans[0]['n_pool']} pool rows):",
            "",
            "| matched (centered) | matched, twin excluded | matched (raw) | zero-shot pseudo-labels | "
            "agreement | acc. where they agree | matched acc. where they disagree | pseudo acc. where they "
            "disagree |",
            "|---|---|---|---|---|---|---|---|",
            f"| {m('matched_acc')} | {m('matched_acc_twin_excluded')} | {m('raw_matched_acc')} | "
            f"{m('pseudo_acc')} | {m('agree_rate')} | {m('acc_when_agree')} | "
            f"{m('matched_acc_when_disagree')} | {m('pseudo_acc_when_disagree')} |",
            "",
        ]
        L += [
            "Label-transfer accuracy per similarity bin (equal-count bins, seed 0):",
            "",
            "| similarity | rows | matched-label accuracy |",
            "|---|---|---|",
        ]
        L += [f"| {b['lo']:.3f}–{b['hi']:.3f} | {b['n']} | {b['acc']:.3f} |" for b in ans[0]["sim_bins"]]
        L += [
            "",
            "Thresholds (keep the top share of the pool by score; label accuracy of what is kept):",
            "",
            "| kept | by similarity (matched labels) | by confidence (pseudo-labels) |",
            "|---|---|---|",
        ]
        for k in ("0.25", "0.5", "0.75", "1.0"):
            L.append(
                f"| {k} | {_f(float(np.mean([a['sim_thresholds'][k] for a in ans])))} | "
                f"{_f(float(np.mean([a['conf_thresholds'][k] for a in ans])))} |"
            )
        lb = ans[0]["lambda_beta"]
        L += [
            "",
            f"λ ~ Beta(1, 1) (weight of the English row): mean {lb['mean']:.3f}, 10–90% "
            f"{lb['q10']:.3f}–{lb['q90']:.3f}.",
            "",
        ]
    if twins:
        L += [
            "## Chatterbot label transfer: with vs without the twin",
            "",
            "Every target sentence matched (top-1, centered) against all English sentences of the shared "
            "topics.",
            "",
            "| target | sentences | with the twin (demo) | twin excluded | twin is top-1 | has a positional "
            "twin |",
            "|---|---|---|---|---|---|",
        ]
        L += [
            f"| {w['target']} | {w['n']} | {w['with_twin']:.3f} | {w['twin_excluded']:.3f} | "
            f"{w['twin_is_top1']:.3f} | {w['has_twin']:.3f} |"
            for w in twins
        ]
        L.append("")
    L += ["Plots: " + ", ".join(f"`{p}`" for p in info["plots"]), ""]
    return "\n".join(L) + ("\n" + info["findings"] + "\n" if info.get("findings") else "")


# ----------------------------------------------------------------------------------------- the CSV
_METRIC = {
    "acc": "target_accuracy",
    "f1": "target_macro_f1",
    "en_acc": "english_accuracy",
    "label_acc": "label_accuracy",
    "kept": "kept",
}
_ANALYSIS_ROW, _TWIN_ROW = "pool labels", "twin transfer"
_INT_METRICS = ("n_pool", "n")


def _flat_analysis(a: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in a.items():
        if k in ("sim", "sim_ok") or v is None:
            continue
        if k == "sim_bins":
            out.update({f"sim_bin{b}_{f}": x for b, d in enumerate(v) for f, x in d.items()})
        elif k in ("sim_thresholds", "conf_thresholds"):
            out.update({f"{k[:-1]}_{q}": x for q, x in v.items()})
        elif k == "lambda_beta":
            out.update({f"lambda_{f}": x for f, x in v.items()})
        else:
            out[k] = v
    return out


def _nested_analysis(flat: dict[str, float]) -> dict:
    a: dict[str, Any] = {"sim_bins": [], "sim_thresholds": {}, "conf_thresholds": {}, "lambda_beta": {}}
    for k, v in flat.items():
        if k.startswith("sim_bin"):
            b, f = k[len("sim_bin") :].split("_", 1)
            while len(a["sim_bins"]) <= int(b):
                a["sim_bins"].append({})
            a["sim_bins"][int(b)][f] = int(v) if f == "n" else v
        elif k.startswith(("sim_threshold_", "conf_threshold_")):
            name, q = k.rsplit("_", 1)
            a[name + "s"][q] = v
        elif k.startswith("lambda_"):
            a["lambda_beta"][k[len("lambda_") :]] = v
        else:
            a[k] = int(v) if k in _INT_METRICS else v
    return a


def long_rows(
    task: str,
    rows: list[dict],
    analyses: dict[str, list[dict]],
    twins: list[dict],
    provenance: dict[str, str],
) -> list[dict]:
    """The study's long-format CSV rows (:data:`experiments.tables.CSV_FIELDS`): every table row per target
    and seed, the pool-label analysis per target and seed (row ``pool labels``) and the chatterbot twin
    check (row ``twin transfer``, no seed)."""
    prov = {k: provenance.get(k, "") for k in ("commit", "cpu", "date")}

    def row(target, name, seed, metric, value):
        return {
            "task": task,
            "language": target,
            "row": name,
            "seed": seed,
            "metric": metric,
            "value": float(value),
            **prov,
        }

    out = [
        row(r["target"], r["row"], r["seed"], m, r[k])
        for r in rows
        for k, m in _METRIC.items()
        if r.get(k) is not None
    ]
    seeds = list(dict.fromkeys(r["seed"] for r in rows))
    for t, ans in analyses.items():
        for seed, a in zip(seeds, ans, strict=True):
            out += [row(t, _ANALYSIS_ROW, seed, m, v) for m, v in _flat_analysis(a).items()]
    for w in twins:
        out += [row(w["target"], _TWIN_ROW, "", m, v) for m, v in w.items() if m != "target"]
    return out


def wide_rows(rows: list[dict]) -> list[dict]:
    """The per (target, seed, row) result dicts of :func:`run_rows` back from the long CSV rows."""
    names = {m: k for k, m in _METRIC.items()}
    out: dict[tuple, dict] = {}
    for r in rows:
        if r["row"] in (_ANALYSIS_ROW, _TWIN_ROW):
            continue
        d = out.setdefault(
            (r["language"], r["seed"], r["row"]),
            {
                "target": r["language"],
                "seed": r["seed"],
                "row": r["row"],
                **dict.fromkeys(_METRIC),
            },
        )
        d[names[r["metric"]]] = r["value"]
    return list(out.values())


def table_blocks(rows: list[dict]) -> list[list[str]]:
    """The md tables of a frozen-encoder study (per target: rows, label quality, similarity bins,
    thresholds; then the twin check), generated from its long CSV rows alone."""
    from experiments.tables import _blocks

    flat: dict[str, dict[Any, dict]] = {}
    twins: dict[str, dict] = {}
    for r in rows:
        if r["row"] == _ANALYSIS_ROW:
            flat.setdefault(r["language"], {}).setdefault(r["seed"], {})[r["metric"]] = r["value"]
        elif r["row"] == _TWIN_ROW:
            twins.setdefault(r["language"], {"target": r["language"]})[r["metric"]] = (
                int(r["value"]) if r["metric"] in _INT_METRICS else r["value"]
            )
    analyses = {t: [_nested_analysis(a) for a in per_seed.values()] for t, per_seed in flat.items()}
    info = {"machine": "", "seconds": 0.0, "seeds": [], "data": "", "plots": []}
    lines = _md_text("", "", summarize(wide_rows(rows)), analyses, list(twins.values()), info).split("\n")
    return [lines[a:b] for a, b in _blocks(lines)]


def run(
    task: str,
    targets: list[str],
    seeds: list[int],
    out: str | os.PathLike,
    command: str = "",
    embed=None,
    findings: str | None = None,
) -> dict:
    """Run every row for every target and seed; write ``<out>.md``, ``<out>.csv`` (long format: every row,
    seed and analysis figure, :func:`long_rows`) and ``<out>_*.png``."""
    t0 = time.time()
    embed = embed or _default_embed()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, analyses, lang_X, data = [], {}, None, []
    for t in targets:
        analyses[t] = []
        for seed in seeds:
            td = prepare(task, t, seed, embed)
            r, an = run_rows(td)
            rows += [dict(x, target=t, seed=seed) for x in r]
            analyses[t].append(an)
            if seed == seeds[0]:
                lang_X = lang_X or td.lang_X
                data.append(
                    f"{t}: English train {len(td.src_y)}, English test {len(td.en_test_y)}, "
                    f"pool {len(td.pool_y)}, test {len(td.test_y)}"
                )
            print(f"[transfer] {task} {t} seed {seed}: zero-shot {r[0]['acc']:.3f}", flush=True)
    twins = twin_transfer(embed, targets) if task == "chatterbot" else []
    summary = summarize(rows)
    plots = [out.with_name(out.name + s) for s in ("_acc.png", "_sim.png", "_lda.png")]
    plot_accuracy(summary, plots[0], task)
    plot_similarity(analyses, plots[1], task)
    _plot_lda(lang_X, plots[2], task)
    info = {
        "machine": _machine(),
        "seconds": time.time() - t0,
        "seeds": seeds,
        "data": "; ".join(data),
        "plots": [p.name for p in plots],
        "findings": findings,
    }
    out.with_suffix(".md").write_text(
        _md_text(task, command, summary, analyses, twins, info), encoding="utf-8"
    )
    slim = {
        t: [{k: v for k, v in a.items() if k not in ("sim", "sim_ok")} for a in ans]
        for t, ans in analyses.items()
    }
    from experiments.tables import run_provenance, write_csv

    write_csv(out.with_suffix(".csv"), long_rows(task, rows, slim, twins, run_provenance()))
    return {"rows": rows, "summary": summary, "analyses": slim, "twins": twins}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.transfer", description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--targets", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", default=None, help="output prefix (default bench/results/transfer_<task>)")
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # many small BLAS calls: threads only add contention on a shared CPU
    out = args.out or f"bench/results/transfer_{args.task}"
    cmd = "python -m experiments.transfer " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    run(args.task, args.targets, args.seeds, out, command=cmd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
