"""``kaleido align``: build, show and measure the token <-> patch pre-alignments (stage 4)."""

from __future__ import annotations

import json
from pathlib import Path

from ..alignment.build import build_alignments
from ..alignment.generator import AlignmentConfig
from ..alignment.quality import alignment_quality, format_quality
from ..alignment.store import ALIGNMENTS_FILE, read_records
from ..alignment.visualize import draw_alignments
from ..config import load_config, save_config
from ..data import load_catalog, read_split
from ..patches.cache import FeatureCache
from .common import add_catalog_args, catalog_config


def register(sub) -> None:
    align = sub.add_parser("align", help="token <-> patch pre-alignments from SAT attention (stage 4)")
    cmds = align.add_subparsers(dest="align_command", required=True)

    p = cmds.add_parser("build", help="caption every product and store its alignments (resumable)")
    add_catalog_args(p)
    p.add_argument("--cache", type=Path, required=True, help="feature cache (kaleido patches extract)")
    p.add_argument("--sat", type=Path, required=True, help="trained SAT model folder")
    p.add_argument("--out", type=Path, default=None, help=f"default: CACHE/{ALIGNMENTS_FILE}")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("overrides", nargs="*", help="AlignmentConfig overrides, e.g. beam_size=1")
    p.set_defaults(func=cmd_build)

    p = cmds.add_parser("show", help="picture of one product's aligned words and patches")
    p.add_argument("product_id")
    add_catalog_args(p)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="PNG file")
    p.set_defaults(func=cmd_show)

    p = cmds.add_parser("measure", help="alignment quality on a split")
    add_catalog_args(p)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--split-file", type=Path, default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--no-foreground", action="store_true", help="skip the saliency re-run")
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(func=cmd_measure)


def cmd_build(args) -> int:
    from sat_captioner.captioner import Captioner

    cfg = load_config(AlignmentConfig, overrides=list(args.overrides))
    out = args.out or args.cache / ALIGNMENTS_FILE
    save_config(cfg, out.parent, "alignment_config.yaml")
    catalog = load_catalog(catalog_config(args))
    cache = FeatureCache(args.cache)
    captioner = Captioner.from_pretrained(args.sat)
    report = build_alignments(catalog, cache, captioner, out, cfg, batch_size=args.batch_size)
    print(f"{out}: {report.summary()}")
    return 0


def cmd_show(args) -> int:
    catalog = load_catalog(catalog_config(args))
    cache = FeatureCache(args.cache)
    record = read_records(args.cache / ALIGNMENTS_FILE).get(args.product_id)
    if record is None:
        raise ValueError(f"product {args.product_id} has no alignments in {args.cache}")
    product = catalog[args.product_id]
    picture = draw_alignments(catalog.load_image(product), record,
                              cache[product.id].positions, product.text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    pairs = ", ".join(f"{p['word']}->L{p['level']}#{p['patch']} ({p['score']:.2f})" for p in record["pairs"])
    print(f"{product.id}: caption {record['caption']!r}; pairs: {pairs or 'none'}; wrote {args.out}")
    return 0


def cmd_measure(args) -> int:
    from saliency.detector import SaliencyConfig, create_detector

    catalog = load_catalog(catalog_config(args))
    cache = FeatureCache(args.cache)
    records = read_records(args.cache / ALIGNMENTS_FILE)
    if args.split_file:
        split = read_split(args.split_file)
        records = {k: v for k, v in records.items() if split.get(k) == args.split}
    positions = {pid: cache[pid].positions for pid in records}
    masks = None
    if not args.no_foreground:
        from tqdm.auto import tqdm

        detector = create_detector(SaliencyConfig(**cache.meta["config"].get("saliency", {})))
        masks = {}
        ids = list(records)
        for i in tqdm(range(0, len(ids), 16), desc="saliency masks", unit="batch"):
            chunk = [catalog[pid] for pid in ids[i:i + 16]]
            results = detector.detect_many([catalog.load_image(p) for p in chunk])
            masks.update({p.id: r.mask for p, r in zip(chunk, results)})
    quality = alignment_quality(records, positions, masks, grids=tuple(cache.meta["grids"]))
    print(format_quality(quality))
    if args.json:
        args.json.write_text(json.dumps(quality, indent=2))
    return 0
