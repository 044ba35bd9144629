"""Training loop: loss falls per placement, exact resume, lam=1 reference forwards, fast-op vs torch
convergence (STYLE rule 12), named errors. A tiny random BertModel + word-level tokenizer keeps it fast."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from xite_fast.train.legacy import (
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


@pytest.mark.parametrize("center", [True, False])
def test_match_sources_is_cosine_top1(center):
    m = _model().eval()
    idx, scores = match_sources(m, SRC, TGT[:10], max_length=16, prefix="", center=center)
    from xite_fast.train.legacy import pooled_embeddings

    S = pooled_embeddings(m, SRC, max_length=16, prefix="").astype(np.float64)
    T = pooled_embeddings(m, TGT[:10], max_length=16, prefix="").astype(np.float64)
    if center:  # the matcher's rule: each side minus its own mean
        S, T = S - S.mean(0), T - T.mean(0)
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
    from xite_fast.train.legacy import pooled_embeddings

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


# --------------------------------------------------------------------------------------------- OT pre-alignment
PAIRS = list(zip(SRC, [" ".join(w + "_x" for w in t.split()) for t in SRC], strict=True))


def _acfg(**kw):
    from xite_fast.train.legacy import AlignConfig

    base = dict(epochs=4, batch_size=8, lr=3e-3, prefix="", freeze_layers=1, eps=0.5, drift_weight=0.01)
    base.update(kw)
    return AlignConfig(**base)


def test_align_step0_ot_matches_hf_forward_reference():
    # first step's OT term == ot_alignment_loss on a plain HF forward (torch Sinkhorn, word_ids from
    # the tokenizer): checks the cached prefix, last-subword pooling inputs and collation
    from xite_fast.objectives.losses import ot_alignment_loss, word_ids_tensor
    from xite_fast.train.legacy import align

    m = _model(dropout=0.0)
    ref_model = copy.deepcopy(m).eval()
    res = align(m, PAIRS, _acfg(epochs=1, max_steps=1, batch_size=len(PAIRS), backend="torch"))
    en = [p[0] for p in PAIRS]
    tg = [p[1] for p in PAIRS]
    with torch.no_grad():
        enc_e = TOK(en, padding=True, return_tensors="pt")
        enc_t = TOK(tg, padding=True, return_tensors="pt")
        h_e = ref_model.encoder(input_ids=enc_e["input_ids"], attention_mask=enc_e["attention_mask"])
        h_t = ref_model.encoder(input_ids=enc_t["input_ids"], attention_mask=enc_t["attention_mask"])
        ref = ot_alignment_loss(
            h_t.last_hidden_state,
            h_e.last_hidden_state,
            (enc_t["attention_mask"], enc_e["attention_mask"]),
            word_ids=(word_ids_tensor(enc_t), word_ids_tensor(enc_e)),
            eps=0.5,
            backend="torch",
        )
    assert res.ot[0] == pytest.approx(float(ref), rel=1e-4, abs=1e-5)
    assert res.drift[0] == 0.0  # parameters have not moved yet: c == c0 exactly (no dropout)


@pytest.mark.parametrize("cache_frozen", [True, False])
def test_align_ot_falls_drift_grows_frozen_parts_fixed(cache_frozen):
    from xite_fast.train.legacy import align

    m = _model(dropout=0.0)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    res = align(m, {"x": PAIRS}, _acfg(cache_frozen=cache_frozen))
    assert len(res.ot) == 4 * 6 and res.pairs == {"x": 48}
    assert res.drift[0] == 0.0
    assert res.drift[-1] > 0.0
    assert np.mean(res.ot[-3:]) < 0.5 * np.mean(res.ot[:3]), (res.ot[:3], res.ot[-3:])
    for n, p in m.named_parameters():
        moved = not torch.equal(p, before[n])
        trainable = n.startswith("encoder.encoder.layer.1.")
        if not trainable:
            assert not moved, f"{n} is frozen (embeddings, layer 0, head) but changed"
    assert any(not torch.equal(p, before[n]) for n, p in m.named_parameters() if "layer.1." in n)


def test_align_drift_weight_limits_drift():
    from xite_fast.train.legacy import align

    free = align(_model(dropout=0.0), PAIRS, _acfg(drift_weight=0.0))
    tied = align(_model(dropout=0.0), PAIRS, _acfg(drift_weight=1.0))
    assert free.drift[-1] == 0.0  # weight 0 -> term 0
    # measured unweighted drift: tied run stays much closer to the start model
    assert tied.drift[-1] / 1.0 < 0.5 * sum(free.ot[:1])


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"eps": 0.0}, "AlignConfig.eps must be a finite float > 0"),
        ({"freeze_layers": 2}, r"AlignConfig.freeze_layers must be in \[0, 1\]"),
        ({"pooling": "max"}, "AlignConfig.pooling must be one of"),
        ({"eps_schedule": "cosine"}, "AlignConfig.eps_schedule must be None or 'anneal'"),
        ({"drift_weight": -1.0}, "AlignConfig.drift_weight must be a finite float >= 0"),
        ({"max_steps": 0}, "AlignConfig.max_steps must be None or a positive int"),
        ({"backend": "gpu"}, "backend must be one of"),
    ],
)
def test_align_bad_config_named_errors(kw, match):
    from xite_fast.train.legacy import align

    with pytest.raises(ValueError, match=match):
        align(_model(), PAIRS, _acfg(**kw))


def test_align_bad_pairs_named_errors():
    from xite_fast.train.legacy import align

    with pytest.raises(ValueError, match=r"pairs\['target'\] must be a non-empty sequence"):
        align(_model(), [], _acfg())
    with pytest.raises(ValueError, match=r"pairs\['ko'\]\[1\] must be a \(english, target\) pair"):
        align(_model(), {"ko": [("a", "b"), ("a",)]}, _acfg())
    with pytest.raises(ValueError, match="must be an EncoderClassifier"):
        align(_model().encoder, PAIRS, _acfg())


# --------------------------------------------------------------------------------------------- EAR
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_attention_probs_match_eager_output_attentions(impl):
    from transformers import BertModel

    from xite_fast.train.legacy import attention_probs

    m = _model(dropout=0.0).eval()
    eager = BertModel(copy.deepcopy(m.encoder.config), add_pooling_layer=False)
    eager.load_state_dict(m.encoder.state_dict())
    eager.set_attn_implementation("eager")
    m.encoder.set_attn_implementation(impl)
    ids, mask = m.collate(m.tokenize(SRC[:6], 16))
    with torch.no_grad():
        out = eager(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
        for li in range(2):
            h = out.hidden_states[li]
            got = attention_probs(m.encoder.encoder.layer[li], h, m._layer_mask(mask, h))
            real = mask.bool()
            pair = (real[:, None, :, None] & real[:, None, None, :]).expand_as(got)
            torch.testing.assert_close(got[pair], out.attentions[li][pair], rtol=1e-5, atol=1e-6)
            # padded keys get no attention
            assert float(got.masked_select(~real[:, None, None, :].expand_as(got)).abs().max()) < 1e-6


def test_ear_layer_resolution_and_perturbed_copies():
    from xite_fast.train.legacy import _perturbed_copies, ear_layer

    assert ear_layer(TrainConfig(freeze_layers=0), 12) == 6
    assert ear_layer(TrainConfig(freeze_layers=10), 12) == 11  # 6 is frozen: first trainable layer
    assert ear_layer(TrainConfig(freeze_layers=1), 2) == 2
    assert ear_layer(TrainConfig(ear_attention_layer=3), 12) == 3
    m = _model()
    seqs = m.tokenize(SRC, 16)
    pert = _perturbed_copies(m, SRC, seqs, _cfg(ear=True, ear_rate=0.5, ear_k=3))
    english_ids = {i for s in seqs for i in s}
    assert [len(s) for s in pert] == [len(s) for s in seqs]
    changed = sum(a != b for s, p in zip(seqs, pert, strict=True) for a, b in zip(s, p, strict=True))
    assert changed > 0.2 * sum(len(s) - 2 for s in seqs)  # rate 0.5 of the words (specials kept)
    assert all(i in english_ids for s in pert for i in s)  # replacements come from the English vocabulary
    assert all(s[0] == p[0] and s[-1] == p[-1] for s, p in zip(seqs, pert, strict=True))


def test_ear_loss_falls_and_cached_equals_recomputed():
    runs = {}
    for cache in (True, False):
        m = _model(dropout=0.0)
        runs[cache] = train(m, SRC, YS, _cfg(ear=True, freeze_layers=1, cache_frozen=cache, epochs=8))
    r = runs[True]
    assert len(r.ear_terms) == len(r.step_losses) == 8 * 6
    np.testing.assert_allclose(runs[True].step_losses[:3], runs[False].step_losses[:3], rtol=1e-4)
    assert np.mean(r.step_losses[-6:]) < 0.7 * np.mean(r.step_losses[:6])
    t0 = r.ear_terms[0]
    w = TrainConfig()
    total0 = (
        w.ear_ce_weight * t0["ce"]
        + w.ear_ce_perturbed_weight * t0["ce_perturbed"]
        + w.ear_push_weight * t0["push"]
        + w.ear_pull_weight * t0["pull"]
    )
    assert r.step_losses[0] == pytest.approx(total0, rel=1e-5)
    assert t0["push"] <= 0.0 and t0["pull"] >= 0.0


def test_ear_pull_weight_reduces_attention_gap():
    # a large pull weight must bring the attention of originals and copies closer than no pull
    pulls = {}
    for wgt in (0.0, 1e4):
        r = train(_model(dropout=0.0), SRC, YS, _cfg(ear=True, freeze_layers=1, ear_pull_weight=wgt))
        pulls[wgt] = np.mean([t["pull"] for t in r.ear_terms[-6:]])
    assert pulls[1e4] < pulls[0.0]


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"ear_rate": 0.0}, r"ear_rate must be a float in \(0, 1\]"),
        ({"ear_k": 0}, "ear_k must be a positive int"),
        ({"ear_pull_weight": -1.0}, "ear_pull_weight must be a finite float >= 0"),
        ({"ear_attention_layer": 3}, r"ear_attention_layer must be in \[1, 2\]"),
        ({"ear_attention_layer": 1, "freeze_layers": 1}, "must be a trainable layer"),
    ],
)
def test_ear_bad_config_named_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        train(_model(), SRC, YS, _cfg(ear=True, **kw))


def test_ear_rejects_stage2():
    with pytest.raises(ValueError, match="ear is a stage-1 option"):
        train(_model(), TGT, YS, _cfg(ear=True), source_texts=SRC)
