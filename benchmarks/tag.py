"""Tagging throughput (issue 13): products/s of ``kaleido tag`` from a feature cache and from raw
images, on fashion-products and on a slice of fashion-products-lowres, in one run.

Each measurement is the whole job as a user runs it (``run_tag_job``: features, title
embeddings, the attribute networks, flags, Parquet parts and the merge), into a fresh
temporary folder, on one process with the torch threads this machine has:

* ``cache``: every product of ``--catalog`` whose features are in ``--cache`` (no image is
  opened), inputs=auto (image + title), then inputs=image;
* ``raw``: the first ``--raw`` products of ``--catalog`` with an empty cache (decode, backbone,
  caption, colour histogram per image);
* ``lowres``: the first ``--lowres-products`` of ``--lowres`` (60 x 80 images) from raw images,
  extrapolated to the whole table.

    python benchmarks/tag.py --catalog ../shared/data/fashion-products --model runs/tagger/fashion-products \\
        --cache runs/tagger/fashion-products/features [--raw 300] \\
        [--lowres ../shared/data/fashion-products-lowres --lowres-products 1000] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from kaleido.data import load_catalog
from kaleido.tagging.features import TagFeatureCache
from kaleido.tagging.job import TagJobConfig, run_tag_job
from kaleido.tagging.tagger import Tagger


def _timed_job(catalog, tagger, cache, cfg) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = run_tag_job(catalog, "benchmark", Path(tmp) / "job", cache=cache or Path(tmp) / "features",
                              cfg=cfg, tagger=tagger)
        wall = time.perf_counter() - start
    return {"products": summary["products"], "tagged": summary["tagged"], "skipped": summary["skipped"],
            "seconds": round(wall, 2), "products_per_s": round(summary["tagged"] / wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--model", required=True, help="tagger folder")
    ap.add_argument("--cache", type=Path, required=True, help="tag-feature cache holding the catalog")
    ap.add_argument("--raw", type=int, default=300, help="products tagged from raw images")
    ap.add_argument("--lowres", default=None)
    ap.add_argument("--lowres-products", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    tagger = Tagger.from_pretrained(args.model)
    catalog = load_catalog(args.catalog)
    result = {"torch_threads": torch.get_num_threads(), "model": args.model}
    cache = TagFeatureCache(args.cache, tagger.feature_cfg)
    cached = catalog.subset([p.id for p in catalog if p.id in cache])
    tagger.title_embeddings(["warm up"])
    result["cache, inputs=auto"] = _timed_job(cached, tagger, args.cache, TagJobConfig(compute_missing=False))
    result["cache, inputs=image"] = _timed_job(cached, tagger, args.cache,
                                               TagJobConfig(inputs="image", compute_missing=False))
    first = catalog.subset([p.id for p in list(catalog)[:args.raw]])
    result["raw images"] = _timed_job(first, tagger, None, TagJobConfig())
    if args.lowres:
        low = load_catalog(args.lowres)
        part = low.subset([p.id for p in list(low)[:args.lowres_products]])
        r = _timed_job(part, tagger, None, TagJobConfig())
        r["whole_table_products"] = len(low)
        r["whole_table_hours_extrapolated"] = round(len(low) / r["products_per_s"] / 3600, 2)
        result["lowres raw images"] = r
    base = result["raw images"]["products_per_s"]
    print("| setting | products | seconds | products/s | x raw |\n|---|---|---|---|---|")
    for name, r in result.items():
        if isinstance(r, dict):
            print(f"| {name} | {r['tagged']} | {r['seconds']} | {r['products_per_s']} | "
                  f"{r['products_per_s'] / base:.1f} |")
    if "lowres raw images" in result:
        r = result["lowres raw images"]
        print(f"lowres: {r['whole_table_products']} products would take {r['whole_table_hours_extrapolated']} h "
              "from raw images (extrapolated from the slice)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
