"""`kaleido ablate` on the tiny preset: every row runs, the summary has a line per row, reruns resume."""

import json

import pytest

from kaleido.ablation import TASK_ROWS, AblationRow, row_overrides
from kaleido.cli import main


def test_task_rows_switch_the_right_heads():
    from kaleido.config import load_config
    from kaleido.pretrain import PretrainConfig

    on = {}
    for name in TASK_ROWS:
        cfg = load_config(PretrainConfig, "default", row_overrides(AblationRow(tasks=name)), component="pretrain")
        on[name] = set(cfg.tasks.weights())
    base = {"amlm", "itm", "itc"}  # the default preset's matching: ITC stays on in every row
    assert on["B"] == base
    assert on["B+I~III"] == base | {"rr", "jps", "cp"}
    assert on["B+V"] == base | {"b2cm"}
    assert len(on["B+I~V"]) == 8
    with pytest.raises(ValueError, match="unknown tasks"):
        row_overrides(AblationRow(name="x", tasks="B+X"))


def test_tiny_ablation_runs_every_row_and_resumes(pretrain_data, tmp_path, capsys):
    d = pretrain_data
    args = ["ablate", "--config", "tiny", "--catalog", str(d["catalog_dir"]), "--image-root",
            str(d["image_root"]), "--cache", f"kaleido-saliency={d['cache']}", "--split-file", str(d["split"]),
            "--split", "test", "--out", str(tmp_path / "abl"), "evaluate=[kb101.queries=2,kb101.negatives=2,"
            "kb101.draws=1,full_catalog=0]"]
    kpg = ["ablate", "--config", "kpg-masking", *args[3:11], "--out", str(tmp_path / "kpg")]
    assert main(kpg) == 2  # its rows need the kaleido and fixed-grid caches: a clear error, nothing run
    assert "fixed-grid" in capsys.readouterr().err
    assert main(args) == 0
    summary = (tmp_path / "abl" / "summary.md").read_text()
    assert "masking: random" in summary and "tasks: B+V" in summary
    row = json.loads((tmp_path / "abl" / "masking-random" / "eval.json").read_text())
    assert row["retrieval"]["draws"] == 1
    capsys.readouterr()
    assert main(args) == 0  # a rerun finds every row evaluated
    assert (tmp_path / "abl" / "summary.md").read_text() == summary
