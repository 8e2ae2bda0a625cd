"""A smaller catalog for budgeted experiments (the ablations): the first N products of
each split of an existing split file, written as a product table (image paths pointing
at the source's files, nothing copied) plus its own split.csv.

    python scripts/make_subset.py --source ../shared/data/fashion-products \\
        --split-file runs/split/fashion-products --train 2000 --val 200 --test 725 --out runs/ablation/catalog
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="folder holding products.csv")
    parser.add_argument("--split-file", type=Path, required=True, help="split.csv or its folder")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--test", type=int, default=725)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    table = pd.read_csv(args.source / "products.csv", dtype=str, keep_default_na=False)
    split_path = args.split_file / "split.csv" if args.split_file.is_dir() else args.split_file
    split = pd.read_csv(split_path, dtype=str, keep_default_na=False)
    keep = pd.concat([split[split["split"] == name].head(n)
                      for name, n in (("train", args.train), ("val", args.val), ("test", args.test))])
    subset = table[table["id"].isin(set(keep["id"]))].copy()
    subset["image"] = [str((args.source / p).resolve()) for p in subset["image"]]
    args.out.mkdir(parents=True, exist_ok=True)
    subset.to_csv(args.out / "products.csv", index=False)
    (args.out / "split").mkdir(exist_ok=True)
    keep[keep["id"].isin(set(subset["id"]))].to_csv(args.out / "split" / "split.csv", index=False)
    counts = keep["split"].value_counts().to_dict()
    print(f"{args.out / 'products.csv'}: {len(subset)} products {counts}; split in {args.out / 'split'}")


if __name__ == "__main__":
    main()
