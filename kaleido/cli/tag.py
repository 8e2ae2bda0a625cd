"""``kaleido tagger train`` (a tagger from a catalog) and ``kaleido tag`` (the catalog job)."""

from __future__ import annotations

from pathlib import Path

from ..config import load_config, save_config
from .common import add_catalog_args, load_run_catalog


def register(sub) -> None:
    p = sub.add_parser("tagger", help="train the attribute tagger (category, subcategory, colour, gender, ...)")
    inner = p.add_subparsers(dest="tagger", required=True)
    tr = inner.add_parser("train", help="train on the train split, calibrate on val, score on test")
    add_catalog_args(tr)
    tr.add_argument("--split-file", type=Path, required=True, help="split.csv or its folder")
    tr.add_argument("--sat", type=Path, default=None,
                    help="a `kaleido sat train` run: its encoder gives the image features, its decoder the "
                         "captions (copied into the tagger); without it, no captions")
    tr.add_argument("--cache", type=Path, default=None, help="tag-feature cache (default OUT/features)")
    tr.add_argument("--out", type=Path, required=True, help="the tagger folder")
    tr.add_argument("--fields", nargs="*", default=None,
                    help="fields to tag (default: category, subcategory and every attribute column)")
    tr.add_argument("overrides", nargs="*", help="e.g. epochs=60 hidden=512 threads=2")
    tr.set_defaults(func=cmd_train)

    ev = inner.add_parser("eval", help="score a saved tagger on a split (accuracy, macro-F1, ECE)")
    add_catalog_args(ev)
    ev.add_argument("--model", required=True, help="a tagger folder or a released model name")
    ev.add_argument("--split-file", type=Path, required=True)
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--cache", type=Path, default=None, help="tag-feature cache made with the model's settings")
    ev.add_argument("--json", type=Path, default=None, help="write the figures here")
    ev.set_defaults(func=cmd_eval)

    t = sub.add_parser("tag", help="tag every product of a catalog (resumable; torchrun shards it)")
    add_catalog_args(t)
    t.add_argument("--model", default="kaleido-fashion-v4",
                   help="a tagger folder or a released model name (default: the release in models/)")
    t.add_argument("--out", type=Path, required=True,
                   help="job folder: tags.parquet, summary.json, parts/ (resume), features/ (cache)")
    t.add_argument("--cache", type=Path, default=None,
                   help="tag-feature cache to read (and extend; default OUT/features)")
    t.add_argument("--split-file", type=Path, default=None,
                   help="split.csv: adds a split column and per-split accuracy")
    t.add_argument("--inputs", default="auto", choices=("auto", "image", "image+title"),
                   help="auto (default): image + title where the product has a title")
    t.add_argument("--csv", action="store_true", help="also write tags.csv")
    t.add_argument("--chunk", type=int, default=256, help="products per part (unit of resume and sharding)")
    t.add_argument("--no-compute", action="store_true",
                   help="only products in the cache; the others are reported as skipped")
    t.set_defaults(func=cmd_tag)


def cmd_train(args) -> int:
    from ..data.split import read_split
    from ..tagging.run import format_report, train_from_catalog
    from ..tagging.train import TaggerTrainConfig

    cfg = load_config(TaggerTrainConfig, None, list(args.overrides))
    args.out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, args.out, "train.yaml")
    catalog = load_run_catalog(args, args.out)
    report = train_from_catalog(catalog, read_split(args.split_file), args.out, sat=args.sat, cache=args.cache,
                                cfg=cfg, fields=args.fields)
    print(format_report(report))
    print(f"\nsaved the tagger to {args.out} (report.json, reliability.png); "
          f"tag a catalog: kaleido tag --catalog ... --model {args.out} --out TAGS")
    return 0


def cmd_eval(args) -> int:
    import json

    from ..data import load_catalog
    from ..data.split import read_split
    from ..tagging.run import evaluate_saved, format_report
    from .common import catalog_config

    catalog = load_catalog(catalog_config(args))
    report = evaluate_saved(args.model, catalog, read_split(args.split_file), args.split, args.cache)
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def cmd_tag(args) -> int:
    from ..data.split import read_split
    from ..tagging.job import TagJobConfig, format_summary, run_tag_job
    from ..training import is_main_process

    cfg = TagJobConfig(inputs=args.inputs, chunk=args.chunk, csv=args.csv, compute_missing=not args.no_compute)
    args.out.mkdir(parents=True, exist_ok=True)
    catalog = load_run_catalog(args, args.out) if is_main_process() else _quiet_catalog(args)
    split = read_split(args.split_file) if args.split_file else None
    summary = run_tag_job(catalog, args.model, args.out, args.cache, cfg, split)
    if summary is not None:
        print(format_summary(summary))
        print(f"\nwrote {args.out / 'tags.parquet'}" + (" and tags.csv" if args.csv else "")
              + f", {args.out / 'summary.json'}")
        flagged = summary["disagrees_with_catalog"]
        if flagged:
            print(f"{flagged} products disagree with the catalog: read tags.parquet sorted by 'disagreement'")
    return 0


def _quiet_catalog(args):
    from ..data import load_catalog
    from .common import catalog_config

    return load_catalog(catalog_config(args))
