#!/usr/bin/env bash
# CI smoke test on the NEWEST transformers pip resolves (the suite itself runs on the pins in
# requirements-dev.txt): a throwaway venv in /tmp with torch==2.13.0 (the CPU wheel; never a CUDA build),
# the latest transformers / tokenizers / accelerate, and xite_fast from this checkout (PYTHONPATH, the
# extension built in place by scripts/run.sh; without it the ops fall back to torch). It trains a few
# steps of stage 1 and XITE stage 2 (sentence + hidden placements, LDA, frozen-prefix cache) on tiny
# random BERT / XLM-R / DistilBERT models built offline, and checks the save_pretrained round trip.
# Usage: bash scripts/ci_smoke_latest.sh   (exit 0 = the engine works on the newest transformers)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
TMP=$(mktemp -d /tmp/xite_smoke_latest.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" -m venv "$TMP/venv"
PY="$TMP/venv/bin/python"
"$PY" -m pip install -q --upgrade pip
# torch pinned to the CPU wheel; everything else as new as pip resolves
"$PY" -m pip install -q "torch==2.13.0" numpy scipy scikit-learn pyyaml tqdm \
  --upgrade transformers tokenizers accelerate safetensors
"$PY" - <<'PY'
import importlib.metadata as md
for p in ("torch", "transformers", "tokenizers", "accelerate", "numpy"):
    print(f"smoke: {p}=={md.version(p)}")
PY
cd "$TMP"
PYTHONPATH="$ROOT" "$PY" - <<'PY'
import tempfile

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (AutoModelForSequenceClassification, BertConfig, DistilBertConfig, PreTrainedTokenizerFast,
                          TrainingArguments, XLMRobertaConfig)

import xite_fast as xf

torch.set_num_threads(1)
words = ["apple", "banana", "cherry", "dog", "cat", "horse", "red", "blue", "green"]
vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
for w in words:
    vocab[w] = len(vocab)
    vocab[w + "_x"] = len(vocab)
tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
tk.pre_tokenizer = pre_tokenizers.Whitespace()
tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
rng = np.random.default_rng(0)
src = [" ".join(rng.choice(words[3 * (i % 3): 3 * (i % 3) + 3], 4)) for i in range(24)]
tgt = [" ".join(w + "_x" for w in s.split()) for s in src]
labels = [10 * (i % 3) for i in range(24)]
common = dict(vocab_size=len(vocab), max_position_embeddings=32, pad_token_id=0, num_labels=3)
configs = {
    "bert": BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, **common),
    "xlm-roberta": XLMRobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, **common),
    "distilbert": DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=48, **common),
}
for arch, cfg in configs.items():
    for xc in (xf.XiteConfig(placement="sentence", lda=True, head_lr=1e-2),
               xf.XiteConfig(placement="hidden", hidden_layer=1, freeze_embeddings=True, freeze_layers=1, cache_frozen=True)):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(cfg)
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(output_dir=out, max_steps=4, per_device_train_batch_size=8, learning_rate=1e-3,
                                     report_to=[], save_strategy="no", disable_tqdm=True, logging_steps=1, use_cpu=True)
            xm = xf.XiteModel(model, xc)
            if xc.lda:
                q = np.linalg.qr(rng.standard_normal((32, 1)))[0].astype(np.float32)
                xm.set_lda(q)
            tr = xf.train_xite(xm, tok, args, source_texts=src, source_labels=labels, target_texts=tgt)
            losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
            assert len(losses) == 4 and np.isfinite(losses).all(), losses
            tr.save_model(out + "/saved")
            re = AutoModelForSequenceClassification.from_pretrained(out + "/saved")
            a = xf.predict(re, tok, tgt).logits
            b = xf.predict(model, tok, tgt).logits
            assert np.array_equal(a, b), np.abs(a - b).max()
            assert re.config.id2label == {0: "0", 1: "10", 2: "20"}, re.config.id2label
        print(f"smoke: {arch} {xc.placement}: 4 steps, losses {losses[0]:.3f} -> {losses[-1]:.3f}, reload identical")
print("smoke: 6 passed, 0 failed")
PY
