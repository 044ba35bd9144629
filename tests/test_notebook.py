"""In a real notebook kernel (nbclient + ipykernel), Encoder.encode, encode_corpus and run_augment draw
progress bars and xite_fast's log lines reach the cell's output, with no logging set up by the user."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]


def _run(cells: list[str], tmp_path: Path) -> list[dict]:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(cwd=str(tmp_path))  # kernel "python3": ipykernel of this interpreter (jupyter_client)
    return [o for cell in nb.cells for o in cell.get("outputs", [])]


def _text(outputs: list[dict], name: str) -> str:
    return "".join(
        o.get("text", "") for o in outputs if o.get("output_type") == "stream" and o.get("name") == name
    )


def test_notebook_shows_progress_and_logs(tmp_path):
    from tests.utils import make_bert_folder

    bert = make_bert_folder(tmp_path / "tiny-bert")
    cells = [
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); print(sys.executable)",
        "import pandas as pd\nimport xite_fast\nfrom xite_fast import Encoder, encode_corpus",
        f"enc = Encoder({str(bert)!r}, runtime='torch')\n"
        "emb = enc.encode([f'the weather is nice today {i}' for i in range(120)], batch_size=8)\n"
        "print(emb.shape)",
        "xite_fast.logging.set_verbosity_info()\n"
        "df = pd.DataFrame({'text': [f'my computer is broken {i}' for i in range(90)]})\n"
        f"store = encode_corpus(df, {str(tmp_path / 'emb')!r}, enc, shard_size=40)\nprint(len(store))",
        "from tests.utils import HashEncoder\n"
        "src = pd.DataFrame({'text': [f'source {i}' for i in range(40)], 'label': ['a', 'b'] * 20})\n"
        "run = xite_fast.run_augment(xite_fast.AugmentConfig(source=src, target=df, "
        f"out={str(tmp_path / 'run')!r}, shard_size=16, mode='interp'), encoder=HashEncoder())\n"
        "print(run.to_pandas().shape)",
        "emb = enc.encode(['one', 'two'], show_progress_bar=False)\n"
        "xite_fast.logging.set_verbosity_warning()",
    ]
    outputs = _run(cells, tmp_path)
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors
    out, err = _text(outputs, "stdout"), _text(outputs, "stderr")
    widgets = [o for o in outputs if o.get("output_type") == "display_data"]  # tqdm widgets with ipywidgets
    assert sys.executable in out or Path(sys.executable).resolve().parent.name in out
    assert "(120, 32)" in out and "90" in out
    assert widgets or ("encode: 100%" in err and "120/120" in err and "90/90" in err), err  # the bars
    assert "[xite-fast] encode_corpus: 90 rows in" in err, err  # a log line, no handler set up by the user
    assert "match+synthesize: 100%" in err and "[xite-fast] match+synthesize ..." in err, err  # run_augment
    assert "(90, 8)" in out
