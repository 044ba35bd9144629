"""The Trainer engine: placements on BERT / XLM-R / DistilBERT (tiny random configs built offline) and the
e5-small backbone, λ=1/λ=0 against the plain transformers forward, LDA mix against the fp64 reference,
cache == recomputed, fast ops vs torch convergence (STYLE #12), save_pretrained round trip, labels,
sentence pairs, regression / multi-label, resume, predict, GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from tests.utils import logged_losses as _losses
from tests.utils import orthonormal, toy_tokenizer
from tests.utils import toy_classifier as _model
from tests.utils import toy_sentences as _sentences
from tests.utils import training_args as _args
from xite_fast.ops.lda_project_interp import mix_states
from xite_fast.reference import lda_project_interp_ref
from xite_fast.train.collator import XiteCollator, XiteDataset
from xite_fast.train.config import LabelMap, XiteConfig
from xite_fast.train.model import XiteModel
from xite_fast.train.trainer import XiteTrainer, embed_texts, match_sources, predict, train_xite

TOK = toy_tokenizer()
SRC, YS = _sentences(48, 0)
TGT, YT = _sentences(48, 1, lang="tgt")
ARCHS = ("bert", "xlm-roberta", "distilbert")


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(xm_tok, src, tgt, pairs=None):
    ds = XiteDataset(xm_tok, tgt, None, source_texts=src, text_pairs=pairs, source_text_pairs=pairs)
    return XiteCollator(0)([ds[i] for i in range(len(ds))])


# --------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("placement", ["none", "sentence", "input", "hidden"])
def test_loss_falls_every_architecture_and_placement(tmp_path, arch, placement):
    # pairs of the same class (what a good matcher gives), so the labels are learnable
    ds = XiteDataset(TOK, TGT, YS, source_texts=None if placement == "none" else SRC)
    # lam_zero=0: every example mixed (the default sends half to λ = 0, the target alone, which this toy
    # target language learns more slowly: the mixing path is what is tested here)
    cfg = XiteConfig(placement=placement, hidden_layer=1, head_lr=1e-2, lam_zero=0.0)
    tr = XiteTrainer(
        _model(arch),
        _args(tmp_path, num_train_epochs=5),
        xite_config=cfg,
        train_dataset=ds,
        processing_class=TOK,
    )
    tr.train()
    losses = _losses(tr)
    assert len(losses) == 5 * 6 and np.isfinite(losses).all()
    assert losses[-6:].mean() < 0.9 * losses[:6].mean(), losses


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "placement,layer", [("sentence", 0), ("input", 0), ("hidden", 0), ("hidden", 1), ("hidden", 2)]
)
@pytest.mark.parametrize("lam", [1.0, 0.0])
def test_lam_endpoints_reproduce_the_plain_transformers_forward(arch, placement, layer, lam):
    """λ=1 gives the model's own logits of the source, λ=0 of the target (targets shorter: the union mask
    is the source's; for λ=0 use sources shorter)."""
    m = _model(arch).eval()
    short, _ = _sentences(6, 3, lo=2, hi=3)
    long, _ = _sentences(6, 4, lo=5, hi=7)
    src, tgt = (long, short) if lam == 1.0 else (short, long)
    xm = XiteModel(m, XiteConfig(placement=placement, hidden_layer=layer, alpha=None, lam=lam)).train()
    xm.model.eval()  # no dropout, but the mixing path (training) is on
    b = _batch(TOK, src, tgt)
    with torch.no_grad():
        got = xm(**b).logits
        ref_ids, ref_mask = (
            (b["src_input_ids"], b["src_attention_mask"])
            if lam == 1.0
            else (b["input_ids"], b["attention_mask"])
        )
        ref = m(input_ids=ref_ids, attention_mask=ref_mask).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["interp", "proj", "comp", "shift"])
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_sentence_lda_mix_matches_reference_on_the_head_input(mode, backend):
    m = _model("bert").eval()
    W = orthonormal(32, 2)
    xm = XiteModel(m, XiteConfig(placement="sentence", lda=True, lda_mode=mode, backend=backend), W=W).train()
    xm.model.eval()
    b = _batch(TOK, SRC[:5], TGT[:5])
    lam = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    with torch.no_grad():
        got = xm(**b, lam=lam).logits
        ps = m.bert(input_ids=b["src_input_ids"], attention_mask=b["src_attention_mask"]).pooler_output
        pt = m.bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).pooler_output
        mixed = lda_project_interp_ref(
            ps.double(), pt.double(), torch.from_numpy(W).double(), lam.double(), mode
        )
        ref = m.classifier(mixed.float())
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["interp", "proj", "comp", "shift"])
@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 7)])
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_mix_states_forward_and_backward_match_fp64_reference(mode, shape, backend):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(shape, generator=g, requires_grad=True)
    t = torch.randn(shape, generator=g, requires_grad=True)
    W = torch.from_numpy(orthonormal(7, 3))
    lam = torch.rand(shape[0], generator=g)
    w_out = torch.randn(shape, generator=g)
    flat = (lambda x: x.reshape(-1, 7)) if len(shape) == 3 else (lambda x: x)
    lam_rows = lam.repeat_interleave(shape[1]) if len(shape) == 3 else lam
    out = mix_states(flat(s), flat(t), lam_rows, W, mode, backend).reshape(shape)
    (out * w_out).sum().backward()
    s64, t64 = s.detach().double().requires_grad_(), t.detach().double().requires_grad_()
    ref = lda_project_interp_ref(flat(s64), flat(t64), W.double(), lam_rows.double(), mode).reshape(shape)
    (ref * w_out.double()).sum().backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(t.grad.double(), t64.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("placement,layer", [("none", 0), ("sentence", 0), ("hidden", 2), ("hidden", 3)])
def test_frozen_prefix_cache_equals_recomputed(tmp_path, placement, layer):
    """Same forward and the same training trajectory with and without the cache (frozen parts run in eval
    mode either way, so dropout draws are identical)."""
    runs = []
    for cache in (False, True):
        cfg = XiteConfig(
            placement=placement,
            hidden_layer=layer,
            freeze_embeddings=True,
            freeze_layers=2,
            cache_frozen=cache,
            head_lr=1e-2,
        )
        tr = train_xite(
            _model("bert", layers=3),
            TOK,
            _args(tmp_path, num_train_epochs=2),
            source_texts=SRC,
            source_labels=list(YS),
            target_texts=TGT,
            xite_config=cfg,
        )
        assert (len(tr.model.cache) > 0) == cache
        runs.append((tr, _losses(tr)))
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-4, atol=1e-5)
    p0, p1 = predict(runs[0][0].model, TOK, TGT), predict(runs[1][0].model, TOK, TGT)
    np.testing.assert_allclose(p0.logits, p1.logits, rtol=1e-4, atol=1e-5)
    # the frozen part did not move
    e0 = runs[1][0].model.model.bert.embeddings.word_embeddings.weight
    torch.testing.assert_close(e0, _model("bert", layers=3).bert.embeddings.word_embeddings.weight)


@pytest.mark.parametrize("placement", ["sentence", "hidden", "input"])
def test_convergence_torch_vs_fast_ops(tmp_path, placement):
    """STYLE #12: the same tiny run with backend="torch" and with the fast ops, losses step by step."""
    out = {}
    for backend in ("torch", "auto"):
        cfg = XiteConfig(
            placement=placement, hidden_layer=1, lda=True, lda_mode="shift", backend=backend, head_lr=1e-2
        )
        xm = XiteModel(_model("bert"), cfg, W=orthonormal(32, 2))
        tr = train_xite(
            xm,
            TOK,
            _args(tmp_path, num_train_epochs=2),
            source_texts=SRC,
            source_labels=list(YS),
            target_texts=TGT,
        )
        out[backend] = _losses(tr)
    assert len(out["torch"]) == 12
    np.testing.assert_allclose(out["auto"], out["torch"], rtol=2e-4, atol=2e-5)


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path):
    ds = XiteDataset(TOK, TGT, YS, source_texts=SRC)

    def trainer(out, seed=0, **kw):
        return XiteTrainer(
            _model(seed=seed),
            _args(tmp_path / out, max_steps=8, **kw),
            xite_config=XiteConfig(placement="sentence", head_lr=1e-2),
            train_dataset=ds,
            processing_class=TOK,
        )

    full = trainer("a")
    full.train()
    part = trainer("b", save_strategy="steps", save_steps=4)
    part.train()
    again = trainer("b", seed=5)  # other init: the checkpoint must restore weights, optimizer, RNG
    again.train(resume_from_checkpoint=str(tmp_path / "b" / "out" / "checkpoint-4"))
    np.testing.assert_allclose(_losses(again), _losses(full), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        predict(again.model, TOK, TGT).logits, predict(full.model, TOK, TGT).logits, atol=1e-5
    )


