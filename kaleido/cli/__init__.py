"""The ``kaleido`` command line: thin callers of the public API, one module per stage."""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import ConfigError
from ..data import CatalogError
from . import (ablate, align, baseline, data, demo, dual, evaluate, finetune, index, patches, pipeline, pretrain,
               release, saliency, sat, tag)

#: Stage modules; each has ``register(subparsers)`` and sets ``func`` on its parsers.
COMMANDS = (data, saliency, patches, sat, align, pretrain, finetune, evaluate, ablate, baseline, dual, index, tag, demo,
            release, pipeline)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaleido", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    # key=value overrides may sit anywhere on the line (argparse only takes trailing ones).
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(t.startswith("-") or "=" not in t for t in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    args.argv = argv  # the command line, for commands that rerun themselves in worker processes
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # faiss logs each CPU-specific build it tries and does not find
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        return args.func(args) or 0
    except (CatalogError, ConfigError, ValueError, FileNotFoundError) as err:
        print(f"kaleido: error: {err}", file=sys.stderr)
        return 2

