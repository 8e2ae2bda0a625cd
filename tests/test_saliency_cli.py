"""``kaleido saliency`` predict / eval on real sample images and a corrupt file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from kaleido.cli import main


@pytest.fixture
def u2netp_weights():
    from saliency.weights import find_or_fetch_u2netp_onnx

    try:
        find_or_fetch_u2netp_onnx()
    except (RuntimeError, FileNotFoundError) as err:
        pytest.skip(f"U2-Net-p weights unavailable: {err}")


def test_predict_writes_masks_and_overlays_and_skips_bad_files(
    sample_dir, tmp_path, capsys, u2netp_weights
):
    good = [sample_dir / "images" / name for name in ("10001.jpg", "10016.jpg")]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(good[0].read_bytes()[:400])  # truncated JPEG
    out = tmp_path / "out"
    argv = ["saliency", "predict", str(good[0]), str(bad), str(good[1]), "--out", str(out),
            "margin=0.1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "truncated" in captured.err
    assert "2 of 3 images done" in captured.out and "fallback no" in captured.out
    assert sorted(p.name for p in out.iterdir()) == [
        "10001_mask.png", "10001_overlay.png", "10016_mask.png", "10016_overlay.png"]
    mask = np.asarray(Image.open(out / "10001_mask.png"))
    assert mask.shape == (224, 224) and mask.dtype == np.uint8 and mask.max() > 200
    assert Image.open(out / "10001_overlay.png").size == (224, 224)


def test_predict_fails_when_nothing_is_readable(tmp_path, capsys):
    pytest.importorskip("cv2.saliency")
    bad = tmp_path / "x.jpg"
    bad.write_text("not an image")
    assert main(["saliency", "predict", str(bad), "--out", str(tmp_path / "o"),
                 "--method", "spectral_residual"]) == 1
    assert "not a recognised image" in capsys.readouterr().err


def test_bad_override_is_an_error(sample_dir, tmp_path, capsys):
    image = sample_dir / "images" / "10001.jpg"
    assert main(["saliency", "predict", str(image), "--out", str(tmp_path), "method=bas"]) == 2
    assert "unknown saliency method 'bas'" in capsys.readouterr().err


def test_eval_prints_the_four_metrics(sample_dir, tmp_path, capsys):
    pytest.importorskip("cv2.saliency")
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in ("10001.jpg", "10115.jpg"):
        shutil.copyfile(sample_dir / "images" / name, images / name)
        product = (np.asarray(Image.open(images / name).convert("RGB")) < 235).any(-1)
        Image.fromarray(product.astype(np.uint8) * 255).save(masks / name.replace(".jpg", ".png"))
    argv = ["saliency", "eval", "--images", str(images), "--masks", str(masks),
            "--method", "fine_grained", "--json", str(tmp_path / "m.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 images (0 skipped)" in out
    for label in ("MAE", "max-F", "S", "max-E"):
        assert f"{label} 0." in out or f"{label} 1." in out
    assert (tmp_path / "m.json").is_file()
