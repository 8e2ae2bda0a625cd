"""Dataclass configs, YAML presets and the resolved config written beside every run.

Each component owns one documented dataclass (``CatalogConfig``, ``SplitConfig``, ...).
Named presets are YAML files under ``kaleido/configs/<component>/<name>.yaml`` that
load *into* those dataclasses (typos and wrong types are errors, never silently
ignored keys), then ``key=value`` overrides from the command line are applied.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

PRESET_ROOT = Path(__file__).parent / "configs"

T = TypeVar("T")


class ConfigError(ValueError):
    """A preset or override does not fit the config dataclass."""


def list_presets(component: str) -> list[str]:
    """Names of the YAML presets shipped for ``component`` (e.g. ``"columns"``)."""
    folder = PRESET_ROOT / component
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def preset_path(component: str, name: str | Path) -> Path:
    """Resolve a preset name (or an explicit ``.yaml`` path) to a file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    path = PRESET_ROOT / component / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown {component} preset {name!r}; available: {', '.join(list_presets(component))}"
        )
    return path


def load_config(
    cls: type[T],
    preset: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    component: str | None = None,
) -> T:
    """Build a config dataclass from its defaults, a preset and ``key=value`` overrides.

    Args:
        cls: the config dataclass.
        preset: a preset name under ``component`` or a path to a YAML file.
        overrides: dot-list overrides such as ``["split.seed=3"]``.
        component: the preset folder; required when ``preset`` is a name.

    Returns:
        An instance of ``cls`` with every field type-checked.

    Raises:
        ConfigError: unknown key, wrong type, or missing preset (message names the source).
    """
    source = "defaults"
    try:
        cfg = OmegaConf.structured(cls)
        if preset is not None:
            path = preset_path(component or "", preset)
            source = str(path)
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        if overrides:
            source = f"overrides {list(overrides)}"
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{cls.__name__} from {source}: {err}") from err


def config_to_dict(cfg) -> dict:
    """A plain dict of a config dataclass (nested dataclasses included)."""
    return dataclasses.asdict(cfg)


def save_config(cfg, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config as YAML beside a run's outputs and return the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return path
