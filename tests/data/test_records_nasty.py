"""The TSV/CSV reader against well-kept parsers (``csv``, pandas, ``datasets``) on a corpus of nasty files.

Each file is read four ways and must give the same records (texts and labels stripped, records with a
blank text skipped, a missing cell = no label): by :func:`iter_records`, and by ``csv`` / pandas /
``datasets`` with the same header choice. Row i read back through the byte offsets of
:func:`index_corpus` must equal row i of the stream, on every file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random

import pytest

from tests.utils import HashEncoder
from xite_fast.data import records as data

BOM = b"\xef\xbb\xbf"
LONG = "x" * 9000 + "\r\n" + "y" * 9000  # longer than the reader's read size, a line break inside

# name -> (suffix, file bytes, pair_field); every row is at most as wide as the first line
CASES = {
    "issue21_quote_in_unquoted": (
        "csv",
        b'text,label\nmy 5" screen broke,a\ngood product,b\nthe 7" tablet,c\nlast row,d\n',
        None,
    ),
    "bom": ("csv", BOM + b'text,label\nA,x\n"B, quoted",y\n', None),
    "quoted_newlines_doubled_quotes": (
        "csv",
        b'text,label\n"line one\nline two",a\n"he said ""hi""",b\n"comma, inside",c\n'
        b'"""quoted start"" and more",d\n"crlf\r\ninside",e\n"cr\rinside",f\n',
        None,
    ),
    "crlf": ("csv", b'text,label\r\na,x\r\n"b\r\nc",y\r\n\r\nd,z\r\n', None),
    "cr_only": ("csv", b'text,label\ra,x\r"b\rc",y\r\rd,z\r', None),
    "empty_fields": ("csv", b'text,label\na,\n,b\n,\nc,x\n"",y\n" ",z\nd\n  e  ,  w  \n', None),
    "blank_lines": ("csv", b"\n  \ntext,label\n\na,x\n   \n\nb,y\n\n\n", None),
    "header_only": ("csv", b"text,label\n", None),
    "header_only_no_newline": ("csv", b"text,label", None),
    "no_trailing_newline": ("csv", b'text,label\na,x\n"b\nb","y"', None),
    "no_trailing_newline_unquoted": ("csv", b"text,label\na,x\nb,y", None),
    "text_after_closing_quote": ("csv", b'text,label\n"abc" def,x\n"x"y,z\n"q" ,w\n', None),
    "unicode": ("csv", 'text,label\nhéllo wörld,x\n"日本語, テキスト",y\n안녕 "하세요",z\n'.encode(), None),
    "header_names_in_data": ("csv", b"text,label\ntext,text\nlabel,label\n", None),
    "columns_by_name": (
        "csv",
        b'id,Label,text,text_pair\n1,x,hello,p1\n2,y,"multi\nline",p2\n3,z,"a ""b""",p3\n',
        "text_pair",
    ),
    "long_field": ("csv", b'text,label\nshort,a\n"' + LONG.encode() + b'",b\nafter,c\n', None),
    "tsv_quotes": (
        "tsv",
        b'text\tlabel\ttext_pair\na "quoted" word\tx\tp\n"tab\tinside"\ty\tq\n"new\nline"\tz\tr\n'
        b'mid"quote\tw\ts\n"a ""b"""\tv\tt\n',
        "text_pair",
    ),
    "tsv_bom_crlf": ("tsv", BOM + b'text\tlabel\r\na\tx\r\n"b ""c"""\ty\r\n\r\n"d\r\ne"\tz', None),
    "tsv_cr_only": ("tsv", b"text\tlabel\ra, b\tx\r\rc\ty\r", None),
}


def _write(tmp_path, name):
    fmt, body, pair = CASES[name]
    p = tmp_path / f"{name}.{fmt}"
    p.write_bytes(body)
    return p, ("\t" if fmt == "tsv" else ","), pair


def _records(columns, rows, pair_field):
    """The reader's rules over parsed rows (``columns`` None: positional text, label, pair)."""
    if columns is None:
        ti, li, pi = 0, 1, 2
    else:
        low = [str(c).strip().lower() for c in columns]
        ti, li = low.index("text"), (low.index("label") if "label" in low else None)
        pi = low.index(pair_field) if pair_field else None

    def cell(row, i):
        v = row[i] if i is not None and i < len(row) else None
        return v.strip() if isinstance(v, str) else ""  # pandas / datasets: a missing cell is NaN / None

    out = []
    for row in rows:
        text = cell(row, ti)
        if text:
            out.append(data.Record(text, cell(row, li) or None, cell(row, pi) if pair_field else None))
    return out


