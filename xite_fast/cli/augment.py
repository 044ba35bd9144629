"""``xite-fast augment``: flags -> :class:`~xite_fast.xite.pipeline.AugmentConfig` -> ``run_augment``."""

from __future__ import annotations

import argparse
import json

from xite_fast.cli.main import EXIT_STATUS, add_common_args, config_from_args, field_defaults


def _float_or_beta(value: str):
    if value == "beta":
        return "beta"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a float in [0, 1] or 'beta', got {value!r}") from None


def add_parser(sub, fmt) -> None:
    from xite_fast._backend import Backend
    from xite_fast.ops.lda_project_interp import MODES
    from xite_fast.xite.labels import VOTES
    from xite_fast.xite.pipeline import AugmentConfig

    d = field_defaults(AugmentConfig)
    a = sub.add_parser(
        "augment",
        help="label-transfer + interpolation of a target corpus",
        formatter_class=fmt,
        description="Run (or resume) the XITE augment job in --out; see xite_fast.xite.pipeline.",
        epilog=EXIT_STATUS,
    )
    a.add_argument(
        "--source", required=True, help="labelled source: .jsonl/.tsv/.csv/.parquet or chatterbot:<lang>"
    )
    a.add_argument(
        "--target", required=True, help="target: .txt/.jsonl/.tsv/.csv/.parquet or chatterbot:<lang>"
    )
    a.add_argument(
        "--out",
        required=True,
        help="run directory (resumable, movable): new, empty or an earlier run's; never another program's "
        "files",
    )
    add_common_args(a, AugmentConfig)
    a.add_argument(
        "--backend", default=d["backend"], choices=[b.value for b in Backend], help="backend of the ops"
    )
    a.add_argument("--k", type=int, default=d["k"], help="neighbours for --vote weighted")
    a.add_argument("--vote", default=d["vote"], choices=VOTES, help="label transfer rule")
    a.add_argument(
        "--threshold", type=float, default=d["threshold"], help="drop targets whose best similarity is below"
    )
    a.add_argument(
        "--temperature", type=float, default=d["temperature"], help="softmax temperature of --vote weighted"
    )
    a.add_argument("--lam", type=_float_or_beta, default=d["lam"], help="source weight in [0,1] or 'beta'")
    a.add_argument(
        "--beta-alpha", type=float, default=d["beta_alpha"], help="Beta(a, a) shape for --lam beta"
    )
    a.add_argument("--mode", default=d["mode"], choices=MODES, help="interpolation (interp: no LDA)")
    a.add_argument(
        "--lda-components", type=int, default=d["lda_components"], help="LDA components (None: its default)"
    )
    a.add_argument(
        "--lda-max-rows", type=int, default=d["lda_max_rows"], help="rows sampled per language for the LDA"
    )
    a.add_argument(
        "--center",
        action=argparse.BooleanOptionalAction,
        default=d["center"],
        help="center each language before matching",
    )
    a.add_argument("--seed", type=int, default=d["seed"], help="seed of the λ draws and LDA samples")
    a.add_argument(
        "--max-rows", type=int, default=d["max_rows"], help="read at most this many rows of each corpus"
    )
    a.add_argument("--match-chunk", type=int, default=d["match_chunk"], help="target rows per search call")
    a.set_defaults(run=run)


def run(args) -> dict:
    from xite_fast.xite.pipeline import AugmentConfig, run_augment
    from xite_fast.xite.report import format_summary

    result = run_augment(config_from_args(AugmentConfig, args))
    summary = {**result.report, **result.timings}  # report.json + timings.json
    if args.json:
        print(json.dumps({"out": str(result.out), **summary}, ensure_ascii=False, sort_keys=True))
    else:
        print(format_summary(summary, result.out))
    return summary
