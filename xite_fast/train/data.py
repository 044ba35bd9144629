"""What :func:`~xite_fast.train.trainer.train_xite` reads besides the model: the user's texts and labels,
and the pairs of an augment result.

* :func:`as_texts` / :func:`as_labels`: texts through the one table adapter of :mod:`xite_fast.data.records`
  (lists, pandas Series/DataFrames, ``datasets`` Columns/Datasets), labels from any sequence, checked, with
  errors naming the user's argument.
* :class:`Matching`: which source row every training example was paired with (the diagnostics
  ``train_xite`` returns as ``trainer.matching``).
* :func:`pairs_of_result`: the in-memory :class:`~xite_fast.xite.augmenter.AugmentResult`, checked against
  the corpora given (its ids point into them).
* :class:`RunPairs`: the pipeline's :class:`~xite_fast.xite.pipeline.AugmentRun`, read from its run
  directory's ``synthetic/part-*.jsonl`` on demand: one indexing pass keeps per row a byte offset, the
  label id and the ids (about 30 bytes a row); items are read back and tokenized when the ``Trainer`` asks
  for them, so a run of any size trains in bounded memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xite_fast.train.collator import tokenize_texts
from xite_fast.train.config import LabelMap, check_label
from xite_fast.xite.pipeline import synthetic_part_path

__all__ = ["as_texts", "as_labels", "Matching", "pairs_of_result", "RunPairs", "augment_label_values"]


def _refuse(name: str, x: Any) -> ValueError:
    kind = type(x).__name__
    hint = ""
    if kind == "DataFrame" or hasattr(x, "column_names") or hasattr(x, "columns"):
        hint = f' (a table: pass one of its columns, e.g. {name}=df["label"])'
    return ValueError(
        f"{name} must be a sequence (a list, a pandas Series, a datasets Column), got {kind}{hint}"
    )


def _as_list(name: str, x: Any) -> list:
    if isinstance(x, (str, bytes, Mapping)) or not hasattr(x, "__len__") or not hasattr(x, "__iter__"):
        raise _refuse(name, x)
    if type(x).__name__ == "DataFrame" or hasattr(x, "column_names"):  # iterating gives column names
        raise _refuse(name, x)
    if isinstance(x, np.ndarray) and x.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one entry per example), got shape {x.shape}")
    return x.tolist() if isinstance(x, np.ndarray) else list(x)


def as_texts(name: str, x: Any, n: int | None = None, *, empty_ok: bool = False) -> list[str]:
    """``x`` as a list of str, read by the one table adapter (:func:`xite_fast.data.records.as_texts`: a
    list, a pandas Series or DataFrame (its ``"text"`` column), a datasets Column or Dataset); ValueError
    naming ``name`` (the user's argument) and the first bad entry."""
    from xite_fast.data.records import as_texts as read_texts

    texts, _ = read_texts(x, name, allow_pairs=False)
    if not texts and not empty_ok:
        raise ValueError(f"{name} must not be empty, got 0 texts")
    if n is not None and len(texts) != n:
        raise ValueError(f"{name} must have one entry per example ({n}), got {len(texts)}")
    return texts


def as_labels(name: str, x: Any, n: int, *, classes: bool) -> Any:
    """Labels, one per example: a list of class labels (checked with :func:`check_label`: None, NaN, dicts
    are errors naming ``name[i]``) when ``classes``, else a float array (regression / multi-label rows)."""
    if isinstance(x, np.ndarray) and x.ndim == 2 and not classes:
        y = x
    else:
        y = _as_list(name, x)
    if len(y) != n:
        raise ValueError(f"{name} must have one label per text ({n}), got {len(y)}")
    if classes:
        return [check_label(v, f"{name}[{i}]") for i, v in enumerate(y)]
    try:
        arr = np.asarray(y, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must hold numbers for regression / multi-label rows, e.g. {y[0]!r:.60}"
        ) from None
    if not np.isfinite(arr).all():
        raise ValueError(
            f"{name} holds NaN or inf at index "
            f"{int(np.flatnonzero(~np.isfinite(arr).reshape(len(arr), -1).all(1))[0])}"
        )
    return arr


@dataclass
class Matching:
    """Which source row each training example was paired with (what ``train_xite`` trained on).

    Attributes:
        target_id: (n,) int64 row of the target texts (or of the run's target corpus).
        source_id: (n,) int64 matched source row.
        similarity: (n,) float32 cosine similarity of the match (NaN where not known).
        label_ids: (n,) int64 class id of the transferred label (``model.config.id2label``); regression /
            multi-label: the transferred float targets.
        label_values: the label values, by id (so ``labels`` decodes ``label_ids``); None without classes.
    """

    target_id: np.ndarray
    source_id: np.ndarray
    similarity: np.ndarray
    label_ids: np.ndarray
    label_values: list | None

    def __len__(self) -> int:
        return len(self.target_id)

    @property
    def labels(self) -> list:
        """(n,) transferred labels, the user's values."""
        if self.label_values is None:
            return np.asarray(self.label_ids).tolist()
        return [self.label_values[int(i)] for i in self.label_ids]


def augment_label_values(augment: Any) -> list | None:
    """The label set an augment result was made with (every SOURCE label, transferred or not), or None
    when the result does not record it."""
    manifest = getattr(augment, "manifest", None)
    if isinstance(manifest, dict) and manifest.get("label_names") is not None:
        return list(manifest["label_names"])
    names = getattr(augment, "label_names", None)
    return None if names is None else list(names)


def _ids(name: str, x: Any) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"augment.{name} must be (n,) integer row ids, got dtype {a.dtype} shape {a.shape}")
    return a.astype(np.int64)


