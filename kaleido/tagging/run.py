"""``kaleido tagger train``: a tagger from a catalog and its split, scored on the test split.

Features of the train / validation / test products come from the tag-feature cache (made
here when missing, resumable), titles from the frozen MiniLM. The tagger is trained on the
training split, calibrated on the validation split and scored on the test split against the
logistic-regression bar; the folder it writes holds the networks, a copy of the captioner,
``report.json`` and a reliability diagram.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from kaleido.data.catalog import Catalog
from kaleido.data.split import split_catalog
from kaleido.tagging.features import (FeatureRows, TagFeatureCache, TagFeatureConfig, TagFeatureExtractor,
                                      captioner_fingerprint, features_for)
from kaleido.tagging.model import MODES
from kaleido.tagging.tagger import CAPTIONER_DIR
from kaleido.finetune.category import product_label
from kaleido.tagging.train import TaggerTrainConfig, evaluate_tagger, reference_rows, tag_fields, train_tagger

log = logging.getLogger(__name__)

REPORT_NAME = "report.json"


def feature_config_for(sat: str | Path | None) -> TagFeatureConfig:
    """The feature settings that match a SAT run (its backbone and input size), or the defaults."""
    if not sat:
        return TagFeatureConfig()
    from sat_captioner.captioner import load_sat

    _, _, cfg = load_sat(sat)
    return TagFeatureConfig(backbone=cfg.backbone.name, image_size=cfg.encoder_input_size,
                            captioner=captioner_fingerprint(sat))


def split_features(catalog: Catalog, products, cache: TagFeatureCache, extractor, fields: list[str],
                   chunk: int = 256, desc: str = "features") -> dict:
    """``{"ids", "image", "colour", "caption", "titles", "labels": {field: [str]}, "bad"}`` of the
    products with features (computed and cached where missing)."""
    parts: list[FeatureRows] = []
    bad: dict[str, str] = {}
    with tqdm(total=len(products), desc=desc, unit="product") as bar:
        for start in range(0, len(products), chunk):
            block = products[start:start + chunk]
            rows = features_for(block, catalog, cache, extractor)
            parts.append(rows)
            bad.update(rows.bad)
            bar.update(len(block))
    by_id = {p.id: p for p in products}
    ids = [i for r in parts for i in r.ids]
    if not ids:
        raise ValueError(f"{desc}: none of the {len(products)} products has features "
                         f"({'; '.join(f'{k}: {v}' for k, v in list(bad.items())[:3])})")
    kept = [by_id[i] for i in ids]
    if bad:
        log.warning("%s: %d product(s) without features (%s)", desc, len(bad),
                    "; ".join(f"{k}: {v}" for k, v in list(bad.items())[:3]))
    return {"ids": ids, "image": np.concatenate([r.image for r in parts if len(r.ids)]),
            "colour": np.concatenate([r.colour for r in parts if len(r.ids)]),
            "caption": [c for r in parts for c in r.caption], "titles": [p.title for p in kept],
            "labels": {f: [product_label(p, f) for p in kept] for f in fields}, "bad": bad}


def train_from_catalog(catalog: Catalog, split: dict, out: str | Path, sat: str | Path | None = None,
                       cache: str | Path | None = None, cfg: TaggerTrainConfig = TaggerTrainConfig(),
                       fields: list[str] | None = None, eval_split: str = "test") -> dict:
    """Train, calibrate, save and score a tagger (see the module docstring).

    Returns:
        The report: fields, training info, per mode the tagger's and the reference's test
        metrics, the thresholds.
    """
    from kaleido.baselines.features import TitleEncoder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    feature_cfg = feature_config_for(sat)
    captioner = None
    if sat:
        from sat_captioner.captioner import Captioner

        captioner = Captioner.from_pretrained(sat)
    extractor = TagFeatureExtractor(feature_cfg, captioner)
    feature_cache = TagFeatureCache(cache or out / "features", feature_cfg)
    products = {s: list(split_catalog(catalog, split, s)) for s in ("train", "val", eval_split)}
    if len(products["train"]) < 2 or len(products["val"]) < 2:
        raise ValueError(f"the split has {len(products['train'])} train and {len(products['val'])} val "
                         "products; the tagger needs at least 2 of each")
    fields = tag_fields(products["train"], fields)
    data = {s: split_features(catalog, ps, feature_cache, extractor, fields, desc=f"{s} features")
            for s, ps in products.items()}
    titles = TitleEncoder()
    for d in data.values():
        d["text"] = titles(d["titles"])
    model, info = train_tagger(data["train"], data["val"], fields, asdict(feature_cfg), cfg)
    model.save_pretrained(out)
    if sat:
        from sat_captioner.captioner import CONFIG_FILE, MODEL_FILE, VOCAB_FILE

        (out / CAPTIONER_DIR).mkdir(exist_ok=True)
        for name in (MODEL_FILE, CONFIG_FILE, VOCAB_FILE):
            shutil.copyfile(Path(sat) / name, out / CAPTIONER_DIR / name)
    test = data[eval_split]
    report = {"fields": fields, "products": {s: len(d["ids"]) for s, d in data.items()},
              "skipped": {s: d["bad"] for s, d in data.items() if d["bad"]}, "train": info,
              "split": eval_split, "tagger": {m: evaluate_tagger(model, test, m) for m in MODES},
              "reference": reference_rows(data["train"], test, fields),
              "thresholds": model.cfg.thresholds, "temperature": model.cfg.temperature,
              "config": asdict(cfg)}
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    try:
        plot_reliability(model, test, out / "reliability.png")
    except Exception as err:  # a missing plotting backend must not lose a trained model
        log.warning("reliability diagram not drawn: %s", err)
    return report


def evaluate_saved(model: str | Path, catalog: Catalog, split: dict, name: str = "test",
                   cache: str | Path | None = None) -> dict:
    """Score a saved tagger (a folder or released model) on one split: ``{mode: {field: metrics}}``.

    Features come from ``cache`` (made with the tagger's settings; missing ones are computed)."""
    from kaleido.tagging.tagger import Tagger

    tagger = Tagger.from_pretrained(model)
    products = list(split_catalog(catalog, split, name))
    if not products:
        raise ValueError(f"split {name!r} has no products")
    with tempfile.TemporaryDirectory() as tmp:
        feature_cache = TagFeatureCache(cache or Path(tmp) / "features", tagger.feature_cfg)
        data = split_features(catalog, products, feature_cache, tagger.extractor, tagger.fields, desc=f"{name} features")
    data["text"] = tagger.title_embeddings(data["titles"])
    return {"split": name, "products": len(data["ids"]), "skipped": data["bad"],
            "tagger": {m: evaluate_tagger(tagger.model, data, m) for m in tagger.model.cfg.modes}}


def format_report(report: dict) -> str:
    """Per field and mode: the tagger's accuracy / macro-F1 / ECE against the reference's."""
    n = report["products"][report["split"]] if isinstance(report["products"], dict) else report["products"]
    lines = [f"{report['split']} split ({n} products); accuracy / macro-F1 (%), "
             "ECE of the calibrated probabilities (%)",
             "| field | inputs | logistic regression (bar) | tagger | tagger ECE |", "|---|---|---|---|---|"]
    fields = report.get("fields") or list(next(iter(report["tagger"].values())))
    for f in fields:
        for m in MODES:
            t = report["tagger"].get(m, {}).get(f)
            r = report.get("reference", {}).get(m, {}).get(f)
            if not t:
                continue
            ref = f"{100 * r['accuracy']:.1f} / {100 * r['macro_f1']:.1f}" if r else "-"
            lines.append(f"| {f} | {m} | {ref} | {100 * t['accuracy']:.1f} / {100 * t['macro_f1']:.1f} "
                         f"| {100 * t['ece']:.1f} (raw {100 * t['ece_uncalibrated']:.1f}) |")
    return "\n".join(lines)


def plot_reliability(model, data: dict, path: Path) -> Path:
    """Reliability diagrams (confidence vs accuracy per bin) of every field, image-only inputs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kaleido.tagging.calibration import reliability
    from kaleido.tagging.model import AttributeTagger

    fields = model.cfg.fields
    fig, axes = plt.subplots(1, len(fields), figsize=(2.6 * len(fields), 2.8), squeeze=False)
    for mode, style in (("image", "o-"), ("image+title", "s--")):
        probs = model.predict_proba(mode, AttributeTagger.inputs(mode, data["image"], data["colour"], data["text"]))
        for ax, f in zip(axes[0], fields):
            truth = np.array(data["labels"][f], dtype=object)
            has = truth != ""
            names = np.array(model.cfg.labels[f], dtype=object)
            p = probs[f][has]
            bins = [b for b in reliability(p.max(1), names[p.argmax(1)] == truth[has]) if b["n"]]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style, ms=3, label=mode)
            ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
            ax.set_title(f, fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("confidence", fontsize=8)
    axes[0][0].set_ylabel("accuracy", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
