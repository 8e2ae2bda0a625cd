"""Fine-tuning U2-Net-p on user masks: pairing, loss, a tiny run, resume, evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from saliency.finetune import (
    FinetuneConfig,
    MaskDataset,
    deep_supervision_loss,
    evaluate_detector,
    find_pairs,
    finetune,
    split_pairs,
    warmup_lr,
)
from saliency.u2net import U2NETP, U2NetpConfig


def _write_shapes(root, n=12, size=80, seed=0):
    """Coloured rectangles / ellipses on white, with their exact masks."""
    rng = np.random.default_rng(seed)
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for i in range(n):
        image = Image.new("RGB", (size, size), "white")
        mask = Image.new("L", (size, size), 0)
        x0, y0 = (int(v) for v in rng.integers(5, size // 2, 2))
        x1, y1 = x0 + int(rng.integers(15, size // 2)), y0 + int(rng.integers(15, size // 2))
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        draw = ImageDraw.Draw(image).ellipse if i % 2 else ImageDraw.Draw(image).rectangle
        draw_mask = ImageDraw.Draw(mask).ellipse if i % 2 else ImageDraw.Draw(mask).rectangle
        draw([(x0, y0), (x1, y1)], fill=colour)
        draw_mask([(x0, y0), (x1, y1)], fill=255)
        image.save(images / f"shape{i:02d}.jpg", quality=95)
        mask.save(masks / f"shape{i:02d}.png")
    return images, masks


@pytest.fixture
def shapes(tmp_path):
    return _write_shapes(tmp_path / "data")


def _config(images, masks, out, **kw) -> FinetuneConfig:
    base = dict(images=str(images), masks=str(masks), out=str(out), epochs=2, batch_size=4,
                image_size=64, val_fraction=1 / 3, warmup_steps=2, seed=0)
    # 8 train + 4 val pairs in batches of 4: one tensor shape throughout, which keeps
    # the per-shape start-up cost of the CPU conv kernels down.
    return FinetuneConfig(**{**base, **kw})


def _pretrained_available() -> None:
    from saliency.weights import find_or_fetch_u2netp_onnx

    try:
        find_or_fetch_u2netp_onnx()
    except (RuntimeError, FileNotFoundError) as err:
        pytest.skip(f"U2-Net-p weights unavailable: {err}")


def test_pairs_by_stem_and_unmatched_files_are_named(shapes, tmp_path):
    images, masks = shapes
    pairs = find_pairs(images, masks)
    assert len(pairs) == 12 and pairs[0].stem == "shape00" and pairs[0].mask.suffix == ".png"
    (images / "extra.jpg").write_bytes(b"")
    (masks / "orphan.png").write_bytes(b"")
    (images / "notes.txt").write_text("ignored: not an image suffix")
    with pytest.raises(ValueError, match=r"extra\.jpg.*orphan\.png"):
        find_pairs(images, masks)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_pairs(tmp_path / "nowhere", masks)


def test_split_is_seeded_and_keeps_one_val_pair(shapes):
    pairs = find_pairs(*shapes)
    train, val = split_pairs(pairs, 0.25, seed=0)
    assert len(val) == 3 and len(train) == 9 and not {p.stem for p in train} & {p.stem for p in val}
    assert split_pairs(pairs, 0.25, seed=0) == (train, val)
    assert len(split_pairs(pairs[:2], 0.01, seed=0)[1]) == 1


def test_unreadable_pairs_are_skipped(shapes):
    images, masks = shapes
    (images / "shape03.jpg").write_bytes(b"\xff\xd8\xff garbage")
    Image.new("L", (10, 10)).save(masks / "shape04.png")  # wrong size
    data = MaskDataset(find_pairs(images, masks), 64)
    assert len(data) == 10
    assert {p.stem for p, _ in data.skipped} == {"shape03", "shape04"}
    x, y = data[0]
    assert x.shape == (3, 64, 64) and y.shape == (1, 64, 64)
    assert 0.0 <= float(y.min()) and float(y.max()) == 1.0


def test_deep_supervision_loss_uses_all_seven_maps():
    torch.manual_seed(0)
    model = U2NETP(U2NetpConfig(batch_norm=False))
    out = model(torch.randn(4, 3, 64, 64))  # the shape the fine-tuning tests use
    target = (torch.rand(4, 1, 64, 64) > 0.5).float()
    losses = deep_supervision_loss(out, target)
    assert set(losses) == {"fused_loss", "side_loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_warmup_lr():
    rates = [warmup_lr(s, 1e-4, 4) for s in range(5)]
    assert rates == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4])
    assert warmup_lr(0, 1e-4, 0) == 1e-4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch, then a resumed second one, on 12 synthetic pairs (8 train, 4 val)."""
    _pretrained_available()
    root = tmp_path_factory.mktemp("finetune")
    images, masks = _write_shapes(root / "data")
    out = root / "run"
    first = finetune(_config(images, masks, out, epochs=1))
    files = {p.name for p in out.iterdir()}
    state_1 = torch.load(out / "last.pt", weights_only=True)
    resumed = finetune(_config(images, masks, out, epochs=2))  # continues at epoch 2
    return {"images": images, "masks": masks, "out": out, "first": first, "files": files,
            "state_1": state_1, "resumed": resumed}


def test_finetune_writes_its_outputs(run):
    assert run["files"] >= {"model.safetensors", "last.pt", "config.yaml", "metrics.json",
                            "loss_curve.png"}
    assert "image_size: 64" in (run["out"] / "config.yaml").read_text()
    assert [h["epoch"] for h in run["first"]["history"]] == [1]
    assert run["first"]["data"] == {"train": 8, "val": 4, "skipped": {}}
    row = run["first"]["history"][0]
    assert {"train_loss", "val_loss", "mae", "max_f", "s_measure", "max_e"} <= set(row)
    assert all(np.isfinite(v) for v in row.values())


def test_finetune_resumes_and_reduces_the_training_loss(run):
    history = run["resumed"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == run["first"]["history"][0]  # epoch 1 was not trained again
    assert history[1]["train_loss"] < history[0]["train_loss"]
    saved = json.loads((run["out"] / "metrics.json").read_text())
    assert saved["best_epoch"] in (1, 2) and saved["monitor"] == "max_f"
    ckpt = torch.load(run["out"] / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and run["state_1"]["epoch"] == 1
    # AdamW's step counter went on from the checkpoint: 2 epochs x 2 batches, not 2
    steps = {float(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert steps == {4.0}
    name = "outconv.weight"
    assert not torch.equal(ckpt["model"][name], run["state_1"]["model"][name])


def test_finished_run_is_not_trained_again(run, caplog):
    again = finetune(_config(run["images"], run["masks"], run["out"], epochs=2))
    assert again["history"] == run["resumed"]["history"]
    assert "nothing to train" in caplog.text


def test_finetuned_model_is_evaluated_through_the_detector(run):
    from saliency.detector import SaliencyConfig, create_detector

    detector = create_detector(SaliencyConfig(weights=str(run["out"]), batch_size=4))
    assert detector.input_size == 64
    result = evaluate_detector(detector, find_pairs(run["images"], run["masks"]))
    assert result["images"] == 12 and not result["skipped"]
    assert 0.0 <= result["mae"] <= 1.0 and 0.0 <= result["max_f"] <= 1.0
