"""``kaleido patches``: extract the kaleido patch-feature cache, draw patch grids."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import load_config
from ..data import Catalog, CatalogConfig, load_catalog, read_split, split_catalog
from ..data.images import to_original
from ..patches.cache import FeatureCache, build_cache, config_dict, write_union
from ..patches.extract import PatchConfig, PatchExtractor, decode_side
from ..patches.visualize import draw_patch_grids
from .common import add_catalog_args, catalog_overrides, exit_code, readable_images, weights_help
from .workers import in_worker, run_workers

log = logging.getLogger(__name__)

#: What to run instead when the U2-Net-p weights cannot be had.
SALIENCY_FALLBACKS = ("patches.saliency.method=spectral_residual (or fine_grained): OpenCV saliency, "
                      "no weights; or --config kaleido: no saliency, the grids cover the whole image")


@dataclass
class PatchJobConfig:
    """``kaleido patches extract``: which catalog, which patches, how the cache is sharded.

    Attributes:
        catalog: the products.
        patches: patch layout, backbone and saliency.
        shard_size: products per cache shard (the unit of resumption).
        workers: processes that extract shards side by side (:mod:`kaleido.cli.workers`), each
            with 1/N of the threads; 2 single-threaded workers beat one 2-threaded process
            on 2 cores (``benchmarks/kpg.py``).
    """

    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    shard_size: int = 256
    workers: int = 1


def register(sub) -> None:
    patches = sub.add_parser("patches", help="kaleido patch features")
    cmds = patches.add_subparsers(dest="patches_command", required=True)

    p = cmds.add_parser("extract", help="build the on-disk patch-feature cache of a catalog")
    add_catalog_args(p)
    p.add_argument("--out", type=Path, required=True, help="cache folder (resumed if it exists)")
    p.add_argument("--config", default="kaleido-saliency",
                   help="patches preset (kaleido-saliency, kaleido, fixed-grid, resnet50) or YAML")
    p.add_argument("--split-file", type=Path, default=None, help="only products of one split")
    p.add_argument("--split", default=None, choices=("train", "val", "test"))
    p.add_argument("--max-shards", type=int, default=None, help="stop after N shards")
    p.add_argument("overrides", nargs="*", help="e.g. patches.mode=crop shard_size=128")
    p.set_defaults(func=cmd_extract)

    p = cmds.add_parser("union", help="one cache folder that reads several caches in place")
    p.add_argument("parts", nargs="+", type=Path, help="cache folders (same patch settings)")
    p.add_argument("--out", type=Path, required=True, help="the union folder (only a meta.json)")
    p.add_argument("--whole-image", type=Path, nargs="*", default=[],
                   help="folders of whole-image feature chunks (a linear-probe run's features/<split>)")
    p.set_defaults(func=cmd_union)

    p = cmds.add_parser("show", help="draw the saliency mask and patch grids over images")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for <stem>_patches.png")
    p.add_argument("--config", default="kaleido-saliency")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_show)


def _config(args) -> PatchJobConfig:
    overrides = list(args.overrides)
    if getattr(args, "catalog", None):
        overrides += catalog_overrides(args, "catalog.")
    return load_config(PatchJobConfig, args.config, overrides, component="patches")


def _split_for_cache(catalog: Catalog, split_file: Path, name: str) -> Catalog:
    """The products of one split. The catalog holds every row, image file or not; a split is
    made from the rows whose files exist, so rows that are in no split are left out when
    (and only when) their image files are missing."""
    split = read_split(split_file)
    unlisted = [p for p in catalog if p.id not in split]
    if any(catalog.store.exists(ref) for p in unlisted for ref in p.images):
        split_catalog(catalog, split, name)  # raises: the split was made for another catalog
    if unlisted:
        log.info("%d products whose image files are missing are in no split of %s",
                 len(unlisted), split_file)
    return catalog.subset(p.id for p in catalog if split.get(p.id) == name)


def cmd_extract(args) -> int:
    cfg = _config(args)
    if cfg.workers < 1:
        raise ValueError(f"workers must be >= 1, got {cfg.workers}")
    if cfg.workers > 1 and not in_worker():
        status = run_workers(args.argv, cfg.workers)
        if status:
            return status
        extracted = len(FeatureCache(args.out))
        print(f"{args.out}: {extracted:,} products in the cache ({cfg.workers} workers)")
        if not extracted:
            print(f"kaleido: error: no product could be extracted into {args.out}", file=sys.stderr)
            return 1
        return 0
    # Every row of the table, whether its image file exists yet or not: a missing file is
    # skipped at extraction and picked up by a rerun once it is there, and the cache's
    # product list (its fingerprint) does not change when a file is added.
    catalog = load_catalog(replace(cfg.catalog, check_files=False))
    print(catalog.report.summary())
    if (args.split_file is None) != (args.split is None):
        raise ValueError("--split-file and --split go together")
    if args.split_file:
        catalog = _split_for_cache(catalog, args.split_file, args.split)
        print(f"{args.split} split: {len(catalog):,} products")
    if not len(catalog):
        print("kaleido: error: no products to extract", file=sys.stderr)
        return 1
    with weights_help(SALIENCY_FALLBACKS):
        extractor = PatchExtractor.from_config(cfg.patches)
    print(f"backbone {cfg.patches.backbone.name}: {extractor.backbone.weights_source}")
    report = build_cache(catalog, extractor, args.out, shard_size=cfg.shard_size,
                         config=config_dict(cfg.patches), max_shards=args.max_shards, run_config=cfg)
    print(f"{args.out}: {report.summary()}")
    for item in report.images_skipped[:5]:
        print(f"  skipped {item['id']}: {item['error']}")
    if report.images_skipped:
        print("  fix or add those images and run the same command again: it re-extracts them")
    if not in_worker() and not len(FeatureCache(args.out)):  # workers: the parent checks, once all are done
        print(f"kaleido: error: no product could be extracted into {args.out} "
              f"({len(report.images_skipped)} unreadable images this time)", file=sys.stderr)
        return 1
    if report.shards_written + report.shards_redone and not report.products_written:
        print("warning: the shards written this time hold no product (every image unreadable)",
              file=sys.stderr)
    return 0


def cmd_union(args) -> int:
    cache = write_union(args.out, args.parts, args.whole_image)
    state = "" if cache.complete else " (a part is incomplete: finish its extract run)"
    print(f"{args.out}: {len(cache):,} products from {len(args.parts)} caches{state}")
    if args.whole_image:
        with_whole = sum(cache.has_whole_image(i) for i in cache.ids)
        print(f"  {with_whole:,} of them with a whole-image feature ({cache.whole_image_dim}-d)")
    return 0


def cmd_show(args) -> int:
    cfg = _config(args)
    with weights_help(SALIENCY_FALLBACKS):
        extractor = PatchExtractor.from_config(cfg.patches)
    args.out.mkdir(parents=True, exist_ok=True)
    failures = []
    for path, image in readable_images(args.images, failures, min_side=decode_side(cfg.patches)):
        if extractor.detector is not None:
            result = extractor.detector.detect(image)
            box, mask, note = result.box, result.mask, " (fell back to whole image)" * result.fallback
        else:
            box, mask, note = (0, 0, image.width, image.height), None, " (no saliency)"
        picture = draw_patch_grids(image, box, cfg.patches.grids, mask=mask)
        target = args.out / f"{path.stem}_patches.png"
        picture.save(target)
        print(f"{path}: box {to_original(box, image)}{note} -> {target}")
    return exit_code(failures, args.images)
