"""Why does the XITE + LDA ``shift`` row land at the self-training level? A direct check on a stage-1 model.

Rebuilds the stage-1 model of an experiment run from its checkpoint (``<cache>/experiment/<out name>/s<seed>/
stage1.pt``), the same data split, the same matching and the same :func:`xite_fast.train.trainer.fit_lda`
as the driver, then measures at the mixing level (the head input, placement ``sentence``):

* norms of source / target vectors and of their parts in the LDA subspace,
* for every mode of :func:`xite_fast.ops.lda_project_interp.lda_project_interp`, how far the mixed vector
  is from the source and from the target and how much of it comes from the target,
* the share of the head's loss gradient (w.r.t. the mixed vector) that reaches the target vector (shift:
  only its component along W),
* what the LDA direction is: its cosine with the language-mean difference and with the classifier's
  class direction, its coordinate concentration, and how well it separates the languages.

``python -m experiments.lda_shift --out-name experiment_sentiment_zh_s0`` (the settings of that run are the
defaults); writes ``bench/results/lda_shift_check.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out-name", default="experiment_sentiment_zh_s0")
    p.add_argument("--target", default="zh")
    p.add_argument("--seed", type=int, default=0, help="seed of the stage-1 checkpoint")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--en-size", type=int, default=2000)
    p.add_argument("--en-test-size", type=int, default=600)
    p.add_argument("--pool-size", type=int, default=1000)
    p.add_argument("--test-size", type=int, default=600)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--freeze-layers", type=int, default=10)
    p.add_argument("--hidden-layer", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", default="bench/results/lda_shift_check.md")
    a = p.parse_args()

    import torch

    from experiments.driver import _restore, _sentiment_splits, load_classifier
    from xite_fast._io import cache_root
    from xite_fast.ops.lda_project_interp import MODES, lda_project_interp
    from xite_fast.train.config import XiteConfig
    from xite_fast.train.model import XiteModel
    from xite_fast.train.trainer import embed_texts, fit_lda, match_sources

    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    data = _sentiment_splits([a.target], a.split_seed, 0, a.en_size, a.en_test_size, a.pool_size, a.test_size)
    en_tr = data["english"]["train"]
    pool_texts, pool_gold = data[a.target]["pool"]
    model, tok = load_classifier("e5-small", 2, 12, data["topics"])
    common = dict(
        max_length=a.max_length,
        prefix="query: ",
        freeze_embeddings=True,
        freeze_layers=a.freeze_layers,
        hidden_layer=a.hidden_layer,
        alpha=1.0,
        lda_mode="shift",
        cache_frozen=False,
    )
    xm = XiteModel(model, XiteConfig(placement="none", **common))
    ckpt = cache_root() / "experiment" / a.out_name / f"s{a.seed}" / "stage1.pt"
    _restore(xm, torch.load(ckpt, map_location="cpu", weights_only=True))
    xm.eval()
    ev = dict(max_length=a.max_length, prefix="query: ", drop_token_type_ids=True, batch_size=128)
    idx, scores = match_sources(xm, tok, en_tr[0], pool_texts, center=True, **ev)
    y = en_tr[1][idx]
    src_texts = [en_tr[0][i] for i in idx]
    xm.xite = XiteConfig(placement="sentence", lda=True, **common)
    W = fit_lda(xm, tok, src_texts, pool_texts, **ev).astype(np.float64)  # (D, 1)
    S = embed_texts(xm, tok, src_texts, level="sentence", **ev).astype(
        np.float64
    )  # head inputs of the sources
    T = embed_texts(xm, tok, pool_texts, level="sentence", **ev).astype(np.float64)
    Sall = embed_texts(xm, tok, list(dict.fromkeys(en_tr[0])), level="sentence", **ev).astype(np.float64)

    head = xm.head  # BERT: classifier Linear(D, 2) on the pooler output
    Wc = head.weight.detach().double().numpy()
    bc = head.bias.detach().double().numpy()
    rng = np.random.default_rng(0)
    lam = rng.beta(1.0, 1.0, size=len(S))
    P = lambda X: (X @ W) @ W.T  # noqa: E731
    nrm = lambda X: np.linalg.norm(X, axis=1)  # noqa: E731

    def ce(X, labels):
        z = X @ Wc.T + bc
        z -= z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return -logp[np.arange(len(X)), labels], np.exp(logp)

    lines = [
        "# LDA `shift` check: what the mix does at the head input (sentence placement)",
        "",
        f"Command: `python -m experiments.lda_shift --out-name {a.out_name} --target {a.target} --seed "
        f"{a.seed}` (stage-1 checkpoint `{ckpt.relative_to(cache_root())}`; English train {len(en_tr[0])}, "
        f"pool {len(pool_texts)}, max_length {a.max_length}; W = fit_lda at level `sentence`, LanguageLDA "
        f"r = 1; λ ~ Beta(1, 1), g = 1 − λ). Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{time.perf_counter() - t_start:.0f} s.",
        "",
        f"Matched-label accuracy on the pool: {(y == pool_gold).mean():.3f}; stage-1 head on the pool's own "
        f"vectors agrees with the matched labels {(ce(T, y)[1].argmax(1) == y).mean():.3f}, on the matched "
        f"English vectors {(ce(S, y)[1].argmax(1) == y).mean():.3f}.",
        "",
        "## Vectors",
        "",
        "| quantity | mean |",
        "|---|---|",
        f"| ‖s‖ (matched English) | {nrm(S).mean():.3f} |",
        f"| ‖t‖ (target pool) | {nrm(T).mean():.3f} |",
        f"| ‖P(s)‖ / ‖s‖ | {(nrm(P(S)) / nrm(S)).mean():.3f} |",
        f"| ‖P(t)‖ / ‖t‖ | {(nrm(P(T)) / nrm(T)).mean():.3f} |",
        f"| ‖P(t − s)‖ / ‖t − s‖ (share of the source→target difference that shift moves) | "
        f"{(nrm(P(T - S)) / nrm(T - S)).mean():.3f} |",
        f"| ‖t − s‖ / ‖s‖ | {(nrm(T - S) / nrm(S)).mean():.3f} |",
        "",
        "## Mixed vector per mode (λ ~ Beta(1, 1))",
        "",
        "dist = ‖m − x‖ / ‖t − s‖ (0: m is x); target share = ‖B t‖ / ‖m‖ with m = A s + B t "
        "(the part of m computed from the target); grad share = ‖Bᵀ ∂L/∂m‖ / ‖∂L/∂m‖, the share of the head "
        "loss gradient that reaches the target's encoder pass (the rest goes to the English source); "
        "loss / agree = stage-1 head's cross-entropy on m with the matched label and argmax agreement with "
        "it.",
        "",
        "| mode | dist to s | dist to t | target share | grad share to t | head loss on m | head agrees |",
        "|---|---|---|---|---|---|---|",
    ]
    Sf, Tf, Wf = S.astype(np.float32), T.astype(np.float32), np.ascontiguousarray(W, dtype=np.float32)
    lam32 = lam.astype(np.float32)
    zero = np.zeros_like(Sf)
    _, prob_s = ce(S, y)
    for mode in MODES:
        M = lda_project_interp(Sf, Tf, Wf, lam32, mode).astype(np.float64)
        Bt = lda_project_interp(zero, Tf, Wf, lam32, mode).astype(np.float64)  # the target's part B t
        loss, prob = ce(M, y)
        G = (prob - np.eye(2)[y]) @ Wc  # dL/dm (N, D)
        Gt = lda_project_interp(zero, G.astype(np.float32), Wf, lam32, mode).astype(
            np.float64
        )  # Bᵀ g (B symmetric)
        d = nrm(T - S)
        lines.append(
            f"| {mode} | {(nrm(M - S) / d).mean():.3f} | {(nrm(M - T) / d).mean():.3f} | "
            f"{(nrm(Bt) / nrm(M)).mean():.3f} | {(nrm(Gt) / np.maximum(nrm(G), 1e-12)).mean():.3f} | "
            f"{loss.mean():.3f} | {(prob.argmax(1) == y).mean():.3f} |"
        )
    lines.append(
        f"| (source alone, s) | 0 | 1 | 0 | 0 | {ce(S, y)[0].mean():.3f} | "
        f"{(prob_s.argmax(1) == y).mean():.3f} |"
    )
    lines.append(
        f"| (target alone, t) | 1 | 0 | 1 | 1 | {ce(T, y)[0].mean():.3f} | "
        f"{(ce(T, y)[1].argmax(1) == y).mean():.3f} |"
    )
    w = W[:, 0]
    dm = T.mean(0) - Sall.mean(0)
    cls_dir = Wc[1] - Wc[0]
    proj_s, proj_t = Sall @ w, T @ w
    thr = 0.5 * (proj_s.mean() + proj_t.mean())
    sep = (
        0.5 * ((proj_s < thr).mean() + (proj_t >= thr).mean())
        if proj_t.mean() > proj_s.mean()
        else 0.5 * ((proj_s >= thr).mean() + (proj_t < thr).mean())
    )
    pr = 1.0 / np.sum(w**4)  # participation ratio of the unit vector w: ~D if spread, ~1 if one coordinate
    lines += [
        "",
        "## The LDA direction (r = 1)",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| cos(w, mean(t) − mean(s)) | {abs(w @ dm) / np.linalg.norm(dm):.3f} |",
        f"| ‖P(mean(t) − mean(s))‖ / ‖mean(t) − mean(s)‖ | {abs(w @ dm) / np.linalg.norm(dm):.3f} |",
        f"| ‖mean(t) − mean(s)‖ / mean ‖t − s‖ (language offset vs per-pair difference) | "
        f"{np.linalg.norm(dm) / nrm(T - S).mean():.3f} |",
        f"| cos(w, classifier class direction w₁ − w₀) | {abs(w @ cls_dir) / np.linalg.norm(cls_dir):.3f} |",
        f"| language separation along w (balanced accuracy of a midpoint threshold) | {sep:.3f} |",
        f"| participation ratio 1/Σwᵢ⁴ (D = {len(w)}) | {pr:.1f} |",
        f"| largest |wᵢ| | {np.abs(w).max():.3f} |",
        f"| English / target std along w | {proj_s.std():.3f} / {proj_t.std():.3f} |",
        f"| English / target mean along w | {proj_s.mean():.3f} / {proj_t.mean():.3f} |",
        "",
    ]
    text = "\n".join(lines) + "\n"
    Path(a.report).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
