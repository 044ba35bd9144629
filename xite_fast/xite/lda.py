"""Language LDA: the subspace of a multilingual embedding space that separates languages.

Classes are languages. The eigen solver follows scikit-learn's
``LinearDiscriminantAnalysis(solver="eigen", shrinkage=...)`` exactly (same within/total scatter
estimates, same Ledoit–Wolf shrinkage on standardized features), but streams the data in float64
chunks (one GEMM per chunk, never an (N, D) float64 copy) and keeps only what XITE needs:

* ``components_`` (D, r) float32: an ORTHONORMAL basis (QR) of the span of the top r discriminant
  directions, so ``P(x) = x W Wᵀ`` is an orthogonal projector onto the "language" part of x and
  ``x − P(x)`` is the language-free part. Feed it to :func:`xite_fast.lda_project_interp`.
* ``scalings_`` (D, r) float64: the raw discriminant directions (generalized eigenvectors, sorted
  by eigenvalue, normalized as scipy's ``eigh`` does: ``vᵀ S_w v = 1``), as sklearn's first r columns.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from xite_fast._validation import check_finite, is_torch

__all__ = ["LanguageLDA", "LDA_BASES", "fit_language_basis", "sample_ids"]

LDA_BASES = ("fisher", "means")

_FORMAT = "xite_fast.LanguageLDA/1"
_CHUNK = 16384  # rows per float64 chunk: bounded memory for large N


def _chunks(X: np.ndarray, idx: np.ndarray):
    for i0 in range(0, idx.shape[0], _CHUNK):
        yield X[idx[i0 : i0 + _CHUNK]].astype(np.float64)


def _shrunk_cov(
    X: np.ndarray, idx: np.ndarray, mean: np.ndarray, emp: np.ndarray | None, shrinkage: str | float | None
) -> np.ndarray:
    """sklearn's ``discriminant_analysis._cov`` for the rows ``X[idx]`` (mean given, emp optional)."""
    n, d = idx.shape[0], mean.shape[0]
    if emp is None:
        emp = np.zeros((d, d))
        for xc in _chunks(X, idx):
            xc -= mean
            emp += xc.T @ xc
        emp /= n
    if shrinkage is None:
        return emp
    if shrinkage != "auto":
        a = float(shrinkage)
        s = (1.0 - a) * emp
        s.flat[:: d + 1] += a * np.trace(emp) / d
        return s
    # "auto": StandardScaler, then Ledoit-Wolf on the standardized data, then rescale.
    var = np.diag(emp).copy()
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2  # sklearn's _is_constant_feature
    scale = np.sqrt(var)
    scale[constant] = 1.0
    emp_z = emp / np.outer(scale, scale)
    if d == 1:
        shrink = 0.0
    else:
        # sum(X2ᵀ X2) = Σ_n (Σ_i z_ni²)², and sum((XᵀX)²)/n² = ||emp_z||_F²: no (N, D) temporaries
        beta_ = 0.0
        for xc in _chunks(X, idx):
            xc -= mean
            xc /= scale
            beta_ += float(np.square(np.einsum("ij,ij->i", xc, xc)).sum())
        tr = np.diag(emp_z)
        mu = tr.sum() / d
        delta_ = float(np.square(emp_z).sum())
        beta = (beta_ / n - delta_) / (d * n)
        delta = (delta_ - 2.0 * mu * tr.sum() + d * mu**2) / d
        beta = min(beta, delta)
        shrink = 0.0 if beta == 0 else beta / delta
    s = (1.0 - shrink) * emp_z
    s.flat[:: d + 1] += shrink * np.trace(emp_z) / d
    return scale[:, None] * s * scale[None, :]


def _labels(languages: Any, n: int) -> np.ndarray:
    if is_torch(languages):
        languages = languages.detach().cpu().numpy()
    if isinstance(languages, (str, bytes)):
        raise ValueError(
            f"languages must be a sequence of N={n} labels (str or int), got a single "
            f"{type(languages).__name__}"
        )
    try:
        # a list is checked item by item (as objects): np.asarray(["a", nan]) would make nan the str 'nan'
        lab = np.asarray(languages, dtype=None if isinstance(languages, np.ndarray) else object)
    except Exception as exc:  # ragged or exotic input
        raise ValueError(
            f"languages must be a sequence of N={n} labels (str or int), got {type(languages).__name__}"
        ) from exc
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"languages must be 1-D with N={n} labels (one per row of X), got shape {lab.shape}")
    if lab.dtype.kind not in "UiuSO":
        raise ValueError(f"languages must hold str or int labels, got dtype {lab.dtype}")
    if lab.dtype.kind == "O":
        # each label is a str or an int (not None, NaN, bool, float, ...): str() would make None a
        # language 'None', and 1 and '1' one language
        kinds = set()
        for i, v in enumerate(lab):
            if isinstance(v, (str, np.str_)):
                kinds.add(str)
            elif isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
                kinds.add(int)
            else:
                raise ValueError(f"languages[{i}] must be a str or int language label, got {v!r}")
        if len(kinds) > 1:
            raise ValueError("languages must be all str or all int labels, got a mix of str and int")
        lab = lab.astype(str if str in kinds else np.int64)
    elif lab.dtype.kind == "b":
        raise ValueError(f"languages must hold str or int labels, got dtype {lab.dtype}")
    return lab


