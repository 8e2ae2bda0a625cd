"""Product foreground detection: a saliency mask and the box that "locks" the product.

DESIGN.md stage 1: a salient-object network gives a foreground mask; the kaleido
patches are cut from its bounding box. Three methods share one interface:

- ``u2netp``: U2-Net-p (``saliency.u2net``), the converted pre-trained weights of
  ``saliency.weights.load_u2netp`` or a fine-tuned ``model.safetensors``
  (``saliency.finetune``).
- ``spectral_residual`` / ``fine_grained``: OpenCV's static saliency (opencv-contrib,
  no weights), a weak but dependency-light baseline.

Example:
    >>> detector = create_detector(SaliencyConfig(method="u2netp"))  # doctest: +SKIP
    >>> result = detector.detect(image)  # doctest: +SKIP
    >>> image.crop(result.box)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from saliency.u2net import INPUT_SIZE, U2NETP, U2NetpConfig, preprocess

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "SaliencyConfig",
    "SaliencyDetector",
    "SaliencyResult",
    "FileDetection",
    "create_detector",
    "detect_files",
    "load_finetuned_u2netp",
    "mask_to_box",
]

METHODS = ("u2netp", "spectral_residual", "fine_grained")
_CLASSICAL = {
    "spectral_residual": "StaticSaliencySpectralResidual_create",
    "fine_grained": "StaticSaliencyFineGrained_create",
}
#: A classical map whose value range is narrower than this is flat: nothing stands out
#: (OpenCV's spectral residual returns ~0.999 everywhere on a blank image, and
#: min-max stretching would turn that noise into an "object").
_FLAT_RANGE = 1 / 32

Box = tuple[int, int, int, int]


@dataclass
class SaliencyConfig:
    """How foreground masks and boxes are computed.

    Attributes:
        method: ``"u2netp"`` (the network), or OpenCV static saliency
            ``"spectral_residual"`` (Hou & Zhang, CVPR 2007) or ``"fine_grained"``
            (Montabone & Soto, 2010), which need opencv-contrib and no weights.
        weights: U2-Net-p only: a fine-tuned ``model.safetensors`` (or the folder
            holding one, as written by ``saliency.finetune``); None uses the
            converted pre-trained weights of ``saliency.weights.load_u2netp``.
        threshold: U2-Net-p only: a pixel is foreground for the box when its
            probability (the raw sigmoid of the fused map, not min-max stretched)
            exceeds this. The classical maps are not probabilities, so they are
            thresholded per image with Otsu's method instead and this is ignored.
        margin: the box grows by this fraction of its own width (height) on the
            left and right (top and bottom), then is clipped to the image.
        min_area: when fewer than this fraction of the image's pixels are
            foreground, the mask is degenerate and the box is the whole image.
        batch_size: images per U2-Net-p forward pass in ``detect_many``.
        device: torch device of the network (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        input_size: U2-Net-p input side in pixels; None uses the weights' own (320).
            Smaller is faster on CPU (cost ~ side^2); see benchmarks/saliency_size.py.
        runtime: U2-Net-p only: ``auto`` (onnxruntime on the CPU when installed, else torch),
            ``torch`` or ``onnxruntime`` (:mod:`kaleido.onnx_runtime`: the same maps to float32
            rounding, about 1.4x faster on 2 cores).
    """

    method: str = "u2netp"
    weights: str | None = None
    threshold: float = 0.5
    margin: float = 0.05
    min_area: float = 0.01
    batch_size: int = 8
    device: str = "cpu"
    input_size: int | None = None
    runtime: str = "auto"


@dataclass
class SaliencyResult:
    """Foreground of one image.

    Attributes:
        mask: (H, W) float32 saliency in [0, 1] at the image's size (U2-Net-p:
            foreground probability; classical methods: the min-max stretched map).
        box: (x0, y0, x1, y1) pixel coordinates, x1 / y1 exclusive, so
            ``image.crop(box)`` cuts the product; always non-empty and inside the image.
        fallback: True when the mask was empty or degenerate and ``box`` is the
            whole image.
    """

    mask: np.ndarray
    box: Box
    fallback: bool


def _check_box_args(mask: np.ndarray, threshold: float, margin: float, min_area: float) -> None:
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D (H, W) array, got shape {mask.shape}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if not 0.0 <= min_area <= 1.0:
        raise ValueError(f"min_area must lie in [0, 1], got {min_area}")


def mask_to_box(
    mask: np.ndarray, threshold: float = 0.5, margin: float = 0.05, min_area: float = 0.01
) -> tuple[Box, bool]:
    """The bounding box of a mask's foreground, with a margin, or the whole image.

    Foreground is ``mask > threshold``; the box spans every foreground pixel (all
    components, so both shoes of a pair stay in), grows by ``round(margin * w)``
    pixels left and right and ``round(margin * h)`` top and bottom (w, h: the
    tight box's size), and is clipped to the image.

    Args:
        mask: (H, W) saliency, float in [0, 1] (or bool); NaN counts as background.
        threshold: foreground cut-off, in [0, 1).
        margin: box growth as a fraction of the tight box's size, >= 0.
        min_area: minimum foreground fraction of the image, in [0, 1].

    Returns:
        ``((x0, y0, x1, y1), fallback)``, x1 / y1 exclusive. ``fallback`` is True,
        and the box ``(0, 0, W, H)``, when the foreground covers less than
        ``min_area`` of the image (or nothing at all).

    Raises:
        ValueError: the mask is not a non-empty 2-D array, or an argument is out of range.
    """
    mask = np.asarray(mask)
    _check_box_args(mask, threshold, margin, min_area)
    h, w = mask.shape
    fg = mask > threshold
    count = int(np.count_nonzero(fg))
    if count == 0 or count < min_area * h * w:
        return (0, 0, w, h), True
    rows = np.flatnonzero(fg.any(axis=1))
    cols = np.flatnonzero(fg.any(axis=0))
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    pad_x, pad_y = round(margin * (x1 - x0)), round(margin * (y1 - y0))
    box = (max(0, x0 - pad_x), max(0, y0 - pad_y), min(w, x1 + pad_x), min(h, y1 + pad_y))
    return box, False


# ------------------------------------------------------------------------ weights


def load_finetuned_u2netp(path: str | Path) -> tuple[U2NETP, int]:
    """Load a fine-tuned U2-Net-p written by ``saliency.finetune``.

    Args:
        path: a ``.safetensors`` file, or a folder holding ``model.safetensors``.

    Returns:
        ``(model in eval mode, input size it was trained at)``; the size comes from
        the file's metadata (320 when absent).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file does not hold U2-Net-p weights.
    """
    from kaleido.checkpoint import read_safetensors

    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"U2-Net-p weights not found: {path}")
    state, meta = read_safetensors(path)
    batch_norm = meta.get("batch_norm", "false").lower() == "true"
    model = U2NETP(U2NetpConfig(batch_norm=batch_norm))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: does not hold U2-Net-p weights ({err})") from err
    return model.eval(), int(meta.get("input_size", INPUT_SIZE))


def _check_config(cfg: SaliencyConfig) -> None:
    if cfg.method not in METHODS:
        raise ValueError(
            f"unknown saliency method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.weights is not None and cfg.method != "u2netp":
        raise ValueError(f"weights={cfg.weights} is only used by method u2netp, not {cfg.method}")
    _check_box_args(np.zeros((1, 1)), cfg.threshold, cfg.margin, cfg.min_area)


def create_detector(cfg: SaliencyConfig | None = None) -> SaliencyDetector:
    """Build a detector, loading the U2-Net-p weights when the method needs them.

    Args:
        cfg: the configuration; ``SaliencyConfig()`` (pre-trained U2-Net-p) if None.

    Returns:
        A ready ``SaliencyDetector``.

    Raises:
        ValueError: unknown method, bad value, unusable weights file, or OpenCV
            without the contrib ``saliency`` module for a classical method.
        FileNotFoundError: ``cfg.weights`` names no file.
    """
    cfg = cfg or SaliencyConfig()
    _check_config(cfg)
    if cfg.method != "u2netp":
        _opencv_saliency(cfg.method)  # fail now, not on the first image
        logger.info("saliency: OpenCV static saliency %r (no weights)", cfg.method)
        return SaliencyDetector(cfg)
    if cfg.weights is None:
        from saliency.weights import load_u2netp

        model, size = load_u2netp(), INPUT_SIZE
        logger.info("saliency: U2-Net-p with the pre-trained weights (converted u2netp.onnx)")
    else:
        model, size = load_finetuned_u2netp(cfg.weights)
        logger.info("saliency: U2-Net-p with fine-tuned weights from %s (input %d px)",
                    cfg.weights, size)
    # NHWC convolutions are ~1.7x faster on CPU with oneDNN (U2-Net-p at 320 px, 2 cores)
    model = model.to(cfg.device, memory_format=torch.channels_last)
    detector = SaliencyDetector(cfg, model, input_size=cfg.input_size or size)
    return detector.use_runtime(cfg.runtime)


# ----------------------------------------------------------------------- detector


def _opencv_saliency(method: str):
    try:
        import cv2
    except ImportError as err:
        raise ValueError(f"method {method!r} needs opencv-contrib-python-headless") from err
    if not hasattr(cv2, "saliency"):
        raise ValueError(
            f"method {method!r} needs OpenCV's contrib 'saliency' module; install "
            "opencv-contrib-python-headless instead of opencv-python(-headless)"
        )
    return getattr(cv2.saliency, _CLASSICAL[method])()


def _resize_map(pred: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float map to ``size`` = (W, H) with Lanczos, as ``predict_mask`` does."""
    resized = Image.fromarray(pred.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)  # (H, W)


class SaliencyDetector:
    """Foreground masks and product boxes; build it with :func:`create_detector`.

    Attributes:
        cfg: the configuration.
        model: the U2-Net-p (None for the classical methods).
        input_size: square side images are resized to for U2-Net-p.
        detected: number of images processed so far.
        fallbacks: how many of them got the whole image as box.
    """

    def __init__(self, cfg: SaliencyConfig, model: U2NETP | None = None,
                 input_size: int = INPUT_SIZE):
        if (model is None) != (cfg.method != "u2netp"):
            raise ValueError(f"method {cfg.method!r} and model {type(model).__name__} do not fit")
        self.cfg = cfg
        self.model = model
        self.input_size = input_size
        self.detected = 0
        self.fallbacks = 0
        self.runtime, self._runner = "torch", None

    def use_runtime(self, runtime: str) -> "SaliencyDetector":
        """Run U2-Net-p with ``runtime`` (``auto``, ``torch``, ``onnxruntime``) from now on."""
        from kaleido.onnx_runtime import OnnxRunner, resolve_runtime

        if self.model is None:
            return self
        self.runtime = resolve_runtime(runtime, self.cfg.device, "saliency u2netp")
        self._runner = (OnnxRunner(self.model, lambda m, x: m(x).fused, name="saliency u2netp")
                        if self.runtime == "onnxruntime" else None)
        return self

    def detect(self, image: Image.Image) -> SaliencyResult:
        """Mask and box of one image (see :meth:`detect_many`)."""
        return self.detect_many([image])[0]

    def detect_many(self, images: list[Image.Image]) -> list[SaliencyResult]:
        """Masks and boxes of several images, ``cfg.batch_size`` at a time through U2-Net-p.

        Args:
            images: PIL images of any size and mode (converted to RGB).

        Returns:
            One ``SaliencyResult`` per image, in order; ``detected`` and
            ``fallbacks`` are updated.
        """
        if self.model is None:
            maps = [self._classical_map(im) for im in images]
        else:
            maps = []
            for start in range(0, len(images), self.cfg.batch_size):
                maps += self._u2netp_maps(images[start:start + self.cfg.batch_size])
        results = [self._result(mask, threshold) for mask, threshold in maps]
        self.detected += len(results)
        self.fallbacks += sum(r.fallback for r in results)
        return results

    def _result(self, mask: np.ndarray, threshold: float) -> SaliencyResult:
        box, fallback = mask_to_box(mask, threshold, self.cfg.margin, self.cfg.min_area)
        return SaliencyResult(mask=mask, box=box, fallback=fallback)

    def _u2netp_maps(self, images: list[Image.Image]) -> list[tuple[np.ndarray, float]]:
        self.model.eval()
        x = torch.cat([preprocess(im, self.input_size) for im in images])  # (B, 3, S, S)
        with torch.inference_mode():
            if self._runner is not None:
                fused = self._runner(x)[:, 0]  # (B, S, S)
            else:
                x = x.to(self.cfg.device).contiguous(memory_format=torch.channels_last)
                fused = self.model(x).fused[:, 0]
        fused = fused.float().cpu().numpy()
        return [(_resize_map(pred, im.size), self.cfg.threshold) for pred, im in zip(fused, images)]

    def _classical_map(self, image: Image.Image) -> tuple[np.ndarray, float]:
        """OpenCV static saliency, min-max stretched, with its Otsu threshold."""
        import cv2

        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        ok, sal = _opencv_saliency(self.cfg.method).computeSaliency(bgr)
        sal = np.asarray(sal, dtype=np.float32) if ok else np.zeros(bgr.shape[:2], np.float32)
        if sal.max() > 1.0:  # some OpenCV builds return 0..255
            sal = sal / 255.0
        lo, hi = float(sal.min()), float(sal.max())
        if hi - lo < _FLAT_RANGE:
            return np.zeros_like(sal), 0.5
        levels = np.round((sal - lo) / (hi - lo) * 255).astype(np.uint8)  # (H, W)
        otsu, _ = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        # levels > otsu  <=>  levels / 255 > (otsu + 0.5) / 255, free of float rounding.
        return levels.astype(np.float32) / 255.0, min((otsu + 0.5) / 255.0, 254.5 / 255.0)


@dataclass
class FileDetection:
    """The outcome for one image file of :func:`detect_files`.

    Attributes:
        path: the file.
        image: the decoded RGB image; None when it could not be read. A big image is
            decoded smaller (its file's size in ``image.info["original_size"]``, see
            ``kaleido.data.images.original_size``); the result is in its pixels.
        result: its saliency result; None when it could not be read.
        error: why the file could not be read; None on success.
    """

    path: Path
    image: Image.Image | None = None
    result: SaliencyResult | None = None
    error: str | None = None


def detect_files(
    detector: SaliencyDetector, paths: Iterable[str | Path], *, min_side: int | None = None
) -> Iterator[FileDetection]:
    """Decode and detect image files, ``detector.cfg.batch_size`` at a time.

    Unreadable files (missing, not an image, truncated, decompression bombs) are
    logged and yielded with ``error`` set; the others with their result.

    Args:
        detector: the detector.
        paths: image files.
        min_side: decode big images smaller, keeping both sides at least this long
            (default: twice the network's input side; images already smaller than that,
            such as ordinary product photos, are decoded as they are).

    Yields:
        One ``FileDetection`` per path, in order.
    """
    from kaleido.data.images import ImageLoadError, decode_image

    paths = [Path(p) for p in paths]
    min_side = 2 * detector.input_size if min_side is None else min_side
    for start in range(0, len(paths), detector.cfg.batch_size):
        chunk = []
        for path in paths[start:start + detector.cfg.batch_size]:
            try:
                chunk.append(FileDetection(path, image=decode_image(path, min_side=min_side)))
            except ImageLoadError as err:
                logger.warning("skipping %s", err)
                chunk.append(FileDetection(path, error=str(err)))
        good = [item for item in chunk if item.error is None]
        for item, result in zip(good, detector.detect_many([item.image for item in good])):
            item.result = result
        yield from chunk