def pairs_of_result(
    augment: Any, n_source: int | None, n_target: int | None
) -> tuple[np.ndarray, np.ndarray, list, np.ndarray]:
    """(target_id, source_id, labels, similarity) of an in-memory augment result, checked against the
    corpora given: its ids must point into ``source_texts`` / ``target_texts`` (ValueError naming them)."""
    if n_source is None or n_target is None:
        raise ValueError(
            "augment= (an XiteAugmenter result) holds row ids into the corpora it was made from: pass the "
            "same source_texts= and target_texts= to train_xite"
        )
    tid, sid = _ids("target_id", augment.target_id), _ids("source_id", augment.source_id)
    labels = _as_list("augment.labels", augment.labels)
    if not (len(tid) == len(sid) == len(labels)):
        raise ValueError(
            f"augment.target_id, source_id and labels must have one entry per row, got {len(tid)}, "
            f"{len(sid)}, {len(labels)}"
        )
    for name, ids, n, arg in (
        ("target_id", tid, n_target, "target_texts"),
        ("source_id", sid, n_source, "source_texts"),
    ):
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            bad = int(ids.max() if ids.max() >= n else ids.min())
            raise ValueError(
                f"augment.{name} holds row {bad} but {arg} has {n} texts: pass the {arg} the augment result "
                "was made from (the same corpus, in the same order)"
            )
    sim = getattr(augment, "similarity", None)
    sim = np.full(len(tid), np.nan, np.float32) if sim is None else np.asarray(sim, dtype=np.float32)
    return tid, sid, labels, sim


