"""`kaleido pretrain` on the tiny preset: outputs, exact resume after a kill, multi-stage start."""

import csv

import pytest
import torch

from kaleido.cli import main
from kaleido.config import load_config
from kaleido.model import create_model
from kaleido.pretrain import PretrainConfig, pretrain
from kaleido.pretrain.task import PretrainTask

TINY = ["train.max_steps=8", "train.save_every=3", "train.batch_size=4", "train.log_every=1",
        "data.split=train"]


class SimulatedKill(RuntimeError):
    pass


def _cfg(*overrides) -> PretrainConfig:
    return load_config(PretrainConfig, "tiny", [*TINY, *overrides], component="pretrain")


def _losses(run):
    with open(run / "log.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("loss")]
    return [(r["step"], r["loss"], r["amlm_loss"], r["b2cm_loss"]) for r in rows]


def _weights(run):
    from safetensors.torch import load_file
    return load_file(str(run / "final" / "model.safetensors"))


def test_cli_run_writes_a_loadable_model(pretrain_data, tmp_path, capsys):
    d = pretrain_data
    out = tmp_path / "run"
    assert main(["pretrain", "--config", "tiny", "--catalog", "data/sample", "--cache",
                 str(tmp_path / "no-cache"), "--out", str(out)]) == 2  # an error message, no traceback
    args = ["pretrain", "--config", "tiny", "--catalog", str(d["catalog_dir"]),
            "--image-root", str(d["image_root"]), "--cache", str(d["cache"]),
            "--split-file", str(d["split"]), "--out", str(out), *TINY]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "8 steps" in printed
    for name in ("config.yaml", "catalog.yaml", "log.csv", "loss_curves.png", "final/model.safetensors",
                 "final/processor_config.json", "final/pretrain_heads.safetensors"):
        assert (out / name).is_file(), name
    model = create_model("tiny", pretrained=out / "final")
    assert model.config.feature_dim == 32  # taken from the cache
    rows = _losses(out)
    assert [r[0] for r in rows] == [str(s) for s in range(1, 9)]


def test_resume_after_a_kill_continues_to_the_same_numbers(pretrain_data, tmp_path, monkeypatch):
    d = pretrain_data
    cfg = _cfg()
    pretrain(cfg, d["catalog"], d["cache"], tmp_path / "whole", split_file=d["split"])

    calls = {"n": 0}
    forward = PretrainTask.forward

    def dying_forward(self, batch):
        calls["n"] += 1
        if calls["n"] == 8:  # during step 8, after the checkpoint of step 6
            raise SimulatedKill
        return forward(self, batch)

    monkeypatch.setattr(PretrainTask, "forward", dying_forward)
    with pytest.raises(SimulatedKill):
        pretrain(cfg, d["catalog"], d["cache"], tmp_path / "killed", split_file=d["split"])
    monkeypatch.setattr(PretrainTask, "forward", forward)
    pretrain(cfg, d["catalog"], d["cache"], tmp_path / "killed", split_file=d["split"])

    assert _losses(tmp_path / "killed") == _losses(tmp_path / "whole")
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_second_stage_starts_from_the_first(pretrain_data, tmp_path):
    d = pretrain_data
    pretrain(_cfg(), d["catalog"], d["cache"], tmp_path / "stage1", split_file=d["split"])
    stage2 = _cfg(f"init={tmp_path / 'stage1' / 'final'}", "train.max_steps=1", "train.lr=0.0",
                  "train.warmup_steps=0")
    pretrain(stage2, d["catalog"], d["cache"], tmp_path / "stage2", split_file=d["split"])
    a, b = _weights(tmp_path / "stage1"), _weights(tmp_path / "stage2")
    assert all(torch.equal(a[k], b[k]) for k in a)  # lr 0: stage 2 holds stage 1's weights


def test_random_masking_needs_no_alignments_and_agm_says_what_is_missing(pretrain_data, tmp_path):
    d = pretrain_data
    with pytest.raises(FileNotFoundError, match="kaleido align build"):
        pretrain(_cfg(f"data.alignments={tmp_path / 'none.jsonl'}"), d["catalog"], d["cache"],
                 tmp_path / "agm", split_file=d["split"])
    result = pretrain(_cfg("masking.strategy=random", "train.max_steps=2"), d["catalog"], d["cache"],
                      tmp_path / "random", split_file=d["split"])
    assert result.steps == 2


@pytest.mark.parametrize("tasks", [["tasks.rr=0", "tasks.jps=0", "tasks.cp=0", "tasks.g2cm=0",
                                    "masking.strategy=random"]], ids=["experiment-row"])
def test_two_processes_train_the_same_numbers_whatever_their_hash_seed(pretrain_data, tmp_path, tasks):
    """A run is a function of its config and data, not of the process: string hashing differs
    between Python processes (PYTHONHASHSEED), so anything ordered by a set or hash of strings
    would change the numbers from one run of the same command to the next."""
    import os
    import subprocess
    import sys

    d = pretrain_data
    logs = []
    for seed in ("1", "2"):
        out = tmp_path / f"run{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "kaleido.cli", "pretrain", "--config", "tiny",
                        "--catalog", str(d["catalog_dir"]), "--image-root", str(d["image_root"]),
                        "--cache", str(d["cache"]), "--split-file", str(d["split"]), "--out", str(out),
                        *TINY, "train.max_steps=4", *tasks], check=True, env=env, capture_output=True)
        logs.append(_losses(out))
    assert logs[0] and logs[0] == logs[1]
    a, b = _weights(tmp_path / "run1"), _weights(tmp_path / "run2")
    assert all(torch.equal(a[k], b[k]) for k in a)
