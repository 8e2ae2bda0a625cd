"""``kaleido eval``: the paper's Tables 2 and 3 (and full-catalog retrieval) for a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import load_config, save_config
from .common import add_catalog_args, catalog_config


def register(sub) -> None:
    p = sub.add_parser("eval", help="KB-101 retrieval, category / subcategory, captioning metrics")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", type=Path,
                       help="fine-tuning root (retrieval/ category/ caption/), one task folder, or a "
                            "pre-training final/ (zero-shot retrieval)")
    which.add_argument("--model", default=None,
                       help="a released model by name (kaleido-fashion-v4) or folder: its matcher/, "
                            "with its dual/ as the first stage unless dual= is given")
    add_catalog_args(p)
    p.add_argument("--cache", type=Path, required=True, help="feature cache of `kaleido patches extract`")
    p.add_argument("--split-file", type=Path, required=True, help="split.csv or its folder")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--name", default=None, help="system name in the tables (default: the checkpoint folder)")
    p.add_argument("--json", type=Path, default=None, help="write every figure as JSON (config beside it)")
    p.add_argument("overrides", nargs="*", help="e.g. kb101.queries=200 kb101.draws=5 full_catalog=500")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from ..data import load_catalog
    from ..evaluation.evaluate import EvalConfig, evaluate, find_checkpoints
    from ..evaluation.tables import (format_full_catalog, format_itm, format_table2, format_table3,
                                     retrieval_systems, table3_row, to_jsonable)
    from ..data import split_products
    from ..environment import environment

    cfg = load_config(EvalConfig, None, list(args.overrides))
    if args.model:
        args.checkpoint = _release_checkpoint(args, cfg)
    catalog = load_catalog(catalog_config(args))
    products = split_products(catalog, args.split_file, args.split)
    checkpoints = find_checkpoints(args.checkpoint)
    print(f"{args.split}: {len(products)} products; tasks: "
          + ", ".join(f"{k} ({v})" for k, v in checkpoints.items()))
    result = evaluate(checkpoints, products, args.cache, cfg)
    name = args.name or (args.model if args.model else args.checkpoint.name)
    if "retrieval" in result:
        r = result["retrieval"]
        systems = retrieval_systems(name, r)
        print(f"\nTable 2 (KB-101 retrieval; {r['sampling']})\n" + format_table2(systems, with_std=True))
        full = {k: v["full_catalog"] for k, v in systems.items() if "full_catalog" in v}
        if full:
            print(f"\nFull-catalog retrieval ({next(iter(full.values()))['products']} products; any same-title "
                  f"product is a hit)\n" + format_full_catalog(full))
        itm = {name: r, **systems}  # the checkpoint's own ITM first (a two-stage result has no row of its own)
        print(f"\nITM on clean pairs, 1 true pair + 1 same-subcategory negative per product "
              f"(the sign accuracy needs a calibrated offset, the first two columns do not)\n" + format_itm(itm))
    if {"category", "subcategory", "caption"} & set(result):
        print("\nTable 3 (category, subcategory, captioning)\n" + format_table3({name: table3_row(result)}))
        for target in ("category", "subcategory"):
            unseen = result.get(target, {}).get("unseen", 0)
            if unseen:
                print(f"{unseen} test products have a {target} the classifier never saw in training "
                      "(counted as errors)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"name": name, "checkpoint": str(args.checkpoint), "split": args.split,
                   "checkpoints": {k: str(v) for k, v in checkpoints.items()}, **result,
                   "environment": environment()}
        args.json.write_text(json.dumps(to_jsonable(payload), indent=2))
        save_config(cfg, args.json.parent, f"{args.json.stem}.config.yaml")
        print(f"wrote {args.json}")
    return 0


def _release_checkpoint(args, cfg) -> Path:
    """A released model's matcher folder; its dual encoder becomes the first stage (unless
    ``dual=`` was given), and the cache must hold features made with its patch settings."""
    from ..demo.session import resolve_model
    from ..patches.cache import FeatureCache
    from ..release import check_cache_settings

    release = resolve_model(args.model)
    if not (release / "matcher").is_dir():
        raise FileNotFoundError(f"{release}: the release has no matcher/ (a Kaleido-BERT fine-tune) to evaluate")
    check_cache_settings(release, FeatureCache(args.cache))
    if not cfg.dual:
        cfg.dual = str(release / "dual")
    print(f"model {args.model}: {release / 'matcher'}, first stage {cfg.dual}")
    return release / "matcher"
