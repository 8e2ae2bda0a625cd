"""``kaleido baseline tune-backbone``: the backbone split into a frozen trunk and a trainable tail,
a run on the bundled sample that resumes, and the tuned weights serving the same features to the
catalog (``image_features``), to a query photo (``whole_image_extractor``) and to a release."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from kaleido.baselines.features import (GlobalFeatureConfig, feature_config_of, image_features,
                                        whole_image_extractor)
from kaleido.baselines.tune import TuneConfig, TuneRunConfig, split_backbone
from kaleido.cli import main as cli
from kaleido.patches.backbone import BackboneConfig, create_backbone, save_backbone_weights


@pytest.fixture(scope="module")
def backbone():
    return create_backbone(BackboneConfig(name="efficientnet_lite0", runtime="torch"))


@pytest.mark.parametrize("stage", [0, 5, 7])
def test_trunk_then_tail_is_the_pooled_feature(backbone, stage):
    trunk, tail = split_backbone(backbone, stage)
    x = backbone.normalize(torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(stage)))
    with torch.no_grad():
        split = tail(trunk(x))
        whole = backbone.forward_pooled(x)
    assert split.shape == whole.shape == (2, backbone.feature_dim)
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-4)


def test_stage_out_of_range_is_refused(backbone):
    with pytest.raises(ValueError, match="from_stage"):
        split_backbone(backbone, 8)


def test_saved_weights_load_as_the_same_architecture(backbone, tmp_path):
    path = save_backbone_weights(backbone, tmp_path / "b.safetensors")
    again = create_backbone(BackboneConfig(name="efficientnet_lite0", weights=str(path), runtime="torch"))
    assert again.arch == backbone.arch == "tf_efficientnet_lite0"   # TF padding, not timm's efficientnet_lite0
    assert again.mean == backbone.mean and again.std == backbone.std
    x = backbone.normalize(torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        torch.testing.assert_close(again.forward_pooled(x), backbone.forward_pooled(x), rtol=0.02, atol=0.02)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One epoch of the head conv on the sample, resumed to two, and a frozen control."""
    from kaleido.data import load_catalog
    from kaleido.data.split import write_split

    from conftest import SAMPLE as sample_dir

    root = tmp_path_factory.mktemp("tune")
    catalog = load_catalog(sample_dir)
    split = write_split(catalog, root / "split")
    common = ["baseline", "tune-backbone", "--catalog", str(sample_dir), "--split-file", str(split), "--quiet",
              "--cache", str(root / "cache"), "tune.from_stage=7", "tune.batch_size=32", "tune.threads=1",
              "eval.kb101.negatives=20"]
    assert cli([*common, "--out", str(root / "run"), "tune.epochs=1"]) == 0
    assert cli([*common, "--out", str(root / "run"), "tune.epochs=2"]) == 0   # resumes after epoch 1
    assert cli([*common, "--out", str(root / "frozen"), "tune.epochs=1", "tune.tail_lr=0"]) == 0
    return {"root": root, "catalog": catalog, "split": split, "sample": sample_dir}


def test_a_run_resumes_saves_the_backbone_and_scores_the_served_features(tuned):
    run = tuned["root"] / "run"
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    result = json.loads((run / "result.json").read_text())
    assert result["train"]["products"] > 200 and 0 < result["test"]["SumR"] <= 600
    # val scored from the features of the saved (float16) backbone = val scored during training
    assert abs(result["val"]["SumR"] - float(rows[-1]["val_sumr"])) < 3.0
    for split in ("train", "val", "test"):
        cfg = feature_config_of(run / "features" / split)
        assert cfg.weights == str((run / "backbone" / "model.safetensors").resolve())
        stored = json.loads((run / "features" / split / "features.json").read_text())
        assert stored["weights"] == "../../backbone/model.safetensors" and len(stored["weights_sha1"]) == 40


def test_a_moved_run_keeps_its_weights_and_a_missing_file_is_named(tuned, tmp_path):
    import shutil

    moved = tmp_path / "elsewhere"
    shutil.copytree(tuned["root"] / "run", moved, ignore=shutil.ignore_patterns("activations", "*.pt"))
    assert feature_config_of(moved / "features" / "val").weights == str((moved / "backbone" / "model.safetensors").resolve())
    (moved / "backbone" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="features.json says these features were made by"):
        feature_config_of(moved / "features" / "val")


def test_a_resume_with_another_recipe_is_refused(tuned):
    run = tuned["root"] / "run"
    args = ["baseline", "tune-backbone", "--catalog", str(tuned["sample"]), "--split-file", str(tuned["split"]), "--quiet", "--cache", str(tuned["root"] / "cache"), "--out", str(run),
            "tune.from_stage=7", "tune.batch_size=32", "tune.threads=1", "tune.epochs=3", "tune.tail_lr=1e-3"]
    assert cli(args) == 2   # the CLI's clear-error exit
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]        # nothing trained on top of the other recipe


