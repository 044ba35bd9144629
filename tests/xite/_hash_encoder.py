"""A deterministic offline stand-in for ``Encoder`` (fault-injection tests: runs in milliseconds)."""

from __future__ import annotations

import hashlib

import numpy as np


class HashEncoder:
    """A unit vector from the sha256 of each text (a pair is joined with NUL)."""

    dim, model_id, prefix = 16, "hash16", None

    def encode(self, texts, batch_size=64, show_progress_bar=False, normalize=True):
        rows = []
        for t in texts:
            t = t if isinstance(t, str) else "\x00".join(t)
            v = np.frombuffer(hashlib.sha256(t.encode()).digest()[:16], dtype=np.uint8).astype(np.float32)
            v = v - 127.5
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)
