"""OT pre-alignment and EAR on the Trainer engine: step-0 loss against an HF-forward reference, the OT term
falls while frozen parts and the head stay fixed, attention probabilities equal eager attention, EAR loss
falls and its cached run equals the recomputed one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.utils import logged_losses as _losses
from tests.utils import toy_classifier as _model
from tests.utils import toy_sentences, toy_tokenizer
from tests.utils import training_args as _args
from xite_fast.objectives.ot import ot_alignment_loss
from xite_fast.train.align import OTAlignConfig, ot_align, word_ids
from xite_fast.train.collator import XiteDataset
from xite_fast.train.config import XiteConfig
from xite_fast.train.ear import add_perturbed_copies, attention_probs
from xite_fast.train.model import XiteModel
from xite_fast.train.trainer import XiteTrainer

TOK = toy_tokenizer()
SRC, YS = toy_sentences(48, 0)
TGT, _ = toy_sentences(48, 1, lang="tgt")
PAIRS = list(zip(SRC[:24], TGT[:24], strict=True))
pytestmark = pytest.mark.usefixtures("one_thread")


def test_align_step0_loss_matches_hf_forward_reference(tmp_path):
    m = _model(dropout=0.0)
    xm = XiteModel(m, XiteConfig(placement="none", max_length=16))
    en, tg = [p[0] for p in PAIRS[:8]], [p[1] for p in PAIRS[:8]]
    with torch.no_grad():
        e = TOK(en, padding=True, return_tensors="pt")
        t = TOK(tg, padding=True, return_tensors="pt")
        h_e = m.bert(input_ids=e["input_ids"], attention_mask=e["attention_mask"]).last_hidden_state
        h_t = m.bert(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state

        def wid(texts, T):
            out = torch.full((len(texts), T), -1, dtype=torch.long)
            for i, r in enumerate(word_ids(TOK, texts, 16, "")):
                out[i, : len(r)] = torch.as_tensor(r)
            return out

        ref = ot_alignment_loss(
            h_t,
            h_e,
            (t["attention_mask"], e["attention_mask"]),
            word_ids=(wid(tg, h_t.shape[1]), wid(en, h_e.shape[1])),
            eps=0.1,
            n_iters=50,
            eps_schedule="anneal",
            backend="torch",
        )
    args = _args(tmp_path, max_steps=1, learning_rate=1e-12, dataloader_drop_last=False)
    res = ot_align(xm, TOK, PAIRS[:8], args, OTAlignConfig(batch_size=8, backend="torch"))
    assert res.pairs == {"target": 8} and res.drift[0] == pytest.approx(0.0, abs=1e-6)
    assert res.ot[0] == pytest.approx(float(ref), rel=1e-4)


@pytest.mark.parametrize("cache", [False, True])
def test_align_ot_falls_frozen_parts_and_head_fixed(tmp_path, cache):
    m = _model(dropout=0.0, layers=3)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    xm = XiteModel(
        m, XiteConfig(placement="none", freeze_embeddings=True, freeze_layers=1, cache_frozen=cache)
    )
    res = ot_align(
        xm,
        TOK,
        {"a": PAIRS[:12], "b": PAIRS[12:]},
        _args(tmp_path, num_train_epochs=6, learning_rate=3e-3),
        OTAlignConfig(batch_size=8, drift_weight=0.0),
    )
    assert res.pairs == {"a": 12, "b": 12} and len(res.ot) == 6 * 3
    assert np.mean(res.ot[-3:]) < 0.8 * np.mean(res.ot[:3]), res.ot
    for n, p in m.named_parameters():
        moved = not torch.equal(p, before[n])
        frozen = ".embeddings." in n or ".layer.0." in n or n.startswith("classifier") or ".pooler." in n
        assert moved != frozen or (not moved and "LayerNorm" in n), n
    assert all(p.requires_grad for n, p in m.named_parameters() if ".layer.2." in n)  # restored afterwards


def test_align_bad_inputs_named_errors(tmp_path):
    xm = XiteModel(_model(), XiteConfig(placement="none"))
    with pytest.raises(ValueError, match="pairs\\['target'\\]\\[0\\] must be a"):
        ot_align(xm, TOK, [("a", 1)], _args(tmp_path))
    with pytest.raises(ValueError, match="must be a XiteModel"):
        ot_align(_model(), TOK, PAIRS, _args(tmp_path))
    with pytest.raises(ValueError, match="eps_schedule must be"):
        OTAlignConfig(eps_schedule="cosine").validate()


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_attention_probs_match_eager_output_attentions(arch):
    m = _model(arch, dropout=0.0)
    m.set_attn_implementation("eager")
    m.eval()
    xm = XiteModel(m, XiteConfig(placement="none"))
    enc = TOK(SRC[:4], padding=True, return_tensors="pt")
    got = {}

    def grab(mod, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        lm = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        got["p"] = attention_probs(mod, h, lm)

    hk = xm._layers[1].register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        out = m(**enc, output_attentions=True)
    hk.remove()
    mask = enc["attention_mask"].bool()
    ref = out.attentions[1]
    # compare the rows of real query tokens (padding queries are irrelevant and differ by convention)
    q = lambda p: p.transpose(1, 2)[mask]  # noqa: E731  (real queries, heads, keys)
    torch.testing.assert_close(q(got["p"]), q(ref), rtol=1e-5, atol=1e-6)


def _ear_run(tmp_path, cache: bool):
    cfg = XiteConfig(
        placement="none",
        ear=True,
        freeze_embeddings=True,
        freeze_layers=1,
        cache_frozen=cache,
        ear_rate=0.5,
        ear_k=3,
        head_lr=1e-2,
    )
    xm = XiteModel(_model(layers=3), cfg)
    ds = XiteDataset(TOK, SRC, YS)
    add_perturbed_copies(ds, xm, TOK, SRC, seed=0)
    tr = XiteTrainer(xm, _args(tmp_path, num_train_epochs=4), train_dataset=ds, processing_class=TOK)
    tr.train()
    return tr, ds


def test_ear_perturbs_trains_and_cached_equals_recomputed(tmp_path):
    tr0, ds = _ear_run(tmp_path / "a", cache=False)
    n_changed = sum(
        a != b
        for r, q in zip(ds.columns["input_ids"], ds.columns["pert_input_ids"], strict=True)
        for a, b in zip(r, q, strict=True)
    )
    assert n_changed > 0 and all(
        len(r) == len(q) for r, q in zip(ds.columns["input_ids"], ds.columns["pert_input_ids"], strict=True)
    )
    losses = _losses(tr0)
    assert np.isfinite(losses).all() and losses[-6:].mean() < losses[:6].mean()
    terms = tr0.model.ear_terms
    assert len(terms) == 4 * 6 and {"ce", "ce_perturbed", "push", "pull"} == set(terms[0])
    assert tr0.model.xite.ear_layer(3) == 2
    tr1, _ = _ear_run(tmp_path / "b", cache=True)
    np.testing.assert_allclose(_losses(tr1), losses, rtol=1e-4, atol=1e-5)
