"""``xite-fast encode``: embed one corpus into a sharded EmbeddingStore (:func:`xite_fast.encode_corpus`)."""

from __future__ import annotations

import json
import time

from xite_fast.cli.main import add_common_args


def add_parser(sub, fmt) -> None:
    e = sub.add_parser("encode", help="embed a corpus into a sharded EmbeddingStore", formatter_class=fmt)
    e.add_argument("--input", required=True, help=".txt/.jsonl/.tsv/.csv/.parquet or a bundled spec")
    e.add_argument("--out", required=True, help="store directory (resumable)")
    add_common_args(e)
    e.set_defaults(run=run)


def run(args) -> dict:
    from pathlib import Path

    from xite_fast._validation import check_positive_int
    from xite_fast.data.bundled import is_bundled, load_bundled
    from xite_fast.data.records import Record, index_corpus, model_input

    for name in ("batch_size", "shard_size"):
        check_positive_int(name, getattr(args, name))
    if not str(args.out).strip():
        raise ValueError(f"out must be a directory path, got {args.out!r}")
    if args.ray is not None:
        from xite_fast._ray import init_ray_for_run

        init_ray_for_run(args.ray)
    if is_bundled(args.input):
        recs = load_bundled(args.input).records
        source = [model_input(Record(r["text"], None, r.get("text_pair"))) for r in recs]
    else:
        # one validating pass (empty, binary, non-UTF-8, bad JSON) before the model is loaded
        source = index_corpus(
            args.input, text_field=args.text_field, label_field=args.label_field,
            pair_field=args.pair_field, name="input",
        )  # fmt: skip
    kw: dict = {"num_layers": args.num_layers, "precision": args.precision}
    if args.encoder_backend is not None:
        kw["backend"] = args.encoder_backend
    progress = False if args.quiet else None
    t0 = time.perf_counter()
    if args.ray is not None:
        from xite_fast.encode.ray import encode_corpus_ray

        store = encode_corpus_ray(
            source, Path(args.out), args.model, encoder_kwargs=kw, shard_size=args.shard_size,
            batch_size=args.batch_size, show_progress_bar=progress,
        )  # fmt: skip
    else:
        from xite_fast.encode.encoder import Encoder
        from xite_fast.encode.store import encode_corpus

        store = encode_corpus(
            source, Path(args.out), lambda: Encoder(args.model, **kw), shard_size=args.shard_size,
            batch_size=args.batch_size, show_progress_bar=progress,
        )  # fmt: skip
    dt = time.perf_counter() - t0
    summary = {"out": str(args.out), "rows": len(store), "dim": store.dim, "shards": len(store.shard_paths)}
    if args.json:
        print(json.dumps({**summary, "seconds": round(dt, 3)}))
    else:
        print(f"encoded {len(store)} rows (dim {store.dim}) into {args.out} in {dt:.1f} s ({len(store.shard_paths)} shards)")
    return summary
