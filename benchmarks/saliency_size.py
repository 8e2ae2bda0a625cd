"""U2-Net-p input size vs speed and box agreement, on real product photos.

Speed (images/s) at each input side and the IoU of the resulting product boxes with
those at the native 320 px, on the same N images, in one run:

    python benchmarks/saliency_size.py [--catalog ../shared/data/fashion-products] [--images 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kaleido.data import load_catalog
from saliency.detector import SaliencyConfig, create_detector


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default="../shared/data/fashion-products")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 256, 224, 192, 160])
    args = parser.parse_args()
    catalog = load_catalog(args.catalog)
    step = max(1, len(catalog) // args.images)
    images = [catalog.load_image(p) for p in catalog.products[::step][:args.images]]
    boxes = {}
    print(f"{'size':>6}{'img/s':>9}{'IoU vs 320 mean':>17}{'min':>7}{'fall-backs':>12}")
    for size in args.sizes:
        detector = create_detector(SaliencyConfig(input_size=size))
        detector.detect_many(images[:2])
        start = time.perf_counter()
        results = detector.detect_many(images)
        ips = len(images) / (time.perf_counter() - start)
        boxes[size] = [r.box for r in results]
        ious = [iou(a, b) for a, b in zip(boxes[size], boxes[args.sizes[0]])]
        print(f"{size:>6}{ips:>9.2f}{np.mean(ious):>17.3f}{np.min(ious):>7.3f}"
              f"{sum(r.fallback for r in results):>12}")


if __name__ == "__main__":
    main()
