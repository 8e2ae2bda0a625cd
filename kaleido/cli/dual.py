"""``kaleido dual``: train, evaluate and zero-shot-label with the dual encoder (ERNIE-ViL 2.0 style)."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import load_config, save_config
from .common import add_catalog_args, catalog_config, load_run_catalog


def register(sub) -> None:
    dual = sub.add_parser("dual", help="dual encoder: multi-view contrastive training, evaluation, zero-shot labels")
    cmds = dual.add_subparsers(dest="dual_command", required=True)

    p = cmds.add_parser("train", help="train the dual encoder (resumable; torchrun for several processes)")
    add_catalog_args(p)
    p.add_argument("--cache", type=Path, required=True, help="feature cache of `kaleido patches extract`")
    p.add_argument("--split-file", type=Path, default=None, help="split.csv or its folder (without: the whole "
                                                                  "catalog, no validation)")
    p.add_argument("--out", type=Path, required=True, help="run folder (resumed when it holds a checkpoint)")
    p.add_argument("--config", default="default", help="dual preset (default, pooled, whole, tiny) or a YAML file")
    p.add_argument("--val-split", default=None, help="split validated on (loss, in-batch R@1); '' for none")
    p.add_argument("overrides", nargs="*", help="e.g. train.epochs=10 model.image.tower=pooled loss.image_views=1")
    p.set_defaults(func=cmd_train)

    p = cmds.add_parser("from-linear", help="a linear reference's maps (e.g. kaleido baseline tune-backbone's "
                                            "OUT/model) as a dual encoder folder, exactly; no training")
    p.add_argument("--linear", type=Path, required=True, help="a LinearDualEncoder folder (OUT/model)")
    p.add_argument("--out", type=Path, required=True, help="the dual encoder folder (what --model takes)")
    p.set_defaults(func=cmd_from_linear)

    for name, help_, func in (("eval", "KB-101, full-catalog retrieval and zero-shot accuracy", cmd_eval),
                              ("zero-shot", "zero-shot category / attribute labels of products", cmd_zero_shot)):
        p = cmds.add_parser(name, help=help_)
        p.add_argument("--model", type=Path, required=True, help="a `kaleido dual train` RUN/final folder")
        add_catalog_args(p)
        p.add_argument("--cache", type=Path, required=True, help="feature cache of the products")
        p.add_argument("--split-file", type=Path, default=None, help="split.csv or its folder")
        p.add_argument("--split", default=None, choices=("train", "val", "test"), help="only this split")
        p.set_defaults(func=func)
    evaluate, zero_shot = cmds.choices["eval"], cmds.choices["zero-shot"]
    evaluate.add_argument("--json", type=Path, default=None, help="write every figure as JSON (config beside it)")
    evaluate.add_argument("overrides", nargs="*", help="e.g. kb101.queries=200 'zero_shot=[category]'")
    zero_shot.add_argument("--target", action="append", default=None,
                           help="category, subcategory or an attribute key (repeatable; default category, subcategory)")
    zero_shot.add_argument("--labels", action="append", default=None, metavar="TARGET=A|B|C",
                           help="label names of a target (default: the values the products have)")
    zero_shot.add_argument("--prompt", action="append", default=None, help="prompt template with {label} "
                           "(repeatable: averaged); default 'a photo of {label}'")
    zero_shot.add_argument("--out", type=Path, default=None, help="CSV of per-product predictions")


def _products(args):
    from ..data import load_catalog, split_products

    catalog = load_catalog(catalog_config(args))
    if (args.split_file is None) != (args.split is None):
        raise ValueError("--split-file and --split go together")
    return catalog, split_products(catalog, args.split_file, args.split or "")


def cmd_train(args) -> int:
    from ..dual import DualRunConfig, train_dual

    cfg = load_config(DualRunConfig, args.config, list(args.overrides), component="dual")
    if args.val_split is not None:
        cfg.data.val_split = args.val_split
    if args.split_file is None:
        cfg.data.split = cfg.data.val_split = ""
        print("no --split-file: training on the whole catalog, without validation")
    catalog = load_run_catalog(args, args.out)
    result = train_dual(cfg, catalog, args.cache, args.out, split_file=args.split_file)
    last = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.last.items()) if k.endswith(("loss", "r1")))
    print(f"{result.steps} steps in {result.wall_s / 60:.1f} min; last logged: {last}")
    print(f"model: {args.out / 'final'}; logs: {args.out / 'log.csv'}, {args.out / 'loss_curves.png'}")
    return 0


def cmd_from_linear(args) -> int:
    from ..dual.convert import save_dual_from_linear

    out = save_dual_from_linear(args.linear, args.out)
    print(f"wrote {out}: {args.linear}'s maps as a dual encoder (linear image tower over the whole-image "
          "feature, frozen MiniLM text tower)")
    return 0


def cmd_eval(args) -> int:
    from ..dual import DualEvalConfig, evaluate_dual
    from ..patches.cache import FeatureCache

    cfg = load_config(DualEvalConfig, None, list(args.overrides))
    _, products = _products(args)
    result = evaluate_dual(args.model, products, FeatureCache(args.cache), cfg)
    r = result["retrieval"]
    print(f"{result['products']} products ({result['missing']} without features)")
    for d in ("ITR", "TIR"):
        print(f"KB-101 {d}: " + "  ".join(f"{k} {100 * v:.2f}" for k, v in r[d].items() if k.startswith("R@")))
    print(f"KB-101 SumR {r['SumR']:.1f}")
    if "full_catalog" in r:
        fc = r["full_catalog"]
        for d in ("ITR", "TIR"):
            print(f"full catalog ({fc['products']}) {d}: "
                  + "  ".join(f"{k} {100 * v:.2f}" for k, v in fc[d].items() if k.startswith("R@")))
    for target, m in result["zero_shot"].items():
        print(f"zero-shot {target}: accuracy {100 * m['accuracy']:.2f}, macro-F1 {100 * m['macro_f1']:.2f} "
              f"({m['labels']} labels)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": str(args.model), **result}, indent=2, default=float) + "\n")
        save_config(cfg, args.json.parent, f"{args.json.stem}.config.yaml")
        print(f"wrote {args.json}")
    return 0


def cmd_zero_shot(args) -> int:
    import pandas as pd

    from ..dual import load_dual, zero_shot_predict
    from ..dual.zeroshot import DEFAULT_PROMPTS
    from ..patches.cache import FeatureCache

    _, products = _products(args)
    cache = FeatureCache(args.cache)
    products = [p for p in products if p.id in cache]
    labels = {}
    for item in args.labels or []:
        target, sep, names = item.partition("=")
        if not sep or not names:
            raise ValueError(f"--labels {item!r}: expected TARGET=A|B|C")
        labels[target] = [n.strip() for n in names.split("|") if n.strip()]
    targets = args.target or ["category", "subcategory"]
    model, processor = load_dual(args.model, "auto")
    result = zero_shot_predict(model, processor, cache, products, targets, labels,
                               tuple(args.prompt or DEFAULT_PROMPTS))
    table = {"id": [p.id for p in products]}
    for target, r in result.items():
        print(f"{target}: accuracy {100 * r['accuracy']:.2f} on {r['known']} products with a label "
              f"({len(r['labels'])} labels)")
        table[f"{target}_predicted"] = r["predicted"]
        table[f"{target}_probability"] = r["probabilities"].max(1).round(4)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(table).to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0
