"""``kaleido finetune``: retrieval, category or captioning from a pre-trained Kaleido-BERT."""

from __future__ import annotations

from pathlib import Path

from ..config import load_config
from .common import add_catalog_args, load_run_catalog


def register(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a downstream task (retrieval, category, caption), "
                       "or all of them on one encoder (multitask: the serving checkpoint)")
    p.add_argument("task", choices=("retrieval", "category", "caption", "multitask"))
    p.add_argument("--from", dest="init", required=True,
                   help="a pre-training run's final/ folder, or minilm / none (no pre-training)")
    add_catalog_args(p)
    p.add_argument("--cache", type=Path, required=True, help="feature cache of `kaleido patches extract`")
    p.add_argument("--split-file", type=Path, required=True, help="split.csv or its folder")
    p.add_argument("--out", type=Path, required=True, help="run folder (resumed when it holds a checkpoint)")
    p.add_argument("--config", default="default", help="finetune preset (default, tiny) or YAML file")
    p.add_argument("overrides", nargs="*", help="e.g. retrieval.loss=triplet train.epochs=1 caption.mode=mask_all")
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args) -> int:
    from ..finetune import FinetuneConfig, finetune

    cfg = load_config(FinetuneConfig, args.config, list(args.overrides), component="finetune")
    catalog = load_run_catalog(args, args.out)
    result = finetune(args.task, cfg, catalog, args.cache, args.init, args.out, split_file=args.split_file)
    last = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.last.items()))
    print(f"{args.task}: {result.steps} steps in {result.wall_s / 60:.1f} min; last logged: {last}")
    print(f"model: {args.out / 'final'}")
    return 0