# --------------------------------------------------------------------------------------------- save / labels
@pytest.mark.parametrize("arch", ARCHS)
def test_save_pretrained_reloads_with_identical_logits_and_labels(tmp_path, arch):
    values = [10, 2, 7]  # the user's labels: ints sort numerically
    ys = [values[c] for c in YS]
    m = _model(arch)
    tr = train_xite(
        m, TOK, _args(tmp_path, num_train_epochs=1), source_texts=SRC, source_labels=ys, target_texts=TGT
    )
    tr.save_model(str(tmp_path / "saved"))
    re = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    assert re.config.id2label == {0: "2", 1: "7", 2: "10"}
    assert re.config.label2id == {"2": 0, "7": 1, "10": 2}
    b = XiteCollator(0)([XiteDataset(TOK, TGT)[i] for i in range(8)])
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(re(**b).logits, m(**b).logits, rtol=0, atol=0)
    p = predict(re, TOK, SRC)
    assert set(p.labels) <= {2, 7, 10}
    assert all(isinstance(v, int) for v in p.labels)


def test_label_map_orders_and_errors():
    assert LabelMap(["10", "2", "1"]).values == ["1", "2", "10"]
    assert LabelMap([3, 1, 2]).encode([1, 2, 3]).tolist() == [0, 1, 2]
    assert LabelMap(["b", "a"]).id2label == {0: "a", 1: "b"}
    assert LabelMap(names=["z", "a"]).encode(["a"]).tolist() == [1]
    with pytest.raises(ValueError, match="non-integer float"):
        LabelMap([0.1, 0.5])
    with pytest.raises(ValueError, match="not a known label"):
        LabelMap(["a"]).encode(["b"])


def test_wrong_num_labels_is_named(tmp_path):
    with pytest.raises(ValueError, match="num_labels=3"):
        train_xite(
            _model(num_labels=3),
            TOK,
            _args(tmp_path),
            source_texts=SRC,
            source_labels=[i % 4 for i in range(48)],
            target_texts=TGT,
            train=False,
        )


def test_regression_and_multilabel_train_and_predict(tmp_path):
    m = _model(num_labels=1, problem_type="regression")
    y = [float(c) / 2 + 0.1 for c in YS]
    tr = train_xite(m, TOK, _args(tmp_path), source_texts=SRC, source_labels=y, target_texts=TGT)
    assert _losses(tr)[-3:].mean() < _losses(tr)[:3].mean()
    p = predict(tr.model, TOK, TGT)
    assert p.logits.shape == (48, 1) and p.probabilities is None and p.labels is None
    m2 = _model(num_labels=3, problem_type="multi_label_classification")
    ym = np.eye(3, dtype=np.float32)[YS]
    ds = XiteDataset(TOK, SRC, ym)
    tr2 = XiteTrainer(
        m2, _args(tmp_path), xite_config=XiteConfig(placement="none"), train_dataset=ds, processing_class=TOK
    )
    tr2.train()
    p2 = predict(tr2.model, TOK, SRC)
    assert p2.probabilities.shape == (48, 3) and ((p2.probabilities > 0) & (p2.probabilities < 1)).all()
    np.testing.assert_allclose(
        p2.probabilities, torch.sigmoid(torch.from_numpy(p2.logits)).numpy(), rtol=1e-6
    )


