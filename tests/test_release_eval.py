"""``kaleido eval --model NAME``: a released model's matcher with its dual encoder as the first
stage, refused on a feature cache made with other patch settings."""

import json
import shutil

import pytest

from kaleido.cli import main
from kaleido.patches.cache import FeatureCache
from kaleido.release import check_cache_settings, feature_settings


@pytest.fixture
def release(dual_dir, reranker_dir, pretrain_data, tmp_path):
    folder = tmp_path / "toy-release"
    shutil.copytree(dual_dir, folder / "dual")
    shutil.copytree(reranker_dir, folder / "matcher")
    (folder / "tagger").mkdir()
    settings = FeatureCache(pretrain_data["cache"]).meta["config"]
    (folder / "patches.json").write_text(json.dumps({**settings, "batch_size": 99, "runtime": "torch"}))
    return folder


def _eval_args(d, *extra):
    return ["eval", "--catalog", str(d["catalog_dir"]), "--image-root", str(d["image_root"]),
            "--cache", str(d["cache"]), "--split-file", str(d["split"]), "--split", "train",
            "kb101.queries=4", "kb101.negatives=6", "kb101.draws=1", "full_catalog=0", *extra]


def test_eval_by_release_uses_its_matcher_and_dual(release, pretrain_data, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main([*_eval_args(pretrain_data, "--json", str(out), "exhaustive=false"), "--model", str(release)]) == 0
    printed = capsys.readouterr().out
    assert f"first stage {release / 'dual'}" in printed and "first stage (same draws)" in printed
    result = json.loads(out.read_text())
    assert result["name"] == str(release) and result["checkpoints"]["retrieval"] == str(release / "matcher")
    assert "dual" in result["retrieval"] and "two_stage" in result["retrieval"]


def test_a_cache_with_other_patch_settings_is_refused(release, pretrain_data, capsys):
    settings = json.loads((release / "patches.json").read_text())
    (release / "patches.json").write_text(json.dumps({**settings, "grids": [8], "roi_size": 3}))
    assert main([*_eval_args(pretrain_data), "--model", str(release)]) == 2
    err = capsys.readouterr().err
    assert "other patch settings" in err and "grids: [8] in the release" in err and "roi_size" in err
    with pytest.raises(SystemExit):  # one of --checkpoint / --model, not both
        main([*_eval_args(pretrain_data), "--model", str(release), "--checkpoint", str(release / "matcher")])


def test_feature_settings_ignore_how_features_are_computed(tmp_path):
    a = {"grids": [1, 2], "batch_size": 32, "extras": True, "backbone": {"name": "b", "runtime": "torch", "device": "cpu"}}
    b = {"grids": [1, 2], "batch_size": 8, "extras": False, "backbone": {"name": "b", "runtime": "onnxruntime"}}
    assert feature_settings(a) == feature_settings(b) == {"grids": [1, 2], "backbone": {"name": "b"}}
    (tmp_path / "patches.json").write_text(json.dumps(b))
    check_cache_settings(tmp_path, type("Cache", (), {"meta": {"config": a}, "root": "c"})())
    with pytest.raises(ValueError, match=r"backbone.name: 'b' in the release, 'r' in the cache"):
        check_cache_settings(tmp_path, type("Cache", (), {"meta": {"config": {**a, "backbone": {"name": "r"}}},
                                                          "root": "c"})())
