"""Frozen-encoder transfer analysis: every row against a direct sklearn / numpy computation, on tiny
fake embeddings (the real run is bench/results/transfer_*.md, not a test)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from experiments import transfer as T
from tests.utils import orthonormal
from xite_fast.xite.augmenter import beta_lambdas


class HashEncoder:
    """Deterministic fake encoder: a unit vector per text from its hash (no model)."""

    model_id = "hash-encoder"
    dim = 8
    prefix = ""

    def encode(self, texts, batch_size=64, **kw):
        out = np.stack(
            [
                np.random.default_rng(int(hashlib.md5(t.encode()).hexdigest()[:8], 16)).normal(size=8)
                for t in texts
            ]
        ).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _task(seed=0, n_src=240, n_pool=160, n_test=120, d=12, pair=False):
    """Two classes along axis 0; the target is the source shifted by a language offset."""
    rng = np.random.default_rng(seed)

    def make(n, offset):
        y = rng.integers(0, 2, n)
        X = rng.normal(size=(n, d)).astype(np.float32) * 0.6
        X[:, 0] += np.where(y == 1, 1.0, -1.0)
        X += offset
        return X.astype(np.float32), y.astype(np.int64)

    off = np.zeros(d, np.float32)
    off[1] = 2.0
    src, en_te = make(n_src, 0), make(80, 0)
    pool, test = make(n_pool, off), make(n_test, off)
    lang_X = {"en": src[0], "xx": pool[0], "yy": make(100, -off)[0]}
    return T.TaskData("toy", "xx", seed, ["neg", "pos"], *src, *en_te, *pool, *test, lang_X=lang_X, pair=pair)


def _centered_top1(q, k):
    q = q - q.mean(0)
    k = k - k.mean(0)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    s = q @ k.T
    return s.max(1), s.argmax(1)


def test_rows_match_direct_computation():
    td = _task()
    rows, an = T.run_rows(td, fixed_lams=(0.5,))
    by = {r["row"]: r for r in rows}
    ref = LogisticRegression(C=T._C, max_iter=3000).fit(td.src_X, td.src_y)
    assert by["zero-shot"]["acc"] == pytest.approx((ref.predict(td.test_X) == td.test_y).mean())
    orc = LogisticRegression(C=T._C, max_iter=3000).fit(td.pool_X, td.pool_y)
    assert by["oracle (pool gold labels)"]["acc"] == pytest.approx(
        (orc.predict(td.test_X) == td.test_y).mean()
    )
    _, nn = _centered_top1(td.test_X.astype(np.float64), td.src_X.astype(np.float64))
    assert by["nn-transfer (centered)"]["acc"] == pytest.approx((td.src_y[nn] == td.test_y).mean())
    sim, src = _centered_top1(td.pool_X.astype(np.float64), td.src_X.astype(np.float64))
    matched = td.src_y[src]
    assert an["matched_acc"] == pytest.approx((matched == td.pool_y).mean())
    assert by["λ=0"]["label_acc"] == pytest.approx(an["matched_acc"])
    # xite interp row = English + lam * matched English row + (1 - lam) * pool row, lam ~ Beta(1, 1)
    lam = beta_lambdas(np.arange(len(td.pool_y)), 1.0, td.seed)[:, None]
    Xm = lam * td.src_X[src] + (1 - lam) * td.pool_X
    xr = LogisticRegression(C=T._C, max_iter=3000).fit(
        np.concatenate([td.src_X, Xm]), np.concatenate([td.src_y, matched])
    )
    assert by["xite interp"]["acc"] == pytest.approx((xr.predict(td.test_X) == td.test_y).mean(), abs=1e-9)
    pseudo = ref.predict(td.pool_X)
    assert an["pseudo_acc"] == pytest.approx((pseudo == td.pool_y).mean())
    assert an["agree_rate"] == pytest.approx((pseudo == matched).mean())
    # equal-count similarity bins cover the pool; kept shares are what they say
    assert sum(b["n"] for b in an["sim_bins"]) == len(td.pool_y)
    assert by["λ=0 [similarity ≥ median]"]["kept"] == pytest.approx(
        (sim >= np.quantile(sim, 0.5)).mean(), abs=0.01
    )
    assert any(r["row"].startswith("xite shift (LDA all 3 languages, r=2)") for r in rows)
    assert all(0.0 <= r["acc"] <= 1.0 for r in rows)


def test_pair_rows_and_block_lda():
    td = _task(d=6, pair=True)
    td.src_X = np.concatenate([td.src_X, td.src_X[::-1]], axis=1)
    td.en_test_X = np.concatenate([td.en_test_X, td.en_test_X], axis=1)
    td.pool_X = np.concatenate([td.pool_X, td.pool_X], axis=1)
    td.test_X = np.concatenate([td.test_X, td.test_X], axis=1)
    rows, _ = T.run_rows(td, fixed_lams=())
    assert not any("clf-space" in r["row"] for r in rows)  # the pair classifier is not linear in [u; v]
    W = T._pair_W(orthonormal(6, 2, 0), True)
    np.testing.assert_allclose(W.T @ W, np.eye(4), atol=1e-6)
    f = T._features(np.arange(8, dtype=np.float32)[None], True)
    np.testing.assert_array_equal(f, [[0, 1, 2, 3, 4, 5, 6, 7, 0, 5, 12, 21, 4, 4, 4, 4]])


def test_twin_transfer_against_brute_force():
    pytest.importorskip("chatterbot_corpus")
    from xite_fast.data.bundled import load_bundled

    enc = HashEncoder()
    en = load_bundled("chatterbot:english").records
    ko = load_bundled("chatterbot:korean").records
    twin_of = {(r["conv_id"], r["turn"]): i for i, r in enumerate(en)}
    en_X = enc.encode([r["text"] for r in en])
    # a Korean sentence = its English twin + noise, so the twin is nearly always top-1
    rng = np.random.default_rng(0)
    ko_X = np.stack(
        [
            en_X[twin_of[(r["conv_id"], r["turn"])]]
            if (r["conv_id"], r["turn"]) in twin_of
            else rng.normal(size=8)
            for r in ko
        ]
    ).astype(np.float32) + 0.05 * rng.normal(size=(len(ko), 8)).astype(np.float32)

    def embed(spec):
        return (en, en_X) if spec == "chatterbot:english" else (ko, ko_X)

    (res,) = T.twin_transfer(embed, ["ko"])
    from xite_fast.data.chatterbot import chatterbot_topics

    topics = set(chatterbot_topics("english", "korean"))
    ei = np.asarray([i for i, r in enumerate(en) if r["label"] in topics])
    ex = en_X[ei] - en_X[ei].mean(0)
    kx = ko_X - ko_X.mean(0)
    s = (kx / np.linalg.norm(kx, axis=1, keepdims=True)) @ (ex / np.linalg.norm(ex, axis=1, keepdims=True)).T
    keys = [(en[i]["conv_id"], en[i]["turn"]) for i in ei]
    ok_with, ok_without = [], []
    for j, r in enumerate(ko):
        order = np.argsort(-s[j], kind="stable")
        ok_with.append(en[ei[order[0]]]["label"] == r["label"])
        best = next(o for o in order if keys[o] != (r["conv_id"], r["turn"]))
        ok_without.append(en[ei[best]]["label"] == r["label"])
    assert res["with_twin"] == pytest.approx(np.mean(ok_with), abs=2e-3)
    assert res["twin_excluded"] == pytest.approx(np.mean(ok_without), abs=2e-3)
    assert res["twin_is_top1"] > 0.75 and res["with_twin"] > res["twin_excluded"]


def test_embed_cache_reused_without_a_model(tmp_path, monkeypatch):
    pytest.importorskip("chatterbot_corpus")
    recs, X = T.embed_spec("chatterbot:korean", HashEncoder(), root=tmp_path)
    np.testing.assert_array_equal(X, HashEncoder().encode([r["text"] for r in recs]))
    import xite_fast.encode.encoder as E

    monkeypatch.setattr(E, "Encoder", lambda *a, **k: pytest.fail("the cache must be reused"))
    recs2, X2 = T.embed_spec("chatterbot:korean", None, root=tmp_path)
    assert recs2 == recs and np.array_equal(X2, X)
    # other texts in the same folder: the fast path refuses it
    store = T._cached_store(next((tmp_path / "transfer").iterdir()), [r["text"] + "!" for r in recs])
    assert store is None


def test_run_writes_tables_and_plots(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "prepare", lambda task, t, seed, embed: _task(seed))
    out = tmp_path / "toy"
    res = T.run("sentiment", ["xx"], [0, 1], out, command="toy", embed=lambda s: None)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "toy.md",
        "toy.csv",
        "toy_acc.png",
        "toy_sim.png",
        "toy_lda.png",
    }
    z = next(s for s in res["summary"] if s["row"] == "zero-shot")
    accs = [r["acc"] for r in res["rows"] if r["row"] == "zero-shot"]
    assert z["acc"] == pytest.approx(np.mean(accs)) and z["acc_std"] == pytest.approx(np.std(accs, ddof=1))
    o = next(s for s in res["summary"] if s["row"].startswith("oracle"))
    assert o["gap_closed"] == pytest.approx(1.0) and z["gap_closed"] == 0.0
    md = out.with_suffix(".md").read_text()
    assert "Command: `toy`" in md and "| zero-shot |" in md
    # the long CSV holds every number of the md tables: they regenerate from it alone
    from experiments.tables import CSV_FIELDS, read_csv, regenerate

    assert out.with_suffix(".csv").read_text().splitlines()[0] == ",".join(CSV_FIELDS)
    rows = read_csv(out.with_suffix(".csv"))
    assert T.wide_rows(rows) == [
        {k: r[k] for k in ("target", "seed", "row", *T._METRIC)} for r in res["rows"]
    ]
    assert regenerate(out.with_suffix(".csv"), check=True)


def test_errors():
    with pytest.raises(ValueError, match="task must be one of"):
        T.prepare("nli", "ko", 0, embed=lambda s: None)
    with pytest.raises(ValueError, match="sentiment targets"):
        T.prepare("sentiment", "de", 0, embed=lambda s: None)
