"""Standard salient-object-detection (SOD) metrics, in numpy.

The numbers match PySODMetrics (``py_sod_metrics``), the reference Python port of
the MATLAB SOD evaluation toolbox, so values are comparable with published tables:

- MAE: Perazzi et al., "Saliency filters: Contrast based filtering for salient
  region detection", CVPR 2012.
- F-measure (beta^2 = 0.3): Achanta et al., "Frequency-tuned salient region
  detection", CVPR 2009.
- S-measure: Fan et al., "Structure-measure: A new way to evaluate foreground
  maps", ICCV 2017.
- E-measure: Fan et al., "Enhanced-alignment measure for binary foreground map
  evaluation", IJCAI 2018.

Input convention (as PySODMetrics):

- ``pred`` is one 2-D saliency map, either float in [0, 1], used as is, or uint8 in
  0..255, which is divided by 255 and min-max stretched to [0, 1] (MATLAB's
  ``mapminmax(im2double(...))``, PySODMetrics' ``normalize=True``).
- ``gt`` is a binary mask of the same H x W: bool, uint8 0/255 (foreground is
  ``> 128``), integer 0/1, or float in [0, 1] (foreground is ``> 0.5``).

Threshold curves have 256 entries, entry ``t`` scoring the binary map
``floor(255 * pred) >= t`` (ascending thresholds; PySODMetrics stores the same
curve in descending order). Dataset-level max-F / max-E average the curves over
images first and then take the maximum, as :class:`SODMetrics` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "EMeasure",
    "FMeasure",
    "SODMetrics",
    "e_measure",
    "mae",
    "max_f_measure",
    "s_measure",
]

# MATLAB's eps, used by the reference code to avoid divisions by zero.
_EPS = np.spacing(1)
_NUM_THRESHOLDS = 256


@dataclass(frozen=True)
class FMeasure:
    """F-measure of one image (or of a dataset, for the curve averages).

    Attributes:
        max: Maximum of ``curve`` over the 256 thresholds.
        mean: Mean of ``curve`` over the 256 thresholds.
        adaptive: F-measure at the adaptive threshold ``min(2 * mean(pred), 1)``.
        curve: F-measure per threshold, shape (256,), ascending thresholds.
        precision: Precision per threshold, shape (256,).
        recall: Recall per threshold, shape (256,).
    """

    max: float
    mean: float
    adaptive: float
    curve: np.ndarray
    precision: np.ndarray
    recall: np.ndarray


@dataclass(frozen=True)
class EMeasure:
    """E-measure of one image (or of a dataset, for the curve averages).

    Attributes:
        max: Maximum of ``curve`` over the 256 thresholds.
        mean: Mean of ``curve`` over the 256 thresholds.
        adaptive: E-measure at the adaptive threshold ``min(2 * mean(pred), 1)``.
        curve: E-measure per threshold, shape (256,), ascending thresholds.
    """

    max: float
    mean: float
    adaptive: float
    curve: np.ndarray


# --------------------------------------------------------------------------- inputs


def _prepare(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate one (pred, gt) pair and convert it to (float64 in [0, 1], bool)."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.ndim != 2 or gt.ndim != 2:
        raise ValueError(
            f"pred and gt must be 2-D (H, W) maps, got pred {pred.shape} and gt {gt.shape}"
        )
    if pred.shape != gt.shape:
        raise ValueError(f"Shape mismatch: pred {pred.shape} vs gt {gt.shape}")
    if pred.size == 0:
        raise ValueError(f"pred and gt are empty (shape {pred.shape})")
    return _prepare_pred(pred), _prepare_gt(gt)


def _prepare_pred(pred: np.ndarray) -> np.ndarray:
    if pred.dtype == np.uint8:
        # Same operations, in the same order, as PySODMetrics' prepare_data, so the
        # 8-bit quantisation of the threshold curves agrees bit for bit.
        pred = pred / 255
        if pred.max() != pred.min():
            pred = (pred - pred.min()) / (pred.max() - pred.min())
        return pred
    if pred.dtype == bool:
        return pred.astype(np.float64)
    if not np.issubdtype(pred.dtype, np.floating):
        raise ValueError(f"pred must be float in [0, 1] or uint8 in 0..255, got dtype {pred.dtype}")
    pred = pred.astype(np.float64)
    if not np.isfinite(pred).all():
        raise ValueError("pred contains NaN or infinite values")
    if pred.min() < 0 or pred.max() > 1:
        raise ValueError(
            f"float pred must lie in [0, 1], got range [{pred.min():.4g}, {pred.max():.4g}]"
        )
    return pred


def _prepare_gt(gt: np.ndarray) -> np.ndarray:
    if gt.dtype == bool:
        return gt
    if np.issubdtype(gt.dtype, np.integer):
        if gt.min() < 0 or gt.max() > 255:
            raise ValueError(f"integer gt must lie in 0..255, got range [{gt.min()}, {gt.max()}]")
        # A 0/1 mask would be all background under the 0/255 rule below.
        return gt == 1 if gt.max() == 1 else gt > 128
    if np.issubdtype(gt.dtype, np.floating):
        if not np.isfinite(gt).all() or gt.min() < 0 or gt.max() > 1:
            raise ValueError("float gt must be finite and lie in [0, 1]")
        return gt > 0.5
    raise ValueError(f"gt must be bool, integer 0/255 or float in [0, 1], got dtype {gt.dtype}")


# ---------------------------------------------------------------- shared machinery


def _adaptive_threshold(pred: np.ndarray) -> float:
    return min(2 * pred.mean(), 1.0)


def _positives_per_threshold(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Count predicted-foreground pixels inside / outside gt for all 256 thresholds.

    Returns:
        (tp, fp): int arrays of shape (256,); entry t counts pixels with
        ``floor(255 * pred) >= t`` inside (tp) and outside (fp) the gt foreground.
    """
    levels = (pred * 255).astype(np.uint8)
    fg_hist = np.bincount(levels[gt], minlength=_NUM_THRESHOLDS)
    bg_hist = np.bincount(levels[~gt], minlength=_NUM_THRESHOLDS)
    # Reverse cumulative sums: number of pixels at or above each level.
    tp = np.cumsum(fg_hist[::-1])[::-1]
    fp = np.cumsum(bg_hist[::-1])[::-1]
    return tp, fp


