"""Saliency detector: mask_to_box on hand-made masks, U2-Net-p and OpenCV methods on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from saliency.detector import (
    SaliencyConfig,
    SaliencyDetector,
    create_detector,
    load_finetuned_u2netp,
    mask_to_box,
)
from saliency.visualize import overlay, side_by_side

SAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "data" / "sample" / "images"
SAMPLE_NAMES = ("10001.jpg", "10047.jpg", "10115.jpg")  # a skirt, a man in a T-shirt, shoes


# ------------------------------------------------------------------- mask_to_box


def _rect_mask(h=50, w=80, rows=(10, 30), cols=(20, 60)) -> np.ndarray:
    mask = np.zeros((h, w), np.float32)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 0.9
    return mask


def test_mask_to_box_tight_box_is_exact():
    assert mask_to_box(_rect_mask(), 0.5, 0.0, 0.01) == ((20, 10, 60, 30), False)


def test_mask_to_box_margin_is_a_fraction_of_the_box():
    # box 40 wide and 20 high: 10% adds 4 px left / right and 2 px top / bottom
    assert mask_to_box(_rect_mask(), 0.5, 0.1, 0.01) == ((16, 8, 64, 32), False)


def test_mask_to_box_margin_is_clipped_to_the_image():
    mask = _rect_mask(rows=(0, 20), cols=(70, 80))  # touches the top and right borders
    assert mask_to_box(mask, 0.5, 0.5, 0.01) == ((65, 0, 80, 30), False)
    whole = np.ones((50, 80), np.float32)
    assert mask_to_box(whole, 0.5, 0.2, 0.01) == ((0, 0, 80, 50), False)


def test_mask_to_box_threshold_is_strict_and_spans_every_component():
    mask = np.zeros((40, 40), np.float32)
    mask[5:10, 5:10] = 0.8  # left shoe
    mask[30:35, 20:38] = 0.8  # right shoe
    mask[20:25, 0:40] = 0.5  # exactly at the threshold: background
    assert mask_to_box(mask, 0.5, 0.0, 0.01) == ((5, 5, 38, 35), False)


def test_mask_to_box_empty_and_speck_fall_back_to_the_whole_image():
    assert mask_to_box(np.zeros((50, 80)), 0.5, 0.05, 0.01) == ((0, 0, 80, 50), True)
    speck = np.zeros((50, 80), np.float32)
    speck[25, 40] = 1.0  # 1 pixel of 4000 < 1%
    assert mask_to_box(speck, 0.5, 0.05, 0.01) == ((0, 0, 80, 50), True)
    assert mask_to_box(speck, 0.5, 0.0, 0.0) == ((40, 25, 41, 26), False)
    nan = np.full((50, 80), np.nan, np.float32)
    assert mask_to_box(nan, 0.5, 0.05, 0.01) == ((0, 0, 80, 50), True)


def test_mask_to_box_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        mask_to_box(np.zeros((2, 3, 3)), 0.5, 0.05, 0.01)
    with pytest.raises(ValueError, match="threshold"):
        mask_to_box(np.zeros((4, 4)), 1.0, 0.05, 0.01)
    with pytest.raises(ValueError, match="margin"):
        mask_to_box(np.zeros((4, 4)), 0.5, -0.1, 0.01)


def test_create_detector_rejects_bad_config():
    with pytest.raises(ValueError, match="unknown saliency method 'bas'"):
        create_detector(SaliencyConfig(method="bas"))
    with pytest.raises(ValueError, match="only used by method u2netp"):
        create_detector(SaliencyConfig(method="fine_grained", weights="x.safetensors"))
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        create_detector(SaliencyConfig(weights="nope.safetensors"))


# ---------------------------------------------------------------- real images


def _sample_images() -> list[Image.Image]:
    return [Image.open(SAMPLE_IMAGES / name).convert("RGB") for name in SAMPLE_NAMES]


def _non_white(image: Image.Image) -> np.ndarray:
    return (np.asarray(image) < 235).any(axis=-1)  # (H, W) product pixels


def _check_result(image: Image.Image, result) -> None:
    w, h = image.size
    x0, y0, x1, y1 = result.box
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert result.mask.shape == (h, w) and result.mask.dtype == np.float32
    assert 0.0 <= result.mask.min() and result.mask.max() <= 1.0


@pytest.fixture(scope="module")
def u2netp():
    try:
        detector = create_detector(SaliencyConfig(batch_size=2))
    except RuntimeError as err:  # no cached weights and no registry
        pytest.skip(f"U2-Net-p weights unavailable: {err}")
    images = _sample_images() + [Image.new("RGB", (200, 160), "white")]
    # 4 images at batch_size 2: two batches, so batch boundaries are exercised
    return detector, images, detector.detect_many(images)


def test_u2netp_boxes_lock_the_product(u2netp):
    _, images, results = u2netp
    for image, result in zip(images[:3], results[:3]):
        _check_result(image, result)
        assert not result.fallback
        x0, y0, x1, y1 = result.box
        w, h = image.size
        assert (x1 - x0) * (y1 - y0) < 0.9 * w * h
        product = _non_white(image)
        assert product[y0:y1, x0:x1].sum() >= 0.95 * product.sum()
        # the mask is the product: high inside non-white pixels, low on the background
        assert result.mask[product].mean() > 0.8 and result.mask[~product].mean() < 0.1


def test_u2netp_blank_image_falls_back_and_is_counted(u2netp):
    detector, images, results = u2netp
    blank = results[3]
    assert blank.fallback and blank.box == (0, 0, 200, 160)
    assert blank.mask.max() < 0.5  # raw probability, not min-max stretched
    assert detector.detected >= 4 and detector.fallbacks >= 1


def test_detect_many_equals_detect_one_by_one(u2netp):
    detector, images, results = u2netp
    detected, fallbacks = detector.detected, detector.fallbacks
    single = detector.detect(images[1])  # second of its batch of 2
    assert single.box == results[1].box and single.fallback == results[1].fallback
    np.testing.assert_allclose(single.mask, results[1].mask, atol=1e-4)
    assert detector.detected == detected + 1 and detector.fallbacks == fallbacks


@pytest.mark.parametrize("method", ["spectral_residual", "fine_grained"])
def test_classical_methods_give_valid_boxes(method):
    pytest.importorskip("cv2.saliency")
    detector = create_detector(SaliencyConfig(method=method))
    assert detector.model is None
    images = _sample_images()
    for image, result in zip(images, detector.detect_many(images)):
        _check_result(image, result)
        assert not result.fallback
        x0, y0, x1, y1 = result.box
        product = _non_white(image)
        assert product[y0:y1, x0:x1].sum() >= 0.5 * product.sum()
    blank = detector.detect(Image.new("RGB", (64, 48), "white"))
    assert blank.fallback and blank.box == (0, 0, 64, 48) and blank.mask.max() == 0
    assert detector.detected == 4 and detector.fallbacks == 1


def test_finetuned_weights_round_trip(tmp_path):
    from safetensors.torch import save_file

    from saliency.u2net import U2NETP, U2NetpConfig

    model = U2NETP(U2NetpConfig(batch_norm=False))
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"),
              metadata={"batch_norm": "false", "input_size": "96"})
    loaded, size = load_finetuned_u2netp(tmp_path)  # the run folder works too
    assert size == 96 and not loaded.training
    detector = create_detector(SaliencyConfig(weights=str(tmp_path / "model.safetensors")))
    assert detector.input_size == 96
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_finetuned_u2netp(tmp_path / "bad.safetensors")


def test_overlay_tints_the_mask_and_draws_the_box():
    image = Image.new("RGB", (40, 30), "white")
    mask = np.zeros((30, 40), np.float32)
    mask[10:20, 10:30] = 1.0
    from saliency.detector import SaliencyResult

    result = SaliencyResult(mask=mask, box=(8, 8, 32, 22), fallback=False)
    out = np.asarray(overlay(image, result))
    assert out.shape == (30, 40, 3)
    assert tuple(out[15, 20]) != (255, 255, 255)  # tinted foreground
    assert tuple(out[2, 2]) == (255, 255, 255)  # untouched background
    assert tuple(out[8, 20]) == (0, 200, 0)  # top edge of the box (green)
    assert tuple(out[21, 20]) == (0, 200, 0)  # bottom edge: y1 - 1, y1 exclusive
    assert side_by_side(image, result, gap=4).size == (3 * 40 + 8, 30)
    with pytest.raises(ValueError, match="does not fit"):
        overlay(Image.new("RGB", (10, 10)), result)


def test_detector_needs_a_model_for_u2netp():
    with pytest.raises(ValueError, match="do not fit"):
        SaliencyDetector(SaliencyConfig(method="u2netp"))
