"""The tagger and the catalog-tagging job: colour features, calibration, flags, training,
exactly-once output after a kill (in process and under torchrun), bad images, and the
Kaleido-BERT attribute task on the tiny config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kaleido.cli import main
from kaleido.data import CatalogConfig, load_catalog, read_split, write_split
from kaleido.tagging.calibration import expected_calibration_error, fit_temperature, precision_threshold
from kaleido.tagging.colour import COLOUR_DIM, GREY_BINS, HUE_BINS, SAT_BINS, VAL_BINS, colour_features
from kaleido.tagging.features import FeatureRows, TagFeatureCache, TagFeatureConfig
from kaleido.tagging.job import TagJobConfig, run_tag_job
from kaleido.tagging.model import AttributeTagger, TaggerConfig
from kaleido.tagging.tagger import Tagger

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
CHROMATIC = HUE_BINS * SAT_BINS * VAL_BINS


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory) -> Path:
    """30 sample products (15 Topwear, 15 Shoes) with absolute image paths, and a split."""
    table = pd.read_csv(SAMPLE / "products.csv", dtype=str, keep_default_na=False)
    table = pd.concat([table[table.subCategory == c].head(15) for c in ("Topwear", "Shoes")])
    table["image"] = [str(SAMPLE / p) for p in table["image"]]
    folder = tmp_path_factory.mktemp("tag_catalog")
    table.to_csv(folder / "products.csv", index=False)
    write_split(load_catalog(CatalogConfig(path=str(folder))), folder / "split")
    return folder


@pytest.fixture(scope="module")
def tagger_dir(catalog_dir, tmp_path_factory) -> Path:
    """A tiny SAT captioner (64 px) and a tagger trained on its features for a few epochs."""
    root = tmp_path_factory.mktemp("tagger")
    args = ["--catalog", str(catalog_dir), "--split-file", str(catalog_dir / "split")]
    assert main(["sat", "train", *args, "--out", str(root / "sat"), "--config", "tiny"]) == 0
    assert main(["tagger", "train", *args, "--sat", str(root / "sat"), "--out", str(root / "tagger"),
                 "epochs=20", "threads=1"]) == 0
    return root / "tagger"


def _catalog(folder):
    return load_catalog(CatalogConfig(path=str(folder)))


# ----------------------------------------------------------------------------- colour

def test_colour_features_describe_the_product_not_the_white_background():
    image = Image.new("RGB", (120, 160), "white")
    image.paste((220, 20, 20), (30, 40, 90, 120))          # a red product, 25 % of the image
    f = colour_features(image)
    assert f.shape == (COLOUR_DIM,) and f.dtype == np.float32
    share = f[-1]
    assert 0.2 < share < 0.3                               # the white border is background
    chromatic, grey = f[:CHROMATIC], f[CHROMATIC:CHROMATIC + GREY_BINS]
    assert chromatic.sum() > 0.95 and grey.sum() < 0.05     # only the red pixels were counted
    hue = chromatic.reshape(HUE_BINS, SAT_BINS * VAL_BINS).sum(1)
    assert hue.argmax() in (0, HUE_BINS - 1)                # red
    black = Image.new("RGB", (120, 160), "white")
    black.paste((10, 10, 10), (30, 40, 90, 120))
    g = colour_features(black)
    assert g[CHROMATIC:CHROMATIC + GREY_BINS][0] > 0.85     # the darkest grey bin (edges blend when resized)
    blank = colour_features(Image.new("RGB", (50, 50), "white"))  # nothing but background
    assert np.isfinite(blank).all() and blank[CHROMATIC:CHROMATIC + GREY_BINS][-1] > 0.95


# ----------------------------------------------------------------------------- calibration

def test_temperature_scaling_fixes_overconfidence_and_lowers_ece():
    rng = np.random.default_rng(0)
    n, c = 4000, 5
    labels = rng.integers(0, c, n)
    clean = rng.normal(size=(n, c))
    clean[np.arange(n), labels] += 1.0                      # right about 60 % of the time
    logits = clean * 4                                      # and far too sure of it
    t = fit_temperature(logits, labels)
    assert 2.5 < t < 6
    def ece(z):
        p = torch.softmax(torch.from_numpy(z), -1).numpy()
        return expected_calibration_error(p.max(1), p.argmax(1) == labels)
    assert ece(logits / t) < 0.03 < 0.15 < ece(logits)
    assert fit_temperature(logits, np.full(n, -100)) == 1.0  # nothing known: unchanged


def test_precision_threshold_is_the_lowest_confidence_that_keeps_the_precision():
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    correct = np.array([1, 1, 1, 1, 0, 1, 0, 0], bool)
    assert precision_threshold(conf, correct, 1.0, min_support=1) == 0.8
    assert precision_threshold(conf, correct, 0.8, min_support=1) == 0.6     # 5 of 6
    assert precision_threshold(conf, correct, 1.0, min_support=5) == float("inf")  # never with 5 behind it
    # equal confidences go together: 30 predictions at 0.9, 20 right, are not 90 % precise
    assert precision_threshold(np.full(30, 0.9), np.arange(30) < 20, 0.9, min_support=1) == float("inf")
    assert precision_threshold(np.array([1.0, 1.0, 0.5]), np.array([1, 1, 0], bool), 1.0, min_support=1) == 1.0


# ----------------------------------------------------------------------------- flags

class _FixedModel(AttributeTagger):
    """A tagger whose calibrated probabilities are given."""

    def __init__(self, probs):
        super().__init__(TaggerConfig(fields=["colour"], labels={"colour": ["Blue", "Red", "White"]},
                                      image_dim=2, colour_dim=1, text_dim=1, hidden=4,
                                      modes=["image"], temperature={"image": {"colour": 1.0}},
                                      thresholds={"image": {"colour": {"low_confidence": 0.6, "disagree": 0.9}}},
                                      features={}))
        self.probs = np.asarray(probs, np.float32)

    def predict_proba(self, mode, x):
        return {"colour": self.probs}


def test_flags_on_a_hand_made_case():
    probs = [[0.95, 0.04, 0.01],   # sure it is Blue, the catalog says Red: a likely catalog error
             [0.95, 0.04, 0.01],   # sure and the catalog agrees
             [0.70, 0.20, 0.10],   # fairly sure, catalog differs: not sure enough to flag
             [0.40, 0.35, 0.25],   # unsure
             [0.95, 0.04, 0.01]]   # sure, the catalog has no label
    tagger = Tagger(_FixedModel(probs))
    rows = FeatureRows([str(i) for i in range(5)], np.zeros((5, 2), np.float32), np.zeros((5, 1), np.float32),
                       [""] * 5, {})
    catalog = [{"colour": "Red"}, {"colour": "Blue"}, {"colour": "Red"}, {"colour": "Blue"}, {}]
    tags = tagger.tag(rows, inputs="image", catalog_labels=catalog, top_k=2)
    assert [t.fields["colour"].disagrees for t in tags] == [True, False, False, False, False]
    assert [t.fields["colour"].low_confidence for t in tags] == [False, False, False, True, False]
    assert tags[0].fields["colour"].top == [("Blue", pytest.approx(0.95)), ("Red", pytest.approx(0.04))]
    assert tags[0].disagreeing_fields == ["colour"] and tags[3].low_confidence_fields == ["colour"]


# ----------------------------------------------------------------------------- training

def test_tagger_train_writes_a_calibrated_loadable_tagger(tagger_dir):
    report = json.loads((tagger_dir / "report.json").read_text())
    assert {"category", "subcategory", "baseColour", "gender"} <= set(report["fields"])
    for mode in ("image", "image+title"):
        for f in report["fields"]:
            if f in report["tagger"][mode]:
                m = report["tagger"][mode][f]
                assert 0 <= m["accuracy"] <= 1 and 0 <= m["ece"] <= 1
        th = report["thresholds"][mode]["gender"]
        assert 0 <= th["low_confidence"] <= th["disagree"] and (th["disagree"] <= 1 or th["disagree"] == float("inf"))
    assert report["reference"]["image"]["category"]["n"] == report["products"]["test"]
    assert (tagger_dir / "captioner" / "model.safetensors").is_file()
    assert (tagger_dir / "reliability.png").stat().st_size > 1000
    tagger = Tagger.from_pretrained(tagger_dir)
    image = Image.open(SAMPLE / "images" / "10047.jpg")
    (tags,) = tagger.tag_images([image])
    assert set(tags.fields) == set(report["fields"]) and tags.caption  # the tiny SAT still writes words
    probs = sum(p for _, p in tags.fields["category"].top)
    assert 0 < tags.fields["category"].prob <= probs <= 1 + 1e-6


def test_feature_cache_refuses_other_settings(tmp_path):
    TagFeatureCache(tmp_path, TagFeatureConfig(image_size=64))
    with pytest.raises(ValueError, match="image_size: 64 there, 320 here"):
        TagFeatureCache(tmp_path, TagFeatureConfig())


# ----------------------------------------------------------------------------- the job

class _Killed(RuntimeError):
    pass


def test_tag_job_after_a_simulated_kill_has_every_product_exactly_once(catalog_dir, tagger_dir, tmp_path):
    catalog = _catalog(catalog_dir)
    cfg, split = TagJobConfig(chunk=7, csv=True), read_split(catalog_dir / "split")

    def kill_after_two(k):
        if k == 1:
            raise _Killed

    with pytest.raises(_Killed):
        run_tag_job(catalog, tagger_dir, tmp_path / "killed", cfg=cfg, split=split, on_part=kill_after_two)
    assert len(list((tmp_path / "killed" / "parts").glob("part-*.parquet"))) == 2
    assert not (tmp_path / "killed" / "tags.parquet").exists()
    summary = run_tag_job(catalog, tagger_dir, tmp_path / "killed", cfg=cfg, split=split)
    resumed = pd.read_parquet(tmp_path / "killed" / "tags.parquet")
    assert resumed["id"].tolist() == [p.id for p in catalog]          # each once, in catalog order
    assert summary["products"] == summary["tagged"] == len(catalog) and summary["skipped"] == 0
    assert summary["this_run"]["products"] == len(catalog) - 14       # the two parts were kept
    assert set(summary["accuracy"]) >= {"all", "train"}
    assert len(pd.read_csv(tmp_path / "killed" / "tags.csv")) == len(catalog)
    straight = pd.read_parquet(run_tag_job(catalog, tagger_dir, tmp_path / "straight", cfg=cfg) and
                               tmp_path / "straight" / "tags.parquet")
    cols = [c for c in straight.columns if c != "split"]
    pd.testing.assert_frame_equal(resumed[cols], straight[cols], atol=1e-5)
    with pytest.raises(ValueError, match="other inputs"):
        run_tag_job(catalog, tagger_dir, tmp_path / "killed", cfg=TagJobConfig(chunk=7, inputs="image"), split=split)
    with pytest.raises(ValueError, match="other split"):
        run_tag_job(catalog, tagger_dir, tmp_path / "killed", cfg=cfg)


def test_tag_job_reports_and_skips_an_unreadable_image(catalog_dir, tagger_dir, tmp_path):
    table = pd.read_csv(catalog_dir / "products.csv", dtype=str, keep_default_na=False).head(9)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    table.loc[4, "image"] = str(broken)
    table.to_csv(tmp_path / "products.csv", index=False)
    catalog = _catalog(tmp_path)
    summary = run_tag_job(catalog, tagger_dir, tmp_path / "tags", cfg=TagJobConfig(chunk=4))
    df = pd.read_parquet(tmp_path / "tags" / "tags.parquet")
    assert len(df) == 9 and summary["skipped"] == 1 and summary["tagged"] == 8
    bad = df[df["bad_image"] != ""]
    assert bad["id"].tolist() == [table.loc[4, "id"]] and "unreadable" in bad["bad_image"].iloc[0]
    assert bad["category"].isna().all() and df.loc[df["bad_image"] == "", "category"].notna().all()
    # from the cache alone (no images needed): the same rows, the bad one still reported
    again = run_tag_job(catalog, tagger_dir, tmp_path / "again", cache=tmp_path / "tags" / "features",
                        cfg=TagJobConfig(chunk=4, compute_missing=False))
    assert again["skipped"] == 1 and again["tagged"] == 8


def test_kaleido_tag_cli_prints_the_summary(catalog_dir, tagger_dir, tmp_path, capsys):
    assert main(["tag", "--catalog", str(catalog_dir), "--model", str(tagger_dir), "--out", str(tmp_path / "t"),
                 "--split-file", str(catalog_dir / "split"), "--inputs", "image"]) == 0
    out = capsys.readouterr().out
    assert "tagged 30, skipped 0" in out and "| baseColour |" in out
    assert main(["tag", "--catalog", str(catalog_dir), "--model", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "u")]) == 2


def test_tag_job_under_torchrun_resumes_after_a_rank_dies(catalog_dir, tagger_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    def run(kill: str):
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             str(REPO / "tests" / "ddp_tag.py"), str(catalog_dir), str(tagger_dir), str(tmp_path / "t"), kill],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    killed = run("1")
    assert killed.returncode != 0 and not (tmp_path / "t" / "tags.parquet").exists()
    done = run("0")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "t" / "tags.parquet")
    assert df["id"].tolist() == [p.id for p in _catalog(catalog_dir)]
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["this_run"]["ranks"] == 2 and summary["tagged"] == 30
    one = run_tag_job(_catalog(catalog_dir), tagger_dir, tmp_path / "one", cfg=TagJobConfig(chunk=6))
    assert one["tagged"] == 30
    pd.testing.assert_frame_equal(df, pd.read_parquet(tmp_path / "one" / "tags.parquet"), atol=1e-5)


# ----------------------------------------------------------------------------- Kaleido-BERT attributes

def test_attribute_task_on_the_tiny_config(pretrain_data, tmp_path):
    from kaleido.config import load_config
    from kaleido.evaluation.evaluate import EvalConfig, evaluate
    from kaleido.finetune import FinetuneConfig
    from kaleido.finetune.base import read_task_info
    from kaleido.finetune.run import finetune

    d = pretrain_data
    cfg = load_config(FinetuneConfig, "tiny", ["category.targets=[all]", "data.val_split=val"], component="finetune")
    finetune("category", cfg, d["catalog"], d["cache"], "none", tmp_path / "attr", d["split"])
    info = read_task_info(tmp_path / "attr" / "final")
    assert {"category", "subcategory", "baseColour", "gender", "usage", "season"} <= set(info["labels"])
    products = list(d["catalog"])
    result = evaluate({"category": tmp_path / "attr" / "final"}, products, d["cache"],
                      load_config(EvalConfig, None, ["meteor=false"]))
    assert 0 <= result["baseColour"]["accuracy"] <= 1 and "macro_f1" in result["gender"]
