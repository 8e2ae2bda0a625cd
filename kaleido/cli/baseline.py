"""``kaleido baseline linear-probe``: the frozen-feature linear reference of every results table."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import load_config, save_config
from .common import add_catalog_args, load_run_catalog


def register(sub) -> None:
    p = sub.add_parser("baseline", help="reference systems (the linear probe every table carries)")
    inner = p.add_subparsers(dest="baseline", required=True)
    lp = inner.add_parser("linear-probe", help="frozen EfficientNet-Lite0 + MiniLM features, linear dual "
                                               "encoder and logistic regressions; KB-101, full catalog, CR/SUB")
    add_catalog_args(lp)
    lp.add_argument("--split-file", type=Path, required=True, help="split.csv or its folder")
    lp.add_argument("--train-split", default="train", choices=("train", "val", "test"))
    lp.add_argument("--split", default="test", choices=("train", "val", "test"), help="split scored")
    lp.add_argument("--out", type=Path, required=True,
                    help="run folder: feature chunks (resumable), config.yaml, result.json")
    lp.add_argument("--name", default="linear reference", help="system name in the tables")
    lp.add_argument("overrides", nargs="*", help="e.g. probe.epochs=60 eval.kb101.draws=5 features.image_size=224")
    lp.set_defaults(func=cmd_linear_probe)
    tb = inner.add_parser("tune-backbone", help="the linear reference with the backbone's last stages trained: "
                                                "saves the tuned backbone and every split's whole-image features")
    add_catalog_args(tb)
    tb.add_argument("--split-file", type=Path, required=True, help="split.csv or its folder")
    tb.add_argument("--out", type=Path, required=True,
                    help="run folder: backbone/, model/, features/<split>/, log.csv, result.json (resumable)")
    tb.add_argument("--cache", type=Path, help="trunk activations and title vectors (default: OUT)")
    tb.add_argument("--quiet", action="store_true", help="no progress bars")
    tb.add_argument("overrides", nargs="*", help="e.g. tune.from_stage=3 tune.tail_lr=3e-4 tune.epochs=15")
    tb.set_defaults(func=cmd_tune_backbone)


def _split_features(catalog, products, cfg, cache: Path, title_cache: Path) -> dict:
    from ..baselines.features import cached_titles, image_features, product_records

    ids, image = image_features(catalog, products, cache, cfg.features)
    return {"image": image, "text": cached_titles(products, ids, title_cache, cfg.features),
            **product_records(products, ids)}


def cmd_linear_probe(args) -> int:
    from ..baselines.linear_probe import LinearProbeRunConfig, run_linear_probe
    from ..data import split_products
    from ..evaluation.tables import format_full_catalog, format_table2, format_table3, to_jsonable

    cfg = load_config(LinearProbeRunConfig, None, list(args.overrides))
    args.out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, args.out)
    catalog = load_run_catalog(args, args.out)
    data = {}
    for split in (args.train_split, args.split):
        products = split_products(catalog, args.split_file, split)
        data[split] = _split_features(catalog, products, cfg, args.out / "features" / split,
                                      args.out / "features" / f"{split}-titles.npz")
        missing = len(products) - len(data[split]["ids"])
        print(f"{split}: {len(data[split]['ids'])} products embedded"
              + (f", {missing} skipped (unreadable image; see the log)" if missing else ""))
    result = run_linear_probe(data[args.train_split], data[args.split], cfg.probe, cfg.eval)
    r = result["retrieval"]
    name = args.name
    print(f"\ntrained in {result['train']['seconds']:.1f} s ({result['train']['steps']} steps)")
    print(f"\nTable 2 (KB-101 retrieval; {r['sampling']})\n" + format_table2({name: r}, with_std=True))
    if "full_catalog" in r:
        print(f"\nFull-catalog retrieval ({r['full_catalog']['products']} products; any same-title product is a hit)\n"
              + format_full_catalog({name: r["full_catalog"]}))
    rows = {}
    for inputs in ("image", "image+title"):
        rows[f"{name} ({inputs})"] = {"category": result["category"][inputs],
                                      "subcategory": result["subcategory"][inputs]}
    print("\nTable 3 (category, subcategory; logistic regression on the frozen features)\n" + format_table3(rows))
    model = result.pop("model")
    model.save_pretrained(args.out / "model")
    print(f"saved the linear dual encoder to {args.out / 'model'} (eval: kaleido eval ... prior={args.out})")
    payload = {"name": name, "split": args.split, **result}
    (args.out / "result.json").write_text(json.dumps(to_jsonable(payload), indent=2))
    print(f"wrote {args.out / 'result.json'}")
    return 0


def cmd_tune_backbone(args) -> int:
    from ..baselines.tune import TuneRunConfig, run_tune
    from ..evaluation.tables import format_full_catalog, format_table2

    cfg = load_config(TuneRunConfig, None, list(args.overrides))
    args.out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, args.out)
    catalog = load_run_catalog(args, args.out)
    result = run_tune(catalog, args.split_file, args.out, cfg, cache=args.cache, progress=not args.quiet)
    t = result["train"]
    print(f"tuned blocks[{cfg.tune.from_stage}:] + head conv in {t['seconds'] / 60:.1f} min "
          f"({t['steps']} steps, {t['products']} training products)")
    name = f"tuned backbone (from stage {cfg.tune.from_stage})"
    for split in ("val", "test"):
        r = result[split]
        print(f"\n{split}: Table 2 (KB-101 retrieval; {r['sampling']})\n" + format_table2({name: r}, with_std=True))
        if "full_catalog" in r:
            print(f"\n{split}: full-catalog retrieval ({r['full_catalog']['products']} products)\n"
                  + format_full_catalog({name: r["full_catalog"]}))
    print(f"\nsaved the tuned backbone to {result['backbone']} and the whole-image features to "
          f"{args.out / 'features'} (kaleido patches union CACHE --whole-image {args.out / 'features'}/...)")
    return 0
