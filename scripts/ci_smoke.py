"""CI smoke of an INSTALLED xite_fast on one dependency set (run by scripts/ci_smoke.sh in the set's venv,
from a directory outside the checkout, so the wheel is what is imported).

1. the installed package and its compiled extension load;
2. kernels vs the float64 references (cosine_topk, lda_project_interp, sinkhorn_divergence) on the CPU
   kernel and the torch backend;
3. encode a few sentences with the offline e5-small (Encoder's auto choice: torch when no other runtime
   is installed);
4. the demo augment (chatterbot English -> Korean) on ``--max-rows`` rows through the CLI;
5. a few XiteTrainer steps (stage 1 and XITE stage 2, sentence + hidden placements, LDA, frozen-prefix
   cache) on tiny random BERT / XLM-R / DistilBERT models built offline, and the save_pretrained round trip.

Usage: python ci_smoke.py [--max-rows N]   (exit 0 = passed)
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _step(name: str, t0: float) -> None:
    print(f"smoke: {name} ok ({time.perf_counter() - t0:.1f}s)", flush=True)


def check_install() -> None:
    import xite_fast as xf
    from xite_fast._backend import backends_available, load_extension

    where = Path(xf.__file__).resolve()
    assert "site-packages" in where.parts, f"xite_fast imported from {where}, not from the installed wheel"
    assert load_extension() is not None, "the compiled extension xite_fast._C does not load"
    assert backends_available()["cpu"], "the CPU kernels are not available (extension without AVX2?)"
    assert xf.__version__ == md.version("xite_fast"), (xf.__version__, md.version("xite_fast"))
    assert (where.parent / "py.typed").is_file(), "py.typed is not in the wheel"
    # a core install (+ [assets]) brings no encoder runtime: they are extras
    have = {d.metadata["Name"].lower() for d in md.distributions()}
    extra = have & {"openvino", "ctranslate2", "onnxruntime", "onnxruntime-gpu", "onnx", "nncf"}
    assert not extra, f"a core install pulled in {sorted(extra)}"
    for p in ("torch", "numpy", "transformers", "tokenizers", "accelerate", "scikit-learn", "scipy"):
        print(f"smoke: {p}=={md.version(p)}")


def check_kernels() -> None:
    import xite_fast as xf
    from xite_fast import reference as ref

    g = torch.Generator().manual_seed(0)
    q = torch.randn(37, 48, generator=g)
    keys = torch.randn(301, 48, generator=g)
    want_s, want_i = ref.cosine_topk_ref(q.double(), keys.double(), 5)
    for backend in ("cpu", "torch"):
        s, i = xf.cosine_topk(q.numpy(), keys.numpy(), 5, backend=backend)
        s, i = torch.as_tensor(np.asarray(s)), torch.as_tensor(np.asarray(i))
        assert torch.equal(i.long(), want_i.long()), f"cosine_topk[{backend}] indices differ"
        assert torch.allclose(s.double(), want_s.double(), atol=1e-5), f"cosine_topk[{backend}] scores differ"

    src, tgt = torch.randn(64, 48, generator=g), torch.randn(64, 48, generator=g)
    W = torch.linalg.qr(torch.randn(48, 6, generator=g))[0]
    lam = torch.rand(64, generator=g)
    for mode in ("proj", "comp", "interp"):
        Wm = None if mode == "interp" else W
        want = ref.lda_project_interp_ref(
            src.double(), tgt.double(), None if Wm is None else Wm.double(), lam.double(), mode
        )
        for backend in ("cpu", "torch"):
            got = xf.lda_project_interp(
                src.numpy(),
                tgt.numpy(),
                None if Wm is None else Wm.numpy(),
                lam.numpy(),
                mode,
                backend=backend,
            )
            err = (torch.as_tensor(np.asarray(got)).double() - want).abs().max().item()
            assert err < 1e-4, f"lda_project_interp[{backend}, {mode}] max error {err}"

    x, y = torch.randn(2, 20, 8, generator=g), torch.randn(2, 24, 8, generator=g)
    want = ref.sinkhorn_divergence_ref(x.double(), y.double(), eps=0.5, n_iters=200)
    for backend in ("cpu", "torch"):
        got = xf.sinkhorn_divergence(x, y, eps=0.5, n_iters=200, backend=backend)
        err = abs(float(got) - float(want))
        assert err < 1e-3 * max(1.0, abs(float(want))), f"sinkhorn_divergence[{backend}] error {err}"


def check_encode() -> None:
    import xite_fast as xf

    enc = xf.Encoder("e5-small")
    emb = np.asarray(
        enc.encode(["a cat sits on the mat", "고양이가 매트 위에 앉아 있다", "the weather is nice"])
    )
    assert emb.shape == (3, enc.dim) and np.isfinite(emb).all(), emb.shape
    norms = np.linalg.norm(emb, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-3), norms
    assert emb[0] @ emb[1] > emb[0] @ emb[2] - 0.2  # loose sanity only; the suite checks the numbers
    print(f"smoke: encoder runtime {enc.runtime}, dim {enc.dim}")


def check_augment(max_rows: int, work: Path) -> None:
    out = work / "demo"
    cmd = [
        sys.executable,
        "-m",
        "xite_fast",
        "augment",
        "--source",
        "chatterbot:english",
        "--target",
        "chatterbot:korean",
        "--out",
        str(out),
        "--max-rows",
        str(max_rows),
        "-q",
    ]
    subprocess.run(cmd, check=True)
    report = json.loads((out / "report.json").read_text())
    manifest = json.loads((out / "synthetic" / "manifest.json").read_text())
    parts = sorted((out / "synthetic").glob("part-*.jsonl"))
    rows = sum(1 for p in parts for _ in p.open())
    assert parts and rows > 0, "the demo augment wrote no synthetic rows"
    print(
        f"smoke: augment {rows} synthetic rows, report keys {sorted(report)[:4]}, manifest {len(manifest)} "
        "keys"
    )


def check_train() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        DistilBertConfig,
        PreTrainedTokenizerFast,
        TrainingArguments,
        XLMRobertaConfig,
    )

    import xite_fast as xf

    words = ["apple", "banana", "cherry", "dog", "cat", "horse", "red", "blue", "green"]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for w in words:
        vocab[w] = len(vocab)
        vocab[w + "_x"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    rng = np.random.default_rng(0)
    src = [" ".join(rng.choice(words[3 * (i % 3) : 3 * (i % 3) + 3], 4)) for i in range(24)]
    tgt = [" ".join(w + "_x" for w in s.split()) for s in src]
    labels = [10 * (i % 3) for i in range(24)]
    common = dict(vocab_size=len(vocab), max_position_embeddings=32, pad_token_id=0, num_labels=3)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
    configs = {
        "bert": BertConfig(**small, **common),
        "xlm-roberta": XLMRobertaConfig(**small, **common),
        "distilbert": DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=48, **common),
    }
    xcs = (
        xf.XiteConfig(placement="sentence", lda=True, head_lr=1e-2),
        xf.XiteConfig(
            placement="hidden", hidden_layer=1, freeze_embeddings=True, freeze_layers=1, cache_frozen=True
        ),
    )
    for arch, cfg in configs.items():
        for xc in xcs:
            torch.manual_seed(0)
            model = AutoModelForSequenceClassification.from_config(cfg)
            with tempfile.TemporaryDirectory() as out:
                args = TrainingArguments(
                    output_dir=out,
                    max_steps=4,
                    per_device_train_batch_size=8,
                    learning_rate=1e-3,
                    report_to=[],
                    save_strategy="no",
                    disable_tqdm=True,
                    logging_steps=1,
                    use_cpu=True,
                )
                xm = xf.XiteModel(model, xc)
                if xc.lda:
                    xm.set_lda(np.linalg.qr(rng.standard_normal((32, 1)))[0].astype(np.float32))
                tr = xf.train_xite(xm, tok, args, source_texts=src, source_labels=labels, target_texts=tgt)
                losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
                assert len(losses) == 4 and np.isfinite(losses).all(), losses
                tr.save_model(out + "/saved")
                re = AutoModelForSequenceClassification.from_pretrained(out + "/saved")
                a = xf.predict(re, tok, tgt).logits
                b = xf.predict(model, tok, tgt).logits
                assert np.array_equal(a, b), np.abs(a - b).max()
                assert re.config.id2label == {0: "0", 1: "10", 2: "20"}, re.config.id2label
            print(
                f"smoke: {arch} {xc.placement}: 4 steps, losses {losses[0]:.3f} -> {losses[-1]:.3f}, reload "
                "identical"
            )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-rows", type=int, default=300)
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory(prefix="xite_smoke.") as work:
        for name, fn in (
            ("install", check_install),
            ("kernels vs references", check_kernels),
            ("encode", check_encode),
            ("demo augment", lambda: check_augment(a.max_rows, Path(work))),
            ("XiteTrainer steps + save/load", check_train),
        ):
            t0 = time.perf_counter()
            fn()
            _step(name, t0)
    print("smoke: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
