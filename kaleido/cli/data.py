"""``kaleido data``: inspect, split and convert catalogs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import load_config, save_config
from ..data import DataConfig, export_fashiongen, load_catalog, read_split, write_split
from ..data.inspect import format_inspection, inspect_catalog
from .common import add_catalog_args, catalog_overrides


def register(sub) -> None:
    data = sub.add_parser("data", help="inspect, split and convert catalogs")
    cmds = data.add_subparsers(dest="data_command", required=True)

    p = cmds.add_parser("inspect", help="counts per category, bad images, title statistics")
    add_catalog_args(p, positional=True)
    p.add_argument("--no-decode", action="store_true", help="do not decode every image")
    p.add_argument("--workers", type=int, default=4, help="image decoding threads")
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    p.set_defaults(func=cmd_inspect)

    p = cmds.add_parser("split", help="deterministic train/val/test split by product id")
    add_catalog_args(p, positional=True)
    p.add_argument("--out", type=Path, required=True, help="folder for split.csv / split.json")
    p.add_argument("--config", default=None, help="data preset name or YAML file")
    p.add_argument("--keep", type=Path, default=None, metavar="SPLIT_FILE",
                   help="split.csv of an overlapping catalog: its products keep their split here "
                        "(e.g. fashion-products-lowres held out from fashion-products' val / test)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. split.seed=1 split.train=0.7")
    p.set_defaults(func=cmd_split)

    p = cmds.add_parser("to-fashiongen", help="write a catalog as a Fashion-Gen-schema HDF5 file")
    add_catalog_args(p, positional=True)
    p.add_argument("out", type=Path, help="output .h5 file")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="first N products only")
    p.set_defaults(func=cmd_to_fashiongen)


def cmd_inspect(args) -> int:
    cfg = load_config(DataConfig, overrides=catalog_overrides(args, "catalog."))
    catalog = load_catalog(cfg.catalog)
    result = inspect_catalog(catalog, decode=not args.no_decode, workers=args.workers)
    print(format_inspection(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_split(args) -> int:
    overrides = catalog_overrides(args, "catalog.") + list(args.overrides)
    cfg = load_config(DataConfig, args.config, overrides, component="data")
    catalog = load_catalog(cfg.catalog)
    print(catalog.report.summary())
    if not len(catalog):
        print("kaleido: error: the catalog has no products to split", file=sys.stderr)
        return 1
    keep = read_split(args.keep) if args.keep else None
    path = write_split(catalog, args.out, cfg.split, keep)
    save_config(cfg, args.out)
    meta = json.loads((args.out / "split.json").read_text())
    counts = ", ".join(f"{k} {v:,}" for k, v in meta["counts"].items())
    print(f"wrote {path} ({counts}) and {args.out / 'config.yaml'}")
    if "kept" in meta:
        meta["kept_from"] = str(args.keep)
        (args.out / "split.json").write_text(json.dumps(meta, indent=2))
        kept = ", ".join(f"{k} {v:,}" for k, v in meta["kept"].items())
        print(f"kept from {args.keep}: {kept}")
    # Each category is cut on its own, so categories of one or two products go to train only.
    wanted = {"val": cfg.split.val, "test": 1 - cfg.split.train - cfg.split.val}
    empty = [name for name, share in wanted.items() if share > 1e-9 and not meta["counts"][name]]
    for name in empty:
        print(f"warning: the {name} split is empty ({len(catalog):,} products; categories too small "
              f"to reach it at split.train={cfg.split.train:g}, split.val={cfg.split.val:g})",
              file=sys.stderr)
    if "test" in empty:
        print("kaleido: error: the test split is empty, so there is nothing to evaluate on; "
              "lower split.train / split.val, set split.stratify_by=none, or add products",
              file=sys.stderr)
        return 1
    return 0


def cmd_to_fashiongen(args) -> int:
    cfg = load_config(DataConfig, overrides=catalog_overrides(args, "catalog."))
    catalog = load_catalog(cfg.catalog)
    products = catalog.products[: args.limit] if args.limit else None
    report = export_fashiongen(catalog, args.out, image_size=args.image_size, products=products)
    if report.skipped:
        print(report.summary())
    print(f"wrote {args.out}: {report.rows:,} images of {report.products:,} products")
    return 0
