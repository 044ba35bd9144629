"""Perturbed English copies for EAR by offline embedding-neighbour substitution.

This is **not** WordNet synonym substitution (Ding et al. 2022 used WordNet; nothing here downloads
anything): a "synonym" of a whole-word token is one of its ``k`` nearest tokens by cosine
similarity in the model's own input-embedding matrix, restricted to whole-word tokens (subword
continuation pieces, special tokens, the token itself and its case variants are excluded). Neighbours
in an input-embedding space are often, but not always, synonyms (antonyms, inflections and
related words also show up), so treat it as a cheap offline proxy.

Substitution is token for token — only words that are a single token are replaced, by a single
token — so the perturbed batch keeps the original token positions and lengths (EAR's attention
pull then compares aligned positions exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["EmbeddingNeighbourPerturber", "token_ids_in_texts"]

_SP = "\u2581"  # SentencePiece word-start marker (XLM-R / e5 vocabularies)


def _vocab_and_specials(vocab: Any) -> tuple[list[str], set[int]]:
    if isinstance(vocab, (list, tuple)):
        if not vocab or not all(isinstance(t, str) for t in vocab):
            raise ValueError("vocab must be a non-empty list of token strings indexed by id")
        return list(vocab), set()
    if hasattr(vocab, "convert_ids_to_tokens"):  # transformers tokenizer
        n = len(vocab)
        toks = vocab.convert_ids_to_tokens(list(range(n)))
        return [t if isinstance(t, str) else "" for t in toks], set(
            getattr(vocab, "all_special_ids", []) or []
        )
    if hasattr(vocab, "id_to_token") and hasattr(vocab, "get_vocab_size"):  # tokenizers.Tokenizer
        n = vocab.get_vocab_size(with_added_tokens=True)
        toks = [vocab.id_to_token(i) or "" for i in range(n)]
        specials = set()
        if hasattr(vocab, "get_added_tokens_decoder"):
            specials = {
                int(i) for i, t in vocab.get_added_tokens_decoder().items() if getattr(t, "special", False)
            }
        return toks, specials
    raise ValueError(
        "vocab must be a list of token strings, a transformers tokenizer or a tokenizers.Tokenizer, got "
        f"{type(vocab).__name__}"
    )


def _embedding_weight(embeddings: Any) -> torch.Tensor:
    if isinstance(embeddings, torch.Tensor):
        w = embeddings
    elif isinstance(embeddings, torch.nn.Embedding):
        w = embeddings.weight
    elif hasattr(embeddings, "get_input_embeddings"):
        w = embeddings.get_input_embeddings().weight
    else:
        raise ValueError(
            "embeddings must be a (V, H) tensor, an nn.Embedding or a model with get_input_embeddings(), "
            f"got {type(embeddings).__name__}"
        )
    if w.ndim != 2 or not w.dtype.is_floating_point:
        raise ValueError(
            f"embeddings must be a 2-D (V, H) float matrix, got shape {tuple(w.shape)} dtype {w.dtype}"
        )
    return w.detach()


def token_ids_in_texts(tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """Sorted unique token ids occurring in ``texts`` (e.g. an English corpus), for ``candidate_ids``."""
    if isinstance(texts, str) or not len(texts):
        raise ValueError("texts must be a non-empty sequence of strings")
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        rows = [e.ids for e in tokenizer.encode_batch(list(texts))]
    else:  # transformers tokenizer
        rows = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return torch.tensor(sorted({int(i) for r in rows for i in r}), dtype=torch.int64)


class EmbeddingNeighbourPerturber:
    """Replace single-token words by embedding-space neighbours (seeded, token for token).

    Args:
        embeddings: (V, H) input-embedding matrix, an ``nn.Embedding``, or a model with
            ``get_input_embeddings()`` (the matrix is referenced, not copied; neighbours are
            computed lazily from its values at first use and cached).
        vocab: token strings indexed by id (list), a transformers tokenizer or a
            ``tokenizers.Tokenizer``. SentencePiece vocabularies (word-start marker ``▁``) and
            WordPiece vocabularies (continuation prefix ``##``) are both understood.
        rate: probability of replacing each eligible word (0..1).
        k: sample the replacement uniformly among the ``k`` nearest whole-word tokens.
        seed: seed of the internal generator (each call advances it).
        ascii_only: restrict words and replacements to ASCII letters (for English text in a
            multilingual vocabulary, so a word is not replaced by a token from another script).
        min_chars: minimum number of letters of an eligible word / replacement.
        special_ids: extra token ids never touched (the tokenizer's special ids are added).
        candidate_ids: restrict replacements to these token ids (still only whole-word tokens).
            In a multilingual vocabulary the nearest neighbours of an English word are mostly its
            translations (``▁music`` → ``▁muziek``, ``▁musique``); passing the ids seen in an
            English corpus (:func:`token_ids_in_texts`) keeps the copies English.
    """

    def __init__(
        self,
        embeddings: Any,
        vocab: Any,
        *,
        rate: float = 0.15,
        k: int = 10,
        seed: int = 0,
        ascii_only: bool = True,
        min_chars: int = 2,
        special_ids: Sequence[int] | None = None,
        candidate_ids: Sequence[int] | torch.Tensor | None = None,
        chunk: int = 65536,
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self._w = _embedding_weight(embeddings)
        tokens, specials = _vocab_and_specials(vocab)
        if len(tokens) > self._w.shape[0]:
            raise ValueError(f"vocab has {len(tokens)} tokens but embeddings only {self._w.shape[0]} rows")
        self.tokens = tokens
        self.special_ids = specials | set(int(i) for i in (special_ids or ()))
        self.rate = float(rate)
        self.k = k
        self.ascii_only = ascii_only
        self.min_chars = min_chars
        self.chunk = chunk
        self.generator = torch.Generator().manual_seed(int(seed))
        self.sentencepiece = any(t.startswith(_SP) for t in tokens)
        n = len(tokens)
        # per-token flags: does it continue the previous word (a subword piece with letters or
        # digits; punctuation such as "," in "▁Hello ," ends a word), is it a clean whole word
        self._continues = torch.zeros(n, dtype=torch.bool)
        self._whole = torch.zeros(n, dtype=torch.bool)
        self._key = [""] * n  # lowercase word form, to exclude case variants of the token itself
        for i, t in enumerate(tokens):
            if i in self.special_ids or not t:
                continue
            if self.sentencepiece:
                starts = t.startswith(_SP)
                word = t[1:] if starts else t
            else:
                starts = not t.startswith("##")
                word = t if starts else t[2:]
            self._continues[i] = (not starts) and any(ch.isalnum() for ch in word)
            ok = starts and len(word) >= min_chars and word.isalpha() and (word.isascii() or not ascii_only)
            if ok:
                self._whole[i] = True
                self._key[i] = word.lower()
        cand_mask = self._whole.clone()
        if candidate_ids is not None:
            allowed = torch.zeros(n, dtype=torch.bool)
            ids = torch.as_tensor(
                list(candidate_ids) if not isinstance(candidate_ids, torch.Tensor) else candidate_ids
            )
            ids = ids.long().flatten()
            if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= n):
                raise ValueError(
                    f"candidate_ids must be token ids in [0, {n}), got range [{int(ids.min())}, "
                    f"{int(ids.max())}]"
                )
            allowed[ids] = True
            cand_mask &= allowed
        self._candidates = cand_mask.nonzero().flatten()
        if len(self._candidates) < 2:
            raise ValueError("vocab has fewer than 2 whole-word tokens: nothing to substitute with")
        self._cache: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------------------ neighbours
    def neighbours(self, token_ids: Sequence[int] | torch.Tensor) -> dict[int, torch.Tensor]:
        """Up to ``k`` nearest whole-word tokens (by cosine, best first) for each token id."""
        ids = [int(i) for i in (token_ids.tolist() if isinstance(token_ids, torch.Tensor) else token_ids)]
        todo = sorted({i for i in ids if i not in self._cache})
        if todo:
            self._compute(todo)
        return {i: self._cache[i] for i in ids}

    def _compute(self, todo: list[int]) -> None:
        w = self._w.float()
        q = w[todo]
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        # a few extra candidates cover the excluded token itself and its case variants
        extra = self.k + 8
        best_s = torch.full((len(todo), 0), float("-inf"))
        best_i = torch.empty((len(todo), 0), dtype=torch.int64)
        for c0 in range(0, len(self._candidates), self.chunk):
            cand = self._candidates[c0 : c0 + self.chunk]
            e = w[cand]
            s = q @ (e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)).T
            kk = min(extra, s.shape[1])
            ts, ti = s.topk(kk, dim=1)
            best_s = torch.cat([best_s, ts], 1)
            best_i = torch.cat([best_i, cand[ti]], 1)
            keep = best_s.topk(min(extra, best_s.shape[1]), dim=1).indices
            best_s, best_i = best_s.gather(1, keep), best_i.gather(1, keep)
        order = best_s.argsort(dim=1, descending=True, stable=True)
        best_i = best_i.gather(1, order)
        for row, tok in enumerate(todo):
            key = self._key[tok] if tok < len(self._key) else ""
            nb = [int(j) for j in best_i[row].tolist() if j != tok and (not key or self._key[j] != key)]
            self._cache[tok] = torch.tensor(nb[: self.k], dtype=torch.int64)

    # ---------------------------------------------------------------------------- perturbation
    def eligible(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) bool: positions holding a word that is exactly one whole-word token."""
        ids = input_ids.long().clamp(0, len(self.tokens) - 1)
        in_vocab = (input_ids >= 0) & (input_ids < len(self.tokens))
        whole = self._whole[ids] & in_vocab
        # the next token must not continue this word, else this is only the first piece of it
        nxt_ids = torch.cat([ids[:, 1:], ids[:, :1]], 1)
        nxt_continues = self._continues[nxt_ids] & torch.cat([in_vocab[:, 1:], in_vocab[:, :1]], 1)
        nxt_continues[:, -1] = False
        if attention_mask is not None:
            real = attention_mask != 0
            nxt_real = torch.cat([real[:, 1:], torch.zeros_like(real[:, :1])], 1)
            nxt_continues = nxt_continues & nxt_real
            whole = whole & real
        return whole & ~nxt_continues

    def perturb_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Perturbed copy of ``input_ids`` (B, T) int64 (same shape; padding and specials untouched)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a 2-D (B, T) int tensor, got {got}")
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"attention_mask must have shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
            )
        gen = generator or self.generator
        ids_cpu = input_ids.detach().cpu()
        mask_cpu = attention_mask.detach().cpu() if attention_mask is not None else None
        elig = self.eligible(ids_cpu, mask_cpu)
        draw = torch.rand(ids_cpu.shape, generator=gen) < self.rate
        pick = torch.rand(ids_cpu.shape, generator=gen)  # drawn for every position: output is
        # reproducible for a given seed and batch shape regardless of the cache state
        sel = (elig & draw).nonzero().tolist()
        out = ids_cpu.clone()
        if sel:
            nbs = self.neighbours([int(ids_cpu[b, t]) for b, t in sel])
            for b, t in sel:
                cand = nbs[int(ids_cpu[b, t])]
                if len(cand):
                    out[b, t] = cand[min(int(pick[b, t] * len(cand)), len(cand) - 1)]
        return out.to(input_ids.device, input_ids.dtype)

    def perturb_batch(
        self, batch: dict[str, Any], *, generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """Copy of a tokenizer batch with ``input_ids`` perturbed (other fields shared, lengths kept)."""
        if "input_ids" not in batch:
            raise ValueError("batch must contain 'input_ids'")
        out = dict(batch)
        out["input_ids"] = self.perturb_ids(
            batch["input_ids"], batch.get("attention_mask"), generator=generator
        )
        return out
