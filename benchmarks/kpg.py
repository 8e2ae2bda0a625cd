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
    python benchmarks/kpg.py --paths [--images 48] [--preset kaleido-saliency|lowres] [--catalog DIR] [--batch-size N]

``--paths`` times the whole extraction of the default preset (saliency, 55 patches and the
extras, as ``kaleido patches extract`` runs it) on the same images, in one run, three ways:
the path before onnxruntime (torch, 32 views per pass, one process with every thread),
onnxruntime in one process, and onnxruntime in one single-threaded process per core
(``workers=N``; the processes start together and the slowest one's time counts). It
prints products/s, the ratio to the torch path and the largest feature difference.

Without ImageNet ResNet-50 weights (none ship offline), resnet50 runs with explicitly
random weights: its speed is real, its cosine similarity is not meaningful.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from kaleido.data import load_catalog
from kaleido.patches.backbone import BackboneConfig, create_backbone
from kaleido.patches.extract import PatchConfig, PatchExtractor, decode_side
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


def _extract_worker(catalog_dir, products, cfg, threads, barrier, queue, index) -> None:
    """One extraction process: warm up, wait for the others, time ``products`` one at a time
    (as the cache writer batches them), send back the time and the features."""
    torch.set_num_threads(threads)
    catalog = load_catalog(catalog_dir)
    images = [catalog.load_image(catalog[pid], min_side=decode_side(cfg)) for pid in products]
    extractor = PatchExtractor.from_config(cfg)
    extractor.extract(images[:1])  # warm-up: the onnxruntime export happens here
    barrier.wait()
    start = time.perf_counter()
    per_call = max(1, cfg.batch_size // 5)
    feats = []
    for i in range(0, len(images), per_call):
        feats += extractor.extract(images[i:i + per_call])
    queue.put((index, time.perf_counter() - start, feats))


def _time_path(catalog_dir, products, cfg, workers: int, threads: int):
    """products/s of ``workers`` processes splitting ``products``, and their features in order."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    parts = [products[i::workers] for i in range(workers)]
    procs = [ctx.Process(target=_extract_worker, args=(catalog_dir, part, cfg, threads, barrier, queue, i))
             for i, part in enumerate(parts)]
    for p in procs:
        p.start()
    results = sorted(queue.get() for _ in procs)
    for p in procs:
        p.join()
    by_id = {pid: f for (_, _, feats), part in zip(results, parts) for pid, f in zip(part, feats)}
    return len(products) / max(r[1] for r in results), [by_id[pid] for pid in products]


def bench_paths(args) -> dict:
    from kaleido.cli.patches import PatchJobConfig
    from kaleido.config import load_config

    catalog = load_catalog(args.catalog)
    products = [p.id for p in catalog.products[:args.images]]
    cores = torch.get_num_threads()
    base = load_config(PatchJobConfig, args.preset, [], component="patches").patches
    if args.batch_size:
        base = dataclasses.replace(base, batch_size=args.batch_size)
    torch_cfg = dataclasses.replace(base, batch_size=32,
                                    backbone=dataclasses.replace(base.backbone, runtime="torch"),
                                    saliency=dataclasses.replace(base.saliency, runtime="torch"))
    ort_cfg = dataclasses.replace(base, backbone=dataclasses.replace(base.backbone, runtime="onnxruntime"),
                                  saliency=dataclasses.replace(base.saliency, runtime="onnxruntime"))
    bs = ort_cfg.batch_size
    paths = [("torch, batch 32, 1 process", torch_cfg, 1, cores),
             (f"onnxruntime, batch {bs}, 1 process", ort_cfg, 1, cores),
             (f"onnxruntime, batch {bs}, {cores} workers x 1 thread", ort_cfg, cores, 1)]
    rows, ref = [], None
    for name, cfg, workers, threads in paths:
        rate, feats = _time_path(args.catalog, products, cfg, workers, threads)
        if ref is None:
            ref = feats
        diff = max(float(np.abs(np.concatenate([getattr(a, k) for a in feats])
                                - np.concatenate([getattr(b, k) for b in ref])).max())
                   for k in ("features", "rotated", "grey"))
        same_boxes = all(np.array_equal(a.box, b.box) for a, b in zip(feats, ref))
        rows.append({"path": name, "products_per_s": round(rate, 2),
                     "x_torch": round(rate / rows[0]["products_per_s"], 2) if rows else 1.0,
                     "max_abs_feature_diff": diff, "same_boxes": same_boxes})
        print(f"{name:<44}{rate:>8.2f} products/s {rows[-1]['x_torch']:>6.2f}x   "
              f"max |feature diff| {diff:.1e}, boxes {'equal' if same_boxes else 'DIFFER'}", flush=True)
    return {"images": len(products), "cores": cores, "preset": args.preset, "catalog": args.catalog, "paths": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default="../shared/data/fashion-products")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--resnet50-weights", default=None, help="ImageNet resnet50 state dict")
    parser.add_argument("--extras", choices=("both", "on", "off"), default="both",
                        help="time the 55 patches alone (off), with the extras (on), or both")
    parser.add_argument("--full-catalog", default=None, help="also time a full cache build of this catalog")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_kpg"))
    parser.add_argument("--paths", action="store_true",
                        help="time the whole extraction: torch vs onnxruntime vs workers")
    parser.add_argument("--preset", default="kaleido-saliency", help="patches preset of --paths")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="--paths: views per pass of the onnxruntime rows (default: the preset's)")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.paths:
        report = bench_paths(args)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "kpg_paths.json").write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out / 'kpg_paths.json'}")
        return
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
