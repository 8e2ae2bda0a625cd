"""Rebuild the bundled sample in data/sample from ../shared/data/fashion-products.

Deterministic: within each subcategory (articleType), products are ordered by a hash
of their id; every subcategory gets at least 3 products (when it has them) and the
rest of the budget is shared in proportion to subcategory size.

    python scripts/make_sample.py --source ../shared/data/fashion-products --out data/sample --size 320
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/fashion-products"))
    parser.add_argument("--out", type=Path, default=Path("data/sample"))
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--min-per-subcategory", type=int, default=3)
    args = parser.parse_args()

    table = pd.read_csv(args.source / "products.csv", dtype=str, keep_default_na=False)
    table["rank"] = table["id"].map(lambda i: hashlib.sha1(f"sample:{i}".encode()).hexdigest())
    table = table.sort_values("rank")
    groups = dict(list(table.groupby("articleType", sort=True)))
    quota = {k: min(len(g), args.min_per_subcategory) for k, g in groups.items()}
    spare = args.size - sum(quota.values())
    total = len(table)
    for k, g in groups.items():
        quota[k] = min(len(g), quota[k] + int(spare * len(g) / total))
    picked = pd.concat([g.head(quota[k]) for k, g in groups.items()])
    picked = picked.sort_values("id", key=lambda s: s.astype(int)).drop(columns="rank")

    (args.out / "images").mkdir(parents=True, exist_ok=True)
    for rel in picked["image"]:
        shutil.copyfile(args.source / rel, args.out / rel)
    picked.to_csv(args.out / "products.csv", index=False)
    print(f"wrote {len(picked)} products, {picked['articleType'].nunique()} subcategories, "
          f"{picked['subCategory'].nunique()} categories to {args.out}")


if __name__ == "__main__":
    main()
