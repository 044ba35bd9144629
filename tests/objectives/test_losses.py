"""OT-alignment, drift and EAR losses against hand-written references; tiny models train."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification, BertModel

from tests.utils import tiny_config
from xite_fast.objectives.ear import attention_pull, ear_losses_from_outputs, embedding_push
from xite_fast.objectives.ot import (
    DriftPenalty,
    drift_penalty,
    ot_alignment_loss,
    pool_words,
    word_ids_tensor,
)
from xite_fast.reference import sinkhorn_divergence_ref
from xite_fast.train.ear import ear_losses

VOCAB = 40


def _cfg(**kw):
    return tiny_config(vocab_size=VOCAB, hidden=16, intermediate=32, max_positions=32, dropout=0.0, **kw)


def _manual_pool(hidden, wid, how):
    out = []
    for b in range(hidden.shape[0]):
        words = {}
        for t, w in enumerate(wid[b].tolist()):
            if w >= 0:
                words.setdefault(w, []).append(t)
        rows = []
        for w in sorted(words):
            ts = words[w]
            rows.append(
                hidden[b, ts[-1]]
                if how == "last"
                else hidden[b, ts[0]]
                if how == "first"
                else hidden[b, ts].mean(0)
            )
        out.append(torch.stack(rows))
    return out


WID = torch.tensor([[-1, 0, 0, 1, 2, 2, 2, -1, -1], [-1, 0, 1, 1, 2, 3, -1, -1, -1]])


@pytest.mark.parametrize("how", ["last", "first", "mean"])
def test_pool_words_matches_manual(how):
    h = torch.randn(2, 9, 5)
    pts, mask = pool_words(h, WID, pooling=how)
    want = _manual_pool(h, WID, how)
    assert mask.tolist() == [[True, True, True, False], [True, True, True, True]]
    for b in range(2):
        assert torch.allclose(pts[b, mask[b]], want[b])


def test_pool_words_subword_and_attention_mask():
    h = torch.randn(2, 9, 5)
    am = (WID >= 0).long()
    am[0, 1] = 1
    _, mask = pool_words(h, WID, am, pooling="subword")
    assert torch.equal(mask, WID >= 0)
    _, mask2 = pool_words(h, None, am, pooling="subword")
    assert torch.equal(mask2, am.bool())


def test_word_ids_tensor_from_fast_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {
        "[PAD]": 0,
        "[UNK]": 1,
        "[CLS]": 2,
        "[SEP]": 3,
        "the": 4,
        "play": 5,
        "##ing": 6,
        "cat": 7,
        "##s": 8,
    }
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    enc = fast(["the cats playing", "cat"], padding=True)
    wid = word_ids_tensor(enc)
    assert wid.tolist() == [[-1, 0, 1, 1, 2, 2, -1], [-1, 0, -1, -1, -1, -1, -1]]
    h = torch.randn(2, 7, 3)
    pts, mask = pool_words(h, wid)
    assert torch.equal(pts[0, 1], h[0, 3]) and torch.equal(pts[0, 2], h[0, 5])  # last subword
    assert mask.tolist() == [[True, True, True], [True, False, False]]


def test_ot_alignment_loss_matches_reference_per_pair():
    g = torch.Generator().manual_seed(0)
    h_t = torch.randn(2, 9, 6, generator=g, dtype=torch.float64)
    h_e = torch.randn(2, 7, 6, generator=g, dtype=torch.float64)
    wid_e = torch.tensor([[-1, 0, 1, 1, 2, -1, -1], [-1, 0, 0, 0, 1, 2, -1]])
    got = ot_alignment_loss(
        h_t, h_e, word_ids=(WID, wid_e), eps=0.5, n_iters=80, reduction="none", eps_schedule=None
    )
    pt, pe = _manual_pool(h_t, WID, "last"), _manual_pool(h_e, wid_e, "last")
    for b in range(2):
        want = sinkhorn_divergence_ref(pt[b][None], pe[b][None], eps=0.5, n_iters=80)
        assert abs(got[b].item() - want.item()) < 1e-10
    got_n = ot_alignment_loss(
        h_t,
        h_e,
        word_ids=(WID, wid_e),
        normalize=True,
        eps=0.5,
        n_iters=80,
        reduction="none",
        eps_schedule=None,
    )
    for b in range(2):
        nt, ne = torch.nn.functional.normalize(pt[b], dim=-1), torch.nn.functional.normalize(pe[b], dim=-1)
        want = sinkhorn_divergence_ref(nt[None], ne[None], eps=0.5, n_iters=80)
        assert abs(got_n[b].item() - want.item()) < 1e-10


def test_ot_alignment_trains_tiny_bert():
    torch.manual_seed(0)
    model = BertModel(_cfg())
    ids_t = torch.randint(4, VOCAB, (4, 8))
    ids_e = torch.randint(4, VOCAB, (4, 6))
    am_t = torch.ones(4, 8, dtype=torch.long)
    am_t[1, 6:] = 0
    am_e = torch.ones(4, 6, dtype=torch.long)
    wid_t = torch.where(am_t.bool(), torch.arange(8).expand(4, 8) // 2, -1)  # 2 subwords per word
    wid_e = torch.where(am_e.bool(), torch.arange(6).expand(4, 6), -1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        out_t = model(input_ids=ids_t, attention_mask=am_t, output_hidden_states=True)
        out_e = model(input_ids=ids_e, attention_mask=am_e, output_hidden_states=True)
        loss = ot_alignment_loss(out_t, out_e, (am_t, am_e), word_ids=(wid_t, wid_e), eps=0.5, n_iters=30)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_drift_penalty_formula_and_module():
    h = torch.randn(3, 5, 4)
    h0 = torch.randn(3, 5, 4)
    m = torch.ones(3, 5)
    m[2, 3:] = 0
    want = sum(((h[b, t] - h0[b, t]) ** 2).sum() for b in range(3) for t in range(5) if m[b, t])
    assert torch.allclose(drift_penalty(h, h0, m, weight=0.3), 0.3 * want)
    assert torch.allclose(drift_penalty(h, h0, m, reduction="mean"), want / 13)
    assert torch.allclose(drift_penalty(h, h0, m, reduction="batchmean"), want / 3)

    torch.manual_seed(0)
    model = BertModel(_cfg())
    drift = DriftPenalty(model, weight=2.0)
    assert all(not p.requires_grad for p in drift.frozen.parameters())
    ids = torch.randint(4, VOCAB, (2, 6))
    am = torch.ones(2, 6, dtype=torch.long)
    out = model(input_ids=ids, attention_mask=am, output_hidden_states=True)
    assert drift(out, ids, am).item() < 1e-10  # unchanged model: no drift
    with torch.no_grad():
        model.encoder.layer[0].output.dense.bias.add_(0.5)
    out = model(input_ids=ids, attention_mask=am, output_hidden_states=True)
    val = drift(out, ids, am)
    ref = drift.frozen(input_ids=ids, attention_mask=am).last_hidden_state
    assert torch.allclose(val, 2.0 * ((out.last_hidden_state - ref) ** 2).sum())
    val.backward()
    assert model.encoder.layer[0].output.dense.bias.grad is not None


def test_embedding_push_and_attention_pull_manual():
    e1, e2 = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    p1 = torch.stack([e1[0, :3].mean(0), e1[1].mean(0)])
    p2 = torch.stack([e2[0, :3].mean(0), e2[1].mean(0)])
    assert torch.allclose(embedding_push(e1, e2, m, m), -((p1 - p2) ** 2).mean())

    a1 = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    a2 = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    sq = [((a1[0, :, :3, :3] - a2[0, :, :3, :3]) ** 2).flatten(), ((a1[1] - a2[1]) ** 2).flatten()]
    assert torch.allclose(attention_pull(a1, a2, m, m), torch.cat(sq).mean())
    # lengths differ in item 0: "skip" drops it, "pad" compares the common positions
    m2 = m.clone()
    m2[0, 3] = 1
    assert torch.allclose(attention_pull(a1, a2, m, m2, length_mismatch="skip"), sq[1].mean())
    assert torch.allclose(attention_pull(a1, a2, m, m2, length_mismatch="pad"), torch.cat(sq).mean())
    # different padded lengths T != T' with equal real lengths: zero-padding aligns them
    a3 = torch.softmax(torch.randn(2, 3, 7, 7), -1)
    m3 = torch.zeros(2, 7, dtype=torch.long)
    m3[0, :3] = 1
    m3[1, :5] = 1
    want = torch.cat(
        [((a1[0, :, :3, :3] - a3[0, :, :3, :3]) ** 2).flatten(), ((a1[1] - a3[1, :, :5, :5]) ** 2).flatten()]
    ).mean()
    assert torch.allclose(attention_pull(a1, a3, m, m3), want)
    m4 = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    assert attention_pull(a1, a2, m, m4, length_mismatch="skip").item() == 0.0  # no pair qualifies


def _tiny_classifier(**kw):
    torch.manual_seed(0)
    return BertForSequenceClassification(_cfg(num_labels=3, layers=6, attn_implementation="eager", **kw))


def test_ear_losses_components_and_training():
    model = _tiny_classifier()
    ids = torch.randint(4, VOCAB, (6, 7))
    am = torch.ones(6, 7, dtype=torch.long)
    am[0, 5:] = 0
    ids_p = ids.clone()
    ids_p[:, 2] = torch.randint(4, VOCAB, (6,))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    batch = {"input_ids": ids, "attention_mask": am, "labels": labels}
    batch_p = {"input_ids": ids_p, "attention_mask": am}
    res = ear_losses(model, batch, batch_p)
    out = model(input_ids=ids, attention_mask=am, output_hidden_states=True, output_attentions=True)
    out_p = model(input_ids=ids_p, attention_mask=am, output_hidden_states=True, output_attentions=True)
    ce = torch.nn.functional.cross_entropy(out.logits, labels)
    ce_p = torch.nn.functional.cross_entropy(out_p.logits, labels)
    push = embedding_push(out.hidden_states[0], out_p.hidden_states[0], am, am)
    pull = attention_pull(out.attentions[5], out_p.attentions[5], am, am)
    assert torch.allclose(res.ce, ce) and torch.allclose(res.ce_perturbed, ce_p)
    assert torch.allclose(res.embedding_push, push) and torch.allclose(res.attention_pull, pull)
    assert torch.allclose(res.total, ce + ce_p + 0.1 * push + pull)
    assert res.embedding_push.item() < 0 and res.attention_pull.item() > 0
    # weights and layer are configurable
    res2 = ear_losses(model, batch, batch_p, push_weight=0.0, pull_weight=2.0, attention_layer=-1)
    pull_last = attention_pull(out.attentions[-1], out_p.attentions[-1], am, am)
    assert torch.allclose(res2.total, ce + ce_p + 2.0 * pull_last)
    # identical copies: nothing to push or pull
    same = ear_losses(model, batch, {"input_ids": ids, "attention_mask": am})
    assert abs(same.embedding_push.item()) < 1e-12 and same.attention_pull.item() < 1e-12

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    totals = []
    for _ in range(10):
        opt.zero_grad()
        r = ear_losses(model, batch, batch_p)
        r.total.backward()
        opt.step()
        totals.append(r.total.item())
    assert totals[-1] < 0.8 * totals[0], totals


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: pool_words(torch.randn(2, 9, 3), WID, pooling="max"), "pooling must be one of"),
        (lambda: pool_words(torch.randn(2, 9, 3), None), "word_ids .* is required"),
        (lambda: pool_words(torch.randn(2, 8, 3), WID), r"word_ids must have shape \(2, 8\)"),
        (
            lambda: ot_alignment_loss(torch.randn(2, 9, 3), torch.randn(3, 9, 3), word_ids=(WID, WID)),
            "same number of parallel sentences",
        ),
        (
            lambda: ot_alignment_loss(
                torch.randn(2, 9, 3), torch.randn(2, 9, 3), word_ids=(WID, WID * 0 - 1)
            ),
            "word_ids holds no word",
        ),
        (lambda: ot_alignment_loss(torch.randn(2, 9), torch.randn(2, 9, 3)), "must be 3-D"),
        (
            lambda: drift_penalty(torch.randn(2, 3, 4), torch.randn(2, 3, 5)),
            "frozen_hidden must have the shape",
        ),
        (lambda: drift_penalty(torch.randn(2, 3, 4), torch.randn(2, 3, 4), weight=-1), "weight must be >= 0"),
        (lambda: attention_pull(torch.rand(2, 1, 3, 3), torch.rand(2, 2, 3, 3)), "same B and heads"),
        (
            lambda: attention_pull(torch.rand(2, 1, 3, 3), torch.rand(2, 1, 3, 3), length_mismatch="x"),
            "length_mismatch",
        ),
        (lambda: word_ids_tensor(42), "encoding must be a BatchEncoding"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_ear_errors():
    model = _tiny_classifier()
    ids = torch.randint(4, VOCAB, (2, 5))
    batch = {"input_ids": ids}
    with pytest.raises(ValueError, match="labels missing"):
        ear_losses(model, batch, batch)
    with pytest.raises(ValueError, match=r"attention_layer must be in 1\.\.6"):
        ear_losses(model, batch, batch, labels=torch.tensor([0, 1]), attention_layer=7)
    with pytest.raises(ValueError, match="labels must be a"):
        ear_losses(model, batch, batch, labels=torch.tensor([0, 1, 2]))
    sdpa = BertForSequenceClassification(_cfg(num_labels=3, attn_implementation="sdpa"))
    with pytest.raises(ValueError, match="eager attention"):
        ear_losses(sdpa, batch, batch, labels=torch.tensor([0, 1]))
    out = model(**batch, output_hidden_states=True, output_attentions=True)
    plain = BertModel(_cfg(attn_implementation="eager"))(
        **batch, output_hidden_states=True, output_attentions=True
    )
    with pytest.raises(ValueError, match="logits missing"):
        ear_losses_from_outputs(plain, out, torch.tensor([0, 1]))
