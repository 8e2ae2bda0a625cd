"""Released models: where they live (``models/<name>/`` at the repository root), how a run's
parts are assembled into one (:mod:`kaleido.release.assemble`) and its model card written
(:mod:`kaleido.release.card`), and the check that a feature cache fits a release."""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


def release_candidates(name_or_path: str | Path) -> list[Path]:
    """The folders a model argument may mean: the path itself, then ``models/<name>``."""
    return [Path(name_or_path), MODELS_DIR / str(name_or_path)]


def feature_settings(config: dict) -> dict:
    """A patch config dict (``patches.json``, a cache's ``meta.json`` config) without the keys
    that do not change the patch features (runtime, batch size, device, the pre-training extras)."""
    from kaleido.patches.cache import RUN_ONLY_KEYS, comparable_config

    return comparable_config(config, RUN_ONLY_KEYS | {"extras"})


def check_cache_settings(release: str | Path, cache) -> None:
    """Refuse a feature cache whose patch settings differ from the release's ``patches.json``.

    Raises:
        ValueError: naming each setting that differs (and how to make a fitting cache).
    """
    import json

    want = feature_settings(json.loads((Path(release) / "patches.json").read_text()))
    have = feature_settings(cache.meta.get("config") or {})
    diff = sorted(_differences(want, have))
    if diff:
        shown = "; ".join(f"{k}: {a!r} in the release, {b!r} in the cache" for k, a, b in diff[:6])
        raise ValueError(f"feature cache {cache.root} was made with other patch settings than {release} "
                         f"expects ({shown}); extract the catalog again with the settings of "
                         f"{Path(release) / 'patches.json'} (its model card gives the command)")
    check_whole_image_weights(release, cache)


def check_whole_image_weights(release: str | Path, cache) -> None:
    """Refuse a cache whose whole-image features were made by other backbone weights than the
    release's (its ``backbone/``, or the ImageNet ones when it ships none): its dual encoder
    would read features it was never trained on.

    Raises:
        ValueError: naming both.
    """
    from kaleido.baselines.features import weights_id, feature_config_of
    from kaleido.release.assemble import BACKBONE_WEIGHTS

    folders = cache.meta.get("whole_image", [])
    if not folders:
        return
    tuned = Path(release) / BACKBONE_WEIGHTS
    want = weights_id(str(tuned)) if tuned.is_file() else "default"
    have = weights_id(feature_config_of(cache.root / folders[0]).weights)
    if want != have:
        raise ValueError(f"the whole-image features of {cache.root} were made by the backbone weights {have}, "
                         f"but {release} reads those of {'its ' + BACKBONE_WEIGHTS if tuned.is_file() else 'ImageNet'} "
                         f"({want}); make them with `kaleido baseline tune-backbone` / `image_features` and "
                         f"GlobalFeatureConfig(weights={str(tuned) if tuned.is_file() else 'default'!r})")


def _differences(a: dict, b: dict, prefix: str = ""):
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            yield from _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            yield f"{prefix}{key}", x, y