class RunPairs(torch.utils.data.Dataset):
    """XITE stage-2 examples of an augment run directory, read on demand (a torch Dataset any ``Trainer``
    takes; items as :class:`~xite_fast.train.collator.XiteDataset` gives them).

    Args:
        run: an :class:`~xite_fast.xite.pipeline.AugmentRun` (or its directory's path).
        tokenizer: the model's tokenizer.
        label_map: class ids of the labels.
        source_texts, target_texts, source_text_pairs, target_text_pairs: the corpora, if given: every row's
            texts must be those rows of them (ValueError naming the first that differs); None: the texts the
            run recorded are used.
        source_labels: if given, every row's label must be its source row's label.
        max_length, prefix, drop_token_type_ids: tokenization (:func:`tokenize_texts`).
    """

    def __init__(
        self,
        run: Any,
        tokenizer: Any,
        label_map: LabelMap,
        *,
        source_texts: Sequence[str] | None = None,
        target_texts: Sequence[str] | None = None,
        source_text_pairs: Sequence[str] | None = None,
        target_text_pairs: Sequence[str] | None = None,
        source_labels: Sequence[Any] | None = None,
        max_length: int = 128,
        prefix: str = "",
        drop_token_type_ids: bool = False,
    ):
        out = Path(getattr(run, "out", run))
        manifest = getattr(run, "manifest", None)
        if manifest is None:
            with open(out / "synthetic" / "manifest.json", encoding="utf-8") as fh:
                manifest = json.load(fh)
        self.files = [str(synthetic_part_path(out, p, "provenance")) for p in manifest["parts"]]
        self.tokenizer, self.label_map = tokenizer, label_map
        self.tok = dict(max_length=max_length, prefix=prefix)
        self.drop_token_type_ids = bool(drop_token_type_ids)
        self.tokenization: dict[str, Any] = {}
        n = int(manifest.get("rows", 0))
        self.part = np.empty(n, np.int32)
        self.offset = np.empty(n, np.int64)
        self.target_id = np.empty(n, np.int64)
        self.source_id = np.empty(n, np.int64)
        self.similarity = np.empty(n, np.float32)
        self.label_ids = np.empty(n, np.int64)
        given = dict(
            target_text=target_texts,
            source_text=source_texts,
            target_pair=target_text_pairs,
            source_pair=source_text_pairs,
        )
        r = 0
        self.has_pair: bool | None = None
        for pi, (path, spec) in enumerate(zip(self.files, manifest["parts"], strict=True)):
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                off = 0
                for line in fh:
                    h.update(line)
                    if r >= n:
                        raise ValueError(
                            f"{path}: more rows than {out}/synthetic/manifest.json records ({n})"
                        )
                    rec = json.loads(line)
                    self._check(rec, r, path, given, source_labels)
                    self.part[r], self.offset[r] = pi, off
                    self.target_id[r], self.source_id[r] = rec["target_id"], rec["source_id"]
                    self.similarity[r] = rec.get("similarity", np.nan)
                    self.label_ids[r] = label_map.encode([rec["label"]], name=f"{path} row label")[0]
                    off += len(line)
                    r += 1
            want = (spec.get("sha256") or {}).get("provenance")
            if want is not None and h.hexdigest() != want:
                raise ValueError(
                    f"{path} does not match the sha256 its manifest records: the run directory {out} "
                    "changed; rerun the augment command (it re-makes the part)"
                )
        if r != n:
            raise ValueError(
                f"{out}/synthetic holds {r} rows but its manifest.json records {n}; rerun the augment command"
            )
        if n == 0:
            raise ValueError(
                f"augment= run {out} has no synthetic rows (every target was dropped?): nothing to train on"
            )
        self.tokenization = dict(
            max_length=int(max_length),
            prefix=str(prefix),
            text_pair=bool(self.has_pair),
            drop_token_type_ids=self.drop_token_type_ids,
        )
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self._fh: dict[int, Any] = {}
        self._pid = os.getpid()

    def _check(self, rec: dict, r: int, path: str, given: dict, source_labels: Any) -> None:
        has_pair = "target_pair" in rec
        if self.has_pair is None:
            self.has_pair = has_pair
        elif has_pair != self.has_pair:
            raise ValueError(
                f"{path}: row {r} has{'' if has_pair else ' no'} text pair unlike the rows before it"
            )
        for key, texts in given.items():
            if texts is None:
                continue
            row = rec["source_id"] if key.startswith("source") else rec["target_id"]
            arg = {
                "target_text": "target_texts",
                "source_text": "source_texts",
                "target_pair": "target_text_pairs",
                "source_pair": "source_text_pairs",
            }[key]
            if row >= len(texts):
                raise ValueError(
                    f"augment= run row {r} comes from {arg.split('_')[0]} row {row} but {arg} has "
                    f"{len(texts)} texts: pass the corpus the run was made from, or leave {arg} out (the run "
                    "records its texts)"
                )
            if key in rec and texts[row] != rec[key]:
                raise ValueError(
                    f"{arg}[{row}] = {texts[row]!r:.60} but the augment run made row {r} from "
                    f"{rec[key]!r:.60}: pass the corpus the run was made from, or leave {arg} out (the run "
                    "records its texts)"
                )
        if "target_text" not in rec or "source_text" not in rec:
            raise ValueError(
                f"{path}: row {r} records no texts (target_text/source_text); rerun the augment command"
            )
        if source_labels is not None:
            sid = rec["source_id"]
            if sid >= len(source_labels):
                raise ValueError(
                    f"augment= run row {r} comes from source row {sid} but source_labels has "
                    f"{len(source_labels)}"
                )
            if LabelMap._key(check_label(source_labels[sid])) != LabelMap._key(check_label(rec["label"])):
                raise ValueError(
                    f"the augment run's row {r} has label {rec['label']!r} but source_labels[{sid}] = "
                    f"{source_labels[sid]!r}: the run was made from other source labels"
                )

    def __len__(self) -> int:
        return len(self.offset)

    def __getstate__(self) -> dict:  # DataLoader workers: no open files across processes
        state = dict(self.__dict__)
        state["_fh"] = {}
        return state

    def record(self, i: int) -> dict:
        """Row ``i``'s provenance record (texts, ids, label, similarity, λ)."""
        if self._pid != os.getpid():
            self._fh, self._pid = {}, os.getpid()
        p = int(self.part[i])
        fh = self._fh.get(p)
        if fh is None:
            fh = self._fh[p] = open(self.files[p], "rb")  # noqa: SIM115 (kept open: one seek per item)
        fh.seek(int(self.offset[i]))
        return json.loads(fh.readline())

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range ({len(self)} rows)")
        rec = self.record(int(i) % len(self))
        item: dict[str, Any] = {}
        for fam, tkey, pkey in (("", "target_text", "target_pair"), ("src_", "source_text", "source_pair")):
            enc = tokenize_texts(
                self.tokenizer, [rec[tkey]], [rec[pkey]] if self.has_pair else None, **self.tok
            )
            for k, v in enc.items():
                if self.drop_token_type_ids and k == "token_type_ids":
                    continue
                item[fam + k] = v[0]
        item["labels"] = int(self.label_ids[i])
        return item

    def texts(self, ids: Sequence[int]) -> tuple[list[str], list[str], list[str] | None, list[str] | None]:
        """(target texts, source texts, target pairs, source pairs) of rows ``ids`` (LDA fitting samples)."""
        recs = [self.record(int(i)) for i in ids]
        tp = [r["target_pair"] for r in recs] if self.has_pair else None
        sp = [r["source_pair"] for r in recs] if self.has_pair else None
        return [r["target_text"] for r in recs], [r["source_text"] for r in recs], tp, sp

    def matching(self) -> Matching:
        return Matching(
            self.target_id, self.source_id, self.similarity, self.label_ids, list(self.label_map.values)
        )

    def close(self) -> None:
        for fh in self._fh.values():
            fh.close()
        self._fh = {}

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass
