import pytest
import yaml

from kaleido.config import ConfigError, list_presets, load_config, save_config
from kaleido.data import DataConfig
from kaleido.data.tables import column_preset


def test_presets_load_into_dataclasses_with_overrides(tmp_path):
    assert {"fashion-products", "kaleido"} <= set(list_presets("columns"))
    assert column_preset("fashion-products").subcategory == "articleType"
    cfg = load_config(DataConfig, "default", ["split.seed=7", "catalog.path=x"], component="data")
    assert isinstance(cfg, DataConfig) and cfg.split.seed == 7 and cfg.catalog.path == "x"
    path = save_config(cfg, tmp_path / "run")
    assert yaml.safe_load(path.read_text())["split"]["seed"] == 7
    assert load_config(DataConfig, path).split.seed == 7  # a saved config is itself a preset


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="seeed"):
        load_config(DataConfig, overrides=["split.seeed=1"])
    with pytest.raises(ConfigError, match="split.seed"):
        load_config(DataConfig, overrides=["split.seed=abc"])
    with pytest.raises(ConfigError, match="unknown data preset 'nope'; available: default"):
        load_config(DataConfig, "nope", component="data")
