"""Catalog statistics for ``kaleido data inspect``: what is in it and what is broken."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from .catalog import Catalog
from .images import ImageLoadError


def _stats(values) -> dict:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {"min": 0, "median": 0, "mean": 0.0, "max": 0}
    return {"min": int(arr.min()), "median": float(np.median(arr)),
            "mean": round(float(arr.mean()), 2), "max": int(arr.max())}


def inspect_catalog(catalog: Catalog, *, decode: bool = True, workers: int = 4,
                    progress: bool = True) -> dict:
    """Count products per category / subcategory, check every image, describe the titles.

    Args:
        catalog: the loaded catalog (its load report is included).
        decode: decode every image (finds truncated / non-image files); otherwise skip.
        workers: decoding threads (PIL releases the GIL while decoding).
        progress: show a progress bar.

    Returns:
        A JSON-serialisable dict; :func:`format_inspection` renders it as text.
    """
    start = time.perf_counter()
    products = catalog.products
    result = {
        "catalog": catalog.report.source,
        "products": len(products),
        "images": sum(len(p.images) for p in products),
        "load": catalog.report.to_dict(),
        "categories": dict(Counter(p.category or "<none>" for p in products).most_common()),
        "subcategories": dict(Counter(p.subcategory or "<none>" for p in products).most_common()),
        "images_per_product": _stats(len(p.images) for p in products),
        "title_words": _stats(len(p.title.split()) for p in products),
        "title_chars": _stats(len(p.title) for p in products),
    }
    if decode:
        refs = [(p.id, ref) for p in products for ref in p.images]

        def check(item):
            pid, ref = item
            try:
                image = catalog.store.load(ref)
                return pid, image.size, None
            except ImageLoadError as err:
                return pid, None, str(err)

        sizes, bad = Counter(), []
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for pid, size, err in tqdm(pool.map(check, refs, chunksize=64), total=len(refs),
                                       desc="decode images", unit="img", disable=not progress):
                if err:
                    bad.append({"id": pid, "error": err})
                else:
                    sizes[f"{size[0]}x{size[1]}"] += 1
        result["image_check"] = {"decoded": len(refs) - len(bad), "bad": len(bad),
                                 "bad_examples": bad[:10], "sizes": dict(sizes.most_common(5))}
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def _table(counts: dict, limit: int) -> list[str]:
    items = list(counts.items())
    lines = [f"    {name:<28} {n:>7,}" for name, n in items[:limit]]
    if len(items) > limit:
        lines.append(f"    ... {len(items) - limit} more ({sum(n for _, n in items[limit:]):,} products)")
    return lines


def format_inspection(result: dict, limit: int = 15) -> str:
    """Render :func:`inspect_catalog` output for a terminal."""
    load = result["load"]
    lines = [f"catalog   {result['catalog']}",
             f"products  {result['products']:,} (from {load['rows']:,} rows), "
             f"images {result['images']:,}"]
    for reason, n in load["skipped"].items():
        lines.append(f"skipped   {n:,} {reason}, e.g. {', '.join(load['examples'][reason][:3])}")
    for reason, n in load["repaired"].items():
        lines.append(f"repaired  {n:,} {reason}, e.g. {', '.join(load['examples'][reason][:3])}")
    for reason, n in load.get("noted", {}).items():
        lines.append(f"noted     {n:,} {reason}, e.g. {', '.join(load['examples'][reason][:3])}")
    if "image_check" in result:
        check = result["image_check"]
        sizes = ", ".join(f"{s} ({n:,})" for s, n in check["sizes"].items())
        lines.append(f"images    {check['decoded']:,} decoded, {check['bad']:,} bad; sizes: {sizes}")
        for bad in check["bad_examples"][:5]:
            lines.append(f"    bad {bad['id']}: {bad['error']}")
    for key, label in (("title_words", "title words"), ("title_chars", "title chars"),
                       ("images_per_product", "images/product")):
        s = result[key]
        lines.append(f"{label:<15} min {s['min']}, median {s['median']:g}, "
                     f"mean {s['mean']:g}, max {s['max']}")
    lines.append(f"categories ({len(result['categories'])}):")
    lines += _table(result["categories"], limit)
    lines.append(f"subcategories ({len(result['subcategories'])}):")
    lines += _table(result["subcategories"], limit)
    lines.append(f"wall time {result['seconds']:.1f} s")
    return "\n".join(lines)
