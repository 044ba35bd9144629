"""Embedding-neighbour perturbation: planted neighbours, word boundaries, seeding, rate, lengths."""

from __future__ import annotations

import pytest
import torch

from tests.utils import tiny_config
from xite_fast.objectives.perturb import EmbeddingNeighbourPerturber, token_ids_in_texts

SP = "\u2581"
# id: token. Planted geometry (see _emb): happy ~ glad ~ Happy ~ "ing" ~ 日本 ; cat ~ dog ; run ~ walk
TOKENS = [
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",  # 0-3 specials
    SP + "happy",
    SP + "glad",
    SP + "Happy",
    "ing",  # 4-7
    SP + "日本",
    SP + "cat",
    SP + "dog",
    SP + "run",  # 8-11
    SP + "walk",
    SP + "play",
    "s",
    ",",  # 12-15
    SP + "an",
    SP + "the",  # 16-17
]
SPECIAL = [0, 1, 2, 3]


def _emb(dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(len(TOKENS), dim, generator=g)
    base_happy = torch.randn(dim, generator=g)
    for i, noise in [(4, 0.0), (5, 0.05), (6, 0.01), (7, 0.02), (8, 0.03)]:
        e[i] = base_happy + noise * torch.randn(dim, generator=g)
    e[10] = e[9] + 0.05 * torch.randn(dim, generator=g)
    e[12] = e[11] + 0.05 * torch.randn(dim, generator=g)
    return e


def _perturber(**kw):
    args = dict(rate=1.0, k=1, seed=0, special_ids=SPECIAL)
    args.update(kw)
    return EmbeddingNeighbourPerturber(_emb(), TOKENS, **args)


def test_nearest_whole_word_excludes_self_case_variants_pieces_and_other_scripts():
    p = _perturber()
    nb = p.neighbours([4, 9, 11])
    assert nb[4].tolist() == [5]  # not Happy (case variant), not "ing" (piece), not 日本 (non-ASCII)
    assert nb[9].tolist() == [10]
    assert nb[11].tolist() == [12]
    p2 = _perturber(ascii_only=False)
    assert p2.neighbours([4])[4].tolist() == [8]  # 日本 is closer than glad once other scripts are allowed


def test_neighbours_match_bruteforce_cosine():
    p = _perturber(k=4)
    e = torch.nn.functional.normalize(_emb(), dim=-1)
    whole = [i for i in range(4, len(TOKENS)) if TOKENS[i].startswith(SP) and TOKENS[i][1:].isascii()]
    for tok in (9, 13, 16):
        cands = [j for j in whole if j != tok]
        want = sorted(cands, key=lambda j: -float(e[tok] @ e[j]))[:4]
        assert p.neighbours([tok])[tok].tolist() == want


def test_only_single_token_words_are_replaced_and_lengths_kept():
    p = _perturber()
    # <s> happy ing(->"happying": 2 pieces) cat , run </s> <pad>
    ids = torch.tensor([[1, 4, 7, 9, 15, 11, 2, 0], [1, 13, 14, 16, 17, 4, 2, 0]])
    am = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 0]])
    out = p.perturb_ids(ids, am)
    assert out.shape == ids.shape and out.dtype == ids.dtype
    # "happy" + "ing" is one word -> untouched; "cat" before "," is a whole word -> dog; run -> walk
    assert out[0].tolist() == [1, 4, 7, 10, 15, 12, 2, 0]
    # "play"+"s" untouched; a/the replaced by their nearest whole word; happy (before </s>) -> glad
    assert out[1, :3].tolist() == [1, 13, 14]
    assert out[1, 5].item() == 5 and out[1, 6:].tolist() == [2, 0]
    assert out[1, 3].item() != 16 and out[1, 4].item() != 17


def test_padding_and_specials_untouched_and_mask_respected():
    p = _perturber()
    ids = torch.tensor([[1, 9, 2, 9, 9]])
    am = torch.tensor([[1, 1, 1, 0, 0]])  # trailing 'cat's are padding
    assert p.perturb_ids(ids, am).tolist() == [[1, 10, 2, 9, 9]]


