"""Frozen backbones: offline EfficientNet-Lite0 (checked on real photos), ResNet-50 by path."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from kaleido.patches.backbone import (
    Backbone,
    BackboneConfig,
    BackboneWeightsError,
    _lite0_file,
    create_backbone,
    list_backbones,
)

# Sample products (data/sample/products.csv) and ImageNet classes each should be predicted as.
JERSEY, RUNNING_SHOE, MAILBAG, PURSE, BACKPACK = 610, 770, 636, 748, 414
SUNGLASS, SUNGLASSES = 836, 837
PRODUCTS = {
    "10047": ("Puma Men Heroes Graphic Black Tshirts", {JERSEY}),
    "10117": ("Sports Shoes", {RUNNING_SHOE}),
    "17137": ("Handbags", {MAILBAG, PURSE, BACKPACK}),
    "16094": ("Sunglasses", {SUNGLASS, SUNGLASSES}),
}


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    torch.manual_seed(0)
    return create_backbone()


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Point the torch hub and HF caches at an empty folder."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path


@pytest.fixture(scope="module")
def tv_resnet50(tmp_path_factory):
    """A random torchvision ResNet-50 with non-trivial BN statistics, saved as a state dict."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("weights") / "resnet50-0676ba61.pth"
    torch.save(model.state_dict(), path)
    return model, path


def _images(ids: list[str], sample_dir) -> torch.Tensor:
    arrays = [np.asarray(Image.open(sample_dir / "images" / f"{i}.jpg").convert("RGB")
                         .resize((224, 224), Image.BICUBIC)) for i in ids]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255  # (B, 3, 224, 224)


def test_lite0_default_shapes_and_frozen(lite0):
    assert lite0.feature_dim == 1280 and lite0.stride == 32
    assert lite0.arch == "tf_efficientnet_lite0" and lite0.mean == lite0.std == (0.5, 0.5, 0.5)
    assert "efficientnet-lite0-57934424.pth" in lite0.weights_source
    assert not lite0.training and not any(p.requires_grad for p in lite0.parameters())
    with torch.no_grad():
        fmap = lite0.forward_map(lite0.normalize(torch.rand(2, 3, 224, 224)))
        assert fmap.shape == (2, 1280, 7, 7)
        big = lite0.normalize(torch.rand(1, 3, 384, 384))
        fmap = lite0.forward_map(big)
        assert fmap.shape == (1, 1280, 12, 12)
        pooled = lite0.forward_pooled(big)
    assert pooled.shape == (1, 1280) and torch.isfinite(pooled).all()
    assert torch.allclose(pooled, fmap.mean(dim=(2, 3)))


def test_parent_train_does_not_unfreeze_batchnorm(lite0):
    parent = nn.Sequential(lite0, nn.Linear(1280, 4)).train()
    assert not lite0.training and parent[1].training
    before = lite0.model.bn2.running_mean.clone()
    parent(lite0.normalize(torch.rand(2, 3, 64, 64)))
    assert torch.equal(before, lite0.model.bn2.running_mean)


def test_lite0_file_uses_every_tensor_in_order(lite0):
    raw = torch.load(_lite0_file(), map_location="cpu", weights_only=True)
    loaded = lite0.model.state_dict()
    assert len(raw) == len(loaded) == 296
    assert list(raw)[0] == "_conv_stem.weight" and list(loaded)[0] == "conv_stem.weight"
    for (src, a), (dst, b) in zip(raw.items(), loaded.items()):
        assert torch.equal(a, b), f"{src} -> {dst}"


def test_lite0_classifies_real_products(lite0, sample_dir):
    """The behavioural check of the mapping: ImageNet classes that fit each product photo."""
    ids = list(PRODUCTS)
    with torch.no_grad():
        probs = lite0.model(lite0.normalize(_images(ids, sample_dir))).softmax(-1)  # (4, 1000)
    for pid, row in zip(ids, probs):
        title, expected = PRODUCTS[pid]
        top5 = row.topk(5).indices.tolist()
        assert top5[0] in expected, f"{pid} ({title}): top-5 {top5}"
        assert row[sorted(expected)].sum() > 0.5, f"{pid} ({title}): top-5 {top5}"