# ------------------------------------------------------------------------- metrics


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean absolute error between a saliency map and its binary ground truth.

    Args:
        pred: Saliency map (H, W), float in [0, 1] or uint8 in 0..255.
        gt: Binary mask (H, W), bool or uint8 0/255.

    Returns:
        ``mean(|pred - gt|)``, in [0, 1]; lower is better.

    Raises:
        ValueError: If the shapes differ, the maps are empty or not 2-D, or values
            are out of range.
    """
    pred, gt = _prepare(pred, gt)
    return _mae(pred, gt)


def _mae(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - gt)))


def max_f_measure(pred: np.ndarray, gt: np.ndarray, beta2: float = 0.3) -> FMeasure:
    """F-measure over 256 thresholds, with its maximum, mean and adaptive value.

    Args:
        pred: Saliency map (H, W), float in [0, 1] or uint8 in 0..255.
        gt: Binary mask (H, W), bool or uint8 0/255.
        beta2: Weight ``beta^2`` of precision against recall; 0.3 by convention.

    Returns:
        An :class:`FMeasure`; ``.max`` is the usual max-F of one image.

    Raises:
        ValueError: If the shapes differ, the maps are empty or not 2-D, or values
            are out of range.
    """
    pred, gt = _prepare(pred, gt)
    return _f_measure(pred, gt, beta2)


def _f_measure(pred: np.ndarray, gt: np.ndarray, beta2: float) -> FMeasure:
    tp, fp = _positives_per_threshold(pred, gt)
    positives = tp + fp
    # Where nothing is predicted, tp is 0 too, so any non-zero denominator gives 0.
    positives[positives == 0] = 1
    precision = tp / positives
    recall = tp / max(np.count_nonzero(gt), 1)
    numerator = (1 + beta2) * precision * recall
    denominator = np.where(numerator == 0, 1, beta2 * precision + recall)
    curve = numerator / denominator
    return FMeasure(
        max=float(curve.max()),
        mean=float(curve.mean()),
        adaptive=_adaptive_f(pred, gt, beta2),
        curve=curve,
        precision=precision,
        recall=recall,
    )


def _adaptive_f(pred: np.ndarray, gt: np.ndarray, beta2: float) -> float:
    binary = pred >= _adaptive_threshold(pred)
    intersection = np.count_nonzero(binary & gt)
    if intersection == 0:
        return 0.0
    precision = intersection / np.count_nonzero(binary)
    recall = intersection / np.count_nonzero(gt)
    return float((1 + beta2) * precision * recall / (beta2 * precision + recall))


def s_measure(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """Structure measure: object-aware and region-aware structural similarity.

    An all-background gt scores ``1 - mean(pred)`` and an all-foreground gt scores
    ``mean(pred)``, as in the reference implementation.

    Args:
        pred: Saliency map (H, W), float in [0, 1] or uint8 in 0..255.
        gt: Binary mask (H, W), bool or uint8 0/255.
        alpha: Weight of the object score; the region score gets ``1 - alpha``.

    Returns:
        S-measure in [0, 1]; higher is better.

    Raises:
        ValueError: If the shapes differ, the maps are empty or not 2-D, or values
            are out of range.
    """
    pred, gt = _prepare(pred, gt)
    return _s_measure(pred, gt, alpha)


def _s_measure(pred: np.ndarray, gt: np.ndarray, alpha: float) -> float:
    fg_ratio = np.mean(gt)
    if fg_ratio == 0:
        return float(1 - np.mean(pred))
    if fg_ratio == 1:
        return float(np.mean(pred))
    score = alpha * _s_object(pred, gt) + (1 - alpha) * _s_region(pred, gt)
    return float(max(0.0, score))


def _object_similarity(x: np.ndarray) -> float:
    mean = np.mean(x)
    std = np.std(x, ddof=1) if x.size > 1 else 0.0
    return 2 * mean / (mean**2 + 1 + std + _EPS)


def _s_object(pred: np.ndarray, gt: np.ndarray) -> float:
    fg_ratio = np.mean(gt)
    fg_score = _object_similarity(pred[gt]) * fg_ratio
    bg_score = _object_similarity((1 - pred)[~gt]) * (1 - fg_ratio)
    return fg_score + bg_score


def _s_region(pred: np.ndarray, gt: np.ndarray) -> float:
    h, w = gt.shape
    area = h * w
    # np.round (half to even) rather than MATLAB's round, as PySODMetrics does.
    cy, cx = np.argwhere(gt).mean(axis=0).round()
    # +1 mirrors MATLAB's inclusive 1:X slices of the original code.
    cy, cx = int(cy) + 1, int(cx) + 1
    w_lt = cx * cy / area
    w_rt = cy * (w - cx) / area
    w_lb = (h - cy) * cx / area
    w_rb = 1 - w_lt - w_rt - w_lb
    quadrants = (
        (slice(0, cy), slice(0, cx), w_lt),
        (slice(0, cy), slice(cx, w), w_rt),
        (slice(cy, h), slice(0, cx), w_lb),
        (slice(cy, h), slice(cx, w), w_rb),
    )
    score = 0.0
    for rows, cols, weight in quadrants:
        score += _ssim(pred[rows, cols], gt[rows, cols]) * weight
    return score


def _ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    n = pred.size
    if n == 0:
        # The centroid lies on the last row/column: this quadrant has weight 0
        # (the reference code returns NaN here).
        return 0.0
    x = np.mean(pred)
    y = np.mean(gt)
    # N - 1 + eps as in the reference, which also avoids dividing by 0 when N = 1.
    sigma_x = np.sum((pred - x) ** 2) / (n - 1 + _EPS)
    sigma_y = np.sum((gt - y) ** 2) / (n - 1 + _EPS)
    sigma_xy = np.sum((pred - x) * (gt - y)) / (n - 1 + _EPS)
    numerator = 4 * x * y * sigma_xy
    denominator = (x**2 + y**2) * (sigma_x + sigma_y)
    if numerator != 0:
        return numerator / (denominator + _EPS)
    return 1.0 if denominator == 0 else 0.0


def e_measure(pred: np.ndarray, gt: np.ndarray) -> EMeasure:
    """Enhanced-alignment measure over 256 thresholds, with max, mean and adaptive E.

    Args:
        pred: Saliency map (H, W), float in [0, 1] or uint8 in 0..255.
        gt: Binary mask (H, W), bool or uint8 0/255.

    Returns:
        An :class:`EMeasure`; ``.max`` is the usual max-E of one image.

    Raises:
        ValueError: If the shapes differ, the maps are empty or not 2-D, or values
            are out of range.
    """
    pred, gt = _prepare(pred, gt)
    return _e_measure(pred, gt)


def _e_measure(pred: np.ndarray, gt: np.ndarray) -> EMeasure:
    tp, fp = _positives_per_threshold(pred, gt)
    curve = _enhanced_alignment(tp, fp, np.count_nonzero(gt), gt.size)
    binary = pred >= _adaptive_threshold(pred)
    adaptive = _enhanced_alignment(
        np.count_nonzero(binary & gt), np.count_nonzero(binary & ~gt), np.count_nonzero(gt), gt.size
    )
    return EMeasure(
        max=float(curve.max()), mean=float(curve.mean()), adaptive=float(adaptive), curve=curve
    )


def _enhanced_alignment(tp, fp, num_gt_fg: int, num_pixels: int):
    """E-measure of binary maps from their confusion counts alone.

    The binary pred and gt take only two values each, so the enhanced alignment
    matrix is constant on each of the four (pred, gt) cells and its sum is
    ``sum_cell value(cell) * count(cell)``; no per-pixel matrix is needed.

    Args:
        tp: Predicted-foreground pixels inside gt (scalar or array of thresholds).
        fp: Predicted-foreground pixels outside gt (same shape as ``tp``).
        num_gt_fg: Number of gt foreground pixels.
        num_pixels: H * W.

    Returns:
        E-measure with the shape of ``tp``.
    """
    pred_fg = tp + fp
    pred_bg = num_pixels - pred_fg
    if num_gt_fg == 0:
        enhanced_sum = pred_bg
    elif num_gt_fg == num_pixels:
        enhanced_sum = pred_fg
    else:
        fn = num_gt_fg - tp
        tn = pred_bg - fn
        counts = np.stack([tp, fp, fn, tn])  # (4, ...) cells (pred, gt): 11, 10, 01, 00
        pred_mean = pred_fg / num_pixels
        gt_mean = num_gt_fg / num_pixels
        pred_dev = np.stack([1 - pred_mean, 1 - pred_mean, -pred_mean, -pred_mean])
        gt_dev = np.array([1 - gt_mean, -gt_mean, 1 - gt_mean, -gt_mean])
        gt_dev = gt_dev.reshape((4,) + (1,) * np.ndim(tp))  # broadcast over thresholds
        alignment = 2 * (pred_dev * gt_dev) / (pred_dev**2 + gt_dev**2 + _EPS)
        enhanced = (alignment + 1) ** 2 / 4
        enhanced_sum = (enhanced * counts).sum(axis=0)
    return enhanced_sum / (num_pixels - 1 + _EPS)


# --------------------------------------------------------------------- accumulator


class SODMetrics:
    """Accumulates MAE, F-, S- and E-measure over a dataset, as PySODMetrics does.

    MAE, S-measure and the adaptive F/E are means over images; the F and E
    threshold curves are averaged over images and then maxed (max-F, max-E) or
    averaged over thresholds (mean-F, mean-E). Only running sums are kept, so
    memory does not grow with the dataset.

    Example:
        >>> metrics = SODMetrics()
        >>> for pred, gt in loader:  # doctest: +SKIP
        ...     metrics.update(pred, gt)
        >>> metrics.compute()["max_f"]  # doctest: +SKIP
    """

    def __init__(self, beta2: float = 0.3, alpha: float = 0.5):
        """Create an empty accumulator.

        Args:
            beta2: F-measure ``beta^2`` (precision weight).
            alpha: S-measure object-score weight.
        """
        self.beta2 = beta2
        self.alpha = alpha
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self.num_images = 0
        self._mae_sum = 0.0
        self._s_sum = 0.0
        self._adaptive_f_sum = 0.0
        self._adaptive_e_sum = 0.0
        self._f_curve_sum = np.zeros(_NUM_THRESHOLDS)
        self._e_curve_sum = np.zeros(_NUM_THRESHOLDS)

    def __len__(self) -> int:
        return self.num_images

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image, or a batch of images, to the running statistics.

        Args:
            pred: Saliency map (H, W) or batch (B, H, W), float in [0, 1] or uint8.
            gt: Binary mask(s) of the same shape, bool or uint8 0/255.

        Raises:
            ValueError: If the shapes differ, a map is empty, or values are out of
                range.
        """
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.ndim == 3 and gt.ndim == 3:
            if pred.shape != gt.shape:
                raise ValueError(f"Shape mismatch: pred {pred.shape} vs gt {gt.shape}")
            for pred_i, gt_i in zip(pred, gt, strict=True):
                self._update_one(pred_i, gt_i)
        else:
            self._update_one(pred, gt)

    def _update_one(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred, gt = _prepare(pred, gt)
        f = _f_measure(pred, gt, self.beta2)
        e = _e_measure(pred, gt)
        self._mae_sum += _mae(pred, gt)
        self._s_sum += _s_measure(pred, gt, self.alpha)
        self._adaptive_f_sum += f.adaptive
        self._adaptive_e_sum += e.adaptive
        self._f_curve_sum += f.curve
        self._e_curve_sum += e.curve
        self.num_images += 1

    def compute(self) -> dict[str, float]:
        """Dataset-level metrics over every image passed to :meth:`update`.

        Returns:
            Dict with ``mae``, ``max_f``, ``mean_f``, ``adp_f``, ``s_measure``,
            ``max_e``, ``mean_e`` and ``adp_e`` as Python floats.

        Raises:
            RuntimeError: If no image has been added.
        """
        if self.num_images == 0:
            raise RuntimeError("SODMetrics.compute() called before any update()")
        n = self.num_images
        f_curve = self._f_curve_sum / n
        e_curve = self._e_curve_sum / n
        return {
            "mae": self._mae_sum / n,
            "max_f": float(f_curve.max()),
            "mean_f": float(f_curve.mean()),
            "adp_f": self._adaptive_f_sum / n,
            "s_measure": self._s_sum / n,
            "max_e": float(e_curve.max()),
            "mean_e": float(e_curve.mean()),
            "adp_e": self._adaptive_e_sum / n,
        }