def test_seeded_reproducible_and_rate():
    ids = torch.tensor([[9, 11, 16, 17] * 50] * 50)
    a = _perturber(rate=0.3, k=2, seed=7).perturb_ids(ids)
    b = _perturber(rate=0.3, k=2, seed=7).perturb_ids(ids)
    c = _perturber(rate=0.3, k=2, seed=8).perturb_ids(ids)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    frac = (a != ids).float().mean().item()
    assert 0.27 < frac < 0.33, frac
    assert torch.equal(_perturber(rate=0.0).perturb_ids(ids), ids)
    # replacements are always among the k nearest
    p = _perturber(rate=0.3, k=2, seed=7)
    nb = p.neighbours([9, 11, 16, 17])
    changed = (a != ids).nonzero().tolist()
    assert all(int(a[i, j]) in nb[int(ids[i, j])].tolist() for i, j in changed)


def test_perturb_batch_and_wordpiece_vocab():
    vocab = ["[PAD]", "[CLS]", "[SEP]", "happy", "glad", "##ly", "cat", "dog"]
    e = torch.randn(len(vocab), 6, generator=torch.Generator().manual_seed(3))
    e[4] = e[3] + 0.01
    e[5] = e[3] + 0.001  # a continuation piece, never a candidate
    e[7] = e[6] + 0.01
    p = EmbeddingNeighbourPerturber(
        torch.nn.Embedding.from_pretrained(e), vocab, rate=1.0, k=1, special_ids=[0, 1, 2]
    )
    assert not p.sentencepiece
    batch = {
        "input_ids": torch.tensor([[1, 3, 6, 2], [1, 3, 5, 2]]),
        "attention_mask": torch.ones(2, 4),
        "x": 1,
    }
    out = p.perturb_batch(batch)
    assert out["input_ids"].tolist() == [[1, 4, 7, 2], [1, 3, 5, 2]]  # "happy ##ly" is one word
    assert out["x"] == 1 and batch["input_ids"][0, 1] == 3  # input not modified


def test_accepts_model_and_hf_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertModel, PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "good": 2, "fine": 3, "bad": 4}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    model = BertModel(tiny_config(vocab_size=5, hidden=8, layers=1, intermediate=8))
    p = EmbeddingNeighbourPerturber(model, fast, rate=1.0, k=1)
    assert p.special_ids == {0, 1}
    enc = fast(["good bad"], return_tensors="pt")
    out = p.perturb_ids(enc["input_ids"], enc["attention_mask"])
    assert out.shape == enc["input_ids"].shape
    assert set(out[0].tolist()) <= {2, 3, 4} and (out != enc["input_ids"]).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rate=1.5), r"rate must be in \[0, 1\]"),
        (dict(k=0), "k must be a positive int"),
        (dict(embeddings=torch.zeros(3)), r"embeddings must be a 2-D \(V, H\)"),
        (dict(embeddings="x"), "embeddings must be a"),
        (dict(vocab=42), "vocab must be a list of token strings"),
        (dict(vocab=TOKENS + ["extra"] * 5), "vocab has 23 tokens but embeddings only 18 rows"),
        (dict(vocab=["<pad>", "ing"] + ["s"] * 16), "fewer than 2 whole-word tokens"),
    ],
)
def test_errors(kwargs, match):
    args = dict(embeddings=_emb(), vocab=TOKENS)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        EmbeddingNeighbourPerturber(args.pop("embeddings"), args.pop("vocab"), **args)


def test_perturb_ids_errors():
    p = _perturber()
    with pytest.raises(ValueError, match=r"input_ids must be a 2-D \(B, T\)"):
        p.perturb_ids(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        p.perturb_ids(torch.tensor([[1, 2]]), torch.ones(1, 3))
    with pytest.raises(ValueError, match="batch must contain 'input_ids'"):
        p.perturb_batch({})


def test_candidate_ids_restrict_replacements():
    # without restriction happy -> glad; allowing only {happy, cat} leaves happy's nearest = cat
    p = _perturber(candidate_ids=[4, 9])
    assert p.neighbours([4])[4].tolist() == [9]
    with pytest.raises(ValueError, match="candidate_ids must be token ids"):
        _perturber(candidate_ids=[4, 99])


def test_token_ids_in_texts():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "good": 1, "fine": 2, "bad": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert token_ids_in_texts(tok, ["good bad", "bad"]).tolist() == [1, 3]
    with pytest.raises(ValueError, match="texts must be a non-empty sequence"):
        token_ids_in_texts(tok, "good")
