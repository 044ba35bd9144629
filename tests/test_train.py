"""Training loop: loss falls per placement, exact resume, lam=1 reference forwards, fast-op vs torch
convergence (STYLE rule 12), named errors. A tiny random BertModel + word-level tokenizer keeps it fast."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from xite_fast.train import (
    EncoderClassifier,
    TrainConfig,
    evaluate,
    match_sources,
    mix,
    predict,
    train,
)

WORDS = {
    0: "apple banana cherry grape melon peach plum lemon".split(),
    1: "dog cat horse mouse tiger lion bear wolf".split(),
    2: "red blue green black white pink gray gold".split(),
}


def _sentences(n: int, seed: int, lang: str = "en") -> tuple[list[str], np.ndarray]:
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        c = i % len(WORDS)
        words = [rng.choice(WORDS[c]) for _ in range(rng.randint(2, 7))]
        if lang != "en":  # a "target language": same content words with a suffix (other tokens)
            words = [w + "_x" for w in words]
        texts.append(" ".join(words))
        labels.append(c)
    return texts, np.array(labels, dtype=np.int64)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for ws in WORDS.values():
        for w in ws:
            for v in (w, w + "_x"):
                vocab.setdefault(v, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


TOK = _tokenizer()


def _model(seed: int = 0, layers: int = 2, dropout: float = 0.1) -> EncoderClassifier:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(TOK),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return EncoderClassifier(BertModel(cfg, add_pooling_layer=False), TOK, num_labels=3, dropout=dropout)


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=4, batch_size=8, lr=2e-3, head_lr=1e-2, max_length=16, prefix="", warmup_ratio=0.1)
    base.update(kw)
    return TrainConfig(**base)


def _W(d: int = 32, r: int = 2, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    return np.linalg.qr(g.standard_normal((d, r)))[0].astype(np.float32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the 2 cores are shared: oversubscribed intra-op threads make tiny models 50x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SRC, YS = _sentences(48, 0)
TGT, YT = _sentences(48, 1, lang="tgt")


# --------------------------------------------------------------------------------------------- loss falls
@pytest.mark.parametrize(
    "placement,lda",
    [
        ("none", False),
        ("sentence", False),
        ("input", False),
        ("hidden", False),
        ("sentence", True),
        ("hidden", True),
    ],
)
def test_loss_falls_per_placement(placement, lda):
    m = _model()
    cfg = _cfg(
        placement=placement, lda=lda, lda_mode="shift", hidden_layer=1, lam=0.7, alpha=None, epochs=6, lr=3e-3
    )
    src = None if placement == "none" else SRC
    res = train(m, TGT, YS, cfg, source_texts=src, lda_W=_W() if lda else None, eval_sets={"tgt": (TGT, YT)})
    losses = np.array(res.step_losses)
    assert len(losses) == 6 * 6
    assert np.isfinite(losses).all()
    assert losses[-6:].mean() < 0.85 * losses[:6].mean(), losses
    assert len(res.history) == 6 and set(res.history[-1]["eval"]["tgt"]) == {"accuracy", "macro_f1", "n"}


def test_stage1_learns_and_evaluate_matches_numpy():
    m = _model()
    train(m, SRC, YS, _cfg(placement="none", epochs=5))
    pred = predict(m, SRC, max_length=16, prefix="")
    ev = evaluate(m, SRC, YS, max_length=16, prefix="")
    from sklearn.metrics import f1_score

    assert ev["accuracy"] == pytest.approx(float((pred == YS).mean()))
    assert ev["macro_f1"] == pytest.approx(f1_score(YS, pred, average="macro"))
    assert ev["accuracy"] > 0.9  # three disjoint vocabularies are trivially separable


# --------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("placement", ["none", "sentence", "hidden"])
def test_resume_equals_uninterrupted(tmp_path, placement):
    init = _model(seed=3)
    cfg_kw = dict(placement=placement, hidden_layer=1, alpha=0.5, lda=placement == "hidden", epochs=3)
    W = _W(seed=1)
    src = None if placement == "none" else SRC

    full = copy.deepcopy(init)
    ra = train(full, TGT, YS, _cfg(checkpoint_dir=str(tmp_path / "a"), **cfg_kw), source_texts=src, lda_W=W)

    part = copy.deepcopy(init)
    rb1 = train(
        part,
        TGT,
        YS,
        _cfg(checkpoint_dir=str(tmp_path / "b"), **cfg_kw),
        source_texts=src,
        lda_W=W,
        stop_after=1,
    )
    assert len(rb1.history) == 1
    torch.manual_seed(12345)  # a new process would have a different RNG state: the checkpoint restores it
    fresh = copy.deepcopy(init)  # frozen/initial weights as in a new process
    rb = train(fresh, TGT, YS, _cfg(checkpoint_dir=str(tmp_path / "b"), **cfg_kw), source_texts=src, lda_W=W)
    assert rb.resumed_from == 1
    np.testing.assert_allclose(rb.step_losses, ra.step_losses, rtol=1e-6, atol=1e-7)
    for (n, p), (_, q) in zip(full.named_parameters(), fresh.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=f"parameter {n} differs after resume")
    # a finished run reruns as a no-op
    again = train(
        copy.deepcopy(init),
        TGT,
        YS,
        _cfg(checkpoint_dir=str(tmp_path / "a"), **cfg_kw),
        source_texts=src,
        lda_W=W,
    )
    assert again.resumed_from == 3 and again.step_losses == ra.step_losses


@pytest.mark.parametrize("placement,layer", [("none", 1), ("sentence", 1), ("hidden", 1), ("hidden", 2)])
def test_frozen_prefix_cache_matches_recompute(placement, layer):
    init = _model(seed=7, layers=3)
    kw = dict(
        placement=placement,
        hidden_layer=layer,
        freeze_layers=1,
        alpha=1.0,
        lda=placement == "hidden",
        epochs=2,
    )
    src = None if placement == "none" else SRC
    res = {}
    for cache in (True, False):
        m = copy.deepcopy(init)
        res[cache] = train(
            m,
            TGT,
            YS,
            _cfg(cache_frozen=cache, **kw),
            source_texts=src,
            lda_W=_W(),
            eval_sets={"t": (TGT, YT)},
        )
    np.testing.assert_allclose(res[True].step_losses, res[False].step_losses, rtol=1e-4, atol=1e-5)
    for a, b in zip(res[True].history, res[False].history, strict=True):
        assert a["eval"]["t"]["accuracy"] == pytest.approx(b["eval"]["t"]["accuracy"])


def test_resume_rejects_changed_config(tmp_path):
    m = _model()
    train(m, SRC, YS, _cfg(placement="none", epochs=1, checkpoint_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="different config.*lr"):
        train(_model(), SRC, YS, _cfg(placement="none", epochs=2, lr=1e-4, checkpoint_dir=str(tmp_path)))


def test_broken_checkpoint_is_named(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable"):
        train(_model(), SRC, YS, _cfg(placement="none", epochs=1, checkpoint_dir=str(tmp_path)))


# --------------------------------------------------------------------------------------------- references
def _batch(m, texts, T=None):
    return m.collate(m.tokenize(texts, 16, ""), T)


@pytest.mark.parametrize("placement", ["input", "hidden"])
@pytest.mark.parametrize("mode", [None, "proj", "shift"])
def test_lam1_reproduces_source_forward(placement, mode):
    m = _model(layers=3).eval()
    W = None if mode is None else torch.from_numpy(_W())
    # same lengths: the mix at lam=1 is exactly the plain forward of the source
    src = _batch(m, ["apple dog red", "cat cat plum lemon"])
    tgt = _batch(m, ["tiger_x gold_x pink_x", "red_x red_x dog_x plum_x"])
    with torch.no_grad():
        ref = m(*src)
        for layer in [0, 1, 3] if placement == "hidden" else [0]:
            out = m.forward_mixed(
                src, tgt, 1.0, placement, layer=layer, W=W, lda_mode=mode or "proj", backend="torch"
            )
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        # lam=0 without LDA is the pure target forward
        if mode is None:
            out0 = m.forward_mixed(src, tgt, 0.0, placement, layer=2)
            torch.testing.assert_close(out0, m(*tgt), rtol=1e-5, atol=1e-5)


def test_lam1_different_lengths_uses_union_mask():
    m = _model(layers=2).eval()
    src = _batch(m, ["apple dog", "cat"])
    tgt = _batch(m, ["tiger_x gold_x pink_x red_x", "red_x"])
    T = tgt[0].shape[1]
    ids, mask = _batch(m, ["apple dog", "cat"], T)
    union = (mask.bool() | tgt[1].bool()).long()
    with torch.no_grad():
        ref = m(ids, union)  # source tokens + pad tokens under the united mask
        out_in = m.forward_mixed(src, tgt, 1.0, "input")
        torch.testing.assert_close(out_in, ref, rtol=1e-5, atol=1e-5)
        # hidden at the last layer: layers ran with the source's own mask, positions past the source's
        # length are zeroed, then pooled with the united mask
        h = m.encoder(input_ids=ids, attention_mask=mask).last_hidden_state * mask.unsqueeze(-1)
        ref_h = m.head(m.mean_pool(h, union))
        torch.testing.assert_close(
            m.forward_mixed(src, tgt, 1.0, "hidden", layer=2), ref_h, rtol=1e-5, atol=1e-5
        )


def test_manual_layers_match_model_forward():
    m = _model(layers=3).eval()
    ids, mask = _batch(m, ["apple dog red red", "cat"])
    with torch.no_grad():
        ref = m.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        out = m.run_layers(m.embed(ids), mask, 0, 3)
        split = m.run_layers(m.run_layers(m.embed(ids), mask, 0, 1), mask, 1, 3)
    valid = mask.bool()
    torch.testing.assert_close(out[valid], ref[valid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split[valid], ref[valid], rtol=1e-5, atol=1e-5)


def _mix_ref(s, t, W, lam, mode):
    lam = torch.as_tensor(lam, dtype=torch.float64)
    lam = lam.reshape(-1, *([1] * (s.ndim - 1))) if lam.ndim else lam
    P = lambda x: x @ W @ W.T  # noqa: E731
    g = 1 - lam
    return {
        "interp": lam * s + g * t,
        "proj": lam * s + g * P(t),
        "comp": lam * s + g * (t - P(t)),
        "shift": s - g * P(s) + g * P(t),
    }[mode]


@pytest.mark.parametrize("mode", ["interp", "proj", "comp", "shift"])
@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 7)])
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_mix_forward_and_backward_match_fp64_reference(mode, shape, backend):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(shape, generator=g, requires_grad=True)
    t = torch.randn(shape, generator=g, requires_grad=True)
    W = torch.from_numpy(_W(d=7, r=3))
    lam = torch.rand(shape[0], generator=g)
    w_out = torch.randn(shape, generator=g)
    out = mix(s, t, lam, W, mode, backend)
    (out * w_out).sum().backward()
    s64, t64 = s.detach().double().requires_grad_(), t.detach().double().requires_grad_()
    ref = _mix_ref(s64, t64, W.double(), lam.double(), mode)
    (ref * w_out.double()).sum().backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(t.grad.double(), t64.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("placement", ["sentence", "hidden"])
def test_convergence_torch_vs_fast_ops(placement):
    """STYLE rule 12: the same training with the torch reference and with the fast (auto) ops."""
    import xite_fast

    init = _model(seed=5)
    losses = {}
    for backend in ("torch", "auto"):
        m = copy.deepcopy(init)
        cfg = _cfg(
            placement=placement,
            lda=True,
            lda_mode="proj",
            hidden_layer=1,
            alpha=1.0,
            backend=backend,
            epochs=3,
        )
        losses[backend] = train(m, TGT, YS, cfg, source_texts=SRC, lda_W=_W(seed=2)).step_losses
    a, b = np.array(losses["torch"]), np.array(losses["auto"])
    assert len(a) == len(b) == 18
    # fp32 reassociation differences grow slowly over steps; they must stay tiny
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)
    assert a[-3:].mean() < a[:3].mean()
    assert "lda_project_interp" in dir(xite_fast)


def test_match_sources_is_cosine_top1():
    m = _model().eval()
    idx, scores = match_sources(m, SRC, TGT[:10], max_length=16, prefix="")
    from xite_fast.train import pooled_embeddings

    S = pooled_embeddings(m, SRC, max_length=16, prefix="")
    T = pooled_embeddings(m, TGT[:10], max_length=16, prefix="")
    S /= np.linalg.norm(S, axis=1, keepdims=True)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    sim = T @ S.T
    np.testing.assert_allclose(scores, sim.max(1), rtol=1e-4, atol=1e-5)
    best = sim.max(1, keepdims=True)
    assert all(sim[i, idx[i]] >= best[i, 0] - 1e-5 for i in range(10))


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kw,match",
    [
        ({"placement": "token"}, "placement must be one of"),
        ({"lam": 1.5}, r"lam must be a float in \[0, 1\]"),
        ({"lam": -0.1}, r"lam must be a float in \[0, 1\]"),
        ({"placement": "hidden", "hidden_layer": 3}, r"hidden_layer must be in \[0, 2\]"),
        ({"placement": "hidden", "hidden_layer": -1}, r"hidden_layer must be in \[0, 2\]"),
        ({"freeze_layers": 5}, r"freeze_layers must be in \[0, 2\]"),
        ({"lda_mode": "rotate"}, "lda_mode must be one of"),
        ({"epochs": 0}, "epochs must be a positive int"),
        ({"lr": float("nan")}, "lr must be a finite float"),
        ({"alpha": 0.0}, "alpha must be None or a float > 0"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"backend": "gpu"}, "backend must be one of"),
    ],
)
def test_bad_config_named_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        train(_model(), TGT, YS, _cfg(**kw), source_texts=SRC)


def test_bad_data_named_errors():
    m = _model()
    with pytest.raises(ValueError, match="texts must not be empty"):
        train(m, [], [], _cfg())
    with pytest.raises(ValueError, match="source_texts must not be empty"):
        train(m, TGT, YS, _cfg(), source_texts=[])
    with pytest.raises(ValueError, match="one entry per text"):
        train(m, TGT, YS, _cfg(), source_texts=SRC[:-1])
    with pytest.raises(ValueError, match="labels must be 1-D with 48"):
        train(m, TGT, YS[:-1], _cfg())
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        train(m, TGT, YS + 5, _cfg())
    with pytest.raises(ValueError, match="labels must hold int"):
        train(m, TGT, YS.astype(np.float32), _cfg())
    with pytest.raises(ValueError, match=r"texts\[1\] must be str"):
        train(m, ["a", 3], [0, 1], _cfg())
    with pytest.raises(ValueError, match="must be an EncoderClassifier"):
        train(m.encoder, TGT, YS, _cfg())
    with pytest.raises(ValueError, match=r"lda_W must be \(D=32, r\)"):
        train(m, TGT, YS, _cfg(lda=True), source_texts=SRC, lda_W=_W(d=16))
    with pytest.raises(ValueError, match="num_labels must be an int >= 2"):
        EncoderClassifier(m.encoder, TOK, num_labels=1)


def test_state_cache_paths_match_full_forward():
    from xite_fast.train import pooled_embeddings

    m = _model(layers=3).eval()
    cache: dict = {}
    kw = dict(max_length=16, prefix="")
    for placement, layer in (("sentence", 0), ("hidden", 2)):
        ref = pooled_embeddings(m, TGT, placement=placement, layer=layer, **kw)
        for _ in range(2):  # second pass is served from the cache
            got = pooled_embeddings(
                m, TGT, placement=placement, layer=layer, frozen_layers=1, state_cache=cache, **kw
            )
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    assert len(cache) == len(set(TGT))
    np.testing.assert_array_equal(
        predict(m, TGT, frozen_layers=2, state_cache={}, **kw), predict(m, TGT, **kw)
    )
