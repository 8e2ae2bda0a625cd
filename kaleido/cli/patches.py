"""``kaleido patches``: extract the kaleido patch-feature cache, draw patch grids."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_config, save_config
from ..data import CatalogConfig, load_catalog, read_split, split_catalog
from ..patches.cache import build_cache, config_dict
from ..patches.extract import PatchConfig, PatchExtractor
from ..patches.visualize import draw_patch_grids
from .common import add_catalog_args, catalog_overrides, exit_code, readable_images


@dataclass
class PatchJobConfig:
    """``kaleido patches extract``: which catalog, which patches, how the cache is sharded.

    Attributes:
        catalog: the products.
        patches: patch layout, backbone and saliency.
        shard_size: products per cache shard (the unit of resumption).
    """

    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    shard_size: int = 256


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


def cmd_extract(args) -> int:
    cfg = _config(args)
    catalog = load_catalog(cfg.catalog)
    print(catalog.report.summary())
    if (args.split_file is None) != (args.split is None):
        raise ValueError("--split-file and --split go together")
    if args.split_file:
        catalog = split_catalog(catalog, read_split(args.split_file), args.split)
        print(f"{args.split} split: {len(catalog):,} products")
    extractor = PatchExtractor.from_config(cfg.patches)
    print(f"backbone {cfg.patches.backbone.name}: {extractor.backbone.weights_source}")
    save_config(cfg, args.out)
    report = build_cache(catalog, extractor, args.out, shard_size=cfg.shard_size,
                         config=config_dict(cfg.patches), max_shards=args.max_shards)
    print(f"{args.out}: {report.summary()}")
    return 0


def cmd_show(args) -> int:
    cfg = _config(args)
    extractor = PatchExtractor.from_config(cfg.patches)
    args.out.mkdir(parents=True, exist_ok=True)
    failures = []
    for path, image in readable_images(args.images, failures):
        if extractor.detector is not None:
            result = extractor.detector.detect(image)
            box, mask, note = result.box, result.mask, " (fell back to whole image)" * result.fallback
        else:
            box, mask, note = (0, 0, image.width, image.height), None, " (no saliency)"
        picture = draw_patch_grids(image, box, cfg.patches.grids, mask=mask)
        target = args.out / f"{path.stem}_patches.png"
        picture.save(target)
        print(f"{path}: box {tuple(int(v) for v in box)}{note} -> {target}")
    return exit_code(failures, args.images)
