"""``kaleido ablate``: the paper's Table 4 rows, same seeds and budget, one summary table."""

from __future__ import annotations

from pathlib import Path

from ..config import load_config
from .common import add_catalog_args, catalog_config


def register(sub) -> None:
    p = sub.add_parser("ablate", help="KPG / masking / task ablations: pretrain + retrieval + KB-101 per row")
    add_catalog_args(p)
    p.add_argument("--cache", action="append", default=[], metavar="NAME=PATH", required=True,
                   help="a feature cache per KPG variant: kaleido-saliency=..., kaleido=..., fixed-grid=...")
    p.add_argument("--split-file", type=Path, required=True, help="split.csv or its folder")
    p.add_argument("--split", default="test", choices=("val", "test"), help="evaluation split")
    p.add_argument("--out", type=Path, required=True, help="one folder per row plus summary.md (resumable)")
    p.add_argument("--config", default="kpg-masking", help="preset (table4, kpg-masking, systems, tiny) or YAML")
    p.add_argument("overrides", nargs="*", help='e.g. "pretrain=[train.epochs=1]"')
    p.set_defaults(func=cmd_ablate)


def cmd_ablate(args) -> int:
    from ..ablation import AblationConfig, run_ablation
    from ..data import load_catalog

    caches = {}
    for item in args.cache:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--cache {item!r}: expected NAME=PATH, e.g. kaleido-saliency=runs/cache/x")
        caches[name] = Path(path)
    cfg = load_config(AblationConfig, args.config, list(args.overrides), component="ablate")
    catalog = load_catalog(catalog_config(args))
    run_ablation(cfg, catalog, caches, args.out, args.split_file, args.split)
    print((args.out / "summary.md").read_text())
    return 0