def _ours(p, header, pair):
    return [r for _, r in data.iter_records(p, header=header, pair_field=pair)]


def _by_csv(p, sep, header, pair):
    with open(p, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh, delimiter=sep))
    if not header:
        return _records(None, rows, pair)
    rows = rows[
        [i for i, r in enumerate(rows) if any(c.strip() for c in r)][0] :
    ]  # first non-blank: the header
    return _records(rows[0], rows[1:], pair)


def _by_pandas(p, sep, header, pair):
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(p, sep=sep, dtype=str, keep_default_na=False, header=0 if header else None)
    return _records(list(df.columns) if header else None, df.astype(object).values.tolist(), pair), df


def _by_datasets(p, sep, header, pair, df, cache):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    names = [str(c) for c in df.columns] if header else [f"c{i}" for i in range(df.shape[1])]
    kw = {} if header else {"column_names": names}
    ds = datasets.Dataset.from_csv(
        str(p),
        sep=sep,
        keep_default_na=False,
        header=0 if header else None,
        cache_dir=str(cache),
        features=datasets.Features({c: datasets.Value("string") for c in names}),
        **kw,
    )
    return _records(names if header else None, [[r[c] for c in names] for r in ds], pair)


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("name", sorted(CASES))
def test_reader_agrees_with_csv_pandas_and_datasets(tmp_path, name, header):
    p, sep, pair = _write(tmp_path, name)
    ours = _ours(p, header, pair)
    assert ours == _by_csv(p, sep, header, pair)
    by_pandas, df = _by_pandas(p, sep, header, pair)
    assert ours == by_pandas
    if len(df):  # datasets cannot build a table of no rows
        assert ours == _by_datasets(p, sep, header, pair, df, tmp_path / "hf")