class LanguageLDA:
    """Linear discriminant analysis with languages as classes (eigen solver, float64, shrinkage).

    Args:
        n_components: number of discriminant directions r (default and maximum min(C − 1, D) for C
            languages).
        shrinkage: ``"auto"`` (Ledoit–Wolf, like sklearn), a float in [0, 1] or None (no shrinkage;
            needs N well above D).

    Attributes (after :meth:`fit`):
        components_: (D, r) float32 orthonormal basis of the discriminant subspace.
        scalings_: (D, r) float64 raw discriminant directions (sklearn ``scalings_[:, :r]``).
        explained_variance_ratio_: (r,) float64, as sklearn.
        classes_: (C,) sorted language labels.
        means_: (C, D) float32 per-language means (rows follow ``classes_``), for centering.
        mean_: (D,) float32 overall mean.
        priors_: (C,) float64 language frequencies.
    """

    def __init__(self, n_components: int | None = None, shrinkage: str | float | None = "auto"):
        if n_components is not None and (
            isinstance(n_components, bool)
            or not isinstance(n_components, (int, np.integer))
            or n_components < 1
        ):
            raise ValueError(f"n_components must be a positive int or None, got {n_components!r}")
        if not (
            shrinkage is None
            or (isinstance(shrinkage, str) and shrinkage == "auto")
            or (
                isinstance(shrinkage, (int, float, np.floating, np.integer))
                and not isinstance(shrinkage, bool)
                and 0.0 <= float(shrinkage) <= 1.0
            )
        ):
            raise ValueError(f"shrinkage must be 'auto', None or a float in [0, 1], got {shrinkage!r}")
        self.n_components = None if n_components is None else int(n_components)
        self.shrinkage = shrinkage if shrinkage is None or shrinkage == "auto" else float(shrinkage)

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, languages: Any) -> LanguageLDA:
        """Fit on embeddings labelled by language.

        Args:
            X: (N, D) float embeddings (numpy or torch; any float dtype, computed in float64).
            languages: (N,) str or int language labels, at least 2 distinct.

        Returns:
            self
        """
        if is_torch(X):
            X = X.detach().cpu().numpy()
        if not isinstance(X, np.ndarray):
            raise ValueError(f"X must be a numpy array or torch tensor, got {type(X).__name__}")
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (N, D), got shape {tuple(X.shape)}")
        if not np.issubdtype(X.dtype, np.floating):
            raise ValueError(f"X must have a floating dtype, got {X.dtype}")
        n, d = X.shape
        if n == 0 or d == 0:
            raise ValueError(f"X must be non-empty, got shape {tuple(X.shape)}")
        check_finite("X", X)
        lab = _labels(languages, n)
        classes, y, counts = np.unique(lab, return_inverse=True, return_counts=True)
        if classes.shape[0] < 2:
            raise ValueError(
                f"languages must contain at least 2 distinct languages, got {classes.shape[0]} "
                f"({classes.tolist()})"
            )
        C = classes.shape[0]
        order = np.argsort(y, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(counts)])
        groups = [order[bounds[c] : bounds[c + 1]] for c in range(C)]
        priors = counts / n

        means = np.zeros((C, d))
        emps = []
        for c, idx in enumerate(groups):
            for xc in _chunks(X, idx):
                means[c] += xc.sum(axis=0)
            means[c] /= counts[c]
        for c, idx in enumerate(groups):
            emp = np.zeros((d, d))
            for xc in _chunks(X, idx):
                xc -= means[c]
                emp += xc.T @ xc
            emps.append(emp / counts[c])
        mean = priors @ means
        # total scatter from the class scatters (exact): Σ_c p_c (S_c + (m_c − m)(m_c − m)ᵀ)
        dm = means - mean
        emp_t = sum(p * e for p, e in zip(priors, emps, strict=True)) + (dm.T * priors) @ dm
        Sw = sum(
            p * _shrunk_cov(X, idx, means[c], emps[c], self.shrinkage)
            for c, (p, idx) in enumerate(zip(priors, groups, strict=True))
        )
        St = _shrunk_cov(X, np.arange(n), mean, emp_t, self.shrinkage)
        Sb = St - Sw

        import scipy.linalg

        try:
            evals, evecs = scipy.linalg.eigh(Sb, Sw)
        except np.linalg.LinAlgError as exc:
            raise ValueError(
                f"the within-language scatter is singular (N={n}, D={d}, shrinkage={self.shrinkage!r}): "
                "use shrinkage='auto' or a float in (0, 1], or more samples"
            ) from exc
        max_r = min(C - 1, d)
        if self.n_components is not None and self.n_components > max_r:
            raise ValueError(
                f"n_components must be <= min(languages - 1, D) = min({C - 1}, {d}) = {max_r}, got "
                f"{self.n_components}; pass n_components=None for the maximum"
            )
        r = max_r if self.n_components is None else self.n_components
        sort = np.argsort(evals)[::-1]
        self.explained_variance_ratio_ = np.sort(evals / np.sum(evals))[::-1][:r]
        self.scalings_ = np.ascontiguousarray(evecs[:, sort[:r]])
        q, rr = np.linalg.qr(self.scalings_)
        # sign convention: positive diagonal of R, so column j of Q points along scalings_[:, j]
        sign = np.where(np.diag(rr) < 0, -1.0, 1.0)
        self.components_ = np.ascontiguousarray((q * sign).astype(np.float32))
        self.classes_ = classes
        self.means_ = means.astype(np.float32)
        self.mean_ = mean.astype(np.float32)
        self.priors_ = priors
        self.n_features_in_ = d
        return self

    def mean_basis(self) -> np.ndarray:
        """(D, r) float32 orthonormal basis of the span of the language means (top r directions of the
        between-language scatter, prior-weighted, around the overall mean; r = that of ``components_``):
        LDA with an identity within-language covariance. With two languages it is the direction of the
        mean offset, which the Fisher direction ``components_`` may carry little of."""
        self._check_fitted()
        means = self.means_.astype(np.float64)
        B = np.sqrt(self.priors_)[:, None] * (means - self.priors_ @ means)  # B.T @ B = between scatter
        r = self.components_.shape[1]
        return np.ascontiguousarray(np.linalg.svd(B, full_matrices=False)[2][:r].T, dtype=np.float32)

    # ------------------------------------------------------------- inference
    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise ValueError(
                "this LanguageLDA is not fitted yet: call fit(X, languages) or LanguageLDA.load(path)"
            )

    def _check_input(self, X: Any) -> None:
        self._check_fitted()
        if not (isinstance(X, np.ndarray) or is_torch(X)):
            raise ValueError(f"X must be a numpy array or torch tensor, got {type(X).__name__}")
        d = self.n_features_in_
        if X.ndim < 1 or X.shape[-1] != d:
            raise ValueError(f"X must have last dimension D={d}, got shape {tuple(X.shape)}")
        floating = X.dtype.is_floating_point if is_torch(X) else np.issubdtype(X.dtype, np.floating)
        if not floating:
            raise ValueError(f"X must have a floating dtype, got {X.dtype}")

    def _W(self, like: Any) -> Any:
        if is_torch(like):
            import torch

            return torch.from_numpy(self.components_).to(device=like.device, dtype=like.dtype)
        return self.components_.astype(like.dtype, copy=False)

    def transform(self, X: Any) -> Any:
        """Coordinates in the orthonormal language basis: ``X @ components_``.

        Args:
            X: (..., D) float (numpy or torch, type and float dtype preserved).

        Returns:
            (..., r) coordinates; ``project(X) == transform(X) @ components_.T``.
        """
        self._check_input(X)
        return X @ self._W(X)

    def project(self, X: Any, part: str = "lang") -> Any:
        """Split X into its language part ``X W Wᵀ`` (``part="lang"``) or the rest (``"comp"``).

        Args:
            X: (..., D) float (numpy or torch, type and float dtype preserved).
            part: ``"lang"`` (projection onto the discriminant subspace) or ``"comp"`` (orthogonal
                complement, ``X − X W Wᵀ``).

        Returns:
            Same shape as X, in the original D coordinates.
        """
        if part not in ("lang", "comp"):
            raise ValueError(f"part must be 'lang' or 'comp', got {part!r}")
        self._check_input(X)
        W = self._W(X)
        p = (X @ W) @ W.T
        return p if part == "lang" else X - p

    # ------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model to the ``.npz`` file ``path`` (no pickle; atomic: temporary + rename).

        Raises:
            ValueError: ``path`` does not end with ``.npz`` or is a directory (the file is written at
                exactly ``path``, so :meth:`load` reads it back from the same name).
        """
        import io

        from xite_fast._io import atomic_write_bytes

        self._check_fitted()
        p = os.fspath(path)
        if os.path.isdir(p) or not str(p).endswith(".npz"):
            why = "a directory" if os.path.isdir(p) else "no .npz suffix"
            raise ValueError(f"path must be a file name ending with '.npz', got {str(p)!r} ({why})")
        buf = io.BytesIO()
        self._savez(buf)
        atomic_write_bytes(p, buf.getvalue())

    def _savez(self, fh: Any) -> None:
        np.savez(
            fh,
            format=np.array(_FORMAT),
            components=self.components_,
            scalings=self.scalings_,
            explained_variance_ratio=self.explained_variance_ratio_,
            classes=self.classes_,
            means=self.means_,
            mean=self.mean_,
            priors=self.priors_,
            n_components=np.array(-1 if self.n_components is None else self.n_components),
            shrinkage=np.array("none" if self.shrinkage is None else str(self.shrinkage)),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> LanguageLDA:
        """Read a model written by :meth:`save`; a missing, truncated or foreign file raises."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"LanguageLDA file not found: {path}")
        keys = ("components", "scalings", "explained_variance_ratio", "classes", "means", "mean", "priors")
        try:
            with np.load(path, allow_pickle=False) as z:
                fmt = str(z["format"]) if "format" in z.files else None
                if fmt != _FORMAT:
                    raise ValueError(f"format tag {fmt!r}, expected {_FORMAT!r}")
                missing = [k for k in keys if k not in z.files]
                if missing:
                    raise ValueError(f"missing arrays {missing}")
                data = {k: z[k] for k in (*keys, "n_components", "shrinkage")}
        except Exception as exc:
            raise ValueError(f"{path} is not a valid LanguageLDA file ({type(exc).__name__}: {exc})") from exc
        comp = data["components"]
        d = comp.shape[0] if comp.ndim == 2 else -1
        if (
            comp.ndim != 2
            or comp.dtype != np.float32
            or data["scalings"].shape != comp.shape
            or data["means"].shape[1:] != (d,)
        ):
            raise ValueError(f"{path} is not a valid LanguageLDA file (inconsistent array shapes)")
        shrink = str(data["shrinkage"])
        nc = int(data["n_components"])
        obj = cls(
            n_components=None if nc < 0 else nc,
            shrinkage=None if shrink == "none" else shrink if shrink == "auto" else float(shrink),
        )
        obj.components_ = np.ascontiguousarray(comp)
        obj.scalings_ = data["scalings"]
        obj.explained_variance_ratio_ = data["explained_variance_ratio"]
        obj.classes_ = data["classes"]
        obj.means_ = data["means"]
        obj.mean_ = data["mean"]
        obj.priors_ = data["priors"]
        obj.n_features_in_ = d
        return obj

    def __repr__(self) -> str:
        return f"LanguageLDA(n_components={self.n_components}, shrinkage={self.shrinkage!r})"


