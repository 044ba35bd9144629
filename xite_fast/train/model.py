"""XiteModel: the XITE source/target mix around any ``AutoModelForSequenceClassification``.

The wrapper never re-implements the user's model: it calls it (``model(input_ids=..., ...)`` or
``model(inputs_embeds=...)``) and changes one tensor with a forward hook on the model's own modules.

* ``"sentence"``: the source and target rows run as one batch of 2B rows (padded to one length); a
  forward pre-hook on the classification head (``head_module``) replaces its input x (2B, ...) by
  ``mix(x[:B], x[B:])`` (B, ...), so the head, its pooling and its loss stay the model's own.
* ``"input"``: ``mix(E(src), E(tgt))`` of the word embeddings (``get_input_embeddings()``) is passed as
  ``inputs_embeds`` with the union of the two attention masks.
* ``"hidden"``: the 2B rows run with their own masks up to layer L; a pre-hook on layer L zeroes each
  row past its length and replaces both halves by the mix; pre-hooks on layers >= L give both halves the
  union mask (elementwise max / or of the model's own mask tensors, whatever format the layer receives).
  The head then reads the first half.

The frozen-prefix cache keeps, per distinct tokenized sentence, the states leaving the last frozen layer
(computed once in eval mode, no grad). A cached forward swaps the frozen layers for pass-through modules
(the last one returns the cached states), so only the trainable layers run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xite_fast.train.config import XiteConfig

__all__ = ["XiteModel", "find_layers", "find_head", "WRAPPER_CONFIG", "WRAPPER_LDA"]

# beside the user's model files in a saved folder (a checkpoint): the wrapper's own state
WRAPPER_CONFIG = "xite_config.json"
WRAPPER_LDA = "xite_lda_W.npy"


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass early."""


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The model's transformer layer list: the first ModuleList with ``num_hidden_layers`` entries."""
    n = getattr(model.config, "num_hidden_layers", None)
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n and n:
            return mod
    raise ValueError(
        f"cannot find the transformer layer list of {type(model).__name__} (no ModuleList with "
        f"config.num_hidden_layers={n} entries); placement 'hidden' and the frozen-prefix cache need it"
    )


