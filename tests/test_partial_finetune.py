"""scripts/partial_finetune.py: the backbone split into a frozen trunk and a trainable tail."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("partial_finetune", ROOT / "scripts" / "partial_finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def backbone():
    from kaleido.patches.backbone import BackboneConfig, create_backbone

    return create_backbone(BackboneConfig(name="efficientnet_lite0"))


@pytest.mark.parametrize("stage", [0, 5, 7])
def test_trunk_then_tail_is_the_pooled_feature(backbone, stage):
    trunk, tail = _script().split_backbone(backbone, stage)
    x = backbone.normalize(torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(stage)))
    with torch.no_grad():
        split = tail(trunk(x))
        whole = backbone.forward_pooled(x)
    assert split.shape == whole.shape == (2, backbone.feature_dim)
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-4)


def test_stage_out_of_range_is_refused(backbone):
    with pytest.raises(ValueError, match="from-stage"):
        _script().split_backbone(backbone, 8)


def test_sample_run_trains_resumes_and_a_zero_tail_rate_keeps_the_backbone(backbone, sample_dir, tmp_path):
    from kaleido.data import load_catalog
    from kaleido.data.split import write_split

    script = _script()
    split = write_split(load_catalog(sample_dir), tmp_path / "split")
    common = ["--catalog", str(sample_dir), "--split-file", str(split), "--from-stage", "7", "--batch", "32",
              "--negatives", "20", "--threads", "1"]
    out = tmp_path / "run"
    first = script.main(common + ["--out", str(out), "--epochs", "1"])
    assert first["train_products"] > 200 and 0 < first["test"]["SumR"] <= 600
    resumed = script.main(common + ["--out", str(out), "--epochs", "2"])   # starts after epoch 1
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and resumed["test"]["SumR"] > 0
    assert (out / "eval-test.json").is_file() and list((out / "activations").glob("stage7-*/chunk-*.npz"))

    frozen = tmp_path / "frozen"
    script.main(common + ["--out", str(frozen), "--epochs", "1", "--tail-lr", "0"])
    state = torch.load(frozen / "checkpoint.pt", weights_only=True)["model"]
    head = script.split_backbone(backbone, 7)[1]
    for name, value in head.state_dict().items():
        torch.testing.assert_close(state[f"tail.{name}"], value)   # the reference: the tail never moved
    trained = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert not torch.equal(trained["tail.0.weight"], head.state_dict()["0.weight"])  # the fine-tuned one did

