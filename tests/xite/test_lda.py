"""LanguageLDA vs sklearn LinearDiscriminantAnalysis(solver="eigen"), projector algebra, persistence,
errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from xite_fast import LanguageLDA

LANGS = np.array(["en", "ko", "ja", "de", "fr"])


def make_languages(C: int, D: int, n_per: int, seed: int = 0, offset: float = 1.0):
    """Languages = Gaussian clusters sharing one anisotropic covariance, means `offset` apart."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((D, D)) / np.sqrt(D) * rng.uniform(0.2, 2.0, size=D)
    mus = rng.standard_normal((C, D)) * offset
    X = np.concatenate([rng.standard_normal((n_per, D)) @ A + mus[c] for c in range(C)]).astype(np.float32)
    y = np.repeat(LANGS[:C], n_per)
    perm = rng.permutation(X.shape[0])  # interleave languages: the fit must not rely on sorted input
    return X[perm], y[perm]


def projector_distance(U: np.ndarray, V: np.ndarray) -> float:
    """Spectral norm of the difference of the orthogonal projectors onto span(U), span(V)
    (= sine of the largest principal angle)."""
    Qu = np.linalg.qr(U.astype(np.float64))[0]
    Qv = np.linalg.qr(V.astype(np.float64))[0]
    return float(np.linalg.norm(Qu @ Qu.T - Qv @ Qv.T, 2))


@pytest.mark.parametrize(
    "C,D,shrinkage",
    [
        (2, 16, "auto"),
        (2, 384, 0.3),
        (3, 16, None),
        (3, 77, "auto"),
        (3, 384, "auto"),
        (4, 33, 0.0),
        (4, 128, 0.7),
        (5, 16, 1.0),
        (5, 97, None),
        (5, 384, "auto"),
    ],
)
def test_subspace_matches_sklearn(C, D, shrinkage):
    n_per = max(60, D // C + 40) if shrinkage is None else 60
    X, y = make_languages(C, D, n_per, seed=C * 1000 + D)
    ours = LanguageLDA(shrinkage=shrinkage).fit(X, y)
    sk = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage).fit(X.astype(np.float64), y)
    r = min(C - 1, D)
    assert ours.components_.shape == (D, r) and ours.components_.dtype == np.float32
    assert ours.scalings_.shape == (D, r)
    assert projector_distance(ours.components_, sk.scalings_[:, :r]) < 1e-5
    assert projector_distance(ours.scalings_, sk.scalings_[:, :r]) < 1e-6
    np.testing.assert_allclose(
        ours.explained_variance_ratio_, sk.explained_variance_ratio_[:r], rtol=1e-6, atol=1e-9
    )
    np.testing.assert_array_equal(ours.classes_, sk.classes_)
    np.testing.assert_allclose(ours.means_, sk.means_, rtol=1e-5, atol=1e-5)
    # each raw direction matches sklearn's up to sign (distinct eigenvalues on this data)
    for j in range(r):
        a, b = ours.scalings_[:, j], sk.scalings_[:, j]
        assert min(np.abs(a - b).max(), np.abs(a + b).max()) < 1e-6 * max(1.0, np.abs(b).max())


@pytest.mark.parametrize("n_components", [1, 2, 3])
def test_n_components_truncates_like_sklearn(n_components):
    X, y = make_languages(4, 40, 80, seed=7)
    ours = LanguageLDA(n_components=n_components).fit(X, y)
    r = n_components
    sk = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto", n_components=r).fit(
        X.astype(np.float64), y
    )
    assert ours.components_.shape == (40, r)
    assert projector_distance(ours.components_, sk.scalings_[:, :r]) < 1e-5
    np.testing.assert_allclose(ours.explained_variance_ratio_, sk.explained_variance_ratio_, rtol=1e-6)


def test_D_smaller_than_classes():
    X, y = make_languages(5, 2, 50, seed=3)
    ours = LanguageLDA().fit(X, y)
    assert ours.components_.shape == (2, 2)  # r = min(C - 1, D)