def test_resnet50_from_torchvision_state_dict(tv_resnet50, empty_caches):
    source, path = tv_resnet50
    backbone = create_backbone(BackboneConfig(name="resnet50", weights=str(path)))
    assert backbone.feature_dim == 2048 and backbone.stride == 32
    assert backbone.weights_source == str(path) and backbone.mean == (0.485, 0.456, 0.406)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        fmap = backbone.forward_map(x)
        expected = nn.Sequential(*list(source.children())[:-2])(x)  # (1, 2048, 4, 4)
        assert fmap.shape == (1, 2048, 4, 4)
        # the backbone runs channels-last (another summation order): float32 noise, not 1e-6
        close = dict(rtol=1e-4, atol=1e-4 * expected.abs().max().item())
        torch.testing.assert_close(fmap, expected, **close)
        pooled = expected.mean(dim=(2, 3))  # (1, 2048)
        torch.testing.assert_close(backbone.forward_pooled(x), pooled, **close)
        # the torchvision fc came along as timm's classifier
        torch.testing.assert_close(backbone.model.forward_head(fmap), source.fc(pooled), **close)


def test_resnet50_headless_safetensors(tv_resnet50, tmp_path):
    from safetensors.torch import save_file

    source, _ = tv_resnet50
    state = {k: v for k, v in source.state_dict().items()
             if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    save_file(state, tmp_path / "r50.safetensors")
    path = tmp_path / "r50.safetensors"
    backbone = create_backbone(BackboneConfig(name="resnet50", weights=str(path)))
    assert backbone.model.num_classes == 0
    assert torch.equal(backbone.model.conv1.weight, source.conv1.weight)


def test_resnet50_default_without_cache_raises(empty_caches):
    with pytest.raises(BackboneWeightsError, match="resnet50") as err:
        create_backbone("resnet50")
    message = str(err.value)
    assert str(empty_caches) in message and "weights='<path>'" in message


def test_resnet50_default_finds_torch_hub_cache(tv_resnet50, empty_caches):
    source, path = tv_resnet50
    checkpoints = empty_caches / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / path.name).write_bytes(path.read_bytes())
    backbone = create_backbone("resnet50")
    assert str(checkpoints / path.name) in backbone.weights_source
    assert "tv_in1k" in backbone.weights_source
    assert torch.equal(backbone.model.layer4[2].conv3.weight, source.layer4[2].conv3.weight)


def test_resnet50_timm_cache_finds_hf_hub_file(tv_resnet50, empty_caches):
    from safetensors.torch import save_file

    source, _ = tv_resnet50
    repo = empty_caches / "hf" / "hub" / "models--timm--resnet50.a1_in1k"
    (repo / "snapshots" / "0123abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    save_file(source.state_dict(), repo / "snapshots" / "0123abc" / "model.safetensors")
    backbone = create_backbone(BackboneConfig(name="resnet50", weights="timm-cache"))
    assert "resnet50.a1_in1k" in backbone.weights_source and str(repo) in backbone.weights_source
    assert torch.equal(backbone.model.fc.weight, source.fc.weight)


def test_lite0_package_file_by_path_gets_the_same_architecture():
    cfg = BackboneConfig(name="efficientnet_lite0", weights=str(_lite0_file()))
    backbone = create_backbone(cfg)
    assert backbone.arch == "tf_efficientnet_lite0" and backbone.mean == (0.5, 0.5, 0.5)


def test_bad_weights_raise_clear_errors(tmp_path):
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        create_backbone(BackboneConfig(name="resnet50", weights=str(tmp_path / "missing.pth")))
    with pytest.raises(BackboneWeightsError, match="tensors in the file"):
        create_backbone(BackboneConfig(name="resnet50", weights=str(_lite0_file())))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneWeightsError, match="cannot read"):
        create_backbone(BackboneConfig(name="resnet50", weights=str(tmp_path / "junk.pth")))
    with pytest.raises(BackboneWeightsError, match="unknown backbone"):
        create_backbone("no_such_net")


def test_random_only_when_asked_and_loud(caplog):
    backbone = create_backbone(BackboneConfig(name="efficientnet_lite0", weights="random"))
    assert "RANDOM" in backbone.weights_source and backbone.arch == "efficientnet_lite0"
    assert any(r.levelno == logging.WARNING and "RANDOM" in r.getMessage() for r in caplog.records)


def test_list_backbones():
    assert list_backbones() == ["efficientnet_lite0", "pixels", "resnet50"]


def test_device_is_configurable():
    backbone = create_backbone(BackboneConfig(device="cpu"))
    assert backbone.device == torch.device("cpu")
    assert next(backbone.parameters()).device == backbone.device