# -------------------------------------------------------------------------------------- pairs, predict, match
def test_sentence_pairs_tokenize_with_text_pair_and_train(tmp_path):
    hyp, _ = _sentences(48, 7)
    ds = XiteDataset(TOK, SRC, YS, text_pairs=hyp)
    ref = TOK(SRC[0], text_pair=hyp[0])
    assert ds[0]["input_ids"] == ref["input_ids"]
    tgt_hyp = [h.replace(" ", "_x ") + "_x" for h in hyp]
    tr = train_xite(
        _model(),
        TOK,
        _args(tmp_path, num_train_epochs=2),
        source_texts=SRC,
        source_text_pairs=hyp,
        source_labels=list(YS),
        target_texts=TGT,
        target_text_pairs=tgt_hyp,
    )
    assert "src_input_ids" in tr.train_dataset[0] and np.isfinite(_losses(tr)).all()
    p = predict(tr.model, TOK, TGT, tgt_hyp)
    m = tr.model.model.eval()
    enc = TOK(TGT[:3], text_pair=tgt_hyp[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref_logits = m(**enc).logits.numpy()
    np.testing.assert_allclose(p.logits[:3], ref_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        p.probabilities[:3], torch.softmax(torch.from_numpy(ref_logits), -1).numpy(), rtol=1e-5
    )


@pytest.mark.parametrize("center", [True, False])
def test_match_sources_is_centered_cosine_top1_of_the_models_mean_embedding(center):
    m = _model().eval()
    idx, scores = match_sources(m, TOK, SRC, TGT, center=center)

    def emb(texts):
        enc = TOK(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = m.bert(**enc).last_hidden_state.double()
        mask = enc["attention_mask"].unsqueeze(-1).double()
        return ((h * mask).sum(1) / mask.sum(1)).numpy()

    s, t = emb(SRC), emb(TGT)
    if center:
        s, t = s - s.mean(0), t - t.mean(0)
    cos = (t / np.linalg.norm(t, axis=1, keepdims=True)) @ (s / np.linalg.norm(s, axis=1, keepdims=True)).T
    np.testing.assert_array_equal(idx, cos.argmax(1))
    np.testing.assert_allclose(scores, cos.max(1), rtol=1e-4, atol=1e-5)


def test_train_xite_takes_an_augment_result(tmp_path):
    from xite_fast.xite.augmenter import AugmentResult

    tgt_id = np.arange(0, 48, 2)
    src_id = (tgt_id + 3) % 48
    res = AugmentResult(
        embeddings=np.zeros((24, 4), np.float32),
        labels=np.array([str(YS[i]) for i in src_id], dtype=object),
        target_id=tgt_id,
        source_id=src_id,
        similarity=np.ones(24, np.float32),
        lam=np.full(24, 0.5, np.float32),
        mode="interp",
        report={},
    )
    tr = train_xite(
        _model(), TOK, _args(tmp_path, num_train_epochs=1), source_texts=SRC, target_texts=TGT, augment=res
    )
    ds = tr.train_dataset
    assert len(ds) == 24
    assert (
        ds[1]["input_ids"] == TOK(TGT[2])["input_ids"] and ds[1]["src_input_ids"] == TOK(SRC[5])["input_ids"]
    )
    assert [int(x) for x in ds.columns["labels"]] == [int(YS[i]) for i in src_id]
    assert tr.model.config.id2label == {0: "0", 1: "1", 2: "2"}


def test_embed_levels_match_the_models_own_tensors():
    m = _model("distilbert").eval()
    xm = XiteModel(m, XiteConfig(placement="hidden", hidden_layer=1))
    enc = TOK(SRC[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = m.distilbert(**enc, output_hidden_states=True)
    mask = enc["attention_mask"].unsqueeze(-1).float()
    mean = lambda h: ((h * mask).sum(1) / mask.sum(1)).numpy()  # noqa: E731
    np.testing.assert_allclose(
        embed_texts(xm, TOK, SRC[:4], level="hidden"), mean(out.hidden_states[1]), atol=1e-5
    )
    np.testing.assert_allclose(
        embed_texts(xm, TOK, SRC[:4], level="sentence"), out.last_hidden_state[:, 0].numpy(), atol=1e-5
    )
    np.testing.assert_allclose(
        embed_texts(xm, TOK, SRC[:4], level="mean"), mean(out.last_hidden_state), atol=1e-5
    )


# ------------------------------------------------------------------------------------------- e5 backbone, GPU
def test_e5_small_backbone_trains_sentence_placement(tmp_path, e5_tiny_dir):
    from transformers import AutoTokenizer

    from xite_fast.logging import quiet_transformers

    with quiet_transformers():
        m = AutoModelForSequenceClassification.from_pretrained(e5_tiny_dir, num_labels=3)
        tok = AutoTokenizer.from_pretrained(e5_tiny_dir)
    src = [
        "I like apples",
        "the dog runs",
        "a red car",
        "bananas are sweet",
        "cats sleep",
        "the sky is blue",
    ] * 2
    tgt = ["사과를 좋아해", "개가 달린다", "빨간 차", "바나나는 달다", "고양이가 잔다", "하늘은 파랗다"] * 2
    cfg = XiteConfig(
        placement="sentence",
        freeze_embeddings=True,
        freeze_layers=1,
        cache_frozen=True,
        prefix="query: ",
        max_length=16,
        head_lr=1e-2,
    )
    tr = train_xite(
        m,
        tok,
        _args(tmp_path, num_train_epochs=2, per_device_train_batch_size=4),
        source_texts=src,
        source_labels=[i % 3 for i in range(12)],
        target_texts=tgt,
        xite_config=cfg,
    )
    assert np.isfinite(_losses(tr)).all() and len(tr.model.cache) > 0
    tr.save_model(str(tmp_path / "e5"))
    re = AutoModelForSequenceClassification.from_pretrained(tmp_path / "e5")
    np.testing.assert_allclose(
        predict(re, tok, tgt, prefix="query: ").logits,
        predict(tr.model.model, tok, tgt, prefix="query: ").logits,
        atol=1e-5,
    )


@pytest.mark.gpu
@pytest.mark.parametrize("placement", ["sentence", "hidden"])
def test_cuda_training_follows_training_arguments_device(tmp_path, placement):
    cfg = XiteConfig(placement=placement, hidden_layer=1, lda=True, backend="auto")
    xm = XiteModel(_model(), cfg, W=orthonormal(32, 2))
    tr = train_xite(
        xm,
        TOK,
        _args(tmp_path, use_cpu=False, fp16=True, num_train_epochs=1),
        source_texts=SRC,
        source_labels=list(YS),
        target_texts=TGT,
    )
    assert next(tr.model.parameters()).device.type == "cuda"
    assert np.isfinite(_losses(tr)).all()
    assert predict(tr.model, TOK, TGT).logits.shape == (48, 3)


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kw,match",
    [
        ({"placement": "middle"}, "placement must be one of"),
        ({"lam": 1.5}, "lam must be a float in"),
        ({"alpha": 0}, "alpha must be a finite float > 0"),
        ({"lda_mode": "x"}, "lda_mode must be one of"),
        ({"lda_basis": "offset"}, r"lda_basis must be one of \('fisher', 'means'\), got 'offset'"),
        ({"freeze_layers": 9}, "freeze_layers must be in"),
        ({"placement": "hidden", "hidden_layer": 3}, "hidden_layer must be in"),
        ({"cache_frozen": True}, "cache_frozen needs freeze_embeddings"),
        (
            {"cache_frozen": True, "freeze_embeddings": True, "freeze_layers": 1, "placement": "input"},
            "placement='input'",
        ),
        (
            {
                "cache_frozen": True,
                "freeze_embeddings": True,
                "freeze_layers": 2,
                "placement": "hidden",
                "hidden_layer": 1,
            },
            "hidden_layer >= freeze_layers",
        ),
        ({"backend": "gpu"}, "backend must be one of"),
        ({"head_module": "nope"}, "head_module 'nope'"),
    ],
)
def test_bad_config_named_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        XiteModel(_model(), XiteConfig(**kw))


def _projector(W: np.ndarray) -> np.ndarray:
    Q = np.linalg.qr(np.asarray(W, dtype=np.float64))[0]
    return Q @ Q.T


def test_fit_lda_offset_basis_and_extra_languages_against_references():
    from xite_fast import LanguageLDA
    from xite_fast.train.trainer import fit_lda

    xm = XiteModel(_model(dropout=0.0), XiteConfig(placement="sentence", lda=True, lda_basis="means")).eval()
    third, _ = _sentences(40, 2, lo=1, hi=3)  # a third "language": shorter sentences of other draws

    # fit_lda counts each distinct text once
    def emb(texts):
        return embed_texts(xm, TOK, list(dict.fromkeys(texts)), level="sentence").astype(np.float64)

    es, et, e3 = emb(SRC), emb(TGT), emb(third)
    # "means", two languages: the basis is the language-mean offset direction
    W = fit_lda(xm, TOK, SRC, TGT)
    off = et.mean(0) - es.mean(0)
    assert W.shape == (32, 1)
    assert abs(float(W[:, 0] @ off) / np.linalg.norm(off)) == pytest.approx(1.0, abs=1e-5)
    # "means", three languages: the span of the two mean differences
    Wm3 = fit_lda(xm, TOK, SRC, TGT, extra_languages={"third": third})
    assert Wm3.shape == (32, 2)
    M = np.stack([et.mean(0) - es.mean(0), e3.mean(0) - es.mean(0)], 1)
    assert np.linalg.norm(_projector(Wm3) - _projector(M), 2) < 1e-4
    # the Fisher subspace (the default) is not that direction on these data
    xm.xite.lda_basis = "fisher"
    W_auto = fit_lda(xm, TOK, SRC, TGT)
    assert abs(float(W_auto[:, 0] @ off) / np.linalg.norm(off)) < 0.99
    # a third language: r = 2, the subspace of LanguageLDA fitted on the three embedding sets
    W3 = fit_lda(xm, TOK, SRC, TGT, extra_languages={"third": third})
    ref = LanguageLDA(shrinkage="auto").fit(
        np.concatenate([es, et, e3]), np.array(["src"] * len(es) + ["tgt"] * len(et) + ["third"] * len(e3))
    )
    assert W3.shape == (32, 2)
    assert np.linalg.norm(_projector(W3) - _projector(ref.components_), 2) < 1e-4
    with pytest.raises(ValueError, match=r"extra_languages\['x'\] must hold at least one text, got 0"):
        fit_lda(xm, TOK, SRC, TGT, extra_languages={"x": []})
    with pytest.raises(ValueError, match="must not be 'src' or 'tgt'"):
        fit_lda(xm, TOK, SRC, TGT, extra_languages={"tgt": third})


def test_bad_inputs_named_errors(tmp_path):
    with pytest.raises(ValueError, match="lda_W"):
        XiteTrainer(_model(), _args(tmp_path), xite_config=XiteConfig(lda=True))
    with pytest.raises(ValueError, match="source_texts must have one entry per text"):
        XiteDataset(TOK, TGT, YS, source_texts=SRC[:3])
    with pytest.raises(ValueError, match="source_text_pairs must be given"):
        XiteDataset(TOK, TGT, YS, source_texts=SRC, text_pairs=TGT)
    with pytest.raises(ValueError, match="texts must be a sequence of str"):
        XiteDataset(TOK, "one text")
    with pytest.raises(ValueError, match="must be a transformers PreTrainedModel"):
        XiteModel(torch.nn.Linear(2, 2))


def test_trainer_evaluation_early_stopping_and_best_model(tmp_path):
    """Trainer's own evaluation loop, compute_metrics, early stopping and load_best_model_at_end work on the
    wrapper (nothing of that is re-implemented)."""
    from transformers import EarlyStoppingCallback

    from xite_fast.train.trainer import classification_metrics

    args = _args(
        tmp_path,
        num_train_epochs=6,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        save_total_limit=2,
        gradient_accumulation_steps=2,
    )
    tr = XiteTrainer(
        _model(),
        args,
        xite_config=XiteConfig(placement="sentence", head_lr=1e-2),
        train_dataset=XiteDataset(TOK, TGT, YS, source_texts=SRC),
        eval_dataset=XiteDataset(TOK, TGT, YT),
        processing_class=TOK,
        compute_metrics=classification_metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=1.0)],
    )
    tr.train()
    evals = [h for h in tr.state.log_history if "eval_accuracy" in h]
    assert 1 <= len(evals) < 6  # stopped early (no eval improves by 1.0)
    assert tr.state.best_metric == max(h["eval_accuracy"] for h in evals)
    m = tr.evaluate()
    assert {"eval_loss", "eval_accuracy", "eval_macro_f1"} <= set(m)
    assert m["eval_accuracy"] == pytest.approx(tr.state.best_metric)


def test_string_labels_need_a_label_map():
    with pytest.raises(ValueError, match="label_map_for"):
        XiteDataset(TOK, TGT, ["a"] * 48)
