"""Pre-training step throughput: samples/s, model FLOPs and the share of the matmul rate.

For each model (the offline default ``minilm`` and ``base``) and each attention
implementation (transformers' eager BERT attention, PyTorch SDPA), time a
forward + backward of the full pre-training task (encoder + the seven heads) at the
paper's sequence shape (64 text tokens + 55 patches), batch 16. FLOPs per step come from
``torch.utils.flop_counter``; the reference rate is torch.matmul at the size of the
model's feed-forward layer, measured in the same process.

    python benchmarks/pretrain_step.py [--models minilm base] [--batch 16] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from kaleido.model import create_model
from kaleido.pretrain.config import TaskConfig
from kaleido.pretrain.task import PretrainTask


def synthetic_batch(cfg, batch: int, text_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of the pre-training shape with random inputs and labels."""
    g = torch.Generator().manual_seed(seed)
    p, d = cfg.num_patches, cfg.feature_dim
    labels = torch.full((batch, text_len), -100)
    labels[:, 1:1 + max(1, text_len * 15 // 100)] = 1000  # ~15% of the tokens are scored
    return {
        "input_ids": torch.randint(1000, cfg.vocab_size, (batch, text_len), generator=g),
        "attention_mask": torch.ones(batch, text_len, dtype=torch.long),
        "mlm_labels": labels,
        "itm_labels": torch.randint(0, 2, (batch,), generator=g),
        "patch_features": torch.rand(batch, p, d, generator=g),
        "patch_positions": torch.rand(batch, p, 5, generator=g),
        "rr_labels": torch.randint(0, 4, (batch,), generator=g),
        "jps_labels": torch.randint(0, 24, (batch,), generator=g),
        "cp_labels": torch.randint(0, 9, (batch,), generator=g),
        "g2cm_index": torch.tensor([[14, 20]] * batch), "g2cm_target": torch.rand(batch, 2, d, generator=g),
        "b2cm_index": torch.tensor([[30, 40, 50]] * batch), "b2cm_target": torch.rand(batch, 3, d, generator=g),
    }


def step(task, batch) -> None:
    task.zero_grad(set_to_none=True)
    task(batch)["loss"].backward()


def matmul_rate(m: int, k: int, n: int, device, repeats: int = 10, rounds: int = 5) -> float:
    """Dense FLOP/s of torch.matmul of (m, k) @ (k, n), float32: the best of ``rounds``
    rounds (the attainable rate; a busy machine only ever slows a round down)."""
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(rounds):
        sync(device)
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
        best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - t))
    return best


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


_FLOPS: dict[str, int] = {}


def model_flops(preset: str, args) -> int:
    """FLOPs of one step counted on the eager path (explicit matmuls), used for every
    attention implementation: the model's work does not change with the kernel."""
    if preset not in _FLOPS:
        model = create_model(preset, attn_implementation="eager")  # on the CPU: counting only
        task = PretrainTask(model, TaskConfig())
        batch = synthetic_batch(model.config, args.batch, args.text_len)
        with FlopCounterMode(display=False) as counter:
            step(task, batch)
        _FLOPS[preset] = counter.get_total_flops()
    return _FLOPS[preset]


def measure(preset: str, attn: str, args, device) -> dict:
    torch.manual_seed(0)
    model = create_model(preset, attn_implementation=attn, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
    task = PretrainTask(model, TaskConfig()).to(device).train()
    cfg = model.config
    batch = {k: v.to(device) for k, v in synthetic_batch(cfg, args.batch, args.text_len).items()}
    with FlopCounterMode(display=False) as counter:
        step(task, batch)
    if attn == "eager":
        _FLOPS[preset] = counter.get_total_flops()
    flops = model_flops(preset, args)
    for _ in range(args.warmup):
        step(task, batch)
    sync(device)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step(task, batch)
        sync(device)
        times.append(time.perf_counter() - t)
    seconds = sorted(times)[len(times) // 2]  # median step
    tokens = args.batch * (args.text_len + cfg.num_patches)
    reference = matmul_rate(tokens, cfg.hidden_size, cfg.intermediate_size, device)
    return {"model": preset, "attention": attn, "params_m": sum(p.numel() for p in task.parameters()) / 1e6,
            "step_s": seconds, "samples_per_s": args.batch / seconds, "gflop_per_step": flops / 1e9,
            "achieved_gflops": flops / seconds / 1e9, "matmul_gflops": reference / 1e9,
            "fraction_of_matmul": flops / seconds / reference}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["minilm", "base"])
    ap.add_argument("--attention", nargs="+", default=["eager", "sdpa"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--text-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; batch "
          f"{args.batch} x ({args.text_len} tokens + 55 patches); median of {args.steps} steps")
    rows = []
    for preset in args.models:
        for attn in args.attention:
            r = measure(preset, attn, args, device)
            rows.append(r)
            print(f"{preset:7s} {attn:6s} {r['params_m']:6.1f}M params  {r['step_s']:6.3f} s/step  "
                  f"{r['samples_per_s']:7.2f} samples/s  {r['gflop_per_step']:8.1f} GFLOP/step  "
                  f"{r['achieved_gflops']:8.1f} GFLOP/s  matmul {r['matmul_gflops']:8.1f} GFLOP/s  "
                  f"-> {100 * r['fraction_of_matmul']:.0f}% of matmul", flush=True)
        by = {r["attention"]: r for r in rows if r["model"] == preset}
        if {"eager", "sdpa"} <= set(by):
            print(f"{preset}: sdpa / eager speed = {by['eager']['step_s'] / by['sdpa']['step_s']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
