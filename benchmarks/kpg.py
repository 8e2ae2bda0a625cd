"""Kaleido Patch Generator benchmark: ``crop`` vs ``shared`` extraction, and a full-catalog run.

On the same N real images (default 64 from ../shared/data/fashion-products), in one run:
images/s of crop and shared mode for the offline default backbone and for resnet50, their
ratio, and the cosine similarity of the two modes' patch features; once for the 55 patch
features alone and once with the pre-training extras (rotated level 1, grey level 4),
which cost crop mode 19 more passes and shared mode 4 more box passes. Saliency boxes are
computed once (U2-Net-p) and shared by both modes, so only the patch stage is timed;
the saliency throughput is printed on its own line.

    python benchmarks/kpg.py [--images 64] [--extras both|on|off] [--resnet50-weights PATH]
                             [--full-catalog DIR --out DIR]

Without ImageNet ResNet-50 weights (none ship offline), resnet50 runs with explicitly
random weights: its speed is real, its cosine similarity is not meaningful.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from kaleido.data import load_catalog
from kaleido.patches.backbone import BackboneConfig, create_backbone
from kaleido.patches.extract import PatchConfig, PatchExtractor
from saliency.detector import SaliencyConfig, create_detector


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def time_mode(extractor, images, boxes, batch: int = 8):
    extractor.extract(images[:2], boxes[:2])  # warm-up
    start = time.perf_counter()
    feats = []
    for i in range(0, len(images), batch):
        feats += extractor.extract(images[i:i + batch], boxes[i:i + batch])
    return len(images) / (time.perf_counter() - start), feats


def bench_backbone(name, weights, images, boxes, detector, extras: bool = True) -> dict:
    backbone = create_backbone(BackboneConfig(name=name, weights=weights))
    rows = {}
    feats = {}
    for mode in ("crop", "shared"):
        cfg = PatchConfig(mode=mode, backbone=BackboneConfig(name=name, weights=weights),
                          extras=extras)
        ips, feats[mode] = time_mode(PatchExtractor(cfg, backbone, detector), images, boxes)
        rows[mode] = ips
    a = np.concatenate([f.features for f in feats["crop"]])
    b = np.concatenate([f.features for f in feats["shared"]])
    cos = cosine(a, b)
    return {"backbone": name, "extras": extras, "weights": backbone.weights_source,
            "crop_img_per_s": round(rows["crop"], 2), "shared_img_per_s": round(rows["shared"], 2),
            "shared_over_crop": round(rows["shared"] / rows["crop"], 1),
            "cosine_mean": round(float(cos.mean()), 3), "cosine_p5": round(float(np.percentile(cos, 5)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default="../shared/data/fashion-products")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--resnet50-weights", default=None, help="ImageNet resnet50 state dict")
    parser.add_argument("--extras", choices=("both", "on", "off"), default="both",
                        help="time the 55 patches alone (off), with the extras (on), or both")
    parser.add_argument("--full-catalog", default=None, help="also time a full cache build of this catalog")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_kpg"))
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    catalog = load_catalog(args.catalog)
    images = [catalog.load_image(p) for p in catalog.products[:args.images]]
    detector = create_detector(SaliencyConfig())
    start = time.perf_counter()
    results = detector.detect_many(images)
    sal_ips = len(images) / (time.perf_counter() - start)
    boxes = [(tuple(int(v) for v in r.box), bool(r.fallback)) for r in results]
    print(f"saliency (u2netp): {sal_ips:.1f} img/s on {len(images)} images, "
          f"{sum(f for _, f in boxes)} fall-backs")

    resnet = args.resnet50_weights or "random"
    variants = {"both": (False, True), "off": (False,), "on": (True,)}[args.extras]
    rows = [bench_backbone(name, weights, images, boxes, detector, extras=extras)
            for name, weights in (("efficientnet_lite0", "default"), ("resnet50", resnet))
            for extras in variants]
    print(f"\n{'backbone':<20}{'outputs':<24}{'crop img/s':>11}{'shared img/s':>13}{'ratio':>8}"
          f"{'cos mean':>10}{'cos p5':>8}  weights")
    for r in rows:
        outputs = "55 patches + 19 extras" if r["extras"] else "55 patches"
        print(f"{r['backbone']:<20}{outputs:<24}{r['crop_img_per_s']:>11}{r['shared_img_per_s']:>13}"
              f"{r['shared_over_crop']:>7}x{r['cosine_mean']:>10}{r['cosine_p5']:>8}  {r['weights']}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"images": len(images), "saliency_img_per_s": round(sal_ips, 2), "modes": rows}

    if args.full_catalog:
        cache = args.out / "cache"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kaleido.cli", "patches", "extract",
                        "--catalog", args.full_catalog, "--out", str(cache)], check=True)
        wall = time.perf_counter() - start
        size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
        meta = json.loads((cache / "meta.json").read_text())
        report["full_catalog"] = {"catalog": args.full_catalog, "products": meta["products"],
                                  "wall_s": round(wall, 1), "disk_mb": round(size / 2**20, 1)}
        print(f"\nfull extraction of {meta['products']:,} products: {wall / 60:.1f} min, "
              f"{size / 2**20:.0f} MiB on disk ({cache})")
    (args.out / "kpg.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'kpg.json'}")


if __name__ == "__main__":
    main()