def test_projector_is_orthogonal_idempotent_symmetric():
    X, y = make_languages(4, 64, 100, seed=1)
    lda = LanguageLDA().fit(X, y)
    W = lda.components_.astype(np.float64)
    np.testing.assert_allclose(W.T @ W, np.eye(3), atol=1e-6)
    P = W @ W.T
    np.testing.assert_allclose(P @ P, P, atol=1e-6)
    np.testing.assert_allclose(P, P.T, atol=1e-7)
    lang, comp = lda.project(X, "lang"), lda.project(X, "comp")
    assert lang.dtype == np.float32 and lang.shape == X.shape
    np.testing.assert_allclose(lang + comp, X, atol=1e-5)
    np.testing.assert_allclose(lang, X.astype(np.float64) @ P, atol=1e-4)
    # the two parts are orthogonal row by row, and projecting twice changes nothing
    np.testing.assert_allclose((lang.astype(np.float64) * comp).sum(1), 0.0, atol=1e-3)
    np.testing.assert_allclose(lda.project(lang), lang, atol=1e-5)
    np.testing.assert_allclose(lda.transform(X) @ lda.components_.T, lang, atol=1e-5)


def test_languages_separable_in_subspace():
    X, y = make_languages(3, 48, 150, seed=11, offset=0.6)
    lda = LanguageLDA().fit(X, y)

    def centroid_accuracy(Z):
        cents = np.stack([Z[y == c].mean(0) for c in lda.classes_])
        pred = lda.classes_[np.argmin(((Z[:, None, :] - cents[None]) ** 2).sum(-1), axis=1)]
        return float((pred == y).mean())

    acc_lang = centroid_accuracy(lda.transform(X))
    sk_acc = float(LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(X, y).score(X, y))
    assert acc_lang > 0.9 and acc_lang >= sk_acc - 0.05

    # LDA maximizes the Fisher ratio: the discriminant subspace beats random subspaces of equal rank
    def fisher(W):
        Z = X.astype(np.float64) @ W
        m = Z.mean(0)
        sb = sum(
            (y == c).mean() * np.outer(Z[y == c].mean(0) - m, Z[y == c].mean(0) - m) for c in lda.classes_
        )
        sw = sum((y == c).mean() * np.cov(Z[y == c].T, bias=True) for c in lda.classes_)
        return float(np.trace(np.linalg.solve(sw, sb)))

    rng = np.random.default_rng(0)
    best_random = max(fisher(np.linalg.qr(rng.standard_normal((48, 2)))[0]) for _ in range(20))
    assert fisher(lda.components_.astype(np.float64)) > 3 * best_random


def test_torch_inputs_and_int_labels():
    X, y = make_languages(3, 20, 40, seed=5)
    y_int = np.searchsorted(np.unique(y), y)
    a = LanguageLDA().fit(torch.from_numpy(X), torch.from_numpy(y_int))
    b = LanguageLDA().fit(X, list(y))
    np.testing.assert_array_equal(a.classes_, [0, 1, 2])
    assert projector_distance(a.components_, b.components_) < 1e-6
    xt = torch.from_numpy(X[:7])
    out = a.project(xt, part="comp")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (7, 20)
    np.testing.assert_allclose(out.numpy(), a.project(X[:7], part="comp"), atol=1e-5)
    t3 = a.transform(torch.from_numpy(X[:6]).reshape(2, 3, 20).double())
    assert t3.shape == (2, 3, 2) and t3.dtype == torch.float64


def test_save_load_roundtrip(tmp_path):
    X, y = make_languages(3, 24, 50, seed=2)
    lda = LanguageLDA(n_components=1, shrinkage=0.25).fit(X, y)
    path = tmp_path / "lda.npz"
    lda.save(path)
    back = LanguageLDA.load(path)
    np.testing.assert_array_equal(back.components_, lda.components_)
    np.testing.assert_array_equal(back.scalings_, lda.scalings_)
    np.testing.assert_array_equal(back.classes_, lda.classes_)
    np.testing.assert_array_equal(back.means_, lda.means_)
    assert back.n_components == 1 and back.shrinkage == 0.25
    np.testing.assert_array_equal(back.project(X), lda.project(X))


def test_load_broken_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        LanguageLDA.load(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a valid LanguageLDA file"):
        LanguageLDA.load(junk)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ValueError, match="format tag"):
        LanguageLDA.load(other)
    X, y = make_languages(2, 8, 20)
    good = tmp_path / "good.npz"
    LanguageLDA().fit(X, y).save(good)
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a valid LanguageLDA file"):
        LanguageLDA.load(truncated)


