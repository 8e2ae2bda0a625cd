"""SOD metrics against the PySODMetrics reference, plus input validation."""

import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from saliency.metrics import SODMetrics, e_measure, mae, max_f_measure, s_measure

# Both implementations run the same float64 operations; 1e-6 leaves room only for
# summation-order differences: per-image values agree bit for bit, dataset
# means to ~2e-16.
TOL = 1e-6


def _blob_gt(shape, num_blobs, rng):
    """Union of random ellipses, as uint8 0/255."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros(shape, dtype=bool)
    for _ in range(num_blobs):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = 1 + h * rng.uniform(0.1, 0.3), 1 + w * rng.uniform(0.1, 0.3)
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return mask.astype(np.uint8) * 255


def _smooth_pred(gt, rng, sigma=3.0, noise=0.6):
    """A blurred, noisy, partly wrong guess at ``gt``, float64 in [0, 1]."""
    x = gaussian_filter(gt / 255 + noise * rng.standard_normal(gt.shape), sigma)
    return (x - x.min()) / (x.max() - x.min())


def _cases():
    """Seeded (pred float64 in [0, 1], gt uint8 0/255) pairs, incl. degenerate gts."""
    rng = np.random.default_rng(0)
    cases = []
    for shape, blobs in [((32, 48), 1), ((64, 64), 2), ((40, 90), 3), ((7, 5), 1), ((120, 80), 2)]:
        gt = _blob_gt(shape, blobs, rng)
        cases.append((_smooth_pred(gt, rng), gt))
    shape = (48, 40)
    cases.append((_smooth_pred(_blob_gt(shape, 2, rng), rng), np.zeros(shape, np.uint8)))
    cases.append((_smooth_pred(_blob_gt(shape, 2, rng), rng), np.full(shape, 255, np.uint8)))
    gt = _blob_gt((30, 30), 1, rng)
    cases.append((gt / 255.0, gt))  # perfect prediction
    cases.append((np.full((30, 30), 0.5), gt))  # constant prediction
    return cases


CASES = _cases()


def _as_input(pred, gt, kind):
    """(pred, gt) in our input format and in the matching PySODMetrics call."""
    if kind == "uint8":
        pred_u8 = np.round(pred * 255).astype(np.uint8)
        return (pred_u8, gt), (pred_u8, gt), {"normalize": True}
    return (pred, gt > 128), (pred, gt > 128), {"normalize": False}


def _reference(pairs, step_kwargs):
    py_sod_metrics = pytest.importorskip("py_sod_metrics")
    refs = {
        "mae": py_sod_metrics.MAE(),
        "s": py_sod_metrics.Smeasure(),
        "e": py_sod_metrics.Emeasure(),
    }
    with warnings.catch_warnings():  # Fmeasure is deprecated upstream but still the reference
        warnings.simplefilter("ignore")
        refs["f"] = py_sod_metrics.Fmeasure()
    for pred, gt in pairs:
        for ref in refs.values():
            ref.step(pred, gt, **step_kwargs)
    return refs


@pytest.mark.parametrize("kind", ["float", "uint8"])
def test_per_image_matches_pysodmetrics(kind):
    for i, (pred, gt) in enumerate(CASES):
        ours, theirs, step_kwargs = _as_input(pred, gt, kind)
        ref = _reference([theirs], step_kwargs)

        assert mae(*ours) == pytest.approx(ref["mae"].get_results()["mae"], abs=TOL), i
        assert s_measure(*ours) == pytest.approx(ref["s"].get_results()["sm"], abs=TOL), i

        f = max_f_measure(*ours)
        f_ref = ref["f"].get_results()
        f_curve_ref = f_ref["fm"]["curve"][::-1]  # reference curve is in descending thresholds
        np.testing.assert_allclose(f.curve, f_curve_ref, rtol=0, atol=TOL, err_msg=str(i))
        np.testing.assert_allclose(f.precision, f_ref["pr"]["p"][::-1], rtol=0, atol=TOL)
        np.testing.assert_allclose(f.recall, f_ref["pr"]["r"][::-1], rtol=0, atol=TOL)
        assert f.max == pytest.approx(f_curve_ref.max(), abs=TOL), i
        assert f.mean == pytest.approx(f_curve_ref.mean(), abs=TOL), i
        assert f.adaptive == pytest.approx(f_ref["fm"]["adp"], abs=TOL), i

        e = e_measure(*ours)
        e_ref = ref["e"].get_results()["em"]
        np.testing.assert_allclose(e.curve, e_ref["curve"][::-1], rtol=0, atol=TOL, err_msg=str(i))
        assert e.max == pytest.approx(e_ref["curve"].max(), abs=TOL), i
        assert e.mean == pytest.approx(e_ref["curve"].mean(), abs=TOL), i
        assert e.adaptive == pytest.approx(e_ref["adp"], abs=TOL), i


@pytest.mark.parametrize("kind", ["float", "uint8"])
def test_dataset_level_matches_pysodmetrics(kind):
    inputs = [_as_input(pred, gt, kind) for pred, gt in CASES]
    ref = _reference([theirs for _, theirs, _ in inputs], inputs[0][2])
    metrics = SODMetrics()
    for ours, _, _ in inputs:
        metrics.update(*ours)
    got = metrics.compute()

    f_ref = ref["f"].get_results()["fm"]
    e_ref = ref["e"].get_results()["em"]
    expected = {
        "mae": ref["mae"].get_results()["mae"],
        "s_measure": ref["s"].get_results()["sm"],
        "max_f": f_ref["curve"].max(),
        "mean_f": f_ref["curve"].mean(),
        "adp_f": f_ref["adp"],
        "max_e": e_ref["curve"].max(),
        "mean_e": e_ref["curve"].mean(),
        "adp_e": e_ref["adp"],
    }
    assert len(metrics) == len(CASES)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=TOL), key


def test_batched_update_equals_per_image_updates():
    rng = np.random.default_rng(1)
    gts = np.stack([_blob_gt((24, 24), 2, rng) for _ in range(3)])
    preds = np.stack([_smooth_pred(gt, rng) for gt in gts])
    batched, single = SODMetrics(), SODMetrics()
    batched.update(preds, gts)
    for pred, gt in zip(preds, gts, strict=True):
        single.update(pred, gt)
    assert batched.compute() == single.compute()


def test_perfect_prediction_scores():
    gt = np.zeros((20, 30), dtype=bool)
    gt[5:12, 8:20] = True
    pred = gt.astype(np.float64)
    assert mae(pred, gt) == 0
    assert s_measure(pred, gt) == pytest.approx(1.0)
    assert max_f_measure(pred, gt).max == pytest.approx(1.0)
    assert e_measure(pred, gt).max == pytest.approx(1.0, abs=1e-2)  # N-1 denominator
    assert mae(1 - pred, gt) == 1


def test_s_measure_finite_when_centroid_on_last_column():
    # The region split leaves an empty quadrant; the reference returns NaN here.
    gt = np.zeros((16, 16), dtype=bool)
    gt[4:10, -1] = True
    pred = gaussian_filter(gt.astype(float), 1.0)
    assert np.isfinite(s_measure(pred / pred.max(), gt))


@pytest.mark.parametrize(
    ("pred", "gt", "match"),
    [
        (np.zeros((8, 8)), np.zeros((8, 9), bool), "Shape mismatch"),
        (np.zeros((0, 8)), np.zeros((0, 8), bool), "empty"),
        (np.zeros((2, 8, 8)), np.zeros((2, 8, 8), bool), "2-D"),
        (np.full((4, 4), 1.5), np.zeros((4, 4), bool), r"\[0, 1\]"),
        (np.full((4, 4), np.nan), np.zeros((4, 4), bool), "NaN"),
        (np.zeros((4, 4), np.int32), np.zeros((4, 4), bool), "dtype"),
        (np.zeros((4, 4)), np.full((4, 4), 300), "0..255"),
    ],
)
def test_bad_input_raises_value_error(pred, gt, match):
    for fn in (mae, s_measure, max_f_measure, e_measure):
        with pytest.raises(ValueError, match=match):
            fn(pred, gt)


def test_accumulator_rejects_mismatch_and_empty_compute():
    metrics = SODMetrics()
    with pytest.raises(ValueError, match="Shape mismatch"):
        metrics.update(np.zeros((2, 8, 8)), np.zeros((2, 8, 9), bool))
    with pytest.raises(RuntimeError, match="before any update"):
        metrics.compute()