def sample_ids(n_total: int, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """(min(n_total, max_rows),) int64 sorted row ids: all rows, or ``max_rows`` drawn without replacement
    from ``rng`` (the rows an LDA is fitted on when a language has more than ``max_rows``)."""
    if n_total <= max_rows:
        return np.arange(n_total, dtype=np.int64)
    return np.sort(rng.choice(n_total, max_rows, replace=False)).astype(np.int64)


def fit_language_basis(
    samples: Any,
    languages: Any = None,
    *,
    n_components: int | None = None,
    basis: str = "fisher",
) -> np.ndarray:
    """The language basis ``W`` (D, r) float32, orthonormal, that :func:`xite_fast.lda_project_interp`
    mixes through: a :class:`LanguageLDA` fitted with one class per array of ``samples``.

    The one fitter of the augmenter, the ``augment`` pipeline and the trainer.

    Args:
        samples: a sequence of (N_i, D) float arrays, one per language (source, target, further ones).
        languages: one name per array (``classes_`` are sorted by it); default ``0, 1, ...``.
        n_components: ``LanguageLDA(n_components=)`` (None: C - 1 for C languages).
        basis: ``"fisher"``: ``components_`` (the discriminant subspace); ``"means"``:
            :meth:`LanguageLDA.mean_basis` (the span of the language means).
    """
    if basis not in LDA_BASES:
        raise ValueError(f"basis must be one of {LDA_BASES}, got {basis!r}")
    samples = list(samples)
    names = np.arange(len(samples), dtype=np.int64) if languages is None else np.asarray(list(languages))
    if len(names) != len(samples):
        raise ValueError(f"languages must name each of the {len(samples)} samples, got {len(names)} names")
    X = np.concatenate(samples)
    y = np.repeat(names, [len(x) for x in samples])
    lda = LanguageLDA(n_components=n_components).fit(X, y)
    if basis == "means":
        return lda.mean_basis()
    return np.ascontiguousarray(np.asarray(lda.components_, dtype=np.float32))