@pytest.mark.parametrize(
    "X,langs,match",
    [
        (np.zeros((4, 3), np.float32), ["en"] * 4, "at least 2 distinct languages, got 1"),
        (np.zeros((4, 3), np.float32), ["en", "ko", "en"], r"languages must be 1-D with N=4 labels.*\(3,\)"),
        (np.zeros((4, 3), np.float32), "enko", "languages must be a sequence"),
        (
            np.zeros((4, 3), np.float32),
            np.array([0.5, 1.5, 0.5, 1.5]),
            "str or int labels, got dtype float64",
        ),
        (np.zeros(4, np.float32), ["en", "ko"] * 2, r"X must be 2-D \(N, D\), got shape \(4,\)"),
        (np.zeros((4, 3), np.int64), ["en", "ko"] * 2, "X must have a floating dtype, got int64"),
        (np.zeros((0, 3), np.float32), [], "X must be non-empty"),
        ([[0.0, 1.0]], ["en"], "X must be a numpy array or torch tensor, got list"),
        (np.array([[0.0, 1.0], [np.nan, 0.0]], np.float32), ["en", "ko"], "X contains NaN or inf"),
    ],
)
def test_fit_errors(X, langs, match):
    with pytest.raises(ValueError, match=match):
        LanguageLDA().fit(X, langs)


def test_singular_within_scatter_needs_shrinkage():
    X, y = make_languages(2, 64, 10)  # N=20 < D: empirical scatter is singular
    with pytest.raises(ValueError, match="within-language scatter is singular.*shrinkage"):
        LanguageLDA(shrinkage=None).fit(X, y)
    LanguageLDA(shrinkage="auto").fit(X, y)  # fine with Ledoit-Wolf


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_components": 0}, "n_components must be a positive int or None, got 0"),
        ({"n_components": 1.5}, "n_components must be a positive int"),
        ({"shrinkage": 1.5}, r"shrinkage must be 'auto', None or a float in \[0, 1\], got 1.5"),
        ({"shrinkage": "lw"}, "shrinkage must be 'auto'"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LanguageLDA(**kwargs)


def test_inference_errors():
    with pytest.raises(ValueError, match="not fitted"):
        LanguageLDA().project(np.zeros((2, 3), np.float32))
    X, y = make_languages(2, 8, 20)
    lda = LanguageLDA().fit(X, y)
    with pytest.raises(ValueError, match=r"last dimension D=8, got shape \(2, 5\)"):
        lda.project(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="part must be 'lang' or 'comp', got 'both'"):
        lda.project(X, part="both")
    with pytest.raises(ValueError, match="floating dtype"):
        lda.transform(np.zeros((2, 8), np.int32))


def test_mean_basis_is_the_language_mean_span_and_survives_save_load(tmp_path):
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.standard_normal((50, 12)) + o for o in (0.0, 1.5, -2.0)]).astype(np.float32)
    X[:, 0] *= 10.0  # anisotropic: the Fisher subspace is not the mean span here
    y = np.repeat(["a", "b", "c"], 50)
    lda = LanguageLDA().fit(X, y)
    W = lda.mean_basis()
    assert W.shape == (12, 2) and W.dtype == np.float32
    np.testing.assert_allclose(W.T @ W, np.eye(2), atol=1e-5)
    m = np.stack([X[y == c].astype(np.float64).mean(0) for c in "abc"])
    M = np.stack([m[1] - m[0], m[2] - m[0]], 1)
    Q = np.linalg.qr(M)[0]
    assert np.linalg.norm(W @ W.T - Q @ Q.T, 2) < 1e-4
    two = LanguageLDA().fit(X[:100], y[:100]).mean_basis()[:, 0]
    off = m[1] - m[0]
    assert abs(float(two @ off)) / np.linalg.norm(off) == pytest.approx(1.0, abs=1e-5)
    lda.save(tmp_path / "l.npz")
    np.testing.assert_array_equal(LanguageLDA.load(tmp_path / "l.npz").mean_basis(), W)
    with pytest.raises(ValueError, match="not fitted yet"):
        LanguageLDA().mean_basis()


