"""``xite-fast augment``: flags -> :class:`~xite_fast.xite.pipeline.AugmentConfig` -> ``run_augment``."""

from __future__ import annotations

import argparse
import json

from xite_fast.cli.main import add_common_args

_BACKENDS = ("auto", "cpu", "torch", "triton", "cuda")


def _float_or_beta(value: str):
    if value == "beta":
        return "beta"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a float in [0, 1] or 'beta', got {value!r}") from None


def add_parser(sub, fmt) -> None:
    from xite_fast.xite.augmenter import DEFAULT_CENTER, DEFAULT_K, DEFAULT_VOTE, MODES, VOTES

    a = sub.add_parser(
        "augment", help="label-transfer + interpolation of a target corpus", formatter_class=fmt,
        description="Run (or resume) the XITE augment job in --out; see xite_fast.xite.pipeline.",
    )  # fmt: skip
    a.add_argument("--source", required=True, help="labelled source: .jsonl/.tsv/.csv/.parquet or chatterbot:<lang>")
    a.add_argument("--target", required=True, help="target: .txt/.jsonl/.tsv/.csv/.parquet or chatterbot:<lang>")
    a.add_argument("--out", required=True, help="run directory (resumable, movable)")
    add_common_args(a)
    a.add_argument("--backend", default="auto", choices=_BACKENDS, help="backend of the ops")
    a.add_argument("--k", type=int, default=DEFAULT_K, help="neighbours for --vote weighted")
    a.add_argument("--vote", default=DEFAULT_VOTE, choices=VOTES, help="label transfer rule")
    a.add_argument("--threshold", type=float, default=None, help="drop targets whose best similarity is below")
    a.add_argument("--temperature", type=float, default=None, help="softmax temperature of --vote weighted")
    a.add_argument("--lam", type=_float_or_beta, default="beta", help="source weight in [0,1] or 'beta'")
    a.add_argument("--beta-alpha", type=float, default=1.0, help="Beta(a, a) shape for --lam beta")
    a.add_argument("--mode", default="interp", choices=MODES, help="interpolation (interp: no LDA)")
    a.add_argument("--lda-components", type=int, default=None, help="LDA components (None: its default)")
    a.add_argument("--lda-max-rows", type=int, default=50_000, help="rows sampled per language for the LDA")
    a.add_argument(
        "--center", action=argparse.BooleanOptionalAction, default=DEFAULT_CENTER,
        help="center each language before matching",
    )  # fmt: skip
    a.add_argument("--seed", type=int, default=0, help="seed of the λ draws and LDA samples")
    a.add_argument("--max-rows", type=int, default=None, help="read at most this many rows of each corpus")
    a.add_argument("--match-chunk", type=int, default=65536, help="target rows per search call")
    a.set_defaults(run=run)


def run(args) -> dict:
    from xite_fast.xite.pipeline import AugmentConfig, run_augment
    from xite_fast.xite.report import format_summary

    names = set(AugmentConfig.__dataclass_fields__)
    cfg = AugmentConfig(**{k: v for k, v in vars(args).items() if k in names})
    if args.quiet:
        cfg.progress = False
    result = run_augment(cfg)
    if args.json:
        print(json.dumps({"out": str(result.out), **result.report}, ensure_ascii=False, sort_keys=True))
    else:
        print(format_summary(result.report, result.out))
    return result.report