def test_the_issue21_files():
    """The reproductions of issue 21: 4 records, not 2; the BOM'd header is not a record or a class."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p, _, _ = _write(Path(d), "issue21_quote_in_unquoted")
        assert [(r.text, r.label) for r in _ours(p, True, None)] == [
            ('my 5" screen broke', "a"),
            ("good product", "b"),
            ('the 7" tablet', "c"),
            ("last row", "d"),
        ]
        p, _, _ = _write(Path(d), "bom")
        idx = data.index_corpus(p, need_label=True)
        assert idx.label_names == ["x", "y"] and len(idx) == 2


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("name", sorted(CASES))
def test_rows_read_back_through_offsets_equal_the_stream(tmp_path, name, header):
    p, _, pair = _write(tmp_path, name)
    stream = _ours(p, header, pair)
    if not stream:
        with pytest.raises(ValueError, match="empty corpus"):
            data.index_corpus(p, header=header, pair_field=pair)
        return
    idx = data.index_corpus(p, header=header, pair_field=pair)
    assert idx.sha256 == hashlib.sha256(p.read_bytes()).hexdigest() and len(idx) == len(stream)
    reader = idx.reader()
    assert reader.get(range(len(idx))) == stream
    order = list(range(len(idx))) * 2
    random.Random(0).shuffle(order)
    assert reader.get(order) == [stream[i] for i in order]  # random access, repeats, any order
    reader.close()
    fresh = data.RecordReader(p, idx.offsets, **idx.read_options())  # as a Ray worker builds it
    assert fresh.get([len(idx) - 1, 0]) == [stream[-1], stream[0]]
    for k in range(1, len(stream) + 1):
        part = data.index_corpus(p, header=header, pair_field=pair, max_rows=k)
        assert part.offsets.tolist() == idx.offsets.tolist()[:k] and part.sha256 == idx.sha256


@pytest.mark.parametrize("name", sorted(CASES))
def test_line_splitter_at_every_chunk_boundary(tmp_path, name):
    """Lines end at \\n, \\r\\n, \\r as ``open(newline="")`` reads them, wherever a read chunk ends (a
    \\r\\n split over two chunks is one line end); the hasher sees every byte once."""
    p, _, _ = _write(tmp_path, name)
    raw = p.read_bytes()
    with open(p, newline="", encoding="utf-8-sig") as fh:
        want = [line.encode() for line in fh]
    for chunk in (1, 2, 3, 5, 64, 1 << 20):
        h = data._CountingHasher()
        with open(p, "rb") as fh:
            lines = data._Lines(fh, 0, True, hasher=h, chunk=chunk)
            got, ends = [], []
            while line := lines.next_line():
                got.append(line)
                ends.append(lines.pos)
        assert got == want, chunk
        assert ends == [len(raw) - len(b"".join(got[i + 1 :])) for i in range(len(got))]
        assert h.hexdigest() == hashlib.sha256(raw).hexdigest()


# ------------------------------------------------------------------------------------------ header option
def test_header_is_explicit_on_every_entry(tmp_path):
    body = "good,pos\nbad,neg\n"
    p = tmp_path / "h.csv"
    p.write_text(body)
    want = [data.Record("good", "pos"), data.Record("bad", "neg")]
    assert [r for _, r in data.iter_records(p, header=False)] == want
    assert data.read_labelled(p, header=False) == (["good", "bad"], ["pos", "neg"])
    assert data.read_texts(p, header=False) == ["good", "bad"]
    idx = data.index_corpus(p, header=False, need_label=True)
    assert idx.header is False and idx.fingerprint()["header"] is False
    assert data.RecordReader(p, idx.offsets, header=False).get([1, 0]) == want[::-1]
    # the default: the first line is a header; this one does not name the text column, so it says so
    for call in (lambda: data.read_texts(p), lambda: data.index_corpus(p), lambda: data.read_labelled(p)):
        with pytest.raises(
            ValueError,
            match=r"h\.csv:1: no column text_field='text' in the header \['good', 'pos'\]; .*header=False",
        ):
            call()
    # a data cell equal to a field name is data (no guessing): header=False keeps it as a record
    q = tmp_path / "q.csv"
    q.write_text("text,label\nx,y\n")
    assert data.read_texts(q, header=False) == ["text", "x"] and data.read_texts(q) == ["x"]
    with pytest.raises(ValueError, match="header must be True .* or False .*got 'infer'"):
        data.read_texts(q, header="infer")
    with pytest.raises(ValueError, match="header must be True"):
        data.RecordReader(q, [0], header=None)


def test_header_option_only_in_the_fingerprint_of_tsv_csv(tmp_path):
    """jsonl / txt have no header: their fingerprint (the demo's run identity) does not change."""
    j = tmp_path / "a.jsonl"
    j.write_text(json.dumps({"text": "a", "label": "x"}) + "\n")
    t = tmp_path / "a.txt"
    t.write_text("a\n")
    for p in (j, t):
        fp = data.index_corpus(p).fingerprint()
        assert "header" not in fp and set(fp) == {
            "kind",
            "sha256",
            "size",
            "rows",
            "text_field",
            "pair_field",
            "errors",
        }
        assert data.index_corpus(p, header=False).fingerprint() == fp


def test_header_columns_by_name(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("ID,Text,LABEL\n1,a,x\n")
    assert _ours(p, True, None) == [data.Record("a", "x")]
    dup = tmp_path / "d.csv"
    dup.write_text("text,TEXT,label\na,b,x\n")
    assert _ours(dup, True, None) == [data.Record("a", "x")]  # the exact name wins
    dup.write_text("Text,TEXT,label\na,b,x\n")
    with pytest.raises(ValueError, match=r"d\.csv:1: text_field='text' names 2 columns of the header"):
        _ours(dup, True, None)
    nolab = tmp_path / "n.csv"
    nolab.write_text("\n\ntext,id\na,1\n")
    assert _ours(nolab, True, None) == [data.Record("a", None)]
    with pytest.raises(
        ValueError,
        match=r"n\.csv:3: labels missing: no column label_field='label' in the header \['text', 'id'\]",
    ):
        data.read_labelled(nolab)
    with pytest.raises(ValueError, match=r"n\.csv:3: no column pair_field='hyp'"):
        _ours(nolab, True, "hyp")


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "body, header, match",
    [
        # an unquoted delimiter shifts the columns: pandas errors (or silently takes column 0 as an index)
        (
            "text,label\na,x\nb, c,y\n",
            True,
            r"x\.csv:3: 3 fields, expected at most 2 \(as many as the header\); a field holding ',' must be "
            r"quoted",
        ),
        ("a,x\n\nb, c,y\n", False, r"x\.csv:3: 3 fields, expected at most 2 \(as many as the first record\)"),
        (
            'text,label\na,x\n"never closed,y\nc,z\n',
            True,
            r"x\.csv:3: a quoted field opened in this record is never closed",
        ),
        ('text,label\na,x\n"b\n\xff",y\n', True, r"x\.csv:4: not valid UTF-8"),
        ("text,label\na,x\nb\x00,y\n", True, r"x\.csv:3: NUL byte"),
        ("text,label\na,x\n,y\nb\n", True, None),  # label missing: only an error with need_label
    ],
)
def test_errors_name_the_file_and_line(tmp_path, body, header, match):
    p = tmp_path / "x.csv"
    p.write_bytes(body.encode("latin-1") if "\xff" in body else body.encode())
    if match is None:
        assert [r.text for r in _ours(p, header, None)] == ["a", "b"]
        with pytest.raises(ValueError, match=r"x\.csv:4: labels missing"):
            data.read_labelled(p, header=header)
        return
    with pytest.raises(ValueError, match=match):
        _ours(p, header, None)
    with pytest.raises(ValueError, match=match):
        data.index_corpus(p, header=header)


def test_huge_unclosed_quote_is_an_error_not_a_record(tmp_path):
    p = tmp_path / "u.csv"
    p.write_text('text,label\na,x\n"open\n' + "more text\n" * 20000)
    with pytest.raises(
        ValueError,
        match=r"u\.csv:3: (malformed CSV record .*field larger than field limit|a quoted field opened)",
    ):
        data.index_corpus(p)


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_a_long_document_reads_as_pandas_reads_it(tmp_path, fmt):
    """csv's default field limit (131072 characters) is not a limit of the reader (pandas has none)."""
    pd = pytest.importorskip("pandas")
    sep = "\t" if fmt == "tsv" else ","
    doc = ("word " * 60000).strip()
    p = tmp_path / f"l.{fmt}"
    p.write_text(f'text{sep}label\n{doc}{sep}a\n"{doc}\n{doc}"{sep}b\n')
    want = [data.Record(t.strip(), lab) for t, lab in pd.read_csv(p, sep=sep, dtype=str).values.tolist()]
    assert _ours(p, True, None) == want and len(want[1].text) > 500000
    assert data.index_corpus(p).reader().get([1, 0]) == want[::-1]


def test_records_after_max_rows_are_not_parsed(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("text,label\na,x\nb, c,y\n")
    assert data.read_texts(p, max_rows=1) == ["a"]
    assert len(data.index_corpus(p, max_rows=1)) == 1


# ------------------------------------------------------------------------------------------ txt / jsonl
def test_bom_and_line_ends_in_txt_and_jsonl(tmp_path):
    t = tmp_path / "a.txt"
    t.write_bytes(BOM + b"one\rtwo\r\nthree\n\rfour")
    assert data.read_texts(t) == ["one", "two", "three", "four"]  # as open() reads the lines
    with open(t, encoding="utf-8-sig") as fh:
        assert [x.strip() for x in fh if x.strip()] == data.read_texts(t)
    idx = data.index_corpus(t)
    assert [r.text for r in idx.reader().get([3, 0])] == ["four", "one"] and idx.offsets[0] == 3
    j = tmp_path / "a.jsonl"
    j.write_bytes(BOM + b'{"text": "a", "label": 1}\r\n\r\n{"text": "b\\rc", "label": 2}\n')
    idx = data.index_corpus(j, need_label=True)
    assert idx.reader().get([0, 1]) == [data.Record("a", 1), data.Record("b\rc", 2)]
    pd = pytest.importorskip("pandas")
    df = pd.read_json(io.BytesIO(j.read_bytes()[3:]), lines=True)
    assert df["text"].tolist() == ["a", "b\rc"]


# ------------------------------------------------------------------------------------------ CLI / pipeline
def test_header_flag_reaches_the_reader_and_the_store_fingerprint(tmp_path, capsys):
    """``--no-header`` -> ``EncodeConfig.header`` -> ``index_corpus``; the store's source fingerprint
    records it; without the flag a headerless file is an error naming the file, line and the flag."""
    import numpy as np

    from xite_fast.cli.main import build_parser, config_from_args, main
    from xite_fast.xite.pipeline import EncodeConfig, run_encode

    p = tmp_path / "h.csv"
    p.write_text('good "one",pos\n"two, quoted",neg\n')
    argv = ["encode", "--input", str(p), "--out", str(tmp_path / "e")]
    assert build_parser().parse_args(argv).header is True
    cfg = config_from_args(EncodeConfig, build_parser().parse_args([*argv, "--no-header"]))
    assert cfg.header is False
    enc = HashEncoder()
    store = run_encode(cfg, encoder=enc)
    np.testing.assert_array_equal(store.to_memmap()[:], enc.encode(['good "one"', "two, quoted"]))
    assert store.manifest["source"]["header"] is False
    rc = main([*argv[:-1], str(tmp_path / "e2"), "--num-layers", "2"])
    assert rc != 0
    err = capsys.readouterr().err
    assert (
        "h.csv:1: no column text_field='text' in the header ['good \"one\"', 'pos']" in err
        and "--no-header" in err
    )