def test_fit_language_basis_is_the_one_fitter():
    """fit_language_basis (the augmenter's, the pipeline's and the trainer's fitter) is LanguageLDA with one
    class per sample array, named as given (so classes sort as before), fisher or means basis."""
    from xite_fast.xite.lda import fit_language_basis, sample_ids

    rng = np.random.default_rng(0)
    xs = [
        rng.normal(size=(n, 12)).astype(np.float32) + shift for n, shift in ((60, 0.0), (50, 0.4), (40, -0.3))
    ]
    names = ["src", "tgt", "fr"]
    lda = LanguageLDA().fit(np.concatenate(xs), np.repeat(names, [len(x) for x in xs]))
    W = fit_language_basis(xs, names)
    assert W.dtype == np.float32 and W.shape == (12, 2) and W.flags.c_contiguous
    np.testing.assert_array_equal(W, lda.components_)
    np.testing.assert_array_equal(fit_language_basis(xs, names, basis="means"), lda.mean_basis())
    two = LanguageLDA(n_components=1).fit(np.concatenate(xs[:2]), np.repeat([0, 1], [60, 50]))
    np.testing.assert_array_equal(fit_language_basis(xs[:2], n_components=1), two.components_)
    with pytest.raises(ValueError, match="basis must be one of"):
        fit_language_basis(xs, names, basis="pca")
    with pytest.raises(ValueError, match="languages must name each"):
        fit_language_basis(xs, names[:2])
    np.testing.assert_array_equal(sample_ids(5, 10, rng), np.arange(5))
    ids = sample_ids(100, 10, np.random.default_rng(1))
    assert len(ids) == 10 and np.all(np.diff(ids) > 0)
    np.testing.assert_array_equal(ids, np.sort(np.random.default_rng(1).choice(100, 10, replace=False)))


def test_n_components_above_the_maximum_is_an_error_like_sklearn():
    X, y = make_languages(4, 40, 80, seed=7)
    with pytest.raises(
        ValueError, match=r"n_components must be <= min\(languages - 1, D\) = min\(3, 40\) = 3, got 10"
    ):
        LanguageLDA(n_components=10).fit(X, y)
    assert LanguageLDA().fit(X, y).components_.shape == (40, 3)  # None: the maximum


@pytest.mark.parametrize(
    "langs,match",
    [
        ([None] * 10 + ["a"] * 10, r"languages\[0\] must be a str or int language label, got None"),
        (["a"] * 10 + [float("nan")] * 10, r"languages\[10\] must be a str or int language label, got nan"),
        ([np.nan] * 10 + [1.0] * 10, r"languages\[0\] must be a str or int language label, got nan"),
        (np.array([np.nan] * 10 + [1.0] * 10), "languages must hold str or int labels, got dtype float64"),
        (["a"] * 10 + [1] * 10, "all str or all int labels, got a mix"),
        ([True] * 10 + [False] * 10, r"languages\[0\] must be a str or int language label, got True"),
        (np.array([True] * 10 + [False] * 10), "languages must hold str or int labels, got dtype bool"),
        ([{"x": 1}] * 10 + ["a"] * 10, r"languages\[0\] must be a str or int"),
    ],
)
def test_labels_that_are_not_languages_are_refused(langs, match):
    X = np.random.default_rng(0).standard_normal((20, 6))
    with pytest.raises(ValueError, match=match):
        LanguageLDA().fit(X, langs)


def test_object_labels_str_or_int_still_fit():
    X = np.random.default_rng(0).standard_normal((20, 6))
    assert LanguageLDA().fit(X, np.array(["en"] * 10 + ["ko"] * 10, dtype=object)).classes_.tolist() == [
        "en",
        "ko",
    ]
    assert LanguageLDA().fit(X, [0] * 10 + [1] * 10).classes_.tolist() == [0, 1]


def test_save_writes_exactly_the_path_given(tmp_path):
    X, y = make_languages(2, 8, 20)
    lda = LanguageLDA().fit(X, y)
    (tmp_path / "d").mkdir()
    with pytest.raises(
        ValueError, match=r"path must be a file name ending with '.npz', got .*d' \(a directory\)"
    ):
        lda.save(tmp_path / "d")
    with pytest.raises(ValueError, match=r"got .*model' \(no .npz suffix\)"):
        lda.save(tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # nothing written (no d.npz, no model.npz)
    lda.save(tmp_path / "m.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "m.npz"]
    np.testing.assert_array_equal(LanguageLDA.load(tmp_path / "m.npz").components_, lda.components_)
