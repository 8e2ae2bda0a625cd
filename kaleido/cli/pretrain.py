"""``kaleido pretrain``: pre-train Kaleido-BERT on a catalog's cached patches and alignments."""

from __future__ import annotations

from pathlib import Path

from ..config import load_config
from .common import add_catalog_args, load_run_catalog


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="pre-train Kaleido-BERT (AMLM, ITM and the five patch tasks)")
    add_catalog_args(p)
    p.add_argument("--cache", type=Path, required=True,
                   help="feature cache of `kaleido patches extract` (with alignments.jsonl for AGM)")
    p.add_argument("--split-file", type=Path, default=None, help="split.csv or its folder")
    p.add_argument("--out", type=Path, required=True, help="run folder (resumed when it holds a checkpoint)")
    p.add_argument("--config", default="default", help="pretrain preset (default, tiny, base) or YAML file")
    p.add_argument("overrides", nargs="*",
                   help="e.g. train.epochs=1 masking.strategy=random tasks.rr=0 init=RUN/final")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args) -> int:
    from ..pretrain import PretrainConfig, pretrain

    cfg = load_config(PretrainConfig, args.config, list(args.overrides), component="pretrain")
    catalog = load_run_catalog(args, args.out)
    result = pretrain(cfg, catalog, args.cache, args.out, split_file=args.split_file)
    last = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.last.items()) if k.endswith("loss"))
    print(f"{result.steps} steps in {result.wall_s / 60:.1f} min; last logged: {last}")
    print(f"model: {args.out / 'final'}; logs: {args.out / 'log.csv'}, {args.out / 'loss_curves.png'}")
    return 0
