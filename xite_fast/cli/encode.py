"""``xite-fast encode``: flags -> :class:`~xite_fast.xite.pipeline.EncodeConfig` -> ``run_encode``
(one corpus into a sharded :class:`~xite_fast.EmbeddingStore`)."""

from __future__ import annotations

import json
import time

from xite_fast.cli.main import EXIT_STATUS, add_common_args, config_from_args


def add_parser(sub, fmt) -> None:
    from xite_fast.xite.pipeline import EncodeConfig

    e = sub.add_parser(
        "encode", help="embed a corpus into a sharded EmbeddingStore", formatter_class=fmt, epilog=EXIT_STATUS
    )
    e.add_argument("--input", required=True, help=".txt/.jsonl/.tsv/.csv/.parquet or a bundled spec")
    e.add_argument(
        "--out",
        required=True,
        help="store directory (resumable): new, empty or an earlier store's; to start over, delete it",
    )
    add_common_args(e, EncodeConfig)
    e.set_defaults(run=run)


def run(args) -> dict:
    from xite_fast.xite.pipeline import EncodeConfig, run_encode

    t0 = time.perf_counter()
    store = run_encode(config_from_args(EncodeConfig, args))
    dt = time.perf_counter() - t0
    summary = {"out": str(args.out), "rows": len(store), "dim": store.dim, "shards": len(store.shard_paths)}
    if args.json:
        print(json.dumps({**summary, "seconds": round(dt, 3)}))
    else:
        print(
            f"encoded {len(store)} rows (dim {store.dim}) into {args.out} in {dt:.1f} s "
            f"({len(store.shard_paths)} shards)"
        )
    return summary