def find_head(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """(dotted name, module) of the classification head whose input is the pooled representation."""
    mods = dict(model.named_modules())
    if name is not None:
        if name not in mods:
            raise ValueError(f"head_module {name!r} is not a module of {type(model).__name__}")
        return name, mods[name]
    for cand in ("pre_classifier", "classifier", "score"):
        if cand in mods:
            return cand, mods[cand]
    raise ValueError(
        f"cannot find the classification head of {type(model).__name__} (no "
        "pre_classifier/classifier/score); set XiteConfig.head_module"
    )


def _mask_index(layer: nn.Module) -> tuple[str, int]:
    """Name and positional index of the attention-mask argument of a layer's forward."""
    params = [p for p in inspect.signature(layer.forward).parameters.values() if p.kind != p.VAR_KEYWORD]
    for i, p in enumerate(params):
        if p.name in ("attention_mask", "attn_mask", "mask"):
            return p.name, i
    raise ValueError(f"cannot find the attention-mask argument of {type(layer).__name__}.forward")


def _union_halves(m: Any) -> Any:
    """The model's per-row mask (2B, ...) -> both halves replaced by their union (attend if either does)."""
    if not isinstance(m, torch.Tensor) or m.shape[0] % 2:
        if m is None:
            return None
        raise ValueError(f"placement 'hidden' cannot unite attention masks of type {type(m).__name__}")
    B = m.shape[0] // 2
    u = (m[:B] | m[B:]) if m.dtype == torch.bool else torch.maximum(m[:B], m[B:])
    return torch.cat([u, u])


class _PassThrough(nn.Module):
    """Stands in for a frozen layer during a cached forward; the last one returns the cached states."""

    def __init__(self, returns_tuple: bool, states: torch.Tensor | None = None):
        super().__init__()
        self.returns_tuple = returns_tuple
        self.states = states

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = hidden_states if self.states is None else self.states.to(hidden_states.dtype)
        return (out,) if self.returns_tuple else out


class XiteModel(nn.Module):
    """Wraps ``model`` (an ``AutoModelForSequenceClassification``) for XITE training inside HF ``Trainer``.

    ``forward`` takes the collator's batch (:class:`xite_fast.train.collator.XiteCollator`):
    ``input_ids``/``attention_mask`` (B, T) of the target texts and, for stage 2, ``src_input_ids``/
    ``src_attention_mask`` (B, T) of their matched sources (the same T), plus ``labels``; it returns the
    model's ``SequenceClassifierOutput`` with the loss of ``config.problem_type`` (CE, BCE-with-logits
    or MSE). ``save_pretrained`` saves the user's model itself (no wrapper in the files).

    Args:
        model: the user's sequence-classification model (any architecture; hooks need ``config``).
        config: :class:`XiteConfig`.
        W: (D, r) float32 LDA basis for ``config.lda`` (or set later with :meth:`set_lda`).
    """

    def __init__(self, model: nn.Module, config: XiteConfig | None = None, W: Any = None):
        super().__init__()
        if not hasattr(model, "config") or not hasattr(model, "get_input_embeddings"):
            raise ValueError(
                "model must be a transformers PreTrainedModel (AutoModelForSequenceClassification), got "
                f"{type(model).__name__}"
            )
        self.model = model
        # prefix=None: the backbone's default ("query: " for e5), resolved once here
        self.xite = (config or XiteConfig()).resolved(model)
        # references into the user's model, kept out of _modules (no second name for the same weights)
        layers: nn.ModuleList | None = None
        try:
            layers = find_layers(model)
        except ValueError:
            if self.xite.placement == "hidden" or self.xite.freeze_layers or self.xite.cache_frozen:
                raise
        object.__setattr__(self, "_layers", layers)
        self.xite.validate(len(self._layers) if self._layers is not None else None)
        self.head_name, head = find_head(model, self.xite.head_module)
        object.__setattr__(self, "head", head)
        self.cache: dict[tuple, torch.Tensor] = {}
        self.ear_terms: list[dict[str, float]] = []  # unweighted EAR terms per training forward
        self._returns_tuple: bool | None = None
        self.register_buffer("lda_W", None)
        if W is not None:
            self.set_lda(W)
        self.apply_freezing()

    # ------------------------------------------------------------------ plumbing
    @property
    def config(self) -> Any:  # Trainer and users read model.config
        return self.model.config

    @property
    def num_layers(self) -> int:
        return len(self._layers) if self._layers is not None else 0

    def set_lda(self, W: Any) -> None:
        W = torch.as_tensor(W, dtype=torch.float32)
        D = self.model.get_input_embeddings().embedding_dim
        if W.ndim != 2 or W.shape[0] != D:
            raise ValueError(f"W must be (D={D}, r), got shape {tuple(W.shape)}")
        dev = next(self.model.parameters()).device
        self.lda_W = W.contiguous().to(dev)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """The user's model's ``save_pretrained`` (``config.json`` + weights under its own key names:
        ``AutoModelForSequenceClassification.from_pretrained`` and ``pipeline`` load the folder), and the
        wrapper's own state beside it: ``xite_config.json`` (the :class:`XiteConfig`) and, with an LDA basis,
        ``xite_lda_W.npy``; :meth:`from_pretrained` reads both back."""
        out = self.model.save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            folder = Path(save_directory)
            with open(folder / WRAPPER_CONFIG, "w", encoding="utf-8") as fh:
                json.dump({"xite_config": dataclasses.asdict(self.xite)}, fh, indent=1)
            if self.lda_W is not None:
                np.save(folder / WRAPPER_LDA, self.lda_W.detach().cpu().numpy())
        return out

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **kwargs: Any) -> XiteModel:
        """A folder written by :meth:`save_pretrained` (every :class:`~xite_fast.train.trainer.XiteTrainer`
        checkpoint is one) back as the wrapper: ``AutoModelForSequenceClassification.from_pretrained(folder,
        **kwargs)`` with the saved :class:`XiteConfig` and LDA basis (a plain model folder: the defaults)."""
        from transformers import AutoModelForSequenceClassification

        folder = Path(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)
        cfg = None
        if (folder / WRAPPER_CONFIG).is_file():
            with open(folder / WRAPPER_CONFIG, encoding="utf-8") as fh:
                cfg = XiteConfig(**json.load(fh)["xite_config"])
        W = np.load(folder / WRAPPER_LDA) if (folder / WRAPPER_LDA).is_file() else None
        return cls(model, cfg, W=W)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Also takes the user's model's own state dict (a checkpoint folder written with
        ``save_pretrained``: keys without the ``model.`` prefix), as Trainer's resume and
        ``load_best_model_at_end`` hand it."""
        keys = list(state_dict)
        if keys and not any(k.startswith("model.") for k in keys):
            state_dict = {(k if k == "lda_W" else f"model.{k}"): v for k, v in state_dict.items()}
            if self.lda_W is not None and "lda_W" not in state_dict:  # fixed while training: kept
                state_dict["lda_W"] = self.lda_W
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def embeddings_module(self) -> nn.Module:
        emb = getattr(getattr(self.model, "base_model", self.model), "embeddings", None)
        return emb if emb is not None else self.model.get_input_embeddings()

    def frozen_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = [self.embeddings_module()] if self.xite.freeze_embeddings else []
        if self.xite.freeze_layers:
            mods += list(self._layers[: self.xite.freeze_layers])
        return mods

    def apply_freezing(self) -> None:
        for m in self.frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> XiteModel:
        # frozen parts are a fixed feature extractor: no dropout, so cached == recomputed
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

    def head_parameter_names(self) -> set[str]:
        return {f"model.{self.head_name}.{n}" for n, _ in self.head.named_parameters()} | (
            {f"model.classifier.{n}" for n, _ in self.model.classifier.named_parameters()}
            if self.head_name == "pre_classifier" and hasattr(self.model, "classifier")
            else set()
        )

    # ------------------------------------------------------------------ frozen-prefix cache
    def _use_cache(self) -> bool:
        return self.xite.cache_frozen

    @staticmethod
    def _keys(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None) -> list[tuple]:
        lens = mask.sum(1).tolist()
        ids_l = ids.tolist()
        types_l = types.tolist() if types is not None else None
        return [
            (tuple(ids_l[i][: lens[i]]), tuple(types_l[i][: lens[i]]) if types_l is not None else None)
            for i in range(len(lens))
        ]

    @torch.no_grad()
    def _fill_cache(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None) -> list[tuple]:
        keys = self._keys(ids, mask, types)
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        todo = list({keys[i]: i for i in todo}.values())
        if todo:
            F = self.xite.freeze_layers
            idx = torch.as_tensor(todo, device=ids.device)
            T = int(mask[idx].sum(1).max())
            captured: dict[str, Any] = {}

            def grab(_mod: nn.Module, _inp: Any, out: Any) -> None:
                captured["h"] = out[0] if isinstance(out, tuple) else out
                captured["tuple"] = isinstance(out, tuple)
                raise _Stop

            was = [m.training for m in self.frozen_modules()]
            for m in self.frozen_modules():
                m.eval()
            handle = self._layers[F - 1].register_forward_hook(grab)
            try:
                kw = {"token_type_ids": types[idx, :T]} if types is not None else {}
                self.model(input_ids=ids[idx, :T], attention_mask=mask[idx, :T], **kw)
            except _Stop:
                pass
            finally:
                handle.remove()
                for m, w in zip(self.frozen_modules(), was, strict=True):
                    m.train(w)
            self._returns_tuple = captured["tuple"]
            h = captured["h"]
            for j, i in enumerate(todo):
                n = len(keys[i][0])
                self.cache[keys[i]] = h[j, :n].detach().clone()
        return keys

    def _cached_states(
        self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None
    ) -> torch.Tensor:
        keys = self._fill_cache(ids, mask, types)
        first = self.cache[keys[0]]
        out = first.new_zeros((len(keys), ids.shape[1], first.shape[-1]))
        for i, k in enumerate(keys):
            st = self.cache[k]
            out[i, : st.shape[0]] = st.to(out.device)
        return out

    @contextlib.contextmanager
    def _prefix_swapped(self, states: torch.Tensor) -> Iterator[None]:
        F = self.xite.freeze_layers
        saved = [self._layers[i] for i in range(F)]
        try:
            for i in range(F):
                self._layers[i] = _PassThrough(bool(self._returns_tuple), states if i == F - 1 else None)
            yield
        finally:
            for i in range(F):
                self._layers[i] = saved[i]

    # ------------------------------------------------------------------ forward pieces
    def _base(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        types: torch.Tensor | None,
    ) -> Any:
        """The user's model on (rows, T) ids, through the cache when it is on."""
        kw: dict[str, Any] = {"attention_mask": mask}
        if types is not None:
            kw["token_type_ids"] = types
        if self._use_cache():
            states = self._cached_states(ids, mask, types)
            with self._prefix_swapped(states):
                return self.model(input_ids=ids, **kw)
        return self.model(input_ids=ids, **kw)

    def _lam(self, B: int, device: torch.device, lam: torch.Tensor | None) -> torch.Tensor:
        if lam is not None:
            return torch.as_tensor(lam, dtype=torch.float32, device=device).reshape(-1).expand(B).contiguous()
        alpha = self.xite.beta_alpha()
        if alpha is None:
            return torch.full((B,), float(self.xite.lam), device=device)
        a = torch.full((B,), alpha, device=device)
        lam = torch.distributions.Beta(a, a).sample().float()
        p0, p1 = self.xite.lam_mixture()
        if p0 or p1:  # the mixture's point masses (one more draw only when asked: old runs keep their RNG)
            u = torch.rand(B, device=device)
            lam = torch.where(u < p0, torch.zeros_like(lam), lam)
            lam = torch.where((u >= p0) & (u < p0 + p1), torch.ones_like(lam), lam)
        return lam

    def _mix(self, s: torch.Tensor, t: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        from xite_fast.ops.lda_project_interp import mix_states

        W = self.lda_W if self.xite.lda else None
        if W is None:
            return mix_states(s, t, lam, None)
        if s.ndim == 3:  # per-token mix: lam broadcast over T
            B, T, D = s.shape
            out = mix_states(
                s.reshape(B * T, D),
                t.reshape(B * T, D),
                lam.repeat_interleave(T),
                W,
                self.xite.lda_mode,
                self.xite.backend,
            )
            return out.reshape(B, T, D)
        return mix_states(s, t, lam, W, self.xite.lda_mode, self.xite.backend)

    def _mixed_logits(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        types: torch.Tensor | None,
        s_ids: torch.Tensor,
        s_mask: torch.Tensor,
        s_types: torch.Tensor | None,
        lam: torch.Tensor,
    ) -> torch.Tensor:
        p = self.xite.placement
        B = ids.shape[0]
        if s_ids.shape != ids.shape:
            raise ValueError(
                f"src_input_ids must have the shape of input_ids {tuple(ids.shape)} (the collator pads both "
                f"to one length), got {tuple(s_ids.shape)}"
            )
        union = (mask.bool() | s_mask.bool()).to(mask.dtype)
        if p == "input":
            emb = self.model.get_input_embeddings()
            e = self._mix(emb(s_ids), emb(ids), lam)
            kw = {"token_type_ids": types} if types is not None else {}
            return self.model(inputs_embeds=e, attention_mask=union, **kw).logits
        all_ids = torch.cat([s_ids, ids])
        all_mask = torch.cat([s_mask, mask])
        all_types = torch.cat([s_types, types]) if types is not None and s_types is not None else None
        handles = []
        if p == "sentence":

            def head_hook(_mod: nn.Module, args: tuple) -> tuple:
                x = args[0]
                return (self._mix(x[:B], x[B:], lam), *args[1:])

            handles.append(self.head.register_forward_pre_hook(head_hook))
            try:
                return self._base(all_ids, all_mask, all_types).logits
            finally:
                for h in handles:
                    h.remove()
        if p != "hidden":
            raise ValueError(f"placement must be one of ('sentence', 'input', 'hidden'), got {p!r}")
        L, N = self.xite.hidden_layer, self.num_layers
        rows = all_mask.unsqueeze(-1)

        def mix_hidden(h: torch.Tensor) -> torch.Tensor:
            h = h * rows.to(h.dtype)
            m = self._mix(h[:B], h[B:], lam)
            return torch.cat([m, m])

        if L < N:
            name, pos = _mask_index(self._layers[L])

            def pre(_mod: nn.Module, args: tuple, kwargs: dict, first: bool) -> tuple:
                args = list(args)
                if first:
                    args[0] = mix_hidden(args[0]) if args else None
                    if not args:
                        kwargs["hidden_states"] = mix_hidden(kwargs["hidden_states"])
                if name in kwargs:
                    kwargs[name] = _union_halves(kwargs[name])
                elif len(args) > pos:
                    args[pos] = _union_halves(args[pos])
                return tuple(args), kwargs

            for i in range(L, N):
                handles.append(
                    self._layers[i].register_forward_pre_hook(
                        lambda m, a, k, first=(i == L): pre(m, a, k, first), with_kwargs=True
                    )
                )
        else:

            def post(_mod: nn.Module, _inp: Any, out: Any) -> Any:
                if isinstance(out, tuple):
                    return (mix_hidden(out[0]), *out[1:])
                return mix_hidden(out)

            handles.append(self._layers[N - 1].register_forward_hook(post))
        try:
            if self._use_cache():
                states = self._cached_states(all_ids, all_mask, all_types)
                kw = {"token_type_ids": all_types} if all_types is not None else {}
                # the union mask is given to the layers >= L by the hooks; the cached prefix used own masks
                with self._prefix_swapped(states):
                    return self.model(input_ids=all_ids, attention_mask=all_mask, **kw).logits[:B]
            kw = {"token_type_ids": all_types} if all_types is not None else {}
            return self.model(input_ids=all_ids, attention_mask=all_mask, **kw).logits[:B]
        finally:
            for h in handles:
                h.remove()

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of ``config.problem_type`` (as HF's own heads compute it)."""
        pt = self.model.config.problem_type
        if pt is None:
            pt = "regression" if self.model.config.num_labels == 1 else "single_label_classification"
        if pt == "regression":
            return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float().reshape(-1))
        if pt == "multi_label_classification":
            return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return nn.functional.cross_entropy(logits.float(), labels.long().reshape(-1))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        src_input_ids: torch.Tensor | None = None,
        src_attention_mask: torch.Tensor | None = None,
        src_token_type_ids: torch.Tensor | None = None,
        lam: torch.Tensor | None = None,
        pert_input_ids: torch.Tensor | None = None,
        pert_attention_mask: torch.Tensor | None = None,
    ) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        if pert_input_ids is not None and self.training:
            from xite_fast.train.ear import ear_forward

            return ear_forward(
                self, input_ids, attention_mask, token_type_ids, labels, pert_input_ids, pert_attention_mask
            )
        if src_input_ids is not None and self.xite.placement != "none" and self.training:
            lam_t = self._lam(input_ids.shape[0], input_ids.device, lam)
            logits = self._mixed_logits(
                input_ids,
                attention_mask,
                token_type_ids,
                src_input_ids,
                src_attention_mask,
                src_token_type_ids,
                lam_t,
            )
        else:
            logits = self._base(input_ids, attention_mask, token_type_ids).logits
        loss = self.loss(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def last_hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, D) last hidden state of the backbone (``model.base_model``), through the cache if on."""
        kw: dict[str, Any] = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        base = self.model.base_model
        if self._use_cache():
            with self._prefix_swapped(self._cached_states(input_ids, attention_mask, token_type_ids)):
                return base(input_ids=input_ids, **kw).last_hidden_state
        return base(input_ids=input_ids, **kw).last_hidden_state

    # ------------------------------------------------------------------ representations
    @torch.no_grad()
    def representations(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        level: str = "mean",
    ) -> torch.Tensor:
        """(B, D) float32 per row: ``"mean"`` the masked mean of the last hidden state; ``"sentence"`` the
        head's input (first token if it is a sequence); ``"input"``/``"hidden"`` the masked mean of the word
        embeddings / of the states entering ``hidden_layer`` (the levels LDA is fitted at)."""
        from xite_fast.encode.pooling import pool  # the one masked mean-pool (the encoder's)

        def mean(h: torch.Tensor) -> torch.Tensor:
            return pool(h.float(), attention_mask, "mean")

        if level == "input":
            return mean(self.model.get_input_embeddings()(input_ids))
        got: dict[str, torch.Tensor] = {}

        def run_until(register) -> torch.Tensor:
            # run the model only until the hook has seen its tensor (_Stop ends the forward there)
            h = register()
            try:
                self._base(input_ids, attention_mask, token_type_ids)
            except _Stop:
                pass
            finally:
                h.remove()
            return got["x"]

        if level == "sentence":

            def grab(_mod: nn.Module, args: tuple) -> None:
                got["x"] = args[0]
                raise _Stop

            x = run_until(lambda: self.head.register_forward_pre_hook(grab))
            return (x[:, 0] if x.ndim == 3 else x).float()
        if level == "mean":
            return mean(self.last_hidden(input_ids, attention_mask, token_type_ids))
        if level != "hidden":
            raise ValueError(f"level must be 'mean', 'sentence', 'input' or 'hidden', got {level!r}")
        L, N = self.xite.hidden_layer, self.num_layers

        def grab_in(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
            got["x"] = args[0] if args else kwargs["hidden_states"]
            raise _Stop

        def grab_out(_mod: nn.Module, _inp: Any, out: Any) -> None:
            got["x"] = out[0] if isinstance(out, tuple) else out
            raise _Stop

        return mean(
            run_until(
                lambda: (
                    self._layers[L].register_forward_pre_hook(grab_in, with_kwargs=True)
                    if L < N
                    else self._layers[N - 1].register_forward_hook(grab_out)
                )
            )
        )
