"""Patch features: saliency box -> kaleido grids -> backbone features, in two modes.

``crop`` (the paper): every patch is cropped, resized to the backbone's input size and
run through the backbone on its own (55 passes per image for the default levels).
``shared``: the box is resized once to ``shared_input_size``, run through the backbone
once, and each patch is pooled from the feature map with RoIAlign. Both return the
same :class:`PatchFeatures`.

Besides the patch features, the pre-training tasks need: the level-1 patch rotated
by 90/180/270 degrees (rotation recognition) and the grey versions of the level-4
patches (grey-to-colour). Each goes through exactly the same pipeline as the patch
it replaces, so the model cannot tell a corrupted patch by how it was computed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import roi_align
from torchvision.transforms.functional import pil_to_tensor, rgb_to_grayscale

from saliency.detector import SaliencyConfig, create_detector
from saliency.u2net import INPUT_SIZE

from ..data.images import original_size
from .backbone import Backbone, BackboneConfig, create_backbone
from .geometry import KALEIDO_GRIDS, integer_boxes, level_slices, patch_boxes, patch_positions

log = logging.getLogger(__name__)

MODES = ("crop", "shared")
ROTATIONS = (90, 180, 270)


@dataclass
class PatchConfig:
    """How patches are cut and embedded.

    Attributes:
        grids: grid sizes of the levels; ``[1, 2, 3, 4, 5]`` is kaleido (55 patches),
            ``[8]`` FashionBERT's fixed grid.
        use_saliency: cut the grids from the saliency box (else from the whole image).
        mode: ``shared`` (one backbone pass + RoIAlign) or ``crop`` (one pass per patch).
        extras: also compute the rotated level-1 and grey level-4 features.
        rotate_grid: grid whose single patch is rotated (rotation recognition).
        grey_grid: grid whose patches get grey versions (grey-to-colour).
        roi_size: RoIAlign output size (k x k bins, then averaged) in shared mode.
        batch_size: views per backbone forward pass (8: onnxruntime and torch both run small
            batches faster per view on CPU than 32; benchmarks/kpg.py).
        backbone: the feature extractor.
        saliency: the foreground detector (unused when ``use_saliency`` is false).
    """

    grids: list[int] = field(default_factory=lambda: list(KALEIDO_GRIDS))
    use_saliency: bool = True
    mode: str = "shared"
    extras: bool = True
    rotate_grid: int = 1
    grey_grid: int = 4
    roi_size: int = 2
    batch_size: int = 8
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"patch mode must be one of {MODES}, got {self.mode!r}")
        if self.extras and not {self.rotate_grid, self.grey_grid} <= set(self.grids):
            raise ValueError(f"extras need grids {self.rotate_grid} and {self.grey_grid} in "
                             f"grids={self.grids}; set extras=false for other layouts")
        if self.backbone.name == "pixels" and self.mode != "crop":
            raise ValueError("the pixels backbone (raw patches, no CNN) needs patches.mode=crop")
        if self.extras and self.rotate_grid != 1:
            raise ValueError("rotation recognition rotates a single patch: rotate_grid must be 1")


@dataclass
class PatchFeatures:
    """The patch inputs of one image.

    Attributes:
        features: (P, D) float32 patch features, level by level, row-major.
        positions: (P, 5) float32 ``[x1, x2, y1, y2, w*h]`` normalised to the image.
        box: (4,) float32 the box the grids were cut from (x0, y0, x1, y1) in pixels of the
            image file (also when it was decoded smaller, see :func:`decode_side`).
        image_size: (2,) int32 (width, height) of the image file.
        saliency_fallback: the saliency mask was empty, the box is the whole image.
        rotated: (3, D) features of the rotate-grid patch rotated by 90/180/270 degrees
            counter-clockwise, or None.
        grey: (g*g, D) features of the grey-grid patches in greyscale, or None.
        whole_image: (C,) pooled backbone feature of the whole image (the linear reference's
            input, :func:`kaleido.baselines.features.image_features`) when the cache was given
            one (``kaleido patches union --whole-image``), else None.
    """

    features: np.ndarray
    positions: np.ndarray
    box: np.ndarray
    image_size: np.ndarray
    saliency_fallback: bool = False
    rotated: np.ndarray | None = None
    grey: np.ndarray | None = None
    whole_image: np.ndarray | None = None


def decode_side(cfg: PatchConfig) -> int:
    """How small a big image may be decoded for this layout (``min_side`` of
    :func:`~kaleido.data.images.decode_image`): twice the largest side a step resizes to,
    the shared-mode box input, a crop-mode patch of the finest grid, the saliency input."""
    bb = cfg.backbone
    need = bb.shared_input_size if cfg.mode == "shared" else bb.input_size * max(cfg.grids)
    if cfg.use_saliency:
        need = max(need, cfg.saliency.input_size or INPUT_SIZE)
    return 2 * need


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return pil_to_tensor(image.convert("RGB")).float().div_(255)  # (3, H, W) in [0, 1]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(3, h, w) -> (3, size, size), antialiased like PIL."""
    return F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0]


