"""What the tagger's colour histogram buys: the tagger recipe with and without it, and logistic
regressions on each input, on the test split, from a tagger's feature cache (no image decoded).

    python scripts/colour_ablation.py --catalog ../shared/data/fashion-products \\
        --split-file runs/split/fashion-products --tagger runs/tagger/fashion-products [--fields baseColour gender]

Rows (accuracy %, image-only inputs): logistic regression on the pooled feature, on the
histogram alone, on both; the tagger's MLP on the pooled feature alone (histogram zeroed) and
on both (the shipped recipe).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

import numpy as np

from kaleido.data import load_catalog, read_split, split_catalog
from kaleido.tagging.features import TagFeatureCache, TagFeatureConfig
from kaleido.tagging.model import AttributeTagger
from kaleido.tagging.run import split_features
from kaleido.tagging.train import TaggerTrainConfig, evaluate_tagger, train_tagger


def logreg(train: dict, test: dict, x_of, field: str) -> float:
    from sklearn.linear_model import LogisticRegression

    tr, te = x_of(train), x_of(test)
    mean, std = tr.mean(0), tr.std(0) + 1e-6
    y, t = np.array(train["labels"][field]), np.array(test["labels"][field])
    clf = LogisticRegression(max_iter=2000).fit(((tr - mean) / std)[y != ""], y[y != ""])
    return float((clf.predict(((te - mean) / std)[t != ""]) == t[t != ""]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--tagger", required=True, help="a tagger folder whose features/ cache holds the splits")
    ap.add_argument("--fields", nargs="*", default=["baseColour", "gender", "usage", "season", "subcategory"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    model = AttributeTagger.from_pretrained(args.tagger)
    feature_cfg = TagFeatureConfig(**model.cfg.features)
    cache = TagFeatureCache(f"{args.tagger}/features", feature_cfg)
    catalog, split = load_catalog(args.catalog), read_split(args.split_file)
    data = {s: split_features(catalog, list(split_catalog(catalog, split, s)), cache, None, args.fields,
                              desc=f"{s} features") for s in ("train", "val", "test")}
    rows = {"logistic regression, pooled feature": {},
            "logistic regression, colour histogram": {},
            "logistic regression, pooled + histogram": {}}
    for f in args.fields:
        rows["logistic regression, pooled feature"][f] = logreg(data["train"], data["test"], lambda d: d["image"], f)
        rows["logistic regression, colour histogram"][f] = logreg(data["train"], data["test"], lambda d: d["colour"], f)
        rows["logistic regression, pooled + histogram"][f] = logreg(
            data["train"], data["test"], lambda d: np.concatenate([d["image"], d["colour"]], 1), f)
    cfg = TaggerTrainConfig(threads=args.threads)
    for name, zero in (("tagger MLP, pooled feature (histogram zeroed)", True), ("tagger MLP, pooled + histogram", False)):
        use = {s: {**d, "colour": np.zeros_like(d["colour"]) if zero else d["colour"]} for s, d in data.items()}
        tagger, _ = train_tagger(use["train"], use["val"], args.fields, asdict(feature_cfg), cfg, modes=("image",))
        result = evaluate_tagger(tagger, use["test"], "image")
        rows[name] = {f: result[f]["accuracy"] for f in args.fields}
    print(f"test split ({len(data['test']['ids'])} products), image-only inputs, accuracy (%)")
    print("| inputs | " + " | ".join(args.fields) + " |\n|---|" + "---|" * len(args.fields))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{100 * r[f]:.1f}" for f in args.fields) + " |")


if __name__ == "__main__":
    main()