def test_a_union_refuses_features_of_different_weights(tuned, pretrain_data, tmp_path):
    from kaleido.patches.cache import CacheError, write_union

    run = tuned["root"] / "run"
    frozen = tuned["root"] / "frozen" / "features" / "val"   # the tail_lr=0 run: its own weights file
    patches = pretrain_data["cache"]
    with pytest.raises(CacheError, match="different backbones or weights"):
        write_union(tmp_path / "union", [patches], whole_image=[run / "features" / "train", frozen])
    union = write_union(tmp_path / "ok", [patches], whole_image=[run / "features" / s for s in ("train", "val", "test")])
    assert union.meta["whole_image"]


def test_a_zero_tail_rate_keeps_the_imagenet_backbone_and_training_moves_it(tuned, backbone):
    from safetensors.torch import load_file

    head = "conv_head.weight"
    imagenet = backbone.model.state_dict()[head].half()
    frozen = load_file(str(tuned["root"] / "frozen" / "backbone" / "model.safetensors"))
    trained = load_file(str(tuned["root"] / "run" / "backbone" / "model.safetensors"))
    assert torch.equal(frozen[head], imagenet)
    assert not torch.equal(trained[head], imagenet)
    assert torch.equal(trained["blocks.0.0.conv_dw.weight"], frozen["blocks.0.0.conv_dw.weight"])  # the trunk stays


def test_catalog_and_query_features_come_from_the_tuned_weights(tuned, tmp_path):
    from kaleido.data.split import split_products

    run, catalog = tuned["root"] / "run", tuned["catalog"]
    products = split_products(catalog, tuned["split"], "test")[:6]
    tuned_cfg = feature_config_of(run / "features" / "test")
    ids, feats = image_features(catalog, products, tmp_path / "tuned", tuned_cfg)
    _, imagenet = image_features(catalog, products, tmp_path / "imagenet", GlobalFeatureConfig())
    assert not np.allclose(feats, imagenet, atol=1e-2)          # other weights, other features
    # the same folder asked for other weights recomputes its chunks instead of reusing them
    _, again = image_features(catalog, products, tmp_path / "tuned", GlobalFeatureConfig())
    np.testing.assert_allclose(again, imagenet, atol=1e-5)
    # a query photo gets the feature the catalog's cache holds (settings read from the cache folder)
    image_features(catalog, products, tmp_path / "tuned", tuned_cfg)
    extract = whole_image_extractor(tmp_path / "tuned")
    _, _, photo = next(iter(catalog.iter_images(products[:1])))
    np.testing.assert_allclose(extract(photo), feats[0], rtol=1e-4, atol=1e-4)


def test_a_release_ships_the_tuned_backbone_and_the_demo_reads_it(tuned, tmp_path):
    from kaleido.demo.session import whole_image_config_of
    from kaleido.release.assemble import BACKBONE_WEIGHTS, to_fp16

    weights = tuned["root"] / "run" / "backbone" / "model.safetensors"
    release = tmp_path / "release"
    (release / "backbone").mkdir(parents=True)
    assert whole_image_config_of(release) == GlobalFeatureConfig()          # no backbone: ImageNet's
    to_fp16(weights, release / BACKBONE_WEIGHTS)
    assert whole_image_config_of(release).weights == str((release / BACKBONE_WEIGHTS).resolve())
    loaded = create_backbone(BackboneConfig(name="efficientnet_lite0", weights=whole_image_config_of(release).weights))
    assert loaded.arch == "tf_efficientnet_lite0"


def test_tune_config_defaults_are_the_measured_best_row():
    cfg = TuneRunConfig()
    assert (cfg.tune.from_stage, cfg.tune.tail_lr, cfg.tune.epochs) == (3, 3.0e-4, 15)
    assert isinstance(cfg.tune, TuneConfig)


def test_a_release_refuses_features_of_other_backbone_weights(tuned, pretrain_data, tmp_path):
    from kaleido.patches.cache import write_union
    from kaleido.release import check_whole_image_weights
    from kaleido.release.assemble import BACKBONE_WEIGHTS, to_fp16

    run = tuned["root"] / "run"
    union = write_union(tmp_path / "union", [pretrain_data["cache"]],
                        whole_image=[run / "features" / s for s in ("train", "val", "test")])
    release = tmp_path / "release"
    with pytest.raises(ValueError, match="reads those of ImageNet"):   # a release without the tuned backbone
        check_whole_image_weights(release, union)
    (release / "backbone").mkdir(parents=True)
    to_fp16(run / "backbone" / "model.safetensors", release / BACKBONE_WEIGHTS)
    check_whole_image_weights(release, union)                          # the weights its features were made by