class PatchExtractor:
    """Turns images into :class:`PatchFeatures` (build it with :meth:`from_config`)."""

    def __init__(self, cfg: PatchConfig, backbone: Backbone, detector=None):
        if cfg.use_saliency and detector is None:
            raise ValueError("use_saliency=True needs a saliency detector")
        self.cfg = cfg
        self.backbone = backbone
        self.detector = detector
        self.slices = level_slices(cfg.grids)

    @classmethod
    def from_config(cls, cfg: PatchConfig) -> "PatchExtractor":
        """Create the backbone and (when used) the saliency detector, loading their weights."""
        detector = create_detector(cfg.saliency) if cfg.use_saliency else None
        return cls(cfg, create_backbone(cfg.backbone), detector)

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    def boxes(self, images: list[Image.Image]) -> list[tuple[tuple[int, int, int, int], bool]]:
        """The (box, fell_back) the grids are cut from, per image."""
        if not self.cfg.use_saliency:
            return [((0, 0, im.width, im.height), False) for im in images]
        return [(tuple(int(v) for v in r.box), bool(r.fallback))
                for r in self.detector.detect_many(images)]

    @torch.inference_mode()
    def extract(self, images: list[Image.Image], boxes=None) -> list[PatchFeatures]:
        """Patch features of a batch of images (any sizes).

        Args:
            images: RGB images.
            boxes: optional precomputed ``(box, fell_back)`` per image (see :meth:`boxes`);
                computed with the saliency detector (or the whole image) when omitted.
        """
        if not images:
            return []
        boxes = self.boxes(images) if boxes is None else boxes
        if self.cfg.mode == "shared":
            return self._extract_shared(images, boxes)
        return [self._extract_crop(image, box, fell_back)
                for image, (box, fell_back) in zip(images, boxes)]

    # -- shared mode: one pass per (box, rotation, grey) image, RoIAlign per patch ---------
    def _extract_shared(self, images, boxes) -> list[PatchFeatures]:
        cfg, size = self.cfg, self.cfg.backbone.shared_input_size
        views, metas = [], []
        for image, (box, fell_back) in zip(images, boxes):
            x0, y0, x1, y1 = box
            crop = _resize(_to_tensor(image)[:, y0:y1, x0:x1], size)  # (3, S, S)
            views.append(crop)
            if cfg.extras:
                views += [torch.rot90(crop, k, dims=(1, 2)) for k in (1, 2, 3)]
                views.append(rgb_to_grayscale(crop, num_output_channels=3))
            cells = patch_boxes(box, cfg.grids)
            metas.append((image, box, fell_back, cells))
        maps = self._forward_maps(torch.stack(views))  # (V, C, h, w)
        per_image = 5 if cfg.extras else 1
        out = []
        for i, (image, box, fell_back, cells) in enumerate(metas):
            x0, y0, x1, y1 = box
            # patch boxes in the S x S coordinates of the resized box
            scale = torch.tensor([size / (x1 - x0), size / (y1 - y0)] * 2)
            local = (torch.from_numpy(cells) - torch.tensor([x0, y0, x0, y0])) * scale
            base = i * per_image
            feats = self._roi_pool(maps[base], local.float())
            rotated = grey = None
            if cfg.extras:
                whole = local[self.slices[cfg.rotate_grid]].float()
                rotated = torch.cat([self._roi_pool(maps[base + k], whole) for k in (1, 2, 3)])
                grey = self._roi_pool(maps[base + 4], local[self.slices[cfg.grey_grid]].float())
            out.append(self._pack(feats, cells, image, box, fell_back, rotated, grey))
        return out

    def _roi_pool(self, fmap: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(C, h, w) map, (K, 4) boxes in input pixels -> (K, C) features."""
        k = self.cfg.roi_size
        pooled = roi_align(fmap[None], [boxes], output_size=(k, k),
                           spatial_scale=1.0 / self.backbone.stride, sampling_ratio=2,
                           aligned=True)  # (K, C, k, k)
        return pooled.mean(dim=(2, 3))

    def _batched(self, forward, x: torch.Tensor) -> torch.Tensor:
        """Run ``forward`` on the backbone's device in batches; results come back as CPU float32."""
        device = self.backbone.device
        chunks = [forward(self.backbone.normalize(x[i:i + self.cfg.batch_size].to(device))).float().cpu()
                  for i in range(0, len(x), self.cfg.batch_size)]
        return torch.cat(chunks)

    def _forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(V, 3, S, S) in [0, 1] -> (V, C, S/stride, S/stride)."""
        return self._batched(self.backbone.forward_map, x)

    def _forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(V, 3, s, s) in [0, 1] -> (V, C)."""
        return self._batched(self.backbone.forward_pooled, x)

    # -- crop mode: every patch through the backbone on its own -----------------------------
    def _extract_crop(self, image, box, fell_back) -> PatchFeatures:
        cfg, size = self.cfg, self.cfg.backbone.input_size
        pixels = _to_tensor(image)
        cells = patch_boxes(box, cfg.grids)
        crops = [_resize(pixels[:, y0:y1, x0:x1], size) for x0, y0, x1, y1 in integer_boxes(cells)]
        views = list(crops)
        if cfg.extras:
            whole = crops[self.slices[cfg.rotate_grid].start]
            views += [torch.rot90(whole, k, dims=(1, 2)) for k in (1, 2, 3)]
            views += [rgb_to_grayscale(c, num_output_channels=3)
                      for c in crops[self.slices[cfg.grey_grid]]]
        feats = self._forward_pooled(torch.stack(views))  # (V, C)
        n = len(crops)
        rotated = feats[n:n + 3] if cfg.extras else None
        grey = feats[n + 3:] if cfg.extras else None
        return self._pack(feats[:n], cells, image, box, fell_back, rotated, grey)

    @staticmethod
    def _pack(feats, cells, image, box, fell_back, rotated, grey) -> PatchFeatures:
        as_np = lambda t: None if t is None else t.cpu().numpy().astype(np.float32)  # noqa: E731
        # an image decoded smaller keeps its file's size and box: positions are normalised anyway
        (w0, h0), (w, h) = original_size(image), image.size
        scale = np.asarray([w0 / w, h0 / h] * 2, dtype=np.float32)
        return PatchFeatures(
            features=as_np(feats), positions=patch_positions(cells, image.size),
            box=np.asarray(box, dtype=np.float32) * scale, image_size=np.asarray((w0, h0), dtype=np.int32),
            saliency_fallback=fell_back, rotated=as_np(rotated), grey=as_np(grey))
