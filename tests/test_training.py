"""The generic training loop: schedules, the resumable sampler, exact resume, accumulation, DDP."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_toy import SimulatedKill, ToyData, ToyTask

from kaleido.config import ConfigError, load_config
from kaleido.training import (ResumableSampler, TrainConfig, Trainer, build_scheduler, lr_factor,
                              plot_loss_curves)

REPO = Path(__file__).resolve().parents[1]
TIMING = ("samples_per_s", "wall_s")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny MLP: a 2nd thread on a busy 2-core box only costs
    yield
    torch.set_num_threads(before)


def _cfg(**kw) -> TrainConfig:
    base = dict(batch_size=4, lr=1e-2, log_every=1, device="cpu", tensorboard=False)
    return TrainConfig(**{**base, **kw})


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


# ------------------------------------------------------------------------ schedule


def test_warmup_is_linear_from_zero_to_peak():
    assert [lr_factor(s, 100, 10) for s in (0, 5, 10)] == [0.0, 0.5, 1.0]
    assert lr_factor(3, 100, 10, "cosine") == pytest.approx(0.3)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_decay_reaches_zero_at_total(kind):
    assert lr_factor(10, 110, 10, kind) == 1.0
    assert lr_factor(110, 110, 10, kind) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(500, 110, 10, kind) == pytest.approx(0.0, abs=1e-12)
    values = [lr_factor(s, 110, 10, kind) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_cosine_midpoint_linear_midpoint_constant():
    assert lr_factor(60, 110, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(60, 110, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(25, 110, 10, "cosine") > lr_factor(25, 110, 10, "linear")
    assert all(lr_factor(s, 110, 10, "constant") == 1.0 for s in (10, 60, 110, 1000))
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(0, 10, 0, "step")


def test_build_scheduler_follows_lr_factor():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=2.0)
    sched = build_scheduler(opt, total_steps=20, warmup_steps=4, kind="cosine")
    seen = []
    for _ in range(21):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.0 * lr_factor(s, 20, 4, "cosine") for s in range(21)])


# ------------------------------------------------------------------------- sampler


def test_ranks_partition_an_epoch():
    shares = [list(ResumableSampler(24, 3, seed=5, rank=r, world_size=2)) for r in range(2)]
    assert [len(s) for s in shares] == [12, 12]
    assert sorted(shares[0] + shares[1]) == list(range(24))


def test_uneven_sizes_pad_then_drop_the_short_batch():
    # 23 samples, 2 ranks: padded to 24 (12 each), 12 // 5 = 2 whole batches per rank
    shares = [ResumableSampler(23, 5, rank=r, world_size=2) for r in range(2)]
    assert [s.batches_per_epoch for s in shares] == [2, 2]
    assert [len(list(s)) for s in shares] == [10, 10]
    assert not set(shares[0]) & set(shares[1])


def test_epochs_differ_same_seed_same_order():
    a, b = ResumableSampler(50, 5, seed=1), ResumableSampler(50, 5, seed=1)
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)
    assert list(ResumableSampler(50, 5, seed=2)) != first


def test_skipping_batches_gives_the_tail():
    sampler = ResumableSampler(37, 4, seed=3, rank=1, world_size=2)
    sampler.set_epoch(2)
    whole = list(sampler)
    assert len(whole) == 16 and len(sampler) == 16  # 19 per rank -> 4 batches of 4
    sampler.set_epoch(2, skip_batches=3)
    assert list(sampler) == whole[12:] and len(sampler) == 4
    assert sampler.batch_sizes() == [4]
    with pytest.raises(ValueError, match="skip_batches"):
        sampler.set_epoch(2, skip_batches=5)


def test_eval_split_covers_everything_once():
    shares = [list(ResumableSampler(7, 2, shuffle=False, rank=r, world_size=3,
                                    drop_last=False, pad=False)) for r in range(3)]
    assert sorted(sum(shares, [])) == list(range(7))
    assert ResumableSampler(7, 2, drop_last=False).batch_sizes() == [2, 2, 2, 1]


# -------------------------------------------------------------------------- config


def test_config_checks_and_yaml_round_trip(tmp_path):
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="grad_acum"):
        load_config(TrainConfig, overrides=["grad_acum=2"])
    cfg = load_config(TrainConfig, overrides=["betas=[0.9,0.95]", "schedule=cosine"])
    assert cfg.betas == (0.9, 0.95) and cfg.schedule == "cosine"


# ---------------------------------------------------------------------------- loop


def test_toy_task_learns_and_writes_its_run_folder(tmp_path):
    task = ToyTask()
    val = ToyData(n=10, seed=1)
    cfg = _cfg(epochs=4, batch_size=8, lr=2e-2, warmup_steps=4, schedule="cosine",
               log_every=2, tensorboard=True)
    result = Trainer(task, ToyData(n=64), cfg, tmp_path, val_data=val).fit()
    assert (result.steps, result.epochs) == (32, 4.0)
    rows = _rows(tmp_path / "log.csv")
    train = [r for r in rows if r["loss"]]
    assert [int(r["step"]) for r in train] == list(range(2, 33, 2))
    assert float(train[-1]["loss"]) < 0.3 * float(train[0]["loss"])
    assert {"lr", "mse_loss", "mae", "val_loss", "val_mae"} <= set(rows[0])
    val_rows = [r for r in rows if r["val_loss"]]
    assert [int(r["step"]) for r in val_rows] == [8, 16, 24, 32]  # every epoch end
    assert float(val_rows[-1]["val_loss"]) < float(val_rows[0]["val_loss"])
    assert result.last["loss"] == pytest.approx(float(train[-1]["loss"]))
    assert math.isfinite(result.last["val_mse_loss"])
    assert float(train[-1]["lr"]) < float(train[3]["lr"])  # cosine decay
    for name in ("train_config.yaml", "environment.json", "loss_curves.png", "checkpoints/last/task.safetensors",
                 "checkpoints/last/trainer_state.pt", "final/model.safetensors"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert not (tmp_path / "checkpoints" / "last.tmp").exists()
    assert task.saved_to == tmp_path / "final"
    assert load_config(TrainConfig, tmp_path / "train_config.yaml") == cfg


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path):
    # 40 samples / batch 4 = 10 micro-batches = 5 steps per epoch; 3 epochs, val each epoch
    cfg = _cfg(epochs=3, grad_accum=2, warmup_steps=3, schedule="cosine", save_every=4,
               log_every=3)  # the checkpoint at 4 holds a half-filled log window
    val = ToyData(n=6, seed=1)
    task_a = ToyTask()
    Trainer(task_a, ToyData(n=40), cfg, tmp_path / "a", val_data=val).fit()

    task_b = ToyTask()
    task_b.crash_at = 19  # in step 10; checkpoints at 4, 5 (epoch end), 8 (mid-epoch 2)
    with pytest.raises(SimulatedKill):
        Trainer(task_b, ToyData(n=40), cfg, tmp_path / "b", val_data=val).fit()
    assert max(int(r["step"]) for r in _rows(tmp_path / "b" / "log.csv")) == 9  # dropped later
    resumed = ToyTask(seed=123)  # other init: every weight must come from the checkpoint
    result = Trainer(resumed, ToyData(n=40), cfg, tmp_path / "b", val_data=val).fit()

    assert result.steps == 15
    a, b = task_a.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(tmp_path / "a" / "log.csv") == _rows(tmp_path / "b" / "log.csv")
    # a finished run resumed again does nothing more, also from a half-swapped checkpoint
    (tmp_path / "b" / "checkpoints" / "last").rename(tmp_path / "b" / "checkpoints" / "last.old")
    again = Trainer(ToyTask(seed=7), ToyData(n=40), cfg, tmp_path / "b", val_data=val).fit()
    assert again.steps == 15 and again.last == result.last


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    grads = []  # AdamW hides a gradient scale: compare the gradients it is given too
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: grads.append([p.grad.clone() for g in opt.param_groups
                                                for p in g["params"]]))

    def one_step(batch_size, grad_accum, folder):
        task = ToyTask(dropout=0.0)
        cfg = _cfg(max_steps=1, batch_size=batch_size, grad_accum=grad_accum,
                   schedule="constant", max_grad_norm=0.0)
        Trainer(task, ToyData(n=16, noise=0.0), cfg, tmp_path / folder).fit()
        return task.state_dict()

    try:
        start = ToyTask(dropout=0.0).state_dict()
        big, accumulated = one_step(8, 1, "big"), one_step(4, 2, "accum")
    finally:
        handle.remove()
    assert len(grads) == 2
    for g_big, g_acc in zip(*grads):
        torch.testing.assert_close(g_acc, g_big, rtol=1e-5, atol=1e-7)
    assert not torch.equal(big["net.0.weight"], start["net.0.weight"])
    for key in big:
        torch.testing.assert_close(accumulated[key], big[key], rtol=1e-5, atol=1e-6)


def test_no_weight_decay_on_one_dim_params(tmp_path):
    from kaleido.training import param_groups

    decay, no_decay = param_groups(ToyTask(), 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and len(decay["params"]) == 2
    assert all(p.ndim == 1 for p in no_decay["params"]) and len(no_decay["params"]) == 4


def test_bf16_autocast_and_max_steps_over_epochs(tmp_path):
    result = Trainer(ToyTask(), ToyData(n=16), _cfg(max_steps=6, precision="bf16"),
                     tmp_path).fit()
    assert (result.steps, result.epochs) == (6, 1.5)  # max_steps wins over epochs=1
    assert math.isfinite(result.last["loss"])


def test_clear_errors_for_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"3 samples: fewer than one batch of batch_size=4"):
        Trainer(ToyTask(), ToyData(n=3), _cfg(), tmp_path).fit()
    with pytest.raises(ValueError, match="fewer than grad_accum=4"):
        Trainer(ToyTask(), ToyData(n=8), _cfg(grad_accum=4), tmp_path).fit()

    class NoLoss(ToyTask):
        def forward(self, batch):
            return {"mse": super().forward(batch)["loss"]}

    with pytest.raises(TypeError, match="scalar 'loss'"):
        Trainer(NoLoss(), ToyData(n=8), _cfg(), tmp_path).fit()


def test_plot_loss_curves(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,epoch,lr,samples_per_s,wall_s,loss,mlm_loss,val_loss\n"
                    "1,0.5,0.1,1,1,2.0,1.0,\n2,1.0,0.1,1,1,1.5,0.8,\n2,1.0,,,1,,,1.7\n")
    png = plot_loss_curves(path, tmp_path / "curves.png")
    assert png.is_file() and png.stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        plot_loss_curves(tmp_path / "missing.csv", png)


# ---------------------------------------------------------------------- torchrun


def test_torchrun_two_processes_on_gloo(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPO / "tests" / "ddp_toy.py"), str(tmp_path)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    p0 = torch.load(tmp_path / "params_rank0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "params_rank1.pt", weights_only=True)
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    assert not torch.equal(p0["net.0.weight"], ToyTask().state_dict()["net.0.weight"])
    text = (tmp_path / "log.csv").read_text()
    assert text.count("step,") == 1  # one writer
    rows = _rows(tmp_path / "log.csv")
    assert [int(r["step"]) for r in rows if r["loss"]] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in rows if r["val_loss"]] == [2, 4]  # 2 steps per epoch
